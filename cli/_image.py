"""``edgefleet image build``: a device image overlay for Raspberry Pi OS or Jetson Linux.

The builder lives in :mod:`edgefleet.controller.images`, imported inside the command so
that a device with only the ``[agent]`` extra never loads controller code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._output import console, emit, fail, remember_json, table

__all__ = ["image_app"]

image_app = typer.Typer(help="Device image overlays: agent, hardened unit, trust root, token.",
                        no_args_is_help=True)


@image_app.command("build")
def image_build(
    target: Annotated[str, typer.Argument(help="rpi-os-arm64 or jetson-l4t.")],
    controller_url: Annotated[str, typer.Option(
        "--controller-url", help="Where devices provision themselves (https://…).")],
    root: Annotated[Path, typer.Option(
        "--root", help="The fleet's root.json (from `edgefleet keys init`).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The overlay to write: .tar.gz (or .tar), mode 0600.")],
    claim_token: Annotated[Path | None, typer.Option(
        "--claim-token", help="File holding the claim token (default: "
                              "$EDGEFLEET_CLAIM_TOKEN). Never printed.")] = None,
    wheel: Annotated[Path | None, typer.Option(
        "--wheel", help="Ship this edgefleet wheel and install it instead of the index's.")]
    = None,
    agent_version: Annotated[str | None, typer.Option(
        "--agent-version", help="edgefleet\\[agent] version to pin (default: this one's).")]
    = None,
    hardware_class: Annotated[str | None, typer.Option(
        "--hardware-class", help="Instead of detection (auto: rpi4, rpi5…).")] = None,
    broker_url: Annotated[str | None, typer.Option(
        "--broker-url", help="mqtt://host:port for agent.toml.")] = None,
    device_id: Annotated[str | None, typer.Option(
        "--device-id", help="Device id to ask for (default: the controller assigns one).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", "-t", help="key=value for agent.toml's \\[tags] (repeat).")] = None,
    provision_ca: Annotated[Path | None, typer.Option(
        "--provision-ca", help="PEM CA bundle for the controller's certificate (a private "
                               "CA).")] = None,
    recipe_dir: Annotated[Path | None, typer.Option(
        "--recipe", help="Load the recipe from this directory (e.g. a copy of "
                         "controller/image_recipes/rpi-os-arm64) instead of the built-in "
                         "one.")] = None,
    allow_http: Annotated[bool, typer.Option(
        "--allow-http", help="Accept a plain http:// controller URL that is not loopback.")]
    = False,
    as_json: Annotated[bool, typer.Option(
            "--json", help="Print JSON for scripts.", callback=remember_json)] = False,
) -> None:
    """Build a deterministic overlay tarball to unpack onto a device's root filesystem."""
    from edgefleet import __version__
    from edgefleet.controller.images import (
        ImageBuildError,
        build_overlay,
        builtin_recipe,
        load_recipe,
        read_claim_token,
    )

    tags: dict[str, str] = {}
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not sep or key in tags:
            fail(f"--tag must be a new key=value, got {item!r}")
        tags[key] = value
    try:
        recipe = load_recipe(recipe_dir) if recipe_dir else builtin_recipe(target)
        if recipe.target != target:
            fail(f"recipe {recipe_dir} is for {recipe.target}, not {target}")
        token, source = read_claim_token(claim_token)
        result = build_overlay(
            recipe, out=out, controller_url=controller_url, trust_root=root,
            claim_token=token, claim_token_source=source,
            agent_version=agent_version or (None if wheel else __version__), wheel=wheel,
            hardware_class=hardware_class, broker_url=broker_url, device_id=device_id,
            tags=tags, provision_ca=provision_ca, allow_http=allow_http)
    except ImageBuildError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")
    if emit(result.to_dict(), as_json):
        return
    i = result.inputs
    table(f"overlay for {i['target']}", ["input", "value"], [(k, escape(str(v))) for k, v in [
        ("recipe", i["recipe"]), ("controller (provision_url)", i["controller_url"]),
        ("hardware class", i["hardware_class"]), ("broker", i["broker_url"] or "-"),
        ("device id", i["device_id"] or "assigned at first boot"),
        ("tags", ", ".join(f"{k}={v}" for k, v in i["tags"].items()) or "-"),
        ("agent", i["agent"]), ("controller CA", i["provision_ca"] or "system CAs"),
        ("trust root", f"{i['trust_root']['path']} (version {i['trust_root']['version']}, "
                       f"expires {i['trust_root']['expires']}, sha256 "
                       f"{i['trust_root']['sha256'][:16]}…)"),
        ("claim token", i["claim_token"])]])
    table("files", ["path", "mode", "owner", "bytes"],
          [(escape(e["path"] + (f" -> {e['link']}" if "link" in e else "")), e["mode"],
            e["owner"], e["size_bytes"]) for e in result.entries])
    console.print(f"wrote [bold]{escape(str(result.out))}[/bold] ({result.size_bytes:,} bytes, "
                  f"mode 0600: it holds the claim token)\nsha256 {result.sha256}")
