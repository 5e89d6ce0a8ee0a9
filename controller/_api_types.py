"""Bounded integer types for the HTTP API: what the store can hold, refused with a 422
(naming the parameter) rather than reaching SQL as a number it cannot bind."""

from typing import Annotated

from fastapi import Path, Query

__all__ = ["INT64_MAX", "SeqQuery", "VersionPath", "VersionQuery"]

INT64_MAX = 2**63 - 1  # signed BIGINT: SQLite's INTEGER and PostgreSQL's bigint

VersionPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="a model version, ≥ 1")]
VersionQuery = Annotated[int | None, Query(ge=1, le=INT64_MAX,
                                           description="a model version, ≥ 1")]
SeqQuery = Annotated[int, Query(ge=0, le=INT64_MAX)]
