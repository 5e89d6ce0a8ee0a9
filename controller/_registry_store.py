"""The registry's rows: model versions (``model_versions``) and their per-class variants
(``model_variants``). The files themselves are in the file store (``_files``); what to
register, and when, is ``registry.Registry``'s to decide."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from edgefleet.contract import NotFoundError

from ._tables import models, variants

__all__ = ["RegistryStore"]


class RegistryStore:
    """The ``model_versions`` and ``model_variants`` tables."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # -- versions ---------------------------------------------------------------------------
    def add_model(self, **values: Any) -> dict[str, Any]:
        """Insert a model version (``version`` defaults to the next free one for ``name``)."""
        with self.engine.begin() as c:
            current = c.execute(sa.select(sa.func.max(models.c.version))
                                .where(models.c.name == values["name"])).scalar()
            values = {"bundled": False, "report": None, "parent": None,
                      "version": (current or 0) + 1, **values, "created_at": time.time()}
            c.execute(models.insert().values(**values))
        return values

    def next_version(self, name: str) -> int:
        with self.engine.connect() as c:
            current = c.execute(sa.select(sa.func.max(models.c.version))
                                .where(models.c.name == name)).scalar()
        return (current or 0) + 1

    def get_model(self, name: str, version: int) -> dict[str, Any]:
        """Raises: NotFoundError."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(models).where(
                models.c.name == name, models.c.version == version)).first()
        if row is None:
            raise NotFoundError(f"no model {name}:{version}")
        return dict(row._mapping)

    def list_models(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(models).order_by(models.c.name, models.c.version))]

    def release_counter(self, name: str) -> int:
        """The highest release counter among ``name``'s versions (0: it has none)."""
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.max(models.c.release_counter))
                                 .where(models.c.name == name)).scalar() or 0)

    def mark_bundled(self, name: str, version: int) -> None:
        with self.engine.begin() as c:
            c.execute(models.update().where(models.c.name == name, models.c.version == version)
                      .values(bundled=True))

    # -- per-class variants -----------------------------------------------------------------
    def add_variant(self, row: dict[str, Any]) -> None:
        """Insert a variant row (``name``, ``version``, ``variant``, its file and classes)."""
        with self.engine.begin() as c:
            c.execute(variants.insert().values(**row))

    def variants(self, name: str, version: int) -> list[dict[str, Any]]:
        """A version's variants, by variant name."""
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(variants).where(variants.c.name == name, variants.c.version == version)
                .order_by(variants.c.variant))]

    def mark_variant_bundled(self, name: str, version: int, variant: str) -> None:
        with self.engine.begin() as c:
            c.execute(variants.update().where(
                variants.c.name == name, variants.c.version == version,
                variants.c.variant == variant).values(bundled=True))

    # -- files ------------------------------------------------------------------------------
    def file_refs(self) -> list[dict[str, Any]]:
        """Where every version's and variant's file is: ``name``, ``version``, ``variant``
        ("" for a version's own file) and ``file``."""
        with self.engine.connect() as c:
            own = c.execute(sa.select(models.c.name, models.c.version, models.c.file))
            rows = [{**r._mapping, "variant": ""} for r in own]
            return rows + [dict(r._mapping) for r in c.execute(sa.select(
                variants.c.name, variants.c.version, variants.c.variant, variants.c.file))]

    def move_file_refs(self, moves: list[tuple[dict[str, Any], str]]) -> int:
        """Point rows (from ``file_refs``) at new files, in one transaction; a row whose
        file changed since it was read keeps it. Returns how many rows now point anew."""
        moved = 0
        with self.engine.begin() as c:
            for ref, new in moves:
                table = variants if ref["variant"] else models
                where = [table.c.name == ref["name"], table.c.version == ref["version"],
                         table.c.file == ref["file"]]
                if ref["variant"]:
                    where.append(variants.c.variant == ref["variant"])
                moved += c.execute(table.update().where(*where).values(file=new)).rowcount
        return moved
