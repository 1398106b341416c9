"""How a ``params.yaml`` section becomes a checked frozen dataclass: field constraints (:func:`param`), type
conversion, range checks and the error messages that name the key, the value and what is allowed. The
sections themselves are in :mod:`segdet.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union, get_args, get_origin

from segdet.stage import UserError

log = logging.getLogger(__name__)

#: a number in exponent notation without a dot (``1e-3``), which YAML 1.1 (PyYAML) reads as a string
_YAML11_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


class ConfigError(UserError):
    """A parameter is unknown, of the wrong type or out of range. The message names the key."""


def param(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field carrying its constraints (``ge``, ``gt``, ``le``, ``lt``, ``pattern``, ``choices``) and
    ``why``, a reason added to the out-of-range message."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=spec)
    return field(default=default, metadata=spec)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix} = {raw!r} must be a mapping of keys (got {type(raw).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix, key, fields))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        kwargs[name] = _convert(raw[name], hints[name], f"{prefix}.{name}", f.metadata)
    return cls(**kwargs)


def _unknown_key_message(prefix: str, key: str, valid: Any) -> str:
    names = list(valid)
    where = f"{prefix}: unknown key" if prefix else "unknown section"
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where} {key!r}{hint}; valid: {', '.join(names)}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, spec: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if value is False and spec.get("false_is_null"):
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, spec)
        errors = []  # several alternatives (``int | Literal["auto"]``): the first that takes the value
        for alt in inner:
            try:
                return _convert(value, alt, key, spec)
            except ConfigError as exc:
                errors.append(str(exc))
        in_range = [e for e in errors if "out of range" in e]  # the value has the right type but not the range
        if in_range:
            raise ConfigError(in_range[0])
        words = [_type_name(a) if get_origin(a) is not Literal else " or ".join(map(repr, get_args(a))) for a in inner]
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {' or '.join(words)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected {_type_name(tp)}")
        item_tp = get_args(tp)[0]
        return tuple(_convert(v, item_tp, f"{key}[{i}]", {}) for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:  # pragma: no cover - programming error
        raise ConfigError(f"{key}: unsupported type {tp}")
    if not ok and tp is float and isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        # YAML 1.1 (PyYAML, which segdet reads params.yaml with) reads 1e-3 as a string; DVC's YAML 1.2 reader
        # and this conversion read it as 0.001
        log.info("%s = %r is a string in YAML 1.1 (a float needs a dot: 1.0e-3); read as %g", key, value,
                 float(value))
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected {_type_name(tp)}")
    if tp is float:
        value = float(value)
    _check_range(value, key, spec)
    return value


def _check_range(value: Any, key: str, spec: Any) -> None:
    checks = [
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ]
    bounds = [f"{sym} {spec[name]}" for name, _, sym in checks if name in spec]
    for name, test, _sym in checks:
        if name in spec and not test(value, spec[name]):
            why = f" ({spec['why']})" if "why" in spec else ""
            raise ConfigError(f"{key} = {value!r} is out of range: expected a value {' and '.join(bounds)}{why}")
    if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
        allowed = spec["pattern"].replace(r"\d+", "N").replace("|", ", ")
        raise ConfigError(f"{key} = {value!r} is not allowed; expected one of: {allowed}")


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"split.train": 0.7, "seg.source": "synthetic", ...}`` for logging a config as flat params."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        elif isinstance(value, tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = value
    return out
