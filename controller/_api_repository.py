"""``GET /v1/repository/{file}``: the TUF repository over HTTP, read-only, for devices
whose ``agent.toml`` names a ``repository_url``.

Off unless ``EDGEFLEET_SERVE_REPOSITORY`` is true (the route then answers 404 like any
missing file). When on it needs no token: devices hold none, and what it serves is the
same signed metadata and targets every device verifies with TUF (docs/security.md).
Only ``metadata/…`` and ``targets/…`` are served, read through
``TrustRepository.read`` in blocks, so a model of any size streams.

Cache headers follow consistent snapshots: every file but ``metadata/timestamp.json``
is immutable by name, so caches may keep it for good; the timestamp and every 404 (a
device probing for the next root version) must be asked for again each time.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI, HTTPException, Path, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from edgefleet.contract import NotFoundError

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["add_repository_route", "cache_control"]

BLOCK_BYTES = 256 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_SERVED = re.compile(r"^(metadata|targets)/[^/]")


def cache_control(file: str) -> str:
    """What caches may do with a repository file: keep it for good, except the one
    whose content changes under the same name (``metadata/timestamp.json``)."""
    return REVALIDATE if file == "metadata/timestamp.json" else IMMUTABLE


def _media_type(file: str) -> str:
    return "application/json" if file.startswith("metadata/") else "application/octet-stream"


def add_repository_route(app: FastAPI, ctl: "FleetController") -> None:
    """Add ``GET /v1/repository/{file}`` to the controller's app."""

    def missing(file: str) -> HTTPException:
        return HTTPException(404, f"no repository file {file!r}",
                             headers={"Cache-Control": REVALIDATE})

    @app.get("/v1/repository/{file:path}", response_class=Response, responses={
        200: {"description": "The file's bytes (TUF metadata as JSON, targets as bytes)",
              "content": {"application/json": {}, "application/octet-stream": {}}},
        404: {"description": "No such file, or the controller does not serve its "
                             "repository (EDGEFLEET_SERVE_REPOSITORY)"}})
    async def repository_file(
            file: Annotated[str, Path(description="metadata/<name> or targets/<path>, as "
                                                  "python-tuf asks for it")]) -> Response:
        """A file of the TUF repository, for devices that fetch over HTTP. No token:
        everything here is signed and verified by the device (docs/security.md)."""
        if not ctl.settings.serve_repository:
            raise HTTPException(404, "this controller does not serve its repository over "
                                     "HTTP (EDGEFLEET_SERVE_REPOSITORY is off)")
        if not _SERVED.match(file) or ".." in file.split("/"):
            raise missing(file)
        repo = ctl.repo
        try:
            first, total = await run_in_threadpool(repo.read, file, 0, BLOCK_BYTES)
        except (NotFoundError, ValueError):
            raise missing(file) from None
        headers = {"Cache-Control": cache_control(file), "Content-Length": str(total)}
        if len(first) >= total:
            return Response(first, media_type=_media_type(file), headers=headers)

        def rest() -> Iterator[bytes]:  # run in a worker thread by Starlette
            yield first
            offset = len(first)
            while offset < total:
                data, _ = repo.read(file, offset, min(BLOCK_BYTES, total - offset))
                if not data:  # shorter than when it started: the client sees it cut
                    return
                offset += len(data)
                yield data

        return StreamingResponse(rest(), media_type=_media_type(file), headers=headers)
