"""The browser fixture drives a real Chromium: a click runs the page's script, waits are
event-driven, a timeout says what the page showed, and screenshots are real PNGs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _browser import screenshot, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

PAGE = b"""<!doctype html><html><head><title>fixture</title></head><body>
<form id="f"><input id="name" name="name"><button id="go" type="button">Greet</button></form>
<p id="out">waiting</p>
<script>document.getElementById("go").addEventListener("click", () => {
  document.getElementById("out").textContent = "hello " + document.getElementById("name").value;
});</script></body></html>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_real_chromium_runs_the_page_script_and_takes_screenshots(
        browser, page_url, tmp_path, monkeypatch):
    assert browser.capabilities["browserName"] == "chrome"  # what Chromium reports
    assert "HeadlessChrome" in browser.execute_script("return navigator.userAgent")
    browser.get(page_url)
    browser.find_element(By.ID, "name").send_keys("edge")
    browser.find_element(By.ID, "go").click()
    wait_for(browser, ec.text_to_be_present_in_element((By.ID, "out"), "hello edge"))

    with pytest.raises(AssertionError, match=r"(?s)never.*127\.0\.0\.1.*hello edge"):
        wait_for(browser, ec.title_is("other"), timeout=0.3, message="never")

    monkeypatch.delenv("EDGEFLEET_SCREENSHOTS", raising=False)
    assert screenshot(browser, "page") is None
    monkeypatch.setenv("EDGEFLEET_SCREENSHOTS", str(tmp_path / "shots"))
    path = screenshot(browser, "fixture page")
    assert path == tmp_path / "shots" / "fixture_page.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
