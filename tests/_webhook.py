"""A webhook receiver on 127.0.0.1 (stdlib http.server) and a controller that alerts to it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _support import TOKEN

from edgefleet.controller import FleetController, Settings


class Hook:
    """Collects posted JSON; answers 500 to the first ``failures`` posts."""

    def __init__(self, failures: int = 0) -> None:
        self.posts: list[dict[str, Any]] = []
        self.failures = failures
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.failures > 0:
                    hook.failures -= 1
                    self.send_response(500)
                else:
                    hook.posts.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fired(self, status: str = "firing") -> list[str]:
        return [p["edgefleet"]["key"] for p in list(self.posts)
                if p["edgefleet"]["status"] == status]

    def sent(self, key: str) -> list[dict[str, Any]]:
        return [p["edgefleet"] for p in list(self.posts) if p["edgefleet"]["key"] == key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alerting_controller(tmp_path: Path, broker_url: str, trust_root: Path, hook: Hook,
                        **settings: Any) -> FleetController:
    """A started controller evaluating alerts every 0.2 s, posting to ``hook``."""
    values: dict[str, Any] = {"alert_interval_s": 0.2, "alert_latency_interval_s": 0.2,
                              "alert_offline_after_s": 0.5,
                              "alert_cohort_tags": ["site"], "alert_latency_min_count": 100,
                              "alert_webhook_backoff_s": 0.05, **settings}
    ctl = FleetController(Settings(
        db_url=f"sqlite:///{tmp_path / 'ctl.db'}", broker_url=broker_url,
        keys_dir=trust_root.parent, data_dir=tmp_path / "ctl", admin_token=TOKEN,
        client_id=f"ctl-{tmp_path.name}"[:60], alert_webhook_url=hook.url, **values))
    ctl.start()
    return ctl
