"""The chunk fetcher: reassembles exactly, resumes after failures, never over-reads, never hangs."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuf.api import exceptions as tuf_exc

from edgefleet.agent.updater import ChunkFetcher
from edgefleet.contract import ChunkResponse, FetchError


class FlakyRepository:
    """A ChunkSource serving in-memory files; fails the requests whose index is in ``fail``."""

    def __init__(self, files: dict[str, bytes], fail: set[int] = frozenset()) -> None:
        self.files = files
        self.fail = fail
        self.requests: list[tuple[str, int, int]] = []

    def __call__(self, file: str, offset: int, count: int, timeout_s: float) -> ChunkResponse:
        self.requests.append((file, offset, count))
        if len(self.requests) - 1 in self.fail:
            raise FetchError("simulated timeout")
        if file not in self.files:
            return ChunkResponse("r", file, offset, -1, "not_found")
        data = self.files[file]
        return ChunkResponse("r", file, offset, len(data), "ok", data[offset:offset + count])


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=20_000), chunk=st.integers(1024, 4096),
       fail=st.sets(st.integers(0, 30), max_size=6))
def test_reassembled_file_is_exact_despite_failures_and_resumes_in_place(data, chunk, fail):
    repo = FlakyRepository({"targets/m.onnx": data}, fail)
    fetcher = ChunkFetcher(repo, chunk_bytes=chunk, timeout_s=0.01, deadline_s=30,
                           sleep=lambda _s: None)  # backoff waits are not the subject here
    with fetcher.download_file("mqtt:/targets/m.onnx", len(data)) as fh:
        got = fh.read()
    assert got == data
    offsets = [o for _f, o, _c in repo.requests]
    assert offsets == sorted(offsets)  # a retry asks again for the same block, never from 0
    assert fetcher.bytes_received == len(data)
    assert fetcher.retries == sum(1 for i in fail if i < len(repo.requests))


def test_endless_data_is_cut_at_the_signed_length():
    repo = FlakyRepository({"targets/m.onnx": b"x" * 1_000_000})
    fetcher = ChunkFetcher(repo, chunk_bytes=64 * 1024)
    with pytest.raises(tuf_exc.DownloadLengthMismatchError), \
            fetcher.download_file("mqtt:/targets/m.onnx", 100_000):
        pass
    asked = sum(c for _f, _o, c in repo.requests)
    assert asked <= 100_001  # never more than signed + the one byte that proves excess


def test_missing_file_is_a_404_for_tuf():
    fetcher = ChunkFetcher(FlakyRepository({}))
    with pytest.raises(tuf_exc.DownloadHTTPError) as err:
        fetcher.download_bytes("mqtt:/metadata/2.root.json", 1000)
    assert err.value.status_code == 404


def test_a_silent_controller_fails_the_download_at_its_deadline_instead_of_hanging():
    repo = FlakyRepository({"targets/m.onnx": b"y" * 10}, fail=set(range(10_000)))
    fetcher = ChunkFetcher(repo, timeout_s=0.01, deadline_s=0.5)
    started = time.monotonic()
    with pytest.raises(FetchError, match="gave up"):
        fetcher.download_bytes("mqtt:/targets/m.onnx", 10)
    assert time.monotonic() - started < 5
    assert fetcher.retries >= 2


def test_bandwidth_cap_paces_the_transfer():
    data = b"z" * 200_000
    fetcher = ChunkFetcher(FlakyRepository({"targets/m": data}), chunk_bytes=20_000,
                           max_bytes_per_s=1_000_000)
    started = time.monotonic()
    assert fetcher.download_bytes("mqtt:/targets/m", len(data)) == data
    assert time.monotonic() - started >= 0.18  # 200 kB at 1 MB/s
