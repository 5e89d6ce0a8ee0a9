"""Device image overlays: built twice, unpacked, checked by systemd's own tools, first boot run."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from _support import ASSETS, wait_devices_known
from typer.testing import CliRunner

from edgefleet import __version__
from edgefleet.cli import app
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.controller.images import (
    RECIPES,
    TARGETS,
    ImageBuildError,
    build_overlay,
    builtin_recipe,
    load_recipe,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "claim-0123456789abcdef-secret"
URL = "https://controller.example:8443"
HARDENING = ("User=edgefleet", "StateDirectory=edgefleet", "ProtectSystem=strict",
             "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
             "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet=",
             "LockPersonality=yes", "SystemCallFilter=@system-service", "Restart=on-failure",
             "Type=notify", "WatchdogSec=30", "NotifyAccess=main", "StartLimitBurst=5",
             "ExecStart=/opt/edgefleet/bin/edgefleet agent run --config "
             "/etc/edgefleet/agent.toml")
PER_TARGET = {
    "rpi-os-arm64": ("MemoryDenyWriteExecute=yes", "PrivateDevices=yes", "ProtectClock=yes"),
    "jetson-l4t": ("MemoryDenyWriteExecute=no", "PrivateDevices=no", "ProtectClock=no",
                   "SupplementaryGroups=video"),
}
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed here")


def build(target: str, out: Path, trust_root: Path, **kwargs):
    kwargs = {"agent_version": "0.1.0", "controller_url": URL, "claim_token": TOKEN, **kwargs}
    return build_overlay(builtin_recipe(target), out=out, trust_root=trust_root, **kwargs)


def unpack(overlay: Path, root: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(overlay) as tar:
        tar.extractall(root, filter="data", numeric_owner=True)
        return {m.name: m for m in tar.getmembers()}


def unit_lines(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def fake_wheel(directory: Path, version: str = "0.1.0") -> Path:
    path = directory / f"edgefleet-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"edgefleet-{version}.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: edgefleet\nVersion: {version}\n")
    return path


@pytest.mark.parametrize("target", TARGETS)
def test_same_inputs_give_the_same_overlay_bytes(tmp_path, trust_root, target):
    first = build(target, tmp_path / "a.tar.gz", trust_root, tags={"site": "lab", "row": "2"})
    second = build(target, tmp_path / "b.tar.gz", trust_root, tags={"row": "2", "site": "lab"})
    assert first.sha256 == second.sha256
    assert hashlib.sha256((tmp_path / "b.tar.gz").read_bytes()).hexdigest() == second.sha256
    other = build(target, tmp_path / "c.tar.gz", trust_root, tags={"site": "lab2", "row": "2"})
    assert other.sha256 != first.sha256
    assert (tmp_path / "a.tar.gz").stat().st_mode & 0o777 == 0o600  # it holds the token


@pytest.mark.parametrize("target", TARGETS)
def test_overlay_holds_config_trust_root_token_and_install_step(tmp_path, trust_root, target):
    build(target, tmp_path / "o.tar.gz", trust_root, tags={"site": "lab"},
          broker_url="mqtt://broker.lan:1883")
    root = tmp_path / "root"
    members = unpack(tmp_path / "o.tar.gz", root)

    owners = {name: (oct(m.mode), m.uname, m.gname, m.uid, m.mtime)
              for name, m in members.items() if name.startswith("etc/edgefleet/")}
    assert owners == {
        "etc/edgefleet/agent.toml": ("0o640", "root", "edgefleet", 0, 0),
        "etc/edgefleet/root.json": ("0o644", "root", "root", 0, 0),
        "etc/edgefleet/claim-token": ("0o600", "edgefleet", "edgefleet", 0, 0)}
    assert members["usr/lib/edgefleet/install-agent.sh"].mode == 0o755
    assert list(members) == sorted(members)
    assert not [n for n in members if n in ("etc", "usr", "usr/lib", "etc/systemd/system")]

    assert tomllib.loads((root / "etc/edgefleet/agent.toml").read_text()) == {
        "state_dir": "/var/lib/edgefleet", "trust_root": "/etc/edgefleet/root.json",
        "provision_url": URL, "claim_token_file": "/etc/edgefleet/claim-token",
        "hardware_class": builtin_recipe(target).hardware_class, "api_host": "127.0.0.1",
        "api_port": 8470, "broker_url": "mqtt://broker.lan:1883", "tags": {"site": "lab"}}
    assert (root / "etc/edgefleet/root.json").read_bytes() == trust_root.read_bytes()
    assert (root / "etc/edgefleet/claim-token").read_text() == TOKEN

    script = (root / "usr/lib/edgefleet/install-agent.sh").read_text()
    extras = ",".join(builtin_recipe(target).extras)
    assert f"REQUIREMENT='edgefleet[{extras}]==0.1.0'" in script
    assert extras == ("agent,tflite" if target == "rpi-os-arm64" else "agent")
    assert not re.search(r"@[A-Z_]+@", script)
    install = unit_lines(root / "usr/lib/systemd/system/edgefleet-install.service")
    assert {"Type=oneshot", "ConditionPathExists=!/opt/edgefleet/.installed",
            "ExecStart=/usr/lib/edgefleet/install-agent.sh"} <= install
    sysusers = (root / "usr/lib/sysusers.d/edgefleet.conf").read_text()
    assert 'u edgefleet - "edgefleet agent" /var/lib/edgefleet /usr/sbin/nologin' in sysusers
    for unit in ("edgefleet-agent.service", "edgefleet-install.service"):
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        assert link.is_symlink()
        assert link.resolve() == (root / "usr/lib/systemd/system" / unit).resolve()


@pytest.mark.parametrize("target", TARGETS)
def test_agent_unit_is_hardened_for_its_target(tmp_path, trust_root, target):
    build(target, tmp_path / "o.tar", trust_root)
    unpack(tmp_path / "o.tar", tmp_path / "root")
    lines = unit_lines(tmp_path / "root/usr/lib/systemd/system/edgefleet-agent.service")
    assert set(HARDENING) | set(PER_TARGET[target]) <= lines
    assert not [line for line in lines if line.startswith("DeviceAllow=")]


def test_both_targets_build_from_the_one_copy_of_their_recipe_files():
    """Each built-in recipe is read from the package's recipe files: its own directory,
    then ``common/``. The Jetson unit is a file of its own, not an edit of the Pi one."""
    assert sorted(p.relative_to(RECIPES).as_posix()
                  for p in RECIPES.rglob("*") if p.is_file()) == [
        "common/edgefleet-install.service", "common/edgefleet.sysusers",
        "common/edgefleet.tmpfiles", "common/install-agent.sh",
        "jetson-l4t/edgefleet-agent.service", "jetson-l4t/recipe.toml",
        "rpi-os-arm64/edgefleet-agent.service", "rpi-os-arm64/recipe.toml"]
    for target in TARGETS:
        recipe = builtin_recipe(target)
        assert recipe.target == target and recipe.source == "builtin"
        for name, text in recipe.files.items():
            own = RECIPES / target / name
            assert text == (own if own.is_file() else RECIPES / "common" / name).read_text()
        loaded = load_recipe(RECIPES / target)
        assert dataclasses.replace(loaded, source="builtin") == recipe


def test_no_second_copy_of_the_recipes_in_the_source():
    """No recipe file outside the package's recipe folder, and no template text in code."""
    markers = ("SystemCallFilter=@system-service", "ConditionPathExists=!/opt/edgefleet",
               'u edgefleet - "edgefleet agent"', "REQUIREMENT=@REQUIREMENT@")
    home, copies = REPO / "controller" / "image_recipes", []
    for folder in ("agent", "cli", "contract", "controller", "optimizer", "simulations",
                   "firmware-images"):
        for path in sorted((REPO / folder).rglob("*")):
            if (not path.is_file() or home in path.parents
                    or path.suffix not in (".py", ".service", ".toml", ".sh", ".sysusers",
                                           ".tmpfiles")):
                continue
            if path.name == "recipe.toml" or any(m in path.read_text() for m in markers):
                copies.append(path.relative_to(REPO).as_posix())
    assert copies == []


