"""The TUF repository over HTTP(S): python-tuf's stock ``Urllib3Fetcher``, bounded.

``HttpFetcher`` fetches ``{repository_url}metadata/…`` and ``{repository_url}targets/…``
from the controller's own route, nginx or a CDN. The host is untrusted like any TUF
mirror: python-tuf verifies every file exactly as it does over MQTT. Around the stock
fetcher it adds what the MQTT path has: the device's own copy of a file first (no
download twice), a socket timeout on connecting and between bytes, a deadline per file
that also cuts off a host trickling bytes (a watchdog shuts the answer's socket), an
optional bandwidth cap, progress reports, and a prompt stop.

This module is where urllib3's errors become edgefleet's: a refused connection, a
timeout or a broken stream is a ``FetchError`` naming the URL (the job worker retries
it, as over MQTT); an HTTP error status stays python-tuf's ``DownloadHTTPError``, which
ngclient needs to tell "no newer root" (404) from a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import Urllib3Fetcher

from edgefleet import __version__
from edgefleet.contract import FetchError

from ._local_copy import LocalFetcher

__all__ = ["HttpFetcher"]

_BLOCK_BYTES = 256 * 1024


def _with_ca(fetcher: Urllib3Fetcher, ca_file: Path) -> None:
    """Make the stock fetcher verify servers with ``ca_file`` instead of the system's CAs.

    python-tuf builds its urllib3 pools from the keyword arguments its proxy helper
    holds; the CA bundle is one more of them.

    Raises:
        RuntimeError: this python-tuf keeps its pools differently (checked at start).
    """
    env = getattr(fetcher, "_proxy_env", None)
    kw = getattr(env, "_kw_args", None)
    if not isinstance(kw, dict) or getattr(env, "_pool_managers", None) != {}:
        raise RuntimeError("repository_ca cannot be applied to this python-tuf's "
                           "Urllib3Fetcher (tested with python-tuf 7)")
    kw["ca_certs"] = str(ca_file)
    kw["cert_reqs"] = "CERT_REQUIRED"


class _CuttableFetcher(Urllib3Fetcher):
    """The stock fetcher, holding on to the answer it reads so a deadline can cut it:
    urllib3 hands over a block only once all of it has come, so a host that trickles
    bytes never trips the timeout between reads."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._reading: urllib3.BaseHTTPResponse | None = None
        self.cut_off = False

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        with self._lock:
            self._reading = response
            cut = self.cut_off
        if cut:
            response.shutdown()
        try:
            yield from super()._chunks(response)
        finally:
            with self._lock:
                self._reading = None

    def arm(self) -> None:
        with self._lock:
            self.cut_off = False

    def cut(self) -> None:
        """Stop the answer being read (from another thread): its next read ends."""
        with self._lock:
            self.cut_off = True
            reading = self._reading
        if reading is not None:
            reading.shutdown()


