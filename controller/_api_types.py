"""Types of the HTTP API's parameters and bodies: integers the store can hold (a larger
one is a 422 naming the parameter, not a number SQL cannot bind) and hardware class
names."""

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BeforeValidator, Field

from edgefleet.contract.names import NAME

__all__ = ["INT64_MAX", "HardwareClass", "JsonInt", "SeqQuery", "VersionPath", "VersionQuery"]

INT64_MAX = 2**63 - 1  # signed BIGINT: SQLite's INTEGER and PostgreSQL's bigint

VersionPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="a model version, ≥ 1")]
VersionQuery = Annotated[int | None, Query(ge=1, le=INT64_MAX,
                                           description="a model version, ≥ 1")]
SeqQuery = Annotated[int, Query(ge=0, le=INT64_MAX)]


def _integral(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


# an integer in a strict body: JSON Schema counts 3.0 as an integer, so it is taken as 3;
# 3.5, "3" and true are refused
JsonInt = Annotated[int, BeforeValidator(_integral)]

HardwareClass = Annotated[str, Field(pattern=NAME.pattern)]  # what a device class may be named
