"""Operator security commands: API tokens and the audit log (thin layers over the API)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ._admin import JsonOpt, TokenOpt, UrlOpt
from ._client import ApiClient
from ._output import console, emit, err_console, fail, table, when
from ._parse import parse_duration

__all__ = ["audit_app", "tokens_app"]

tokens_app = typer.Typer(help="API tokens: create (viewer, operator, admin), list, revoke.",
                         no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log: list and verify.",
                        no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who uses it: the actor name in the audit log.")],
    role: Annotated[str, typer.Option(help="viewer | operator | admin")] = "viewer",
    ttl: Annotated[str | None, typer.Option(help="Expire after, e.g. 90d, 12h (none: never).")]
    = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a token (admin). Its secret is printed once and cannot be shown again."""
    body: dict[str, Any] = {"name": name, "role": role}
    if ttl:
        try:
            body["ttl_s"] = parse_duration(ttl)
        except ValueError as exc:
            fail(str(exc))
    row = ApiClient(url, token).call("POST", "/v1/tokens", json=body)
    err_console.print("[yellow]warning:[/yellow] store this token now; it will not be shown "
                      "again (the controller keeps only its hash).")
    if not emit(row, as_json):
        console.print(f"token [bold]{row['id']}[/bold] for {row['name']} ({row['role']}, "
                      f"expires {when(row['expires_at'])}):")
        console.print(row["token"], highlight=False, soft_wrap=True)


@tokens_app.command("list")
def tokens_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (admin): id, name, role, state, created, expiry. Never their secrets."""
    rows = ApiClient(url, token).call("GET", "/v1/tokens")
    if not emit(rows, as_json):
        table("API tokens", ["id", "name", "role", "state", "created", "by", "expires"],
              [(r["id"], r["name"], r["role"], r["state"], when(r["created_at"]),
                r["created_by"], when(r["expires_at"])) for r in rows])


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="Token id (from `tokens list`).")],
                  url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke a token (admin); it is refused from the next call on."""
    row = ApiClient(url, token).call("DELETE", f"/v1/tokens/{token_id}")
    if not emit(row, as_json):
        console.print(f"token {row['id']} ({row['name']}) revoked")


@audit_app.command("list")
def audit_list(
    after: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    target: Annotated[str | None, typer.Option(help="Only this target (e.g. a deployment "
                                                    "id).")] = None,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """List audit entries in order: who did what, to what, when, with what outcome."""
    params: dict[str, Any] = {"after": after, "limit": limit}
    if target:
        params["target"] = target
    rows = ApiClient(url, token).call("GET", "/v1/audit", params=params)
    if not emit(rows, as_json):
        table("audit log", ["seq", "time", "actor", "action", "target", "detail"],
              [(r["seq"], when(r["ts"]), r["actor"], r["action"], r["target"],
                json.dumps(r["detail"], sort_keys=True)[:100]) for r in rows])


@audit_app.command("verify")
def audit_verify(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Check the hash chain and its anchors; exit status 2 if the log was tampered with."""
    result = ApiClient(url, token).call("GET", "/v1/audit/verify")
    if not emit(result, as_json):
        if result["ok"]:
            console.print(f"audit log intact: {result['entries']} entries, head "
                          f"{result['head_seq']}")
        else:
            err_console.print(f"[red]audit log TAMPERED[/red] at entry "
                              f"{result['first_bad_seq']}: {result['reason']}", soft_wrap=True)
    if not result["ok"]:
        raise typer.Exit(2)
