"""The console's stylesheet and script, served from this package (no CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

__all__ = ["add_static"]

_TYPES = {"console.css": "text/css; charset=utf-8",
          "console.js": "text/javascript; charset=utf-8"}


def add_static(app: FastAPI) -> None:
    files = {name: (resources.files(__package__) / "static" / name).read_bytes()
             for name in _TYPES}

    @app.get("/ui/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(files[name], media_type=_TYPES[name],
                        headers={"Cache-Control": "public, max-age=300",
                                 "X-Content-Type-Options": "nosniff"})
