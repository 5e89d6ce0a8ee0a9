"""The web console's devices list and overview with a large fleet in the store.

A real controller without a broker (SQLite store, as a controller on one host runs it),
its store filled with ``N`` devices (full: 10,000) of mixed status, model version,
hardware class and tags, and the console signed into with the admin token through
FastAPI's ``TestClient`` (in process: the wall time of a request is the server's time,
sign-in check, SQL and template, plus a negligible in-memory transport). After 3
warm-up calls, the median of 15 calls (5 at the tiny size) of each of:

* ``/ui/devices``, the first page of the unfiltered list, and
  ``/ui/devices?status=online&class=rpi5&sort=last_seen&desc=1&page=20``, filtered,
  sorted and deep (a smaller page at sizes where page 20 does not exist): one ``COUNT``
  and one page of 50 rows in SQL (plus the fleet counts, for the class filter);
* ``/ui/``, the overview: the fleet counts (``GROUP BY`` status, model version and
  hardware class), running deployments and open alerts.

Each page is checked to show the data (the matching totals, the ids expected on the
page) so the time is that of a real answer. Rows: ``console.devices`` (the slower of
the two devices URLs) and ``console.overview``; baseline: the same question through the
JSON API, ``GET /v1/devices`` with the admin token (the whole list). Target: ≤ 200 ms.
The JSON also keeps the store's part of each page timed without HTTP (``store_ms``) and
``GET /healthz`` as the in-process HTTP floor.
"""

from __future__ import annotations

import functools
import math
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import make_result

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 500, "small": 2_000, "medium": 5_000, "large": 50_000, "full": 10_000}
TARGET_MS = 200.0
WARMUP = 3
PAGE_SIZE = 50  # the console's page
DEEP_PAGE = 20
TOKEN = "bench-console-admin-token"
CLASSES = ("rpi4", "rpi5", "jetson-orin", "x86")
SITES = tuple(f"site-{i:02d}" for i in range(12))
VERSIONS = (1, 2, 3, 4)
MODEL = "digits"


def _ref(version: int) -> dict[str, Any]:
    """A model as a device's birth reports it (``ModelRef.to_dict()``)."""
    return {"name": MODEL, "version": version, "sha256": f"{version:064x}"}


def _devices(n: int, now: float) -> list[dict[str, Any]]:
    """``n`` device rows: ~70 % online, 1 % never seen, versions 1–4, four classes."""
    rng = random.Random(11)
    rows = []
    for i in range(n):
        online = rng.random() < 0.7
        never = not online and rng.random() < 0.03
        version = rng.choice(VERSIONS)
        rows.append({
            "id": f"dev-{i:05d}", "online": online, "bd_seq": 1,
            # distinct times, so the order by last seen is one order
            "last_seen": None if never else now - (rng.uniform(0, 120) if online
                                                   else rng.uniform(600, 30 * 86400)) - i * 1e-6,
            "agent_version": rng.choice(("0.9.0", "0.9.1", "1.0.0")),
            "active": None if never else _ref(version),
            "last_good": None if never or version == 1 else _ref(version - 1),
            "hw": {"class": CLASSES[i % len(CLASSES)]},
            "tags": {"site": rng.choice(SITES), "tier": "canary" if i % 20 == 0 else "prod"}})
    return rows


def _median_ms(call: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """The median wall time of ``rounds`` calls after the warm-up, and the last answer."""
    answer = None
    for _ in range(WARMUP):
        answer = call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        answer = call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), answer


def _sign_in(client: Any) -> None:
    """Sign in to the console as the bootstrap admin (the client keeps the cookie).

    Raises:
        AssertionError: the sign-in form or the sign-in failed.
    """
    form = client.get("/ui/login")
    assert form.status_code == 200, form.text
    found = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert found, "no nonce in the sign-in form"
    done = client.post("/ui/login", data={"token": TOKEN, "nonce": found.group(1),
                                          "next": "/ui/"}, follow_redirects=False)
    assert done.status_code == 303, (done.status_code, done.text[:500])


def _check_page(resp: Any, what: str, *needles: str) -> None:
    """Raises: AssertionError when the page is not a 200 showing every needle."""
    assert resp.status_code == 200, (what, resp.status_code, resp.text[:500])
    missing = [n for n in needles if n not in resp.text]
    assert not missing, f"{what} does not show {missing[:3]} ({len(missing)} missing)"


