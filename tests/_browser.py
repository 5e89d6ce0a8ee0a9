"""A real headless Chromium, driven through chromedriver, for the web console's tests.

Debian's ``chromium`` and ``chromium-driver`` packages (scripts/test installs them);
``EDGEFLEET_CHROMIUM`` and ``EDGEFLEET_CHROMEDRIVER`` name other binaries. Both paths
are always given to Selenium, so Selenium Manager never downloads anything, and the
browser runs with every feature that phones home turned off. Each test gets its own
profile and chromedriver log under its ``tmp_path``; chromedriver runs in its own process
group, killed at teardown so no browser outlives its test.

``EDGEFLEET_SCREENSHOTS=<folder>`` keeps full-page PNGs: the ones tests take with
``screenshot``, and one of the page a failing test left (named after the test).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

T = TypeVar("T")

INSTALL = "apt-get install chromium chromium-driver"

_FLAGS = ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
          # nothing phones home: no component, safe-browsing, sync or metrics traffic
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--metrics-recording-only", "--disable-default-apps", "--disable-extensions",
          "--disable-client-side-phishing-detection", "--disable-domain-reliability",
          "--no-pings", "--disable-breakpad", "--password-store=basic")


def _executable(env: str, names: tuple[str, ...], fallbacks: tuple[str, ...]) -> str | None:
    chosen = os.environ.get(env)
    if chosen:  # an explicit choice is never replaced by another binary
        return chosen if os.access(chosen, os.X_OK) else None
    found = next((p for p in map(shutil.which, names) if p), None)
    return found or next((p for p in fallbacks if os.access(p, os.X_OK)), None)


def _found() -> tuple[str | None, str | None]:
    browser = _executable("EDGEFLEET_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"),
                          ("/usr/bin/chromium", "/usr/bin/chromium-browser"))
    driver = _executable("EDGEFLEET_CHROMEDRIVER", ("chromedriver",),
                         ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"))
    return browser, driver


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    browser, driver = _found()
    return (browser, driver) if browser and driver else None


def start_browser(tmp_path: Path) -> Chrome:
    """A headless Chromium with a fresh profile in ``tmp_path`` (stop it with ``stop_browser``).

    Raises:
        FileNotFoundError: chromium, chromedriver or selenium is missing (the message says
            what to install).
    """
    chromium, chromedriver = _found()
    if not (chromium and chromedriver):
        missing = []
        for name, var, path in (("chromium", "EDGEFLEET_CHROMIUM", chromium),
                                ("chromedriver", "EDGEFLEET_CHROMEDRIVER", chromedriver)):
            if not path:
                chosen = os.environ.get(var)
                missing.append(f"{name} ({var}={chosen} is not executable)" if chosen else name)
        what = " and ".join(missing)
        raise FileNotFoundError(f"{what} not found: install them (Debian/Ubuntu: {INSTALL}), "
                                "or name them with EDGEFLEET_CHROMIUM and "
                                "EDGEFLEET_CHROMEDRIVER; scripts/test installs them")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise FileNotFoundError("selenium is not installed: pip install -e '.[dev]'") from exc
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in _FLAGS:
        options.add_argument(flag)
    if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root
        options.add_argument("--no-sandbox")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # its own HOME, or Chromium writes crash-report folders and dconf files in the real one
    home = tmp_path / "chromium-home"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "XDG_DATA_HOME": str(home / ".local/share")}
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"),
                      env=env, popen_kw={"start_new_session": True})
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except BaseException:
        _kill_group(service)
        raise
    driver.set_page_load_timeout(30)
    return driver


def _live_members(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies, left for init to reap, don't)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


def _kill_group(service: Any) -> None:
    """SIGKILL chromedriver's process group: chromedriver and every browser process."""
    process = getattr(service, "process", None)
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    deadline = time.monotonic() + 5
    while _live_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_browser(driver: Chrome) -> None:
    """Quit the browser; whatever is left of it (a hung quit, a crash) is killed."""
    try:
        with contextlib.suppress(Exception):  # the processes are killed just below
            driver.quit()
    finally:
        _kill_group(driver.service)


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Chrome]:
    """A real headless Chromium (selenium ``Chrome``); a missing browser fails the test."""
    try:
        driver = start_browser(tmp_path)
    except FileNotFoundError as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:  # a failure, not a skip: CI installs the browser, so missing means broken
        pytest.fail(missing, pytrace=False)
    failed = request.session.testsfailed
    try:
        yield driver
    finally:
        if request.session.testsfailed > failed:
            with contextlib.suppress(Exception):  # a dead browser has nothing to show
                screenshot(driver, f"FAILED-{request.node.nodeid}")
        stop_browser(driver)


def screenshot(driver: Chrome, name: str) -> Path | None:
    """With ``EDGEFLEET_SCREENSHOTS`` set, the whole page as ``<folder>/<name>.png``."""
    folder = os.environ.get("EDGEFLEET_SCREENSHOTS")
    if not folder:
        return None
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path = Path(folder) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def page_text(driver: Chrome, limit: int = 2000) -> str:
    """The visible text of the page (at most ``limit`` characters), for failure messages."""
    try:
        text = driver.execute_script("return document.body ? document.body.innerText : ''")
    except Exception as exc:
        return f"<page text unavailable: {exc.__class__.__name__}>"
    return str(text)[:limit]


def wait_for(driver: Chrome, condition: Callable[[Chrome], T], timeout: float = 20,
             message: str = "") -> T:
    """``condition(driver)``'s first truthy value, polled (WebDriverWait) until ``timeout``.

    Raises:
        AssertionError: on timeout, with the current URL and what the page shows.
    """
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    __tracebackhide__ = True
    try:
        # a page that refreshes itself may replace an element between finding and
        # reading it: that poll counts as not yet, like an element not there yet
        return WebDriverWait(driver, timeout,
                             ignored_exceptions=(StaleElementReferenceException,)
                             ).until(condition)
    except TimeoutException:
        # expected_conditions' predicates are all "_predicate": name the factory instead
        name = getattr(condition, "__qualname__", "").split(".<locals>")[0]
        what = message or name or repr(condition)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                             f"url: {driver.current_url}\npage text:\n{page_text(driver)}"
                             ) from None
