"""The shared contract and the agent type-check clean with mypy's strict flags; the
controller and the optimizer as configured.

``scripts/typecheck.py`` runs mypy on the packages under their installed names with
pyproject.toml's configuration, which holds ``edgefleet.contract`` and
``edgefleet.agent`` to what ``--strict`` turns on. A failure lists mypy's errors, with
the paths of the source files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "typecheck.py"


@pytest.mark.parametrize("mypy_args", [[], ["--strict"]],
                         ids=["as-configured", "with-strict-for-every-module"])
def test_contract_and_agent_pass_mypy_strict(mypy_args):
    proc = subprocess.run([sys.executable, str(SCRIPT), "contract", "agent", "--", *mypy_args],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        assert "Success" in proc.stdout, proc.stdout
        return
    command = " ".join(["python scripts/typecheck.py", *(["--", *mypy_args] if mypy_args else [])])
    listing = "\n".join(proc.stdout.splitlines() + proc.stderr.splitlines())
    pytest.fail(f"contract/ and agent/ do not type-check ({command}):\n{listing}", pytrace=False)


def test_the_controller_and_optimizer_type_check_as_configured():
    """Not strict yet, but clean: a new error in them fails here, not in a later review."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "controller", "optimizer"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        listing = "\n".join(proc.stdout.splitlines() + proc.stderr.splitlines())
        pytest.fail(f"controller/ or optimizer/ do not type-check "
                    f"(python scripts/typecheck.py controller optimizer):\n{listing}",
                    pytrace=False)
    assert "Success" in proc.stdout, proc.stdout
