"""The package declares what it imports: in a fresh virtualenv, a bare install's command
says which extra it needs, and the ``agent`` extra alone runs an agent against a real
broker (no controller packages on the device)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet.contract import Birth
from edgefleet.contract.topics import DeviceTopic, device_topic

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("pyproject.toml", "README.md", "edgefleet", "contract", "agent",
          "controller", "optimizer", "simulations", "cli")


def _run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False,
                          cwd=Path(str(args[0])).parent)  # not the checkout: its folders
    # would shadow the installed package


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtualenv with the package installed without any extra."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    source.mkdir()
    for name in SOURCE:  # a copy, so that building leaves nothing in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    env = root / "venv"
    assert _run(sys.executable, "-m", "venv", env).returncode == 0
    bare = _run(env / "bin" / "python", "-m", "pip", "install", "-q",
                "--disable-pip-version-check", source)
    assert bare.returncode == 0, bare.stderr
    return {"bin": env / "bin", "source": source}


def test_a_bare_install_has_numpy_and_its_command_names_the_extra(venv, tmp_path, trust_root):
    assert _run(venv["bin"] / "python", "-c", "import numpy, edgefleet.contract").returncode == 0
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "pkg-0"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'trust_root = "{trust_root}"\nbroker_url = "mqtt://127.0.0.1:9"\n')
    for args in (("--help",), ("agent", "run", "--config", str(config))):
        done = _run(venv["bin"] / "edgefleet", *args)
        assert done.returncode == 1, done
        assert "pip install 'edgefleet[agent]'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_an_installed_package_ships_the_image_recipes(venv):
    """``edgefleet image build`` reads its recipes from the package: an install without a
    checkout holds every recipe file, byte for byte."""
    where = _run(venv["bin"] / "python", "-c",
                 "import edgefleet, pathlib; print(pathlib.Path(edgefleet.__file__).parent)")
    assert where.returncode == 0, where.stderr

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in root.rglob("*") if p.is_file()}

    shipped = files(Path(where.stdout.strip()) / "controller" / "image_recipes")
    assert sorted(shipped) == sorted(files(ROOT / "controller" / "image_recipes"))
    assert shipped == files(ROOT / "controller" / "image_recipes")
    assert {"rpi-os-arm64/recipe.toml", "jetson-l4t/edgefleet-agent.service",
            "common/install-agent.sh"} <= set(shipped)


def test_the_agent_extra_alone_runs_an_agent_against_a_broker(venv, mosquitto, trust_root,
                                                              tmp_path):
    added = _run(venv["bin"] / "python", "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", f"{venv['source']}[agent]")
    assert added.returncode == 0, added.stderr
    helped = _run(venv["bin"] / "edgefleet", "agent", "--help")
    assert helped.returncode == 0 and "run" in helped.stdout, helped
    for controller_side in ("fastapi", "sqlalchemy", "onnx", "edgefleet.controller"):
        absent = _run(venv["bin"] / "python", "-c", f"import {controller_side}")
        assert absent.returncode == 1, f"{controller_side} is installed on a device"

    births: list[bytes] = []
    born = threading.Event()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pkg-test")
    listener.on_message = lambda _c, _u, msg: (births.append(msg.payload), born.set())
    listener.connect("127.0.0.1", mosquitto.port)
    listener.subscribe(device_topic("pkg-1", DeviceTopic.BIRTH), qos=1)
    listener.loop_start()
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "pkg-1"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'trust_root = "{trust_root}"\nbroker_url = "{mosquitto.url}"\n'
                      "api_port = 0\n")
    agent = subprocess.Popen([str(venv["bin"] / "edgefleet"), "agent", "run", "--config",
                              str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert born.wait(60), "the agent never announced itself on the broker"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        listener.loop_stop()
        if agent.poll() is None:
            agent.kill()
        output = agent.communicate(timeout=10)[0].decode()
    birth = Birth.decode(births[0])
    assert birth.agent_version and birth.bd_seq >= 1, output
    assert "onnxruntime:CPU" in " ".join(birth.runtimes), birth.runtimes  # it can serve