@pytest.mark.parametrize("extras", ['["tflite"]', '["agent", "controller"]', '"agent"'])
def test_a_recipe_must_install_the_agent_and_only_device_extras(tmp_path, extras):
    shutil.copytree(RECIPES, tmp_path / "fw")
    recipe = tmp_path / "fw" / "rpi-os-arm64" / "recipe.toml"
    text = recipe.read_text().replace('extras = ["agent", "tflite"]', f"extras = {extras}")
    recipe.write_text(text)
    with pytest.raises(ImageBuildError, match="extras must list agent"):
        load_recipe(recipe.parent)


@needs_systemd_analyze
@pytest.mark.parametrize("target", TARGETS)
def test_units_pass_systemd_analyze_verify(tmp_path, trust_root, target):
    build(target, tmp_path / "o.tar", trust_root)
    root = tmp_path / "root"
    unpack(tmp_path / "o.tar", root)
    # ExecStart must exist: point it at a stand-in of what the first boot installs.
    agent_bin = root / "opt/edgefleet/bin/edgefleet"
    agent_bin.parent.mkdir(parents=True)
    agent_bin.write_text("#!/bin/sh\n")
    agent_bin.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for unit in ("edgefleet-agent.service", "edgefleet-install.service"):
        text = (root / "usr/lib/systemd/system" / unit).read_text()
        text = text.replace("=/opt/edgefleet/bin/", f"={root}/opt/edgefleet/bin/").replace(
            "=/usr/lib/edgefleet/", f"={root}/usr/lib/edgefleet/")
        (units / unit).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(units / "edgefleet-agent.service"),
                           str(units / "edgefleet-install.service")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # unknown keys and bad values are only warnings

    security = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                               str(units / "edgefleet-agent.service")],
                              capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    if exposure is None:  # systemd < 250 has no --offline
        pytest.skip(f"systemd-analyze security --offline unavailable: {security.stderr[:200]}")
    limit = {"rpi-os-arm64": 1.8, "jetson-l4t": 2.3}[target]  # 1.4 and 1.9 with systemd 252
    assert float(exposure.group(1)) <= limit, security.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-sysusers")
                    or not shutil.which("systemd-tmpfiles"),
                    reason="needs root and systemd-sysusers/systemd-tmpfiles to chown files")
