"""One definition of each shared rule: what a name may be, how replicas lock a file, how a
retry loop waits. Every site follows the one definition, so they cannot drift apart."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import typer.main
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.provision import ensure_identity
from edgefleet.agent.updater import ChunkFetcher
from edgefleet.cli import app as cli_app
from edgefleet.contract import BundleFile, ChunkResponse, FetchError
from edgefleet.contract.backoff import Backoff
from edgefleet.contract.names import NAME, TOKEN_NAME
from edgefleet.contract.topics import DeviceTopic, device_topic, valid_device_id
from edgefleet.controller._api_security import TokenBody
from edgefleet.controller._api_types import HardwareClass
from edgefleet.controller._files import DirectoryFiles
from edgefleet.controller._locks import lock_file, locked, try_lock
from edgefleet.controller.auth import RESERVED_NAMES, valid_token_name
from edgefleet.controller.rollout import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("agent", "cli", "contract", "controller", "optimizer", "simulations",
           "firmware-images")


def _sources() -> list[Path]:
    return [p for d in SOURCES for p in sorted((ROOT / d).rglob("*.py"))]


# -- names ----------------------------------------------------------------------------------
_names = st.one_of(
    st.from_regex(NAME.pattern, fullmatch=True),
    st.from_regex(TOKEN_NAME.pattern, fullmatch=True),
    st.text(alphabet="aZ09._-@/+# \n\té", max_size=70),
    st.text(max_size=8))


def _accepts(check, text: str) -> bool:
    try:
        check(text)
    except (ValueError, ValidationError):
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(text=_names)
@example("")
@example("a" * 64)
@example("a" * 65)
@example("pi-1\n")
@example(".hidden")
@example("-flag")
@example("ops@example.com")
@example("ünïcode")
def test_every_site_accepts_and_refuses_the_same_names(text):
    valid = NAME.valid(text)
    assert valid == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text))
    assert valid_device_id(text) is valid
    assert _accepts(lambda s: device_topic(s, DeviceTopic.CMD), text) is valid
    assert _accepts(lambda s: device_topic("pi-1", DeviceTopic.JOB_STATUS, job=s), text) is valid
    assert _accepts(lambda s: AgentConfig(device_id=s, state_dir=Path("s"),
                                          trust_root=Path("r")), text) is valid
    if text not in ("manifest.json", "trust.json"):
        assert _accepts(lambda s: BundleFile(s, "smoke", "0" * 64, 1), text) is valid
    # the API validates the same pattern with pydantic's own regex engine
    assert _accepts(TypeAdapter(HardwareClass).validate_python, text) is valid


@settings(max_examples=300, deadline=None)
@given(text=_names)
@example("ops@example.com")
@example("ops@\n")
def test_token_names_are_names_that_may_also_hold_an_at_sign(text):
    valid = TOKEN_NAME.valid(text)
    assert valid == NAME.valid(text[:1] + text[1:].replace("@", "_"))  # '@' but not first
    assert _accepts(lambda s: TokenBody(name=s, role="viewer"), text) is valid
    if text.lower() not in RESERVED_NAMES:
        assert (valid_token_name(text) is None) is valid


def test_a_refused_name_says_which_field_and_what_was_expected():
    with pytest.raises(ValueError) as err:
        AgentConfig(device_id="pi 1", state_dir=Path("s"), trust_root=Path("r"))
    assert "device_id 'pi 1'" in str(err.value) and NAME.expected in str(err.value)
    with pytest.raises(ValueError, match="bundle file name 'manifest.json' is reserved"):
        BundleFile("manifest.json", "smoke", "0" * 64, 1)


def test_the_name_rule_is_written_once_in_the_source():
    copies = [p.relative_to(ROOT).as_posix() for p in _sources()
              if "A-Za-z0-9][A-Za-z0-9._" in p.read_text()]
    assert copies == ["contract/names.py"]


# -- rollout strategies ---------------------------------------------------------------------
def test_the_rollout_strategies_are_listed_once_and_the_cli_offers_each():
    copies = [p.relative_to(ROOT).as_posix() for p in _sources()
              if re.search(r'"all-at-once",\s*"staged"', p.read_text())]
    assert copies == ["controller/rollout.py"]
    # the CLI loads nothing of the controller to start, so its help names them in words
    deploy = typer.main.get_command(cli_app).commands["deploy"]  # type: ignore[attr-defined]
    [strategy] = [p for p in deploy.params if p.name == "strategy"]
    assert strategy.help == " | ".join(STRATEGIES)


# -- file locks -----------------------------------------------------------------------------
def test_a_held_lock_shuts_out_another_thread_until_released(tmp_path):
    path = tmp_path / "sub" / ".lock-x"  # the folder is made on the way
    with locked(path):
        seen: list[object] = []
        other = threading.Thread(target=lambda: seen.append(try_lock(path)))
        other.start()
        other.join(10)
        assert seen == [None]
    again = try_lock(path)
    assert again is not None
    again.close()


def test_a_held_lock_shuts_out_another_process(tmp_path):
    path = tmp_path / ".lock-x"
    probe = ("import fcntl, sys\n"
             "f = open(sys.argv[1], 'ab')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    sys.exit(3)\n")

    def other_process_gets_it() -> bool:
        done = subprocess.run([sys.executable, "-c", probe, str(path)], timeout=60)
        assert done.returncode in (0, 3)
        return done.returncode == 0

    with locked(path):
        assert not other_process_gets_it()
    assert other_process_gets_it()


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(tmp_path):
    path = tmp_path / ".lock-x"
    with locked(path, shared=True):
        entered = threading.Event()

        def second_reader() -> None:
            with locked(path, shared=True):
                entered.set()

        reader = threading.Thread(target=second_reader)
        reader.start()
        reader.join(10)
        assert entered.is_set()
        assert try_lock(path) is None


def test_a_store_lock_keeps_one_file_per_name_where_earlier_releases_kept_it(tmp_path):
    files = DirectoryFiles(tmp_path)
    for _ in range(3):
        with files.lock("write"), files.lock("model:digits"):
            assert try_lock(lock_file(tmp_path, "write")) is None
    # the file name replicas have always used, so older and newer ones exclude each other
    digest = hashlib.sha256(b"write").hexdigest()[:16]
    assert lock_file(tmp_path, "write") == tmp_path / f".lock-{digest}"
    assert sorted(p.name for p in tmp_path.glob(".lock-*")) == sorted(
        lock_file(tmp_path, n).name for n in ("write", "model:digits"))


def test_flock_is_called_in_one_module_only():
    callers = [p.relative_to(ROOT).as_posix() for p in _sources()
               if "fcntl.flock(" in p.read_text()]
    assert callers == ["controller/_locks.py"]


# -- backoff --------------------------------------------------------------------------------
def _delays(initial_s: float, max_s: float, factor: float, n: int) -> list[float]:
    out, delay = [], initial_s
    for _ in range(n):
        out.append(delay)
        delay = min(delay * factor, max_s)
    return out


@settings(max_examples=300, deadline=None)
@given(initial_s=st.floats(0, 100), max_s=st.floats(0, 1000), factor=st.floats(1, 4),
       low=st.floats(0, 1), spread=st.floats(0, 1), seed=st.integers(0, 2**32),
       n=st.integers(1, 40))
def test_backoff_grows_to_its_cap_and_jitters_within_its_range(initial_s, max_s, factor, low,
                                                               spread, seed, n):
    high = low + spread
    backoff = Backoff(initial_s, max_s, factor=factor, jitter=(low, high),
                      uniform=random.Random(seed).uniform)
    waits = [next(backoff) for _ in range(n)]
    delays = _delays(initial_s, max_s, factor, n)
    for wait, delay in zip(waits, delays, strict=True):
        assert delay * low * (1 - 1e-9) <= wait <= delay * high * (1 + 1e-9)
    assert all(d <= max(initial_s, max_s) for d in delays)
    if initial_s <= max_s:
        assert delays == sorted(delays)  # never shrinks before a reset
    backoff.reset()
    assert next(backoff) <= initial_s * high * (1 + 1e-9)


def test_backoff_refuses_a_shrinking_factor_or_an_upside_down_jitter():
    for bad in ({"factor": 0.5}, {"jitter": (1.0, 0.5)}, {"jitter": (-0.1, 1.0)}):
        with pytest.raises(ValueError):
            Backoff(1.0, 2.0, **bad)  # type: ignore[arg-type]


def _in_ranges(waits: list[float], delays: list[float], low: float, high: float) -> bool:
    return all(d * low <= w <= d * high for w, d in zip(waits, delays, strict=True))


def test_provisioning_retries_an_unreachable_controller_from_1s_doubling_to_60s(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once this block ends: connections are refused
    waits: list[float] = []

    class Enough(Exception):
        pass

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 9:
            raise Enough

    with pytest.raises(Enough):
        ensure_identity(tmp_path, provision_url=f"http://127.0.0.1:{port}",
                        claim_token="t" * 20, timeout_s=5, sleep=sleep)
    assert _in_ranges(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60], 0.5, 1.0), waits


def test_a_chunk_fetch_retries_from_0_2s_doubling_to_5s_and_starts_over_after_a_chunk():
    data = b"m" * 3000
    fails = set(range(7)) | {8}  # seven failures, a chunk, a failure, the rest

    calls = itertools.count()

    def source(file: str, offset: int, count: int, timeout_s: float) -> ChunkResponse:
        if next(calls) in fails:
            raise FetchError("no answer")
        return ChunkResponse("r", file, offset, len(data), "ok", data[offset:offset + count])

    waits: list[float] = []
    fetcher = ChunkFetcher(source, chunk_bytes=1024, timeout_s=0.01, deadline_s=30,
                           sleep=waits.append)
    assert fetcher.download_bytes("mqtt:/targets/m.onnx", len(data)) == data
    assert _in_ranges(waits, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 0.2], 0.5, 1.0), waits
