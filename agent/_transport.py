"""How bundles reach this device: the fetcher ``agent.toml`` asks for, and the updater on it.

Without ``repository_url`` files come over MQTT (``ChunkFetcher``: broadcast blocks,
then ``fetch/req`` round trips for the rest); with it, over HTTP(S) (``HttpFetcher``),
taking no broadcast. Either copies a file this device already holds instead
(``reuse_local_files``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ._blobs import BlobCache
from ._http_fetch import HttpFetcher
from .config import AgentConfig, repository_base
from .updater import BundleUpdater, ChunkFetcher, ChunkSource

__all__ = ["open_updater"]


def open_updater(config: AgentConfig, tuf_dir: Path, *, request_chunk: ChunkSource,
                 blobs: BlobCache, local: Callable[[str], Path | None] | None,
                 progress: Callable[[str, int, int], None],
                 stop: threading.Event) -> tuple[BundleUpdater, ChunkFetcher | HttpFetcher]:
    """The bundle updater over the configured transport, and its fetcher.

    Args:
        tuf_dir: the trusted metadata (``root.json`` at least).
        request_chunk: asks the controller for a block (the MQTT link's).
        blobs: where broadcast blocks arrive.
        local: finds a file this device holds by sha256 (``None``: always fetch).
        progress: hears ``(file, bytes_so_far, total)``.
        stop: set when the agent stops: a download gives up at once.
    """
    downloads = config.state_dir / "downloads"
    fetcher: ChunkFetcher | HttpFetcher
    if config.repository_url:  # bundles over HTTP(S); no broadcast
        repository = repository_base(config.repository_url)
        fetcher = HttpFetcher(repository, ca_file=config.repository_ca,
                              timeout_s=config.fetch_timeout_s,
                              deadline_s=config.download_deadline_s,
                              max_bytes_per_s=config.max_download_bytes_per_s,
                              progress=progress, stop=stop, local=local)
    else:
        repository = "mqtt:/"
        fetcher = ChunkFetcher(request_chunk, chunk_bytes=config.chunk_bytes,
                               timeout_s=config.fetch_timeout_s,
                               deadline_s=config.download_deadline_s,
                               max_bytes_per_s=config.max_download_bytes_per_s,
                               progress=progress, stop=stop, blobs=blobs,
                               broadcast_wait_s=config.broadcast_wait_s, local=local)
    fetcher.temp_dir = downloads
    return BundleUpdater(tuf_dir, downloads, fetcher, repository_url=repository), fetcher