def test_sysusers_and_tmpfiles_give_the_token_to_the_agent_user(tmp_path, trust_root):
    build("rpi-os-arm64", tmp_path / "o.tar", trust_root)
    root = tmp_path / "root"
    unpack(tmp_path / "o.tar", root)
    subprocess.run(["systemd-sysusers", f"--root={root}",
                    str(root / "usr/lib/sysusers.d/edgefleet.conf")], check=True, timeout=60)
    passwd = {line.split(":")[0]: line.split(":")
              for line in (root / "etc/passwd").read_text().splitlines()}
    _, _, uid, gid, _, home, shell = passwd["edgefleet"]
    assert (home, shell) == ("/var/lib/edgefleet", "/usr/sbin/nologin")
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                    str(root / "usr/lib/tmpfiles.d/edgefleet.conf")], check=True, timeout=60)
    token, config = (root / "etc/edgefleet/claim-token").stat(), \
        (root / "etc/edgefleet/agent.toml").stat()
    assert (token.st_uid, token.st_gid, token.st_mode & 0o777) == (int(uid), int(gid), 0o600)
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, int(gid), 0o640)


def _stubs(directory: Path, *, python_ok: bool = True) -> None:
    """Stand-ins for what the first-boot script calls, each logging its arguments."""
    directory.mkdir()
    for name in ("systemd-sysusers", "systemd-tmpfiles", "systemctl", "apt-get"):
        (directory / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n')
    check = "exit 0" if python_ok else "exit 1"
    (directory / "python3").write_text(f"""#!/bin/sh
echo "python $*" >> "$LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    printf '#!/bin/sh\\necho "edgefleet $*" >> "$LOG"\\n' > "$3/bin/edgefleet"
    chmod +x "$3/bin/edgefleet"; exit 0
fi
case "$*" in *__version__*) echo 0.1.0; exit 0;; *ensurepip*) {check};; esac
""")
    for path in directory.iterdir():
        path.chmod(0o755)


def test_first_boot_install_runs_once_and_starts_the_agent(tmp_path, trust_root):
    build("rpi-os-arm64", tmp_path / "o.tar", trust_root, agent_version=None,
          wheel=fake_wheel(tmp_path))
    root = tmp_path / "root"
    unpack(tmp_path / "o.tar", root)
    _stubs(tmp_path / "bin")
    prefix, log = tmp_path / "opt-edgefleet", tmp_path / "calls.log"
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "LOG": str(log),
           "EDGEFLEET_PREFIX": str(prefix)}
    script = str(root / "usr/lib/edgefleet/install-agent.sh")

    first = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    calls = log.read_text().splitlines()
    wheel = "/usr/lib/edgefleet/wheels/edgefleet-0.1.0-py3-none-any.whl[agent,tflite]"
    assert calls[:2] == ["systemd-sysusers /usr/lib/sysusers.d/edgefleet.conf",
                         "systemd-tmpfiles --create /usr/lib/tmpfiles.d/edgefleet.conf"]
    assert f"python -m venv {prefix}" in calls
    assert [c for c in calls if "pip install" in c][0].endswith(f"--prefer-binary {wheel}")
    assert calls[-1] == "systemctl --no-block start edgefleet-agent.service"
    assert not [c for c in calls if c.startswith("apt-get")]
    assert (prefix / ".installed").read_text().strip() == "0.1.0"

    again = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already installed" in again.stdout
    assert log.read_text().splitlines() == calls  # nothing ran a second time


