"""Device identity in the store: claim tokens (``claim_tokens``, only each token's sha256)
and the credentials of provisioned devices (``device_credentials``: public key and the
PBKDF2 line of the MQTT password). Which token is usable and who may be provisioned is
``provisioning.Provisioner``'s to decide; a provisioning runs in one
``CredentialStore.transaction``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from ._tables import claim_tokens, device_credentials

__all__ = ["CredentialStore", "CredentialTransaction"]


def _row(r: sa.Row[Any] | None) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


class CredentialTransaction:
    """One transaction over the claim tokens and device credentials (a provisioning)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def claim_token(self, token_hash: str) -> dict[str, Any] | None:
        """The claim token whose secret has this sha256."""
        return _row(self.conn.execute(sa.select(claim_tokens)
                                      .where(claim_tokens.c.hash == token_hash)).first())

    def credentials(self, device: str) -> dict[str, Any] | None:
        return _row(self.conn.execute(sa.select(device_credentials)
                                      .where(device_credentials.c.device == device)).first())

    def spend_token(self, token_id: str) -> bool:
        """Take one use of a claim token; False if none is left by now (another
        controller took the last one since it was read)."""
        return bool(self.conn.execute(
            claim_tokens.update().where(claim_tokens.c.id == token_id,
                                        claim_tokens.c.uses_left > 0)
            .values(uses_left=claim_tokens.c.uses_left - 1)).rowcount)

    def save_credentials(self, device: str, values: dict[str, Any], *, new: bool) -> None:
        """Insert (``new``) or replace a device's credentials."""
        if new:
            self.conn.execute(device_credentials.insert().values(device=device, **values))
        else:
            self.conn.execute(device_credentials.update()
                              .where(device_credentials.c.device == device).values(**values))


class CredentialStore:
    """The ``claim_tokens`` and ``device_credentials`` tables."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def transaction(self) -> Iterator[CredentialTransaction]:
        """One transaction: everything done through it commits together, or nothing."""
        with self.engine.begin() as c:
            yield CredentialTransaction(c)

    # -- claim tokens -----------------------------------------------------------------------
    def add_claim_token(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(claim_tokens.insert().values(**row))

    def claim_tokens(self) -> list[dict[str, Any]]:
        """Every claim token, oldest first."""
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(claim_tokens).order_by(claim_tokens.c.created_at))]

    def claim_token(self, token_hash: str) -> dict[str, Any] | None:
        """The claim token whose secret has this sha256."""
        with self.engine.connect() as c:
            return CredentialTransaction(c).claim_token(token_hash)

    def revoke_claim_token(self, token_id: str, now: float) -> dict[str, Any] | None:
        """Revoke a claim token; returns its row after, None if there is no such token."""
        with self.engine.begin() as c:
            if not c.execute(claim_tokens.update().where(claim_tokens.c.id == token_id)
                             .values(revoked_at=now)).rowcount:
                return None
            return _row(c.execute(sa.select(claim_tokens)
                                  .where(claim_tokens.c.id == token_id)).first())

    # -- device credentials -----------------------------------------------------------------
    def credentials(self, device: str) -> dict[str, Any] | None:
        """A device's credentials row (None: never provisioned)."""
        with self.engine.connect() as c:
            return CredentialTransaction(c).credentials(device)

    def revoke_device(self, device: str, *, now: float, actor: str) -> bool:
        """Mark a device's credentials revoked; False if it has none."""
        with self.engine.begin() as c:
            return bool(c.execute(device_credentials.update()
                                  .where(device_credentials.c.device == device)
                                  .values(revoked_at=now, revoked_by=actor)).rowcount)

    def revoked_devices(self) -> set[str]:
        with self.engine.connect() as c:
            return {r.device for r in c.execute(
                sa.select(device_credentials.c.device)
                .where(device_credentials.c.revoked_at.is_not(None)))}

    def password_lines(self) -> dict[str, str]:
        """The broker password-file line of every device not revoked, by device."""
        with self.engine.connect() as c:
            return {r.device: r.passwd_line for r in c.execute(
                sa.select(device_credentials.c.device, device_credentials.c.passwd_line)
                .where(device_credentials.c.revoked_at.is_(None)))}
