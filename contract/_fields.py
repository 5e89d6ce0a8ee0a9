"""How a message's fields are checked when it is decoded: one function per field type,
worked out once per type, and the path of a field named in every error."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from .errors import MessageError

__all__ = ["from_dict"]

_INT32, _INT64 = 2**31 - 1, 2**63 - 1  # signed INTEGER / BIGINT
_INT64_MIN = -(2**63)
MAX_TEXT = 16 * 1024  # any one string field (error messages included)


# where a field is: a message kind, or (where its parent is, its name or list index)
_Where = str | tuple["_Where", str | int]
_Check = typing.Callable[[Any, _Where], Any]  # a field's value, checked (or MessageError)


def _path(where: _Where) -> str:
    """A field's path, kept as ``(parent, name or index)`` and spelled out for an error."""
    if isinstance(where, str):
        return where
    parent, key = where
    return f"{_path(parent)}[{key}]" if isinstance(key, int) else f"{_path(parent)}.{key}"


def _int(value: Any, where: _Where) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{_path(where)}: expected an integer, got {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64:  # what every store and peer can hold
        raise MessageError(f"{_path(where)}: {value} does not fit a signed 64-bit integer")
    return value


def _float(value: Any, where: _Where) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"{_path(where)}: expected a number, got {type(value).__name__}")
    return float(value)


def _str(value: Any, where: _Where) -> Any:
    if not isinstance(value, str):
        raise MessageError(f"{_path(where)}: expected str, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise MessageError(f"{_path(where)}: {len(value)} characters, at most {MAX_TEXT}")
    return value


def _bool(value: Any, where: _Where) -> Any:
    if not isinstance(value, bool):
        raise MessageError(f"{_path(where)}: expected bool, got {type(value).__name__}")
    return value


def _any(value: Any, where: _Where) -> Any:
    return value


def _dict(value: Any, where: _Where) -> Any:
    if not isinstance(value, dict):
        raise MessageError(f"{_path(where)}: expected an object, got {type(value).__name__}")
    return value


def _union(options: list[_Check], optional: bool) -> _Check:
    def check(value: Any, where: _Where) -> Any:
        if value is None and optional:
            return None
        errors = []
        for option in options:
            try:
                return option(value, where)
            except MessageError as exc:
                errors.append(str(exc))
        raise MessageError(f"{_path(where)}: {'; '.join(errors)}")
    return check


def _list(item: _Check) -> _Check:
    def check(value: Any, where: _Where) -> Any:
        if not isinstance(value, list):
            raise MessageError(f"{_path(where)}: expected a list, got {type(value).__name__}")
        return [item(v, (where, i)) for i, v in enumerate(value)]
    return check


def _message(cls: type) -> _Check:
    def check(value: Any, where: _Where) -> Any:
        if not isinstance(value, dict):
            raise MessageError(f"{_path(where)}: expected an object, got {type(value).__name__}")
        return from_dict(cls, value, where)
    return check


_PLAIN: dict[Any, _Check] = {int: _int, float: _float, str: _str, bool: _bool, Any: _any,
                             dict: _dict}


@functools.cache  # field types are few and hashable: each is worked out once
def _checker(hint: Any) -> _Check:
    """The check for a field of type ``hint``."""
    plain = _PLAIN.get(hint)
    if plain is not None:
        return plain
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return _union([_checker(a) for a in args if a is not type(None)],
                      type(None) in args)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return _list(_checker(item))
    if origin is dict:
        return _dict
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _message(hint)
    raise TypeError(f"unsupported field type {hint!r}")


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, _Check, bool], ...]:
    """``(name, check, required)`` per init field of a message class, worked out once per
    class (``typing.get_type_hints`` is slow)."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _checker(hints[f.name]), f.default is dataclasses.MISSING
                  and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls) if f.init)


def from_dict(cls: type, data: dict[str, Any], where: _Where) -> Any:
    """An instance of the message class ``cls`` from a parsed JSON object, every field
    checked against its type.

    Raises:
        MessageError: a field missing, of the wrong type or out of range, naming it.
    """
    kwargs = {}
    for name, check, required in _fields(cls):
        if name not in data:
            if required:
                raise MessageError(f"{_path(where)}: missing field {name!r}")
            continue
        kwargs[name] = check(data[name], (where, name))
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{_path(where)}: {exc}") from exc
    return obj
