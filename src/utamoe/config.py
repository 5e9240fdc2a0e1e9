"""Typed configs built from plain dicts (YAML), with errors that name the key at fault.

Every config in utamoe is a dataclass. `from_dict` builds one from a mapping and
rejects unknown keys (with a "did you mean" hint) and values of the wrong type,
so a typo in a YAML recipe fails at load time instead of silently doing nothing.
Configs are data: no devices, process groups or callables inside them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and says what to do."""


def _type_ok(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(
            _type_ok(v, args[0]) for v in value
        ) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _coerce_float(value: Any, hint: Any) -> Any:
    """YAML 1.1 reads `3e-4` (no dot) as a string; accept it where a float is expected."""
    if not isinstance(value, str):
        return value
    floats = hint is float or (
        get_origin(hint) in (typing.Union, types.UnionType) and float in get_args(hint)
    )
    if floats:
        try:
            return float(value)
        except ValueError:
            return value
    return value


_YAML11_WORDS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def _coerce_word(value: Any, hint: Any) -> Any:
    """YAML 1.1 reads `no`, `off`, `yes`, `on` as booleans; where a string choice is expected and
    exactly one choice is such a word (`mixed_precision: no`), the boolean means that word."""
    if not isinstance(value, bool) or get_origin(hint) is not Literal:
        return value
    words = [a for a in get_args(hint) if isinstance(a, str) and a.lower() in _YAML11_WORDS[value]]
    return words[0] if len(words) == 1 else value


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (also inside `X | None`), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (typing.Union, types.UnionType):
        found = [h for h in get_args(hint) if dataclasses.is_dataclass(h)]
        return found[0] if len(found) == 1 else None
    return None


def _list_of_dataclass(hint: Any) -> type | None:
    """X when the field holds `list[X]` (also inside `... | None`) with X a dataclass."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        found = [h for h in map(_list_of_dataclass, get_args(hint)) if h is not None]
        return found[0] if len(found) == 1 else None
    if get_origin(hint) is list:
        args = get_args(hint)
        return args[0] if args and dataclasses.is_dataclass(args[0]) else None
    return None


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `data`; `where` (e.g. "recipe.yaml: model.moe") prefixes errors."""
    data = dict(data or {})
    prefix = f"{where}." if where else ""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{prefix}{key}'{hint}; valid keys: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        nested = _dataclass_in(hint)
        value = _coerce_word(_coerce_float(value, hint), hint)
        item = _list_of_dataclass(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, prefix + name)
        elif item is not None and isinstance(value, list) and all(isinstance(v, dict) for v in value):
            value = [from_dict(item, v, f"{prefix}{name}.{i}") for i, v in enumerate(value)]
        elif not _type_ok(value, hint):
            raise ConfigError(
                f"config key '{prefix}{name}' must be {_describe(hint)}, got {value!r}"
            )
        if isinstance(value, list) and get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict (YAML/JSON-ready) form of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))
