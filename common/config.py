"""Strict, typed TOML configuration shared by the agent and the central side.

A config section is a frozen dataclass; `build()` turns parsed TOML into it and refuses
anything it does not know, naming the key path (``plans.daily.retry_spacing: unknown key; did
you mean retry_spacing_minutes?``). A key that was renamed or removed says so
(``mqtt.keepalive: renamed to keepalive_s``): a section lists those in a ``config_moved``
class attribute. Bad configuration exits with 78 (EX_CONFIG), which systemd units list in
``RestartPreventExitStatus`` so a typo does not turn into a restart loop.

**Secrets — the one rule.** A secret (a password, a token, a key) is a field typed `Secret`. It
is never written in a config file and comes only from the environment, as
``METERLINK_<SECTION>_<KEY>`` (``METERLINK_MQTT_PASSWORD``, ``METERLINK_MQTT_COMMAND_KEY``,
``METERLINK_INFLUX_TOKEN``, …; for a nested section the dotted path with underscores); systemd
units read them from ``EnvironmentFile=/etc/meterlink/<unit>.env`` (mode 0600). So a config file
can be read, copied into a ticket or kept in configuration management without leaking anything.

- A secret key in the file is a configuration error naming its variable; so is a variable
  named after a key that is *not* a secret (``METERLINK_MQTT_HOST``: the environment does not
  override the file) and one that looks like a misspelt secret. An empty variable is unset.
- `Secret` prints as ``********`` (``str``, ``repr``, ``format``, a dataclass's ``repr``, a JSON
  dump with ``default=str``); only `Secret.reveal()` gives the value, and only code that hands
  it to a library (the MQTT client, the HTTP writer, the HMAC) calls it. Never log it, never
  put it in an exception message; `dump()` shows where each secret came from, not its value.
- A new secret in any section follows this rule by being typed `Secret | None`: nothing else
  is needed (tests/deploy/test_secrets.py runs the daemons and greps their output).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = [
    "EX_CONFIG",
    "ConfigError",
    "Secret",
    "build",
    "describe_secrets",
    "dump",
    "load_toml",
    "parse_listen",
    "secret_sources",
]

EX_CONFIG = 78
ENV_PREFIX = "METERLINK"
MASK = "********"
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration a technician must fix; the message says where and what."""

    exit_code = EX_CONFIG


class Secret:
    """A secret string that does not print: see the module docstring."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "") -> None:
        self._value = value
        self.source = source
        """where it came from (the environment variable's name), for `dump` and `agent check`"""

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self  # immutable; `dataclasses.asdict` copies values

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled")


def parse_listen(text: str, example: str = "127.0.0.1:8480") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8480`` for IPv6) a server listens on; raises `ValueError` saying
    what is wrong (`example` is the one the message shows)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen {text!r}: expected host:port, e.g. {example}")
    return host, int(port)


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


def env_name(path: str, key: str, prefix: str = ENV_PREFIX) -> str:
    """``METERLINK_MQTT_PASSWORD`` for key ``password`` of section ``mqtt``."""
    return "_".join([prefix, *path.split("."), key]).upper() if path else f"{prefix}_{key}".upper()


def _is_secret(hint: Any) -> bool:
    return hint is Secret or (
        get_origin(hint) in (types.UnionType, typing.Union) and Secret in get_args(hint)
    )


def _keys(cls: type[Any], path: str = "") -> Iterator[tuple[str, bool]]:
    """(dotted key, is a secret) of every key of `cls`, into nested sections (not arrays)."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        where = _where(path, f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from _keys(hint, where)
        else:
            yield where, _is_secret(hint)


def _has_secrets(hint: Any) -> bool:
    return (
        isinstance(hint, type)
        and dataclasses.is_dataclass(hint)
        and any(secret for _, secret in _keys(hint))
    )


@dataclasses.dataclass
class _Env:
    prefix: str
    environ: Mapping[str, str]


def _check_environment(cls: type[Any], env: _Env) -> None:
    """Refuse METERLINK_* variables that name a non-secret key or look like a misspelt secret."""
    secrets: dict[str, str] = {}
    others: dict[str, str] = {}
    for dotted, secret in _keys(cls):
        section, _, key = dotted.rpartition(".")
        (secrets if secret else others)[env_name(section, key, env.prefix)] = dotted
    for var in sorted(env.environ):
        if not var.startswith(f"{env.prefix}_") or var in secrets:
            continue
        if var in others:
            raise ConfigError(
                f"{var}: only secrets are read from the environment; set {others[var]} in the"
                " config file"
            )
        close = difflib.get_close_matches(var, secrets, n=1, cutoff=0.9)
        if close:
            raise ConfigError(f"{var}: not a setting; did you mean {close[0]}?")


def build(
    cls: type[T],
    data: Mapping[str, Any],
    path: str = "",
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build dataclass `cls` from TOML data, strictly. Raises ConfigError naming the key path.

    With `env_prefix` (a whole config file), secrets are taken from `environ` (default:
    `os.environ`) and stray variables of that prefix are refused; without it, secrets stay
    unset. A secret in `data` is refused either way."""
    env = None
    if env_prefix is not None:
        env = _Env(env_prefix, os.environ if environ is None else environ)
        _check_environment(cls, env)
    return typing.cast(T, _build_dataclass(cls, data, path, env))


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build_dataclass(cls: type[Any], data: Any, path: str, env: _Env | None = None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a table, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    moved: Mapping[str, str] = getattr(cls, "config_moved", {})
    for key in data:
        if key in moved:
            raise ConfigError(f"{_where(path, key)}: {moved[key]}")
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suggestion = f"; did you mean {hint[0]}?" if hint else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{_where(path, key)}: unknown key{suggestion}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        where = _where(path, name)
        if _is_secret(hints[name]):
            var = env_name(path, name, env.prefix if env else ENV_PREFIX)
            if name in data:
                raise ConfigError(
                    f"{where}: a secret is never written in the config file; set {var} in the"
                    " environment (systemd: EnvironmentFile=)"
                )
            value = env.environ.get(var, "") if env is not None and "[" not in path else ""
            if value:
                kwargs[name] = Secret(value, var)
            continue
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], where, env)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key is missing")
        elif env is not None and _has_secrets(hints[name]):
            kwargs[name] = _build_dataclass(hints[name], {}, where, env)  # its secrets
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _convert(hint: Any, value: Any, where: str, env: _Env | None = None) -> Any:
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
                return _convert(option, value, where, env)
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
        return _build_dataclass(hint, value, where, env)
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


def secret_sources(cfg: Any, path: str = "") -> dict[str, str | None]:
    """Every secret key of `cfg` (dotted) and the variable it came from (None: not set)."""
    out: dict[str, str | None] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = _where(path, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(secret_sources(value, where))
        elif _is_secret(get_type_hints(type(cfg))[f.name]):
            out[where] = value.source if isinstance(value, Secret) else None
    return out


def describe_secrets(cfg: Any) -> list[str]:
    """One line per secret key: whether it is set and from which variable (never its value)."""
    return [
        f"secret {key}: set from {source}"
        if source
        else f"secret {key}: not set ({env_name(*key.rpartition('.')[::2])} is empty or unset)"
        for key, source in secret_sources(cfg).items()
    ]


def dump(cfg: Any) -> str:
    """The effective configuration (defaults included) as JSON, secrets masked."""
    return json.dumps(dataclasses.asdict(cfg), indent=2, ensure_ascii=False, default=str)
