"""Device image overlays: what turns a stock Raspberry Pi OS or Jetson Linux into a device.

:func:`build_overlay` writes a deterministic tarball (sorted entries, fixed mtimes,
owners and modes, gzip without a timestamp: the same inputs give the same sha256) to
unpack onto a device's root filesystem. It holds the first-boot agent install (a
oneshot unit and ``/usr/lib/edgefleet/install-agent.sh``), the hardened
``edgefleet-agent.service``, the ``edgefleet`` system user (sysusers.d), ownership fixes
(tmpfiles.d) and ``/etc/edgefleet/{agent.toml,root.json,claim-token}``.

A recipe is a target's metadata (``recipe.toml``) plus its template files. The recipes
that ship with edgefleet are package data beside this module, ``image_recipes/<target>/``
with the templates both targets share in ``image_recipes/common/``
(:func:`builtin_recipe`); :func:`load_recipe` loads a customised copy from any directory.
Standard library only, and of edgefleet only the name rule (``contract/names.py``, itself
standard library): ``firmware-images/build_overlay.py`` loads the two files from a
checkout with nothing installed, and the recipes from beside this one.

Errors: :class:`ImageBuildError` (a ``ValueError``) names the bad input; no message
contains the claim token.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    from ..contract.names import NAME
except ImportError:  # loaded as a lone file by firmware-images/build_overlay.py
    from _edgefleet_names import NAME  # type: ignore[no-redef]

__all__ = ["CLAIM_TOKEN_ENV", "RECIPES", "TARGETS", "BuildResult", "ImageBuildError", "Recipe",
           "build_overlay", "builtin_recipe", "check_trust_root", "load_recipe",
           "read_claim_token"]

TARGETS = ("rpi-os-arm64", "jetson-l4t")
CLAIM_TOKEN_ENV = "EDGEFLEET_CLAIM_TOKEN"
TEMPLATES = ("edgefleet-agent.service", "edgefleet-install.service", "install-agent.sh",
             "edgefleet.sysusers", "edgefleet.tmpfiles")
_TOKEN = re.compile(r"^[\x21-\x7e]{16,4096}$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*[A-Za-z0-9.+!_-]*$")
_COMMAND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")
_EXTRAS = {"agent", "tflite"}  # the edgefleet extras a device may install
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_WHEEL = re.compile(r"^edgefleet-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-none-any\.whl$")
_WHEELS = "usr/lib/edgefleet/wheels"
_UNITS = "usr/lib/systemd/system"
_CA_FILE = "/etc/edgefleet/provision-ca.pem"
# the built-in recipes (package data): beside this file, whether it is imported from the
# package or loaded alone from a checkout
RECIPES = Path(__file__).with_name("image_recipes")


class ImageBuildError(ValueError):
    """An input to the image builder is missing or invalid."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One target's recipe: metadata from ``recipe.toml`` and its template files."""

    target: str
    description: str
    hardware_class: str
    pythons: tuple[str, ...]  # tried in order on the device; first >= 3.11 with venv
    apt_packages: tuple[str, ...]  # installed at first boot when no interpreter fits
    files: Mapping[str, str]
    source: str  # "builtin" or the recipe directory
    # edgefleet extras pip installs: "agent", plus "tflite" where .tflite variants run
    extras: tuple[str, ...] = ("agent",)


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What was built: the tarball, its digest, the inputs (no secrets) and the entries."""

    out: Path
    sha256: str
    size_bytes: int
    inputs: dict[str, Any]
    entries: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "out": str(self.out)}


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: str
    mode: int
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    user: str = "root"
    group: str = "root"


# -- recipes ------------------------------------------------------------------------------

def builtin_recipe(target: str) -> Recipe:
    """The recipe for ``target`` that ships with edgefleet.

    Raises:
        ImageBuildError: unknown target.
    """
    if target not in TARGETS:
        raise ImageBuildError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return dataclasses.replace(load_recipe(RECIPES / target), source="builtin")


def load_recipe(directory: Path) -> Recipe:
    """Load ``DIR/recipe.toml`` and the templates, each from ``DIR`` or ``DIR/../common``.

    Raises:
        ImageBuildError: no or invalid ``recipe.toml``, or a template missing or unreadable.
    """
    files: dict[str, str] = {}
    try:
        meta = tomllib.loads((directory / "recipe.toml").read_text())
        for name in TEMPLATES:
            for path in (directory / name, directory.parent / "common" / name):
                if path.is_file():
                    files[name] = path.read_text()
                    break
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImageBuildError(f"recipe {directory}: {exc}") from exc
    return _recipe(meta, files, str(directory))


def _recipe(meta: Mapping[str, Any], files: dict[str, str], source: str) -> Recipe:
    unknown = set(meta) - {"target", "description", "hardware_class", "pythons", "apt_packages",
                           "extras"}
    if unknown:
        raise ImageBuildError(f"recipe {source}: unknown keys {sorted(unknown)}")
    if meta.get("target") not in TARGETS:
        raise ImageBuildError(f"recipe {source}: target must be one of {', '.join(TARGETS)}")
    if not NAME.valid(str(meta.get("hardware_class", ""))):
        raise ImageBuildError(f"recipe {source}: hardware_class must be auto or a name like "
                              f"rpi5 ({NAME.expected})")
    lists = {key: meta.get(key, []) for key in ("pythons", "apt_packages")}
    for key, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(v, str) and _COMMAND.match(v)
                                                  for v in value):
            raise ImageBuildError(f"recipe {source}: {key} must be a list of names")
    extras = meta.get("extras", ["agent"])
    if not isinstance(extras, list) or "agent" not in extras or set(extras) - _EXTRAS:
        raise ImageBuildError(f"recipe {source}: extras must list agent and any of "
                              f"{sorted(_EXTRAS - {'agent'})}")
    missing = [name for name in TEMPLATES if name not in files]
    if missing or not lists["pythons"]:
        raise ImageBuildError(f"recipe {source}: missing templates {missing} or pythons")
    for name, text in files.items():
        unknown_mark = _PLACEHOLDER.search(text.replace("@REQUIREMENT@", "").replace(
            "@PYTHONS@", "").replace("@APT_PACKAGES@", ""))
        if unknown_mark:
            raise ImageBuildError(f"recipe {source}: {name} has an unknown placeholder "
                                  f"{unknown_mark.group()}")
    return Recipe(target=meta["target"], description=str(meta.get("description", "")),
                  hardware_class=meta["hardware_class"], pythons=tuple(lists["pythons"]),
                  apt_packages=tuple(lists["apt_packages"]), files=files, source=source,
                  extras=tuple(extras))


# -- inputs -------------------------------------------------------------------------------

def check_trust_root(data: bytes) -> dict[str, Any]:
    """Check that ``data`` is signed TUF root metadata holding public keys only.

    Returns:
        ``version``, ``expires``, ``sha256`` and the root role's ``threshold`` and ``keys``.

    Raises:
        ImageBuildError: not JSON, not ``signed._type == "root"``, unsigned, a top-level
            role missing, or a private key inside.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageBuildError(f"trust root is not JSON: {exc}") from exc
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != "root":
        raise ImageBuildError("trust root is not TUF root metadata (signed._type must be "
                              "'root'): pass the root.json from `edgefleet keys init`")
    if not isinstance(doc.get("signatures"), list) or not doc["signatures"]:
        raise ImageBuildError("trust root has no signatures")
    keys, roles = signed.get("keys"), signed.get("roles")
    if (not isinstance(keys, dict) or not isinstance(roles, dict)
            or not all(isinstance(roles.get(r), dict)
                       for r in ("root", "targets", "snapshot", "timestamp"))):
        raise ImageBuildError("trust root must define keys and the root, targets, snapshot "
                              "and timestamp roles")
    if any("private" in (k.get("keyval") or {}) for k in keys.values() if isinstance(k, dict)):
        raise ImageBuildError("trust root holds a private key; devices get public keys only")
    return {"version": signed.get("version"), "expires": signed.get("expires"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "threshold": roles["root"].get("threshold"),
            "keys": len(roles["root"].get("keyids", []))}


def read_claim_token(path: Path | None, environ: Mapping[str, str] | None = None
                     ) -> tuple[str, str]:
    """The claim token from ``path``, else from ``$EDGEFLEET_CLAIM_TOKEN``.

    Returns:
        ``(token, source)``: ``source`` says where it came from, never what it is.

    Raises:
        ImageBuildError: no token given, or its file cannot be read.
    """
    if path is not None:
        try:
            return path.read_text().strip(), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ImageBuildError(f"claim token file {path}: {exc}") from exc
    value = (os.environ if environ is None else environ).get(CLAIM_TOKEN_ENV, "").strip()
    if not value:
        raise ImageBuildError(f"no claim token: pass --claim-token FILE or set "
                              f"{CLAIM_TOKEN_ENV}")
    return value, f"${CLAIM_TOKEN_ENV}"


def _check_url(url: str, allow_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageBuildError(f"controller URL must look like https://host[:port], got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ImageBuildError("controller URL must not carry credentials, a query or a fragment")
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    if parts.scheme == "http" and not (loopback or allow_http):
        raise ImageBuildError("devices would send the claim token in clear text: use an "
                              "https:// controller URL (or allow plain http explicitly)")
    return url.rstrip("/")


def _read_wheel(path: Path) -> tuple[str, bytes, str]:
    match = _WHEEL.match(path.name)
    if not match:
        raise ImageBuildError(f"wheel {path.name}: expected a pure-Python edgefleet wheel, "
                              "edgefleet-VERSION-py3-none-any.whl")
    version = match["version"]
    try:
        data = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            metadata = wheel.read(f"edgefleet-{version}.dist-info/METADATA").decode()
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ImageBuildError(f"wheel {path}: not a readable edgefleet wheel: {exc}") from exc
    fields = dict(line.split(": ", 1) for line in metadata.splitlines()[:20] if ": " in line)
    if fields.get("Name", "").lower() != "edgefleet" or fields.get("Version") != version:
        raise ImageBuildError(f"wheel {path}: its metadata does not say edgefleet {version}")
    return path.name, data, version


# -- the overlay --------------------------------------------------------------------------

def build_overlay(recipe: Recipe, *, out: Path, controller_url: str, trust_root: Path,
                  claim_token: str, claim_token_source: str = "argument",
                  agent_version: str | None = None, wheel: Path | None = None,
                  hardware_class: str | None = None, broker_url: str | None = None,
                  device_id: str | None = None, tags: Mapping[str, str] | None = None,
                  provision_ca: Path | None = None, allow_http: bool = False) -> BuildResult:
    """Build the overlay for ``recipe`` at ``out``: a ``.tar``, or gzipped for any other name.

    Args:
        recipe: from :func:`builtin_recipe` or :func:`load_recipe`.
        out: the tarball to write (mode 0600: it holds the claim token).
        controller_url: where devices present the claim token (``provision_url``).
        trust_root: the fleet's ``root.json``, pinned on the device.
        claim_token: the fleet's claim token; ``claim_token_source`` names its origin.
        agent_version: the ``edgefleet[agent]`` version pip installs at first boot.
        wheel: an edgefleet wheel shipped in the overlay and installed instead.
        hardware_class: overrides the recipe's.
        broker_url, device_id, tags: optional ``agent.toml`` settings.
        provision_ca: a PEM CA bundle the device verifies the controller's certificate with.
        allow_http: accept a plain ``http://`` controller URL that is not loopback.

    Raises:
        ImageBuildError: an input is missing or invalid; the message says which.
    """
    url = _check_url(controller_url, allow_http)
    try:
        root_bytes = trust_root.read_bytes()
    except OSError as exc:
        raise ImageBuildError(f"trust root {trust_root}: {exc}") from exc
    root_info = check_trust_root(root_bytes)
    if not _TOKEN.match(claim_token):
        raise ImageBuildError(f"claim token from {claim_token_source}: must be 16 to 4096 "
                              "printable ASCII characters without spaces")
    hw = hardware_class or recipe.hardware_class
    for what, name in (("hardware class", hw), ("device id", device_id), *(
            ("tag", key) for key in (tags or {}))):
        if name is not None and not NAME.valid(name):
            raise ImageBuildError(f"{what} {name!r}: expected {NAME.expected}")
    if any(not value or not value.isprintable() for value in (tags or {}).values()):
        raise ImageBuildError("tag values must be non-empty and printable")
    try:
        ca_pem = provision_ca.read_bytes() if provision_ca else b""
    except OSError as exc:
        raise ImageBuildError(f"provision CA {provision_ca}: {exc}") from exc
    if provision_ca and b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise ImageBuildError(f"provision CA {provision_ca}: no PEM certificate in it")
    if broker_url and (urlsplit(broker_url).scheme not in ("mqtt", "tcp")
                       or not urlsplit(broker_url).hostname):
        raise ImageBuildError(f"broker URL must look like mqtt://host:port, got {broker_url!r}")
    entries = [_Entry("etc/edgefleet", 0o755, kind=tarfile.DIRTYPE),
               _Entry("usr/lib/edgefleet", 0o755, kind=tarfile.DIRTYPE)]
    extras = ",".join(recipe.extras)
    if wheel is not None:
        wheel_name, wheel_data, version = _read_wheel(wheel)
        if agent_version not in (None, version):
            raise ImageBuildError(f"agent version {agent_version} but the wheel is {version}")
        requirement = f"/{_WHEELS}/{wheel_name}[{extras}]"
        entries += [_Entry(_WHEELS, 0o755, kind=tarfile.DIRTYPE),
                    _Entry(f"{_WHEELS}/{wheel_name}", 0o644, wheel_data)]
    elif agent_version is None or not _VERSION.match(agent_version):
        raise ImageBuildError(f"agent version {agent_version!r}: give a version such as "
                              "0.1.0 to pin edgefleet[agent], or a wheel")
    else:
        requirement, version = f"edgefleet[{extras}]=={agent_version}", agent_version
    sorted_tags = dict(sorted((tags or {}).items()))
    script = recipe.files["install-agent.sh"]
    for key, value in (("REQUIREMENT", requirement), ("PYTHONS", " ".join(recipe.pythons)),
                       ("APT_PACKAGES", " ".join(recipe.apt_packages))):
        script = script.replace(f"@{key}@", shlex.quote(value))
    toml = _agent_toml(recipe.target, url, hw, broker_url, device_id, sorted_tags,
                       bool(ca_pem))
    if ca_pem:
        entries.append(_Entry(_CA_FILE[1:], 0o644, ca_pem))
    entries += [
        _Entry("etc/edgefleet/agent.toml", 0o640, toml.encode(), group="edgefleet"),
        _Entry("etc/edgefleet/root.json", 0o644, root_bytes),
        _Entry("etc/edgefleet/claim-token", 0o600, claim_token.encode(), user="edgefleet",
               group="edgefleet"),
        _Entry("usr/lib/edgefleet/install-agent.sh", 0o755, script.encode()),
        _Entry("usr/lib/sysusers.d/edgefleet.conf", 0o644,
               recipe.files["edgefleet.sysusers"].encode()),
        _Entry("usr/lib/tmpfiles.d/edgefleet.conf", 0o644,
               recipe.files["edgefleet.tmpfiles"].encode())]
    for unit in ("edgefleet-agent.service", "edgefleet-install.service"):
        entries += [_Entry(f"{_UNITS}/{unit}", 0o644, recipe.files[unit].encode()),
                    _Entry(f"etc/systemd/system/multi-user.target.wants/{unit}", 0o777,
                           kind=tarfile.SYMTYPE, link=f"../../../../{_UNITS}/{unit}")]
    entries.sort(key=lambda e: e.path)
    digest, size = _write_tarball(entries, out)
    inputs = {"target": recipe.target, "recipe": recipe.source, "controller_url": url,
              "hardware_class": hw, "broker_url": broker_url, "device_id": device_id,
              "tags": sorted_tags, "agent": requirement, "agent_version": version,
              "provision_ca": str(provision_ca) if provision_ca else None,
              "trust_root": {"path": str(trust_root), **root_info},
              "claim_token": f"set ({len(claim_token)} characters, from {claim_token_source})"}
    listing = [{"path": "/" + e.path, "mode": f"{e.mode:04o}", "owner": f"{e.user}:{e.group}",
                "size_bytes": len(e.data), **({"link": e.link} if e.link else {})}
               for e in entries]
    return BuildResult(out=out, sha256=digest, size_bytes=size, inputs=inputs, entries=listing)


def _agent_toml(target: str, url: str, hardware_class: str, broker_url: str | None,
                device_id: str | None, tags: dict[str, str], ca: bool) -> str:
    lines = [f"# Written by `edgefleet image build` for {target}. Without device_id the",
             "# device gets its id at first boot by presenting the claim token to provision_url.",
             'state_dir = "/var/lib/edgefleet"',
             'trust_root = "/etc/edgefleet/root.json"',
             f"provision_url = {_toml_str(url)}",
             'claim_token_file = "/etc/edgefleet/claim-token"',
             f"hardware_class = {_toml_str(hardware_class)}",
             'api_host = "127.0.0.1"',
             "api_port = 8470"]
    lines += [f'provision_ca_file = "{_CA_FILE}"'] if ca else []
    lines += [f"broker_url = {_toml_str(broker_url)}"] if broker_url else []
    lines += [f"device_id = {_toml_str(device_id)}"] if device_id else []
    if tags:
        lines += ["", "[tags]", *(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in tags.items())]
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _write_tarball(entries: list[_Entry], out: Path) -> tuple[str, int]:
    if out.is_dir():
        raise ImageBuildError(f"output {out} is a directory; give a file name")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.type, info.mode, info.mtime, info.linkname = e.kind, e.mode, 0, e.link
            info.uid = info.gid = 0  # the edgefleet uid is allocated on the device
            info.uname, info.gname = e.user, e.group
            info.size = len(e.data)
            tar.addfile(info, io.BytesIO(e.data) if e.kind == tarfile.REGTYPE else None)
    data = raw.getvalue()
    if out.suffix != ".tar":
        packed = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
            gz.write(data)
        data = packed.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp's mode 0600 keeps the token private
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest(), len(data)
