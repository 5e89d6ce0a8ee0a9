"""A thin HTTP client for the controller API, used by the admin commands."""

from __future__ import annotations

import os
from typing import Any

from ._output import fail

__all__ = ["ApiClient"]


class ApiClient:
    """Calls the controller; turns HTTP errors into a one-line message and exit code 1.

    Args:
        url: the controller's base URL (``EDGEFLEET_URL``).
        token: the bearer token (``EDGEFLEET_TOKEN``).
    """

    def __init__(self, url: str | None, token: str | None, timeout_s: float = 300.0) -> None:
        import httpx

        self.url = url or os.environ.get("EDGEFLEET_URL", "http://127.0.0.1:8080")
        token = token or os.environ.get("EDGEFLEET_TOKEN", "")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the controller at {self.url}: {exc}")
        if resp.status_code >= 400:
            reason = None
            try:
                body = resp.json()
                detail = body.get("detail", resp.text)
                reason = body.get("reason")
            except (ValueError, AttributeError):
                detail = resp.text
            fail(f"{method} {path} → {resp.status_code}: {detail}", status=resp.status_code,
                 reason=reason if isinstance(reason, str) else None)
        return resp.json()
