#!/usr/bin/env python3
"""Build an edgefleet device image overlay from a checkout, with nothing installed.

Same as ``edgefleet image build`` (see README.md here), for a build host that has only
Python 3.11+: it loads the builder, ``controller/images.py``, and the name rule it uses,
``contract/names.py``, straight from this checkout; the builder reads its recipes from
``controller/image_recipes/``, the files the installed package ships.

    python3 firmware-images/build_overlay.py rpi-os-arm64 \\
        --controller-url https://controller.example:8443 --root keys/root.json \\
        --claim-token claim-token.txt --out rpi-overlay.tar.gz
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType

CHECKOUT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _load_builder() -> ModuleType:
    _load("_edgefleet_names", CHECKOUT / "contract" / "names.py")  # what a name may be
    return _load("edgefleet_images", CHECKOUT / "controller" / "images.py")


def main(argv: list[str] | None = None) -> int:
    images = _load_builder()
    version = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["version"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=images.TARGETS)
    p.add_argument("--controller-url", required=True, help="where devices provision (https://)")
    p.add_argument("--root", required=True, type=Path, help="the fleet's root.json")
    p.add_argument("--out", "-o", required=True, type=Path, help="overlay .tar.gz (or .tar)")
    p.add_argument("--claim-token", type=Path,
                   help=f"file with the claim token (default: ${images.CLAIM_TOKEN_ENV})")
    p.add_argument("--wheel", type=Path, help="ship and install this edgefleet wheel")
    p.add_argument("--agent-version", help=f"edgefleet[agent] to pin (default: {version})")
    p.add_argument("--hardware-class")
    p.add_argument("--broker-url")
    p.add_argument("--device-id")
    p.add_argument("--tag", "-t", action="append", default=[], help="key=value (repeat)")
    p.add_argument("--provision-ca", type=Path, help="PEM CA bundle for the controller")
    p.add_argument("--recipe", type=Path, help="recipe directory (default: the built-in one)")
    p.add_argument("--allow-http", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    tags = dict(t.partition("=")[::2] for t in args.tag)
    if any("=" not in t for t in args.tag) or len(tags) != len(args.tag):
        p.error("--tag must be a new key=value each time")
    try:
        recipe = (images.load_recipe(args.recipe) if args.recipe
                  else images.builtin_recipe(args.target))
        if recipe.target != args.target:
            p.error(f"recipe {args.recipe} is for {recipe.target}, not {args.target}")
        token, source = images.read_claim_token(args.claim_token)
        result = images.build_overlay(
            recipe, out=args.out, controller_url=args.controller_url, trust_root=args.root,
            claim_token=token, claim_token_source=source, wheel=args.wheel,
            agent_version=args.agent_version or (None if args.wheel else version),
            hardware_class=args.hardware_class, broker_url=args.broker_url,
            device_id=args.device_id, tags=tags, provision_ca=args.provision_ca,
            allow_http=args.allow_http)
    except (images.ImageBuildError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for key, value in result.inputs.items():
        print(f"{key:16} {json.dumps(value) if isinstance(value, dict) else value}")
    for e in result.entries:
        link = f" -> {e['link']}" if "link" in e else ""
        print(f"  {e['mode']} {e['owner']:20} {e['size_bytes']:>9} {e['path']}{link}")
    print(f"wrote {result.out} ({result.size_bytes} bytes, mode 0600: it holds the claim "
          f"token)\nsha256 {result.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
