"""What an outside attack run found, each pinned: bounds every reader of a message gets
from the contract, and a device store that stays usable whatever one write raises."""

from __future__ import annotations

import json

import pytest

from edgefleet.agent import TelemetryBuffer
from edgefleet.contract import Ack, Birth, MessageError


def test_an_ack_beyond_64_bits_is_refused_and_a_failed_ack_loses_no_record(tmp_path):
    with pytest.raises(MessageError, match="64-bit"):
        Ack.decode(b'{"seqs": [9223372036854775808]}')
    assert Ack.decode(b'{"seqs": [9223372036854775807]}').seqs == [2**63 - 1]

    buf = TelemetryBuffer(tmp_path / "t.db", window_s=60)
    buf.start()
    try:
        buf.close_windows(6000.0)
        for i in range(5):
            buf.record(6000.0 + i, "m", 1, 2.0, True, "7")
        assert buf.flush()
        with pytest.raises(OverflowError):  # what reached the store before decoding refused it
            buf.ack([2**63])
        for i in range(5):
            buf.record(6010.0 + i, "m", 1, 2.0, True, "7")
        assert buf.close_windows(6060.0)  # commits: no transaction was left open
        pending = buf.pending(7000.0, resend_after_s=0, limit=10)
        assert sum(s.count for s in pending) == 10
        assert buf.stats()["dropped"] == 0
        assert buf.ack([s.seq for s in pending]) == len(pending)
    finally:
        buf.stop()


@pytest.mark.parametrize("payload, field", [
    ({"agent_version": "x" * 2_000_000}, "characters"),
    ({"agent_version": "x" * 65}, "agent_version"),
    ({"runtimes": ["onnxruntime:CPU"] * 33}, "runtimes"),
    ({"hw": {"junk": "x" * 5000}}, "hw"),
    ({"bd_seq": 2**63}, "64-bit"),
    ({"bd_seq": 2**70}, "bd_seq"),
])
def test_a_birth_cannot_make_the_device_list_grow_without_bound(payload, field):
    base = {"bd_seq": 1, "agent_version": "0.1.0", "ts": 1.0}
    with pytest.raises(MessageError, match=field):
        Birth.decode(json.dumps({**base, **payload}))
    assert Birth.decode(json.dumps(base)).agent_version == "0.1.0"


def test_json_nested_too_deep_is_a_message_error_not_a_crash():
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(MessageError, match="not valid JSON"):
        Ack.decode('{"seqs": ' + deep + "}")


def test_integers_beyond_64_bits_in_the_api_are_a_422_not_a_500(controller):
    from _support import TOKEN
    from fastapi.testclient import TestClient

    from edgefleet.controller.api import create_app

    big = 2**63
    with TestClient(create_app(controller), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        for method, url, body in [
            ("GET", f"/v1/models/digits/{big}", None),
            ("GET", f"/v1/models/digits/{big}/variants", None),
            ("POST", f"/v1/models/digits/{big}/optimize", {}),
            ("POST", "/v1/deployments", {"model": "digits", "version": big}),
            ("GET", f"/v1/audit?after={big}", None),
            ("GET", f"/v1/telemetry/query?version={big}", None),
            ("GET", "/v1/devices/d1/telemetry?limit=99999999999999999999", None),
        ]:
            resp = client.request(method, url, json=body)
            assert resp.status_code == 422, (url, resp.status_code, resp.text[:200])
        assert client.get("/v1/models/digits/9223372036854775807").status_code == 404
