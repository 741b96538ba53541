"""Strict, typed TOML configuration shared by the agent and the central side.

A config section is a frozen dataclass; `build()` turns parsed TOML into it and refuses
anything it does not know, naming the key path (``plans.daily.retry_spacing: unknown key; did
you mean retry_spacing_minutes?``). Secrets can come from the environment:
``METERLINK_<SECTION>_<KEY>`` overrides a top-level section's string key (e.g.
``METERLINK_MQTT_PASSWORD``). Bad configuration exits with 78 (EX_CONFIG), which systemd units
list in ``RestartPreventExitStatus`` so a typo does not turn into a restart loop.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = ["EX_CONFIG", "ConfigError", "build", "load_toml"]

EX_CONFIG = 78
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration a technician must fix; the message says where and what."""

    exit_code = EX_CONFIG


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def _env_overrides(cls: type[Any], data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Apply METERLINK_<SECTION>_<KEY> to string fields of top-level sections."""
    merged = dict(data)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            continue
        section = dict(merged.get(f.name, {}))
        sub_hints = get_type_hints(hint)
        for sub in dataclasses.fields(hint):
            var = f"{prefix}_{f.name}_{sub.name}".upper()
            if var in os.environ and sub_hints[sub.name] in (str, str | None):
                section[sub.name] = os.environ[var]
        if section:
            merged[f.name] = section
    return merged


def build(
    cls: type[T], data: Mapping[str, Any], path: str = "", *, env_prefix: str | None = None
) -> T:
    """Build dataclass `cls` from TOML data, strictly. Raises ConfigError naming the key path."""
    if env_prefix is not None:
        data = _env_overrides(cls, data, env_prefix)
    return typing.cast(T, _build_dataclass(cls, data, path))


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build_dataclass(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a table, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suggestion = f"; did you mean {hint[0]}?" if hint else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{_where(path, key)}: unknown key{suggestion}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        where = _where(path, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is typing.Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {_kind(value)}")
        (item,) = get_args(hint)[:1]
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        key_type, value_type = get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {_kind(value)}")
        return {
            _convert(key_type, k, where): _convert(value_type, v, _where(where, k))
            for k, v in value.items()
        }
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build_dataclass(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint is Any:
        return value
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(
        f"{where}: expected {getattr(hint, '__name__', hint)}, got {_kind(value)} {value!r}"
    )
