"""The shared contract: messages round-trip, malformed payloads fail precisely, topics are safe."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.contract import (
    MAX_CHUNK_BYTES,
    Ack,
    Birth,
    ChunkResponse,
    Command,
    DesiredState,
    FetchRequest,
    JobStatus,
    MessageError,
    ModelRef,
    Summary,
    device_topic,
    parse_device_topic,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(bd=st.integers(0, 2**31), name=ids, version=st.integers(1, 10**6), ts=finite)
def test_birth_round_trips(bd, name, version, ts):
    b = Birth(bd_seq=bd, agent_version="0.1.0", ts=ts, active=ModelRef(name, version, "ab"),
              runtimes=["onnxruntime:CPU"])
    assert Birth.decode(b.encode()) == b


@given(seq=st.integers(1, 2**40), count=st.integers(0, 10**6), errors=st.integers(0, 10),
       lat=st.dictionaries(st.sampled_from(["p50", "p95", "p99"]), finite),
       preds=st.dictionaries(st.text(max_size=5), st.integers(0, 1000)))
def test_summary_round_trips(seq, count, errors, lat, preds):
    s = Summary(seq=seq, window_start=0.0, window_end=60.0, count=count, errors=errors,
                latency_ms=lat, predictions=preds)
    assert Summary.decode(s.encode()) == s


@pytest.mark.parametrize("change", [
    {"seq": 2**63}, {"version": 2**31}, {"count": 2**31}, {"errors": -1}, {"version": -1},
    {"model": "m" * 129}, {"stream": "s" * 65}, {"model": "a\x00b"},
    {"latency_ms": {"p95": float("nan")}}, {"system": {"cpu_pct": float("-inf")}},
])
def test_a_summary_no_store_could_keep_is_refused(change):
    data = {**Summary(seq=1, window_start=0.0, window_end=1.0, count=1, errors=0).to_dict(),
            **change}
    with pytest.raises(MessageError):
        Summary.decode(json.dumps(data).encode())


@pytest.mark.parametrize("backend", ["orjson", "stdlib"])
def test_json_is_standard_with_or_without_orjson(backend, monkeypatch):
    import numpy as np

    from edgefleet.contract import _json

    if backend == "stdlib":
        monkeypatch.setattr(_json, "orjson", None)
    elif _json.orjson is None:
        pytest.skip("orjson is not installed (the controller extra installs it)")
    assert _json.loads(b'{"a":[1,2.5,"x"],"b":null}') == {"a": [1, 2.5, "x"], "b": None}
    for bad in (b'{"a":NaN}', b'{"a":-Infinity}', b'{"a":1e999}', b'{"a":', b'\xff'):
        with pytest.raises(ValueError):
            _json.loads(bad)
    assert json.loads(_json.dumps({"a": float("nan"), "b": [float("inf"), 1.5], 3: "x"})) == \
        {"a": None, "b": [None, 1.5], "3": "x"}
    assert json.loads(_json.dumps({"a": np.float64(0.25)})) == {"a": 0.25}


@given(data=st.binary(max_size=MAX_CHUNK_BYTES), offset=st.integers(0, 2**40), file=ids)
def test_chunk_frames_round_trip(data, offset, file):
    c = ChunkResponse(req="r1", file=f"targets/{file}", offset=offset, total=offset + len(data),
                      data=data)
    assert ChunkResponse.decode(c.encode()) == c


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_a_decoder(payload):
    for cls in (Birth, Summary, JobStatus, Command, DesiredState, Ack, FetchRequest):
        with contextlib.suppress(MessageError):
            cls.decode(payload)
    with contextlib.suppress(MessageError):
        ChunkResponse.decode(payload)


@pytest.mark.parametrize("payload,why", [
    (b'{"req":"1","file":"../x","offset":0,"count":10}', "bad file path"),
    (b'{"req":"1","file":"/etc/passwd","offset":0,"count":10}', "bad file path"),
    (b'{"req":"1","file":"a","offset":0,"count":200000}', "out of range"),
    (b'{"req":"1","file":"a","offset":-1,"count":1}', "out of range"),
    (b'{"req":"1","file":"a","offset":true,"count":1}', "expected an integer"),
])
def test_bad_fetch_requests_are_refused_with_a_reason(payload, why):
    with pytest.raises(MessageError, match=why):
        FetchRequest.decode(payload)


def test_oversized_chunk_is_refused():
    frame = ChunkResponse("r", "f", 0, 10, data=b"x" * (MAX_CHUNK_BYTES + 1)).encode()
    with pytest.raises(MessageError, match="exceeds"):
        ChunkResponse.decode(frame)


def test_job_status_and_command_reject_unknown_states():
    with pytest.raises(MessageError):
        JobStatus.decode(b'{"job":"j","deployment":"d","state":"exploded","ts":1}')
    with pytest.raises(MessageError):
        Command.decode(b'{"id":"c","action":"format-disk","issued_at":1,"expires_at":2}')


def test_topics_refuse_wildcards_and_separators():
    assert device_topic("pi-1", "cmd") == "fleet/v1/dev/pi-1/cmd"
    assert parse_device_topic("fleet/v1/dev/pi-1/job/dep-1/status") == ("pi-1",
                                                                        "job/dep-1/status")
    for bad in ("a/b", "+", "#", "", "a b"):
        with pytest.raises(ValueError):
            device_topic(bad, "cmd")
    assert parse_device_topic("fleet/v1/dev/+/birth") is None
    assert parse_device_topic("other/v1/dev/a/birth") is None


def test_job_states_are_one_enum_whose_sets_name_its_members():
    from edgefleet.contract.messages import JobState

    assert {state.value for state in JobState} == JobState.ALL
    assert {JobState.HEALTHY, JobState.FAILED, JobState.ROLLED_BACK} == JobState.TERMINAL
    status = JobStatus(job="j", deployment="d", state=JobState.ROLLED_BACK, ts=1.0)
    assert json.loads(status.encode())["state"] == "rolled_back"
    assert JobStatus.decode(status.encode()).state == JobState.ROLLED_BACK
