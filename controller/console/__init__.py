"""The web console at ``/ui/``: server-rendered pages for fleet operators.

Pages are Jinja templates (autoescaped) with their CSS and a small script shipped in
this package: no CDN, no build step. Signing in turns an API token into a session
cookie (``_session``); every form carries a CSRF token and does what an API route does,
with that route's role from ``auth.ROUTES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..service import FleetController

__all__ = ["add_console", "is_console"]


def is_console(path: str) -> bool:
    """Whether a request path is the console's (its errors are pages, not JSON)."""
    return path == "/ui" or path.startswith("/ui/")


def add_console(app: FastAPI, ctl: FleetController) -> None:
    """Add the console's pages, forms and static files to the controller's app."""
    from ._forms import add_forms
    from ._pages import add_pages
    from ._static import add_static

    add_pages(app, ctl)
    add_forms(app, ctl)
    add_static(app)