def test_first_boot_install_without_a_usable_python_fails_and_leaves_no_marker(
        tmp_path, trust_root):
    build("rpi-os-arm64", tmp_path / "o.tar", trust_root)
    root = tmp_path / "root"
    unpack(tmp_path / "o.tar", root)
    _stubs(tmp_path / "bin", python_ok=False)
    prefix, log = tmp_path / "opt-edgefleet", tmp_path / "calls.log"
    proc = subprocess.run(["sh", str(root / "usr/lib/edgefleet/install-agent.sh")],
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "LOG": str(log),
                               "EDGEFLEET_PREFIX": str(prefix)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "needs Python >= 3.11" in proc.stderr
    calls = log.read_text().splitlines()
    assert "apt-get install -y --no-install-recommends python3-venv" in calls
    assert not (prefix / ".installed").exists()
    assert not [c for c in calls if c.startswith("systemctl")]


@pytest.mark.parametrize(("change", "message"), [
    ({"root_json": b'{"signed": {"_type": "targets"}, "signatures": []}'}, "not TUF root"),
    ({"root_json": b"-----BEGIN PRIVATE KEY-----"}, "not JSON"),
    ({"private_key": True}, "private key"),
    ({"controller_url": "http://controller.example:8080"}, "clear text"),
    ({"controller_url": "ftp://controller.example"}, "https://host"),
    ({"claim_token": "short"}, "16 to 4096"),
    ({"claim_token": TOKEN + " x"}, "without spaces"),
    ({"tags": {"bad key": "x"}}, "tag 'bad key'"),
    ({"device_id": "a/b"}, "device id"),
    ({"broker_url": "http://broker"}, "mqtt://host:port"),
    ({"agent_version": None}, "agent version"),
    ({"wheel_name": "something-1.0-py3-none-any.whl"}, "edgefleet wheel"),
    ({"wheel_name": "edgefleet-0.2.0-py3-none-any.whl", "agent_version": "0.1.0"},
     "but the wheel is 0.2.0"),
])
def test_builder_refuses_bad_input_without_revealing_the_token(tmp_path, trust_root, change,
                                                              message):
    kwargs = {"controller_url": URL, "claim_token": TOKEN, "agent_version": "0.1.0"}
    root_json = change.pop("root_json", None)
    if change.pop("private_key", False):
        doc = json.loads(trust_root.read_text())
        next(iter(doc["signed"]["keys"].values()))["keyval"]["private"] = "00"
        root_json = json.dumps(doc).encode()
    if root_json is not None:
        trust_root = tmp_path / "root.json"
        trust_root.write_bytes(root_json)
    if "wheel_name" in change:
        wheel = fake_wheel(tmp_path, version="0.2.0")
        change["wheel"] = wheel.rename(tmp_path / change.pop("wheel_name"))
    kwargs.update(change)
    with pytest.raises(ImageBuildError, match=message) as raised:
        build_overlay(builtin_recipe("rpi-os-arm64"), out=tmp_path / "o.tar.gz",
                      trust_root=trust_root, **kwargs)
    assert TOKEN not in str(raised.value)
    assert not (tmp_path / "o.tar.gz").exists()


def test_cli_build_shows_inputs_but_never_the_token(tmp_path, trust_root):
    runner = CliRunner()
    env = {"EDGEFLEET_CLAIM_TOKEN": TOKEN, "COLUMNS": "200"}
    args = ["image", "build", "jetson-l4t", "--controller-url", URL, "--root", str(trust_root),
            "--out", str(tmp_path / "j.tar.gz"), "--tag", "site=lab"]
    human = runner.invoke(app, args, env=env)
    assert human.exit_code == 0, human.output
    assert "edgefleet[agent]==" + __version__ in human.output and "site=lab" in human.output
    as_json = runner.invoke(app, [*args, "--json"], env=env)
    report = json.loads(as_json.stdout)
    assert report["inputs"]["hardware_class"] == "auto"
    assert report["sha256"] == hashlib.sha256((tmp_path / "j.tar.gz").read_bytes()).hexdigest()
    assert TOKEN not in human.output + as_json.output

    bad_root = tmp_path / "not-root.json"
    bad_root.write_text('{"signed": {"_type": "snapshot"}}')
    refused = runner.invoke(app, [*args[:6], str(bad_root), *args[7:]], env=env)
    assert refused.exit_code == 1 and "not TUF root metadata" in refused.output
    no_token = runner.invoke(app, args, env={"EDGEFLEET_CLAIM_TOKEN": ""})
    assert no_token.exit_code == 1 and "no claim token" in no_token.output


def test_standalone_script_builds_the_same_overlay_with_nothing_installed(tmp_path,
                                                                         trust_root):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    library = build("rpi-os-arm64", tmp_path / "lib.tar.gz", trust_root,
                    agent_version=__version__)
    # -I -S: no site-packages, so edgefleet itself is not importable.
    proc = subprocess.run([sys.executable, "-I", "-S",
                           str(REPO / "firmware-images" / "build_overlay.py"), "rpi-os-arm64",
                           "--controller-url", URL, "--root", str(trust_root), "--claim-token",
                           str(token_file), "--out", str(tmp_path / "script.tar.gz"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sha256"] == library.sha256
    assert TOKEN not in proc.stdout + proc.stderr


def _next_datagram(sock: socket.socket, proc: subprocess.Popen[bytes],
                   timeout_s: float = 60) -> bytes:
    """The next notification the agent sends; fails at once if the agent exits."""
    sock.settimeout(0.2)
    for _ in range(int(timeout_s / 0.2)):
        try:
            return sock.recv(4096)
        except TimeoutError:
            if proc.poll() is not None:
                pytest.fail(f"agent exited ({proc.returncode}): "
                            f"{proc.communicate()[0].decode()[-2000:]}")
    pytest.fail(f"no notification within {timeout_s} s")


def test_agent_from_overlay_provisions_on_first_boot(tmp_path, trust_root, controller):
    """The overlay's agent.toml, root.json and claim token, run as the unit's ExecStart
    would: the agent gets its identity from the controller, tells systemd it is ready and
    shows up with the image's tags."""
    api = ApiServer(create_app(controller))
    api.start()
    claim = controller.provisioner.create_claim_token(label="overlay", uses=1,
                                                      created_by="test")["token"]
    try:
        build("rpi-os-arm64", tmp_path / "o.tar", trust_root, tags={"site": "lab"},
              controller_url=api.url, claim_token=claim)
        root = tmp_path / "root"
        unpack(tmp_path / "o.tar", root)
        # The image's config with its absolute paths moved into the unpacked tree.
        text = (root / "etc/edgefleet/agent.toml").read_text()
        for path in ("/etc/edgefleet/", "/var/lib/edgefleet"):
            text = text.replace(f'"{path}', f'"{root}{path}')
        config = root / "etc/edgefleet/agent.toml"
        config.write_text(text.replace("api_port = 8470", "api_port = 0"))

        with tempfile.TemporaryDirectory(prefix="sd") as tmp, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
            systemd.bind(f"{tmp}/notify")
            env = {**os.environ, "NOTIFY_SOCKET": f"{tmp}/notify", "WATCHDOG_USEC": "2000000"}
            proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run",
                                     "--config", str(config), "--provision-deadline-s", "30"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                assert _next_datagram(systemd, proc).startswith(b"READY=1")
                identity = json.loads((root / "var/lib/edgefleet/identity.json").read_text())
                assert (root / "var/lib/edgefleet/identity.json").stat().st_mode & 0o777 == 0o600
                wait_devices_known(controller, [identity["device_id"]], timeout_s=20)
                device = controller.store.get_device(identity["device_id"])
                assert device["tags"] == {"site": "lab"}
                assert _next_datagram(systemd, proc) == b"WATCHDOG=1"
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                output = proc.communicate(timeout=10)[0].decode()
        assert claim not in output
        assert [t["state"] for t in controller.provisioner.list_claim_tokens()] == ["used"]
    finally:
        api.stop()


def test_agent_runtime_works_with_write_xor_execute_memory(tmp_path):
    """The Raspberry Pi unit sets MemoryDenyWriteExecute=yes; the kernel's MDWE prctl
    enforces the same rule on this process and its children."""
    if sys.platform != "linux" or ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0:  # GET_MDWE
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    code = f"""
import ctypes, mmap, sys
assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X memory was allowed: MDWE is not in force")
except OSError:
    pass
import numpy as np
import paho.mqtt.client, tuf.ngclient
from edgefleet.agent.runtime import OnnxRuntime
rt = OnnxRuntime(__import__("pathlib").Path({str(ASSETS / "digits.onnx")!r}))
out = rt.run({{rt.inputs[0].name: np.zeros((2, 64), dtype=np.float32)}})
print(next(iter(out.values())).shape)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(2, 10)"
