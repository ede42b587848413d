"""Typed settings of one config section, checked against a dataclass's fields, every problem collected."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


class Problems:
    """Collects problems with their locations instead of stopping at the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"at '{where}': {message}" if where else message)


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


def check_value(value: Any, annotation: Any) -> tuple[bool, Any, str]:
    """Validate one scalar against a dataclass field annotation; returns (ok, value, expected)."""
    hint = annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None:
        return optional, None, "a value"
    if hint is bool:
        return isinstance(value, bool), value, _type_name(bool)
    if hint is int:
        # 64-bit: a bigger count or size is a typo, and Python's unbounded int would only fail deep inside.
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
        return ok, value, _type_name(int)
    if hint is float:
        # Finite: `.inf` seconds would mean "never" where srd promises a bound (a file would never settle).
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value, _type_name(float)
    if hint is str:
        return isinstance(value, str), value, _type_name(str)
    return False, value, str(hint)


@dataclass(frozen=True)
class Fields:
    """The well-typed settings of one section, and the names of those that were reported as ill-typed.

    Every well-typed value is kept even when a sibling is wrong, so the checks that follow still see
    it: dropping the whole section at the first bad value is what hid one problem behind another.
    """

    values: dict[str, Any]
    rejected: frozenset[str]


def parse_fields(cls: type, data: Any, where: str, problems: Problems, skip: tuple[str, ...] = ()) -> Fields | None:
    """The settings for dataclass `cls` in mapping `data` (scalars only); None if `data` is no mapping."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.add(where, "expected a mapping")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    rejected = set()
    for key in data:
        if key not in known:
            problems.add(f"{where}.{key}" if where else str(key), f"unknown key (known: {', '.join(sorted(known))})")
            rejected.add(str(key))
    values: dict[str, Any] = {}
    for name in known:
        if name not in data:
            continue
        good, value, expected = check_value(data[name], hints[name])
        if good:
            values[name] = value
        else:
            problems.add(f"{where}.{name}" if where else name, f"expected {expected}, got {data[name]!r}")
            rejected.add(name)
    return Fields(values, frozenset(rejected))

