"""The controller's OpenAPI spec tells the truth: the schemathesis CLI, pointed at a real
controller served by uvicorn on loopback, generates requests for every operation from
the spec itself and runs every check it has (``--checks all``): no server error, a status
the spec lists for the operation, content type, headers and bodies that fit the schema,
authentication the spec asks for enforced, negative data refused, valid data accepted,
``Allow`` listing what a path serves. Bounded: a fixed number of examples per operation
and a fixed seed, about a minute and a half on two cores.

``tests/schemathesis.toml`` says which statuses count as accepting valid data: never a
5xx; and a 422 only where the schema cannot say what is valid (an uploaded file must be
a loadable model; a rollout's waves must increase and end at 100)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from _support import TOKEN, register_digits
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.controller._api_telemetry import SELECTOR_PATTERN, parse_selector
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer

EXAMPLES = 25
SEED = os.environ.get("EDGEFLEET_SCHEMATHESIS_SEED", "1")  # another seed, another sample
CONFIG = Path(__file__).with_name("schemathesis.toml")
# what a registered model lets the model routes reach: real data, not only 404s
REAL_MODEL = """
[[operations]]
include-name = ["GET /v1/models/{name}/{version}", "GET /v1/models/{name}/{version}/variants"]
parameters = { name = "digits", version = 1 }
"""


def test_schemathesis_checks_all_against_a_served_controller(controller, tmp_path):
    register_digits(controller)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + REAL_MODEL)
    server = ApiServer(create_app(controller))
    server.start()
    try:
        run = subprocess.run(
            [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
             "--config-file", str(config), "--no-color", "run",
             f"{server.url}/openapi.json", "--checks", "all",
             "--header", f"Authorization: Bearer {TOKEN}",
             "--max-examples", str(EXAMPLES), "--seed", SEED, "--workers", "1",
             "--request-timeout", "30", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        server.stop()
    out = run.stdout + run.stderr
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 30, out[-3000:]
    assert re.search(r"(\d+) generated, \1 passed", out), out[-6000:]
    assert run.returncode == 0, out[-6000:]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab=, \t\n\r\x1c\u00e9")), max_size=12))
def test_the_selector_pattern_in_the_spec_accepts_what_the_parser_accepts(text):
    try:
        parse_selector(text)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == bool(re.search(SELECTOR_PATTERN, text))
