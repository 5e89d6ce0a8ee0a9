"""Device identity commands: claim tokens and revocation (thin layers over the API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.contract.files import atomic_write

from ._admin import JsonOpt, TokenOpt, UrlOpt
from ._client import ApiClient
from ._output import console, emit, err_console, fail, table, when
from ._parse import parse_duration

__all__ = ["claim_tokens_app", "register_identity"]

claim_tokens_app = typer.Typer(help="Claim tokens that devices present on first boot.",
                               no_args_is_help=True)


@claim_tokens_app.command("create")
def claim_tokens_create(
    label: Annotated[str, typer.Argument(help="What it is for, e.g. 'kitchen batch 3'.")],
    uses: Annotated[int, typer.Option(help="How many devices may use it.")] = 1,
    ttl: Annotated[str, typer.Option(help="Valid for, e.g. 7d, 12h.")] = "7d",
    out: Annotated[Path | None, typer.Option(
        help="Write the token to this file (0600) instead of printing it.")] = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a claim token (admin). Its secret is shown once; the controller keeps a hash."""
    try:
        ttl_s = parse_duration(ttl)
    except ValueError as exc:
        fail(str(exc))
    row = ApiClient(url, token).call("POST", "/v1/claim-tokens",
                                     json={"label": label, "uses": uses, "ttl_s": ttl_s})
    if out is not None:
        atomic_write(out, (row.pop("token") + "\n").encode(), mode=0o600)
        row["written_to"] = str(out)
    else:
        err_console.print("[yellow]warning:[/yellow] store this token now; it will not be "
                          "shown again.")
    if not emit(row, as_json):
        console.print(f"claim token [bold]{row['id']}[/bold] ({row['label']}): {uses} use(s), "
                      f"expires {when(row['expires_at'])}")
        if out is None:
            console.print(row["token"], highlight=False, soft_wrap=True)
        else:
            console.print(f"written to {out} (mode 0600)")


@claim_tokens_app.command("list")
def claim_tokens_list(url: UrlOpt = None, token: TokenOpt = None,
                      as_json: JsonOpt = False) -> None:
    """List claim tokens (admin): state and uses left, never their secrets."""
    rows = ApiClient(url, token).call("GET", "/v1/claim-tokens")
    if not emit(rows, as_json):
        table("claim tokens", ["id", "label", "state", "uses left", "expires", "by"],
              [(r["id"], r["label"], r["state"], r["uses_left"], when(r["expires_at"]),
                r["created_by"]) for r in rows])


@claim_tokens_app.command("revoke")
def claim_tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (from `claim-tokens list`).")],
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Revoke a claim token (admin): devices that have not used it yet cannot."""
    row = ApiClient(url, token).call("DELETE", f"/v1/claim-tokens/{token_id}")
    if not emit(row, as_json):
        console.print(f"claim token {row['id']} revoked")


def register_identity(devices_app: typer.Typer) -> None:
    """Add ``devices revoke`` and ``devices identity`` to the devices group."""

    @devices_app.command("revoke")
    def devices_revoke(
        device_id: Annotated[str, typer.Argument(help="The device to lock out.")],
        url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Revoke a device's credentials (admin): the broker refuses it from then on."""
        row = ApiClient(url, token).call("POST", f"/v1/devices/{device_id}/revoke")
        if not emit(row, as_json):
            console.print(f"{row['device']} revoked at {when(row['revoked_at'])}")

    @devices_app.command("identity")
    def devices_identity(
        device_id: Annotated[str, typer.Argument(help="The device.")],
        url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Show a device's key, provisioning and revocation (never its credentials)."""
        row = ApiClient(url, token).call("GET", f"/v1/devices/{device_id}/identity")
        if not emit(row, as_json):
            console.print(f"{row['device']}: key {row['key_id'][:16]}…, provisioned "
                          f"{when(row['provisioned_at'])} with claim token "
                          f"{row['claim_token']}; revoked: {when(row['revoked_at'])}")