def run(size: str = "full") -> list[dict[str, Any]]:
    """Raises: ValueError for an unknown size; AssertionError when a page is wrong."""
    from fastapi.testclient import TestClient

    from edgefleet.controller import FleetController, Settings, init_keys
    from edgefleet.controller._console_store import DeviceQuery
    from edgefleet.controller._tables import devices as devices_table
    from edgefleet.controller.api import create_app

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    n = SIZES[size]
    rounds = 5 if size == "tiny" else 15
    now = time.time()
    rows = _devices(n, now)
    matching = sorted((d for d in rows if d["online"] and d["hw"]["class"] == "rpi5"),
                      key=lambda d: (-d["last_seen"], d["id"]))
    deep = min(DEEP_PAGE, max(1, math.ceil(len(matching) / PAGE_SIZE)))
    on_deep = [d["id"] for d in matching[(deep - 1) * PAGE_SIZE:deep * PAGE_SIZE]]
    urls = {"devices": "/ui/devices",
            "devices_filtered": "/ui/devices?status=online&class=rpi5&sort=last_seen&desc=1"
                                f"&page={deep}",
            "overview": "/ui/"}
    online = sum(d["online"] for d in rows)
    ms: dict[str, float] = {}
    store_ms: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-console-") as tmp:
        root = Path(tmp)
        trust_root = init_keys(root / "keys")
        ctl = FleetController(Settings(db_url=f"sqlite:///{root / 'ctl.db'}",
                                       keys_dir=trust_root.parent, data_dir=root / "ctl",
                                       admin_token=TOKEN))
        try:
            start = time.perf_counter()
            with ctl.store.engine.begin() as c:
                c.execute(devices_table.insert(), rows)
            fill_s = time.perf_counter() - start
            with TestClient(create_app(ctl)) as client:
                _sign_in(client)
                for name, url in urls.items():
                    ms[name], resp = _median_ms(functools.partial(client.get, url), rounds)
                    if name == "devices":
                        _check_page(resp, url, f"{n:,} matching", f"<td>{MODEL}</td>",
                                    *(f">{d['id']}</a>" for d in rows[:PAGE_SIZE]))
                    elif name == "devices_filtered":
                        _check_page(resp, url, f"{len(matching):,} matching",
                                    *(f">{i}</a>" for i in on_deep))
                    else:
                        _check_page(resp, url, f'id="online">{online:,}</span>',
                                    f'id="offline">{n - online:,}</span>',
                                    *(f"?model={MODEL}&amp;version={v}\">v{v}</a>"
                                      for v in VERSIONS))
                auth = {"Authorization": f"Bearer {TOKEN}"}
                ms["api"], resp = _median_ms(lambda: client.get("/v1/devices", headers=auth),
                                             rounds)
                assert resp.status_code == 200, resp.text[:500]
                assert len(resp.json()) == n, "the JSON API did not list every device"
                ms["healthz"], _ = _median_ms(lambda: client.get("/healthz"), rounds)
            # the store's part of the same pages, without HTTP, session and template
            console = ctl.store.console
            store_ms["device_page"], _ = _median_ms(
                lambda: console.device_page(DeviceQuery(limit=PAGE_SIZE), now), rounds)
            store_ms["device_page_filtered"], _ = _median_ms(
                lambda: console.device_page(DeviceQuery(
                    status="online", hw_class="rpi5", sort="last_seen", descending=True,
                    offset=(deep - 1) * PAGE_SIZE, limit=PAGE_SIZE), now), rounds)
            store_ms["fleet_counts"], _ = _median_ms(console.fleet_counts, rounds)
            store_ms["list_devices"], _ = _median_ms(ctl.store.list_devices, rounds)
        finally:
            ctl.store.engine.dispose()
    worst = max(("devices", "devices_filtered"), key=lambda k: ms[k])
    base = ms["api"]
    timings = {k: round(v, 2) for k, v in ms.items()}
    store = {k: round(v, 2) for k, v in store_ms.items()}
    common: dict[str, Any] = {
        "devices_in_store": n, "rounds": rounds, "warmup": WARMUP, "urls": urls,
        "median_ms": timings, "store_ms": store, "fill_s": round(fill_s, 2),
        "filtered_matching": len(matching)}
    measured = (f"{n:,} devices; medians of {rounds}: /ui/devices {ms['devices']:.1f} ms, "
                f"filtered page {deep} {ms['devices_filtered']:.1f} ms, /ui/ "
                f"{ms['overview']:.1f} ms, /v1/devices {base:.1f} ms, /healthz "
                f"{ms['healthz']:.1f} ms; in the store: "
                f"device_page {store_ms['device_page']:.1f} ms (filtered "
                f"{store_ms['device_page_filtered']:.1f} ms), fleet_counts "
                f"{store_ms['fleet_counts']:.1f} ms, list_devices "
                f"{store_ms['list_devices']:.1f} ms")
    return [
        make_result(
            "console.devices", figure=round(ms[worst], 2), unit="ms", baseline=round(base, 2),
            ratio=round(ms[worst] / base, 4), target=f"<= {TARGET_MS:g} ms",
            passed=ms[worst] <= TARGET_MS, target_value=TARGET_MS, target_op="<=",
            why=("a devices page is one COUNT and one page of 50 rows in SQL, plus the "
                 "hardware classes' SELECT DISTINCT for the class filter; the figure is "
                 f"{worst.replace('_', ' ')}. " + measured),
            slower_url=urls[worst], **common),
        make_result(
            "console.overview", figure=round(ms["overview"], 2), unit="ms",
            baseline=round(base, 2), ratio=round(ms["overview"] / base, 4),
            target=f"<= {TARGET_MS:g} ms", passed=ms["overview"] <= TARGET_MS,
            target_value=TARGET_MS, target_op="<=",
            why=("the overview is the fleet counts (GROUP BY status, model version and "
                 "hardware class over JSON columns), running deployments and open alerts. "
                 + measured),
            **common),
    ]
