"""Verified downloads: python-tuf's ngclient over chunked MQTT request/response (or
over HTTP(S), with ``_http_fetch.HttpFetcher``).

``ChunkFetcher`` implements ngclient's ``FetcherInterface`` on top of any
``ChunkSource`` (the agent's MQTT link in production). It asks for blocks of at most
``chunk_bytes``, never past the length TUF signed for the file, resumes from the
last good block after a timeout or a disconnect, and gives up at a deadline, so a
download can fail but never hang.

``BundleUpdater.fetch`` refreshes TUF metadata, downloads a bundle's manifest, model
and data files (smoke test, drift profile) and returns them verified, whichever the
fetcher. This module is the one place python-tuf's errors are translated into
edgefleet's ``TrustError`` tree with a reason code (a fetcher turns its own transport's
errors into ``FetchError`` first: ``_http_fetch`` those of urllib3).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from edgefleet.contract import (
    MANIFEST_MAX_BYTES,
    ChunkResponse,
    EdgefleetError,
    ExpiredError,
    FetchError,
    IntegrityError,
    Manifest,
    RollbackError,
    SignatureError,
    TargetTrust,
    TrustError,
    bundle_paths,
)
from edgefleet.contract.backoff import Backoff
from edgefleet.contract.bundle import manifest_path_ok, model_target

from ._blobs import BlobCache
from ._local_copy import LocalFetcher, target_sha256

__all__ = ["BundleUpdater", "ChunkFetcher", "ChunkSource", "VerifiedBundle"]

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    def __call__(self, file: str, offset: int, count: int, timeout_s: float) -> ChunkResponse: ...


class ChunkFetcher(LocalFetcher):
    """ngclient fetcher pulling ``mqtt:/<file>`` URLs block by block.

    Args:
        source: answers one block request (raises ``FetchError`` on timeout).
        chunk_bytes: block size asked for (≤ 128 KiB).
        timeout_s: wait per block.
        deadline_s: total time one file may take, retries included.
        max_bytes_per_s: bandwidth cap (0: none), for metered links.
        progress: called with ``(file, bytes_so_far, total)``.
        sleep: how to wait between retries and for the bandwidth cap (tests pass a no-op).
        stop: when set (the agent is stopping), the download gives up at once.
        blobs: where a broadcast's blocks arrive (``None``: every block is pulled).
        local: finds an installed file by sha256 (``None``: always download).
    """

    def __init__(self, source: ChunkSource, *, chunk_bytes: int = 64 * 1024,
                 timeout_s: float = 5.0, deadline_s: float = 600.0, max_bytes_per_s: int = 0,
                 progress: Callable[[str, int, int], None] | None = None,
                 sleep: Callable[[float], None] | None = None,
                 stop: threading.Event | None = None, blobs: BlobCache | None = None,
                 broadcast_wait_s: float = 5.0,
                 local: Callable[[str], Path | None] | None = None) -> None:
        super().__init__(local)
        self._source = source
        self.blobs = blobs
        self._broadcast_wait = broadcast_wait_s
        self.bytes_from_broadcast = 0  # target bytes taken from broadcast blocks
        self.metadata_from_broadcast = 0  # metadata bytes likewise
        self.bytes_pulled = 0  # target bytes asked of the controller (repairs included)
        self.used_broadcast: set[str] = set()  # files partly taken from broadcast blocks
        self._stop = stop or threading.Event()
        if sleep is None:  # waits that end early when the agent stops
            def sleep(seconds: float) -> None:
                self._stop.wait(seconds)
        self._chunk = chunk_bytes
        self._timeout = timeout_s
        self._deadline = deadline_s
        self._rate = max_bytes_per_s
        self._progress = progress
        self._sleep: Callable[[float], None] = sleep
        self.retries = 0
        self.bytes_received = 0

    def whole_file(self, url: str) -> Path | None:
        """A broadcast file, once all of it is here and hashes to its name (waiting while
        its blocks come), read where it lies."""
        file = url.split(":", 1)[1].lstrip("/")
        sha = target_sha256(file) or self.named.get(file)
        if (self.blobs is None or sha is None or self.known_absent(file)
                or not self.blobs.wants(sha)):
            return None
        with self.waiting():
            total = self.blobs.wait_complete(sha, wait_s=self._broadcast_wait, stop=self._stop)
        if total is None:
            return None
        path = self.blobs.path(sha)
        if path is None:
            return None
        if file.startswith("targets/"):
            self.bytes_from_broadcast += total
        else:
            self.metadata_from_broadcast += total
        if self._progress is not None:
            self._progress(file, total, total)
        return path

    def broadcast_target(self, sha: str, length: int) -> Path | None:
        """A bundle file that came whole by broadcast, waiting while its blocks come;
        unverified (``None``: it will not be whole here; it is pulled instead).

        The caller checks it against the signed length and hash where it lies, then
        ``took`` it, or ``drop``s it from the cache if it does not match."""
        blobs = self.blobs
        if blobs is None or not blobs.wants(sha):
            return None
        with self.waiting():
            total = blobs.wait_complete(sha, wait_s=self._broadcast_wait, stop=self._stop,
                                        hashed=False)
        if total is None or total != length:
            return None
        return blobs.whole(sha)

    def took(self, sha: str, name: str, length: int, dest: Path) -> bool:
        """Move a verified broadcast file of ``length`` bytes to ``dest`` and count it."""
        if self.blobs is None or not self.blobs.claim(sha, dest):
            return False
        self.bytes_from_broadcast += length
        if self._progress is not None:
            self._progress(name, length, length)
        return True

    def _fetch(self, url: str) -> Iterator[bytes]:
        file = url.split(":", 1)[1].lstrip("/")
        limit = self.limit
        offset, total = 0, None
        started = time.monotonic()
        backoff = Backoff(0.2, 5.0)
        if self.known_absent(file):  # as the controller would answer, without asking
            raise tuf_exc.DownloadHTTPError(f"{file} not found", 404)
        copy = self.local_copy(file)
        if copy is not None:  # the same content is installed here already: no download
            yield from copy
            return
        # a broadcast file all here was read in place (``whole_file``); of one that is
        # not, the blocks that came are taken and the gaps asked for
        sha = target_sha256(file) or self.named.get(file)
        while offset < limit and (total is None or offset < total):
            count = min(self._chunk, limit - offset)
            block = self.blobs.block(sha, offset) if sha is not None and self.blobs else None
            if sha is not None and block is not None:
                data, total = block
                data = data[:limit - offset]
                self.used_broadcast.add(sha)
                self.bytes_from_broadcast += len(data)
                offset += len(data)
                yield data
                continue
            if sha is not None and self.blobs is not None:  # pull up to the next held block
                after = self.blobs.next_block(sha, offset)
                if after is not None:
                    count = min(count, after - offset)
            try:
                with self.waiting():
                    chunk = self._source(file, offset, count, self._timeout)
            except FetchError as exc:
                if self._stop.is_set():
                    raise FetchError(f"{file}: the agent is stopping") from exc
                if time.monotonic() - started > self._deadline:
                    raise FetchError(f"{file}: gave up after {self._deadline:.0f}s "
                                     f"at byte {offset}: {exc}") from exc
                self.retries += 1
                wait = next(backoff)
                log.info("fetch %s@%d failed (%s); retrying in %.1fs", file, offset, exc, wait)
                self._sleep(wait)
                continue
            backoff.reset()
            if chunk.status == "not_found":
                raise tuf_exc.DownloadHTTPError(f"{file} not found", 404)
            if chunk.status != "ok" or chunk.offset != offset or chunk.file != file:
                raise FetchError(f"{file}: bad answer at {offset} (status {chunk.status})")
            total = chunk.total
            if not chunk.data:
                break
            offset += len(chunk.data)
            self.bytes_received += len(chunk.data)
            if file.startswith("targets/"):
                self.bytes_pulled += len(chunk.data)
            if self._progress is not None:
                self._progress(file, offset, total)
            if self._rate:
                ahead = offset / self._rate - (time.monotonic() - started)
                if ahead > 0:
                    self._sleep(ahead)
            yield chunk.data


def _signed_as_listed(updater: Updater, target: str, length: int, sha256: str,
                      trust: TargetTrust) -> TargetFile:
    """A bundle file's signed entry, which must say what the manifest says of it.

    Raises:
        TrustError: the file is not signed; IntegrityError: its signed length, hash or
            trust data differ from the manifest's.
    """
    info = updater.get_targetinfo(target)
    if info is None:
        raise TrustError(f"{target} is not signed", reason="unknown_target")
    if (info.length != length or info.hashes.get("sha256") != sha256
            or TargetTrust.from_custom(info.custom) != trust):
        raise IntegrityError(f"the signed entry of {target} differs from the manifest's",
                             reason="manifest_mismatch")
    return info


class VerifiedBundle:
    """A manifest, model file and data files that passed TUF verification, and what was
    signed about them (``data``: each data file's name -> its downloaded path)."""

    def __init__(self, manifest: Manifest, manifest_bytes: bytes, model_path: Path,
                 trust: TargetTrust, data: dict[str, Path] | None = None) -> None:
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self.model_path = model_path
        self.trust = trust
        self.data = dict(data or {})


class BundleUpdater:
    """Fetches and verifies bundles against the pinned TUF root.

    Args:
        metadata_dir: trusted metadata cache (must hold ``root.json``).
        download_dir: scratch space for downloads.
        fetcher: the transport: a ``ChunkFetcher`` (MQTT) or an ``HttpFetcher``.
        repository_url: where ``metadata/`` and ``targets/`` are for that fetcher
            (``mqtt:/``: the controller, over MQTT).
    """

    def __init__(self, metadata_dir: Path, download_dir: Path, fetcher: LocalFetcher, *,
                 repository_url: str = "mqtt:/") -> None:
        self.metadata_dir = metadata_dir
        self.download_dir = download_dir
        self.fetcher = fetcher
        self.repository_url = repository_url

    def refresh(self) -> None:
        """Refresh trust metadata only (a newer root, for instance).

        Raises:
            TrustError, FetchError: as ``fetch``.
        """
        with self._translated(phase="metadata"):
            self._updater().refresh()

    def _updater(self) -> Updater:
        base = self.repository_url
        return Updater(str(self.metadata_dir), f"{base}metadata/", str(self.download_dir),
                       f"{base}targets/", fetcher=self.fetcher, bootstrap=None)

    def fetch(self, name: str, version: int, *,
              manifest_path: str = "",
              check: Callable[[TargetTrust], None] | None = None,
              on_refreshed: Callable[[TrustError | None], None] | None = None,
              on_step: Callable[[str], None] | None = None) -> VerifiedBundle:
        """Refresh trust metadata, then download and verify a bundle.

        ``manifest_path`` names the bundle (a per-class variant; default: the version's
        default bundle). ``check`` sees the bundle's signed ``TargetTrust`` (hardware
        classes, release counter) before anything but metadata is downloaded, and raises
        to refuse it.
        ``on_refreshed`` hears whether the metadata refresh itself succeeded (``None``)
        or why it did not.

        Raises:
            TrustError: (or a subclass) metadata or files failed verification.
            FetchError: the files could not be fetched in time.
            MessageError: the manifest is not a valid manifest.
        """
        step = on_step or (lambda _s: None)
        report = on_refreshed or (lambda _e: None)
        with self._translated(phase="targets"):
            try:
                with self._translated(phase="metadata"):
                    updater = self._refreshed()
            except TrustError as exc:
                report(exc)
                raise
            report(None)
            if not manifest_path.startswith("bundles/"):  # none named: the default bundle
                manifest_path, _ = bundle_paths(name, version, "x")
            if not manifest_path_ok(manifest_path, name, version):
                raise TrustError(f"{manifest_path} is not a bundle of {name}:{version}",
                                 reason="manifest_mismatch")
            info = updater.get_targetinfo(manifest_path)
            if info is None:
                raise TrustError(f"{manifest_path} is not signed by the repository",
                                 reason="unknown_target")
            trust = TargetTrust.from_custom(info.custom)
            if trust is None or (trust.model, trust.version) != (name, version):
                raise TrustError(f"{manifest_path} carries no signed trust data for "
                                 f"{name}:{version}", reason="unbound_target")
            if check is not None:
                check(trust)
            if info.length > MANIFEST_MAX_BYTES:
                raise TrustError(f"{manifest_path} is {info.length} bytes, above the "
                                 f"{MANIFEST_MAX_BYTES}-byte cap on manifests",
                                 reason="manifest_too_large")
            self.download_dir.mkdir(parents=True, exist_ok=True)
            local_manifest = updater.download_target(info, str(self.download_dir / "manifest.json"))
            manifest_bytes = Path(local_manifest).read_bytes()
            manifest = Manifest.decode(manifest_bytes)
            if manifest.name != name or manifest.version != version:
                raise TrustError(f"manifest names {manifest.name}:{manifest.version}, "
                                 f"expected {name}:{version}", reason="manifest_mismatch")
            model_info = _signed_as_listed(
                updater, model_target(manifest_path, manifest.model_file),
                manifest.model_length, manifest.model_sha256, trust)
            data_infos = [(entry.name, _signed_as_listed(
                updater, model_target(manifest_path, entry.name), entry.length, entry.sha256,
                trust)) for entry in manifest.files]
            step("downloading")
            local_model = self._download(updater, model_info,
                                         self.download_dir / manifest.model_file)
            data = {name: Path(self._download(updater, i, self.download_dir / name))
                    for name, i in data_infos}
            return VerifiedBundle(manifest, manifest_bytes, Path(local_model), trust, data)
        raise AssertionError("unreachable")  # pragma: no cover (the context re-raises)

    def _refreshed(self) -> Updater:
        """A refreshed updater; once more, all pulled, if metadata taken from the
        broadcast did not verify (the repository's own copy decides)."""
        updater = self._updater()
        try:
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError):  # too long, bad hash...
            if not self.fetcher.named and not self.fetcher.roots_upto:
                raise
            log.warning("trust metadata taken from the broadcast did not verify; pulling it")
            self.fetcher.named = {}
            self.fetcher.roots_upto = 0
            updater = self._updater()
            updater.refresh()
        return updater

    def _download(self, updater: Updater, info: TargetFile, path: Path) -> str:
        """A bundle file that came whole by broadcast, verified where it lies and moved
        to ``path``; otherwise ``download_target``, once more, all fetched, if a file
        copied from an installed one or put together partly from broadcast blocks did not
        verify."""
        placed = self._place_broadcast(info, path)
        if placed is not None:
            return placed
        try:
            return updater.download_target(info, str(path))
        except tuf_exc.LengthOrHashMismatchError:
            sha = info.hashes.get("sha256", "")
            if self.fetcher.local.distrust(sha):  # the installed copy changed on disk
                log.warning("the local copy of %s did not verify; downloading it", info.path)
                return updater.download_target(info, str(path))
            fetcher = self.fetcher
            if (not isinstance(fetcher, ChunkFetcher) or fetcher.blobs is None
                    or sha not in fetcher.used_broadcast):
                raise
            blobs = fetcher.blobs
            log.warning("%s put together from broadcast blocks did not verify; pulling it",
                        info.path)
            blobs.drop(sha)
            fetcher.used_broadcast.discard(sha)
            return updater.download_target(info, str(path))

    def _place_broadcast(self, info: TargetFile, path: Path) -> str | None:
        """``download_target`` without its copy, for a file that came whole by broadcast:
        python-tuf checks it against the signed length and hash, as it checks any
        download, and it is moved into ``path``. ``None``: none came, or it did not
        verify (dropped: the caller pulls it)."""
        fetcher = self.fetcher
        sha = info.hashes.get("sha256", "")
        if not isinstance(fetcher, ChunkFetcher) or fetcher.blobs is None:
            return None
        held = fetcher.broadcast_target(sha, info.length)
        if held is None:
            return None
        try:
            with open(held, "rb") as fh:
                info.verify_length_and_hashes(fh)
        except (tuf_exc.LengthOrHashMismatchError, OSError) as exc:
            log.warning("%s taken from the broadcast did not verify (%s); pulling it",
                        info.path, exc)
            fetcher.blobs.drop(sha)
            return None
        return str(path) if fetcher.took(sha, info.path, info.length, path) else None

    @contextlib.contextmanager
    def _translated(self, *, phase: str) -> Iterator[None]:
        """Translate python-tuf's errors into edgefleet's, with a reason code.

        A hash mismatch while metadata is refreshed means metadata files that do not
        belong together (mix-and-match); while targets download, a tampered file.
        """
        try:
            yield
        except EdgefleetError:
            raise
        except tuf_exc.ExpiredMetadataError as exc:
            raise ExpiredError(f"trust metadata expired: {exc}") from exc
        except tuf_exc.BadVersionNumberError as exc:
            raise RollbackError(f"metadata version went backwards: {exc}",
                                reason="metadata_rollback") from exc
        except tuf_exc.UnsignedMetadataError as exc:
            raise SignatureError(f"metadata not signed by trusted keys: {exc}") from exc
        except tuf_exc.LengthOrHashMismatchError as exc:
            if phase == "metadata":
                raise IntegrityError(f"metadata files do not match what the snapshot signed: "
                                     f"{exc}", reason="metadata_mismatch") from exc
            raise IntegrityError(f"a file does not match its signed hash: {exc}") from exc
        except tuf_exc.DownloadLengthMismatchError as exc:
            raise IntegrityError(f"more bytes than signed: {exc}",
                                 reason="length_exceeded") from exc
        except tuf_exc.DownloadError as exc:
            cause = exc.__cause__
            if isinstance(cause, FetchError):
                raise FetchError(str(cause)) from exc
            raise FetchError(f"download failed: {exc}") from exc
        except tuf_exc.RepositoryError as exc:
            chain: list[str] = []
            link: BaseException | None = exc
            while link is not None and len(chain) < 5:
                chain.append(str(link).lower())
                link = link.__cause__ or link.__context__
            if any("multiple signatures" in c for c in chain):  # one key counted twice
                raise SignatureError(f"metadata carries one key's signature twice: {exc}",
                                     reason="duplicate_signature") from exc
            raise TrustError(f"repository metadata rejected: {exc}") from exc

    def clear(self) -> None:
        shutil.rmtree(self.download_dir, ignore_errors=True)