class HttpFetcher(LocalFetcher):
    """ngclient fetcher for an HTTP(S) repository.

    Args:
        base_url: the repository's URL, ending in ``/`` (``metadata/`` and ``targets/``
            are below it).
        ca_file: a CA bundle to verify an ``https://`` host with (``None``: the system's).
        timeout_s: to connect, and the longest wait for the next bytes.
        deadline_s: total time one file may take.
        max_bytes_per_s: bandwidth cap (0: none), for metered links.
        progress: called with ``(file, bytes_so_far, signed_length)``.
        stop: when set (the agent is stopping), the download gives up at once.
        local: finds an installed file by sha256 (``None``: always download).
    """

    def __init__(self, base_url: str, *, ca_file: Path | None = None, timeout_s: float = 5.0,
                 deadline_s: float = 600.0, max_bytes_per_s: int = 0,
                 progress: Callable[[str, int, int], None] | None = None,
                 stop: threading.Event | None = None,
                 local: Callable[[str], Path | None] | None = None) -> None:
        super().__init__(local)
        if not base_url.endswith("/"):
            raise ValueError(f"base_url must end with '/', got {base_url!r}")
        self.base_url = base_url
        # the stock fetcher takes whole seconds in its annotation; urllib3 takes floats
        self._http = _CuttableFetcher(socket_timeout=timeout_s, chunk_size=_BLOCK_BYTES,
                                      app_user_agent=f"edgefleet-agent/{__version__}")
        if ca_file is not None:
            _with_ca(self._http, ca_file)
        self._timeout = timeout_s
        self._deadline = deadline_s
        self._rate = max_bytes_per_s
        self._progress = progress
        self._stop = stop or threading.Event()
        self.bytes_received = 0  # bytes that came over HTTP (metadata and targets)

    def _fetch(self, url: str) -> Iterator[bytes]:
        file = url.removeprefix(self.base_url)
        copy = self.local_copy(file)
        if copy is not None:  # the same content is installed here already: no download
            return copy
        if self._stop.is_set():
            raise FetchError(f"{url}: the agent is stopping")
        self._http.arm()
        watchdog = threading.Timer(self._deadline, self._http.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            chunks = self._http.fetch(url)
        except tuf_exc.DownloadHTTPError as exc:
            watchdog.cancel()
            raise tuf_exc.DownloadHTTPError(f"GET {url}: HTTP {exc.status_code}",
                                            exc.status_code) from exc
        except tuf_exc.DownloadError as exc:  # refused, timed out, TLS…
            watchdog.cancel()
            raise FetchError(f"GET {url}: {self._why(exc)}") from exc
        return self._stream(url, file, chunks, watchdog)

    def _stream(self, url: str, file: str, chunks: Iterator[bytes],
                watchdog: threading.Timer) -> Iterator[bytes]:
        started = time.monotonic()
        received = 0
        total = self.limit - 1
        late = f"GET {url}: gave up after {self._deadline:g}s"
        try:
            for data in chunks:
                if self._http.cut_off:
                    raise FetchError(f"{late} at byte {received}")
                received += len(data)
                self.bytes_received += len(data)
                if self._progress is not None and file.startswith("targets/"):
                    self._progress(file, received, total)
                yield data
                if self._stop.is_set():
                    raise FetchError(f"{url}: the agent is stopping")
                elapsed = time.monotonic() - started
                if self._rate and received / self._rate > elapsed:
                    self._stop.wait(min(received / self._rate - elapsed,
                                        max(0.0, self._deadline - elapsed)))
        except (tuf_exc.DownloadError, urllib3.exceptions.HTTPError, OSError) as exc:
            if self._http.cut_off:
                raise FetchError(f"{late} at byte {received}") from exc
            raise FetchError(f"GET {url}: broke off at byte {received}: "
                             f"{self._why(exc)}") from exc
        finally:
            watchdog.cancel()
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if self._http.cut_off:  # cut as it ended: what came may be short
            raise FetchError(f"{late} at byte {received}")

    def _why(self, exc: BaseException) -> str:
        """What went wrong under a failed request, briefly (``connection refused``)."""
        link: BaseException | None = exc
        seen: list[BaseException] = []
        while link is not None and len(seen) < 8:
            seen.append(link)
            reason = getattr(link, "reason", None)
            link = reason if isinstance(reason, BaseException) else link.__cause__
        for err in seen:  # a refused connection is a "connect timeout" in urllib3 2
            if isinstance(err, ConnectionRefusedError) or (
                    isinstance(err, urllib3.exceptions.NewConnectionError)
                    and "refused" in str(err).lower()):
                return "connection refused"
        for err in seen:
            if isinstance(err, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
                    err, urllib3.exceptions.NewConnectionError):
                return f"no connection within {self._timeout:g}s"
            if isinstance(err, urllib3.exceptions.TimeoutError | TimeoutError):
                return f"no data for {self._timeout:g}s"
        last = seen[-1]
        return str(last) or type(last).__name__
