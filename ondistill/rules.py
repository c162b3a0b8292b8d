"""A config key's rules, declared beside its field: its range (a predicate and the words for
it) and whether it is operational (may differ when a run is continued). The schema
(ondistill/config.py) declares them; the walks here read them, through nested sections and
lists of sections, so no table elsewhere names a key. Choices are enums in the schema.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any


class ConfigError(ValueError):
    pass


def ranged(default: Any, ok: Callable[[Any], bool], must: str, operational: bool = False) -> Any:
    """A field whose value must satisfy `ok`, described to the user as `must` (e.g. ">= 1")."""
    return dataclasses.field(
        default=default, metadata={"ok": ok, "must": must, "operational": operational}
    )


def operational(default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A field that changes how a run is carried out, not what it computes (threads, logging,
    placement): a continued run may change it."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"operational": True})
    return dataclasses.field(default=default, metadata={"operational": True})


def at_least(n: int, default: Any, note: str = "", operational: bool = False) -> Any:
    return ranged(default, lambda v: v >= n, f">= {n}{note}", operational)


def unit(default: Any, low_open: bool = False, high_open: bool = False) -> Any:
    """A value in [0, 1], either end open when asked."""
    must = f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    return ranged(
        default,
        lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1),
        must,
    )


def positive(default: Any) -> Any:
    return ranged(default, lambda v: v > 0, "> 0")


def check_values(node: Any, key: str = "") -> None:
    """Every range and choice under the dataclass `node`, named `key` + the field's path in the
    error (teachers[1].engine.threads); ConfigError on the first bad value."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, name = getattr(node, f.name), f"{key}{f.name}"
        choices = _enum_of(hints[f.name])
        if choices is not None and value is not None and value not in set(choices):
            allowed = [c.value for c in choices]
            raise ConfigError(
                f"{name}={str(value)!r} is not valid; choose one of: {', '.join(allowed)} "
                f"(e.g. {name}={allowed[0]})."
            )
        if "ok" in f.metadata and not f.metadata["ok"](value):
            raise ConfigError(f"{name}={value!r} is out of range; it must be {f.metadata['must']}.")
        if dataclasses.is_dataclass(value):
            check_values(value, f"{name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_values(item, f"{name}[{i}].")


def is_operational(schema: type, key: str) -> bool:
    """Whether the flattened key (e.g. "teachers[0].engine.threads", outdir.flatten) is, or lies
    under, a field marked operational in the dataclass `schema`."""
    cls: Any = schema
    for name in re.sub(r"\[\d+\]", "", key).split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
        if f is None:
            return False
        if f.metadata.get("operational"):
            return True
        cls = _element(typing.get_type_hints(cls)[name])
    return False


def _element(hint: Any) -> Any:
    """The dataclass inside a field's type: list[X] -> X, X | None -> X."""
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return hint


def _enum_of(hint: Any) -> type[Enum] | None:
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, Enum):
            return t
    return None
