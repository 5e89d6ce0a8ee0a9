"""API tokens in the store: only each token's sha256 is kept, never the token itself."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from edgefleet.contract import NotFoundError, RegistryError

from ._tables import api_tokens
from .auth import ROLES, hash_token, new_token, valid_token_name

__all__ = ["TokenStore", "public_token"]


def public_token(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A token row as the API shows it: no hash, plus whether it is usable now."""
    view = {k: v for k, v in row.items() if k != "hash"}
    expired = row["expires_at"] is not None and now >= row["expires_at"]
    view["state"] = "revoked" if row["revoked_at"] is not None else \
        "expired" if expired else "active"
    return view


class TokenStore:
    """The ``api_tokens`` table."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, name: str, role: str, *, created_by: str, now: float,
               ttl_s: float | None = None) -> tuple[dict[str, Any], str]:
        """Store a new token; returns its row and the token (shown once, never stored).

        Raises:
            ValueError: bad name or role.
            RegistryError: a token with that name exists (``name_taken``).
        """
        why = valid_token_name(name)
        if why:
            raise ValueError(why)
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        token_id, token = new_token()
        row = {"id": token_id, "name": name, "role": role, "hash": hash_token(token),
               "created_at": now, "created_by": created_by, "revoked_at": None,
               "expires_at": now + ttl_s if ttl_s is not None else None}
        try:
            with self.engine.begin() as c:
                c.execute(api_tokens.insert().values(**row))
        except SAIntegrityError as exc:
            raise RegistryError(f"a token named {name!r} exists (names are never reused, "
                                "so audit entries stay unambiguous)",
                                reason="name_taken") from exc
        return row, token

    def get(self, token_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
        return dict(r._mapping) if r is not None else None

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(api_tokens).order_by(api_tokens.c.created_at))]

    def revoke(self, token_id: str, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Revoke at once (a revoked token stays revoked); returns the row before and after.

        Raises:
            NotFoundError: no such token.
        """
        with self.engine.begin() as c:
            r = c.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
            if r is None:
                raise NotFoundError(f"no token {token_id}")
            before = dict(r._mapping)
            if before["revoked_at"] is None:
                c.execute(api_tokens.update().where(api_tokens.c.id == token_id)
                          .values(revoked_at=now))
        return before, {**before, "revoked_at": before["revoked_at"] or now}
