"""The readings payload as `msgspec` structs: the one source of its JSON Schema
(``docs/schemas/readings.json``, through `protocols.payloads.SCHEMAS`) and of the decoder the
central consumer checks every reading with, in the same pass that parses the JSON.

Readings are nearly all of the traffic (millions a day), so they get a typed decoder; the
other payloads (rounds, events, archives, status, commands) are a few per concentrator and day
and keep their schemas as data in `protocols.payloads`. The patterns shared by both live here.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Generic, Literal, TypeVar, cast, get_args, get_origin

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "CONCENTRATOR_ID",
    "DAY_PATTERN",
    "ITEM_PATTERN",
    "NAME_PATTERN",
    "TIME_PATTERN",
    "UNSET",
    "CheckedDecoder",
    "Reading",
    "ReadingsPayload",
    "Value",
    "struct_schema",
]

CONCENTRATOR_ID: Final = r"^[A-Za-z0-9_.-]{1,64}$"
#: ISO 8601 with seconds and an explicit offset (a pattern, so every validator agrees on it)
TIME_PATTERN: Final = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"
DAY_PATTERN: Final = r"^\d{4}-\d\d-\d\d$"
#: a measurement name (protocols.measurements) or an event name
NAME_PATTERN: Final = r"^[a-z][a-z0-9_]*$"
#: a data item: its name, or a DL/T 645 identifier in hex (1997: 4 digits, 2007: 8)
ITEM_PATTERN: Final = r"^([a-z][a-z0-9_]*|[0-9A-F]{4}|[0-9A-F]{8})$"

Time = Annotated[str, Meta(pattern=TIME_PATTERN)]
MeterId = Annotated[str, Meta(min_length=1, max_length=64)]
Name = Annotated[str, Meta(pattern=NAME_PATTERN)]


class Value(Struct, forbid_unknown_fields=True, gc=False):
    """One value: a number (written as a float), or text for identities and clock readings."""

    value: float | str
    unit: str | None
    flags: list[str] | UnsetType = UNSET


class Reading(Struct, forbid_unknown_fields=True, gc=False):
    """One meter's values for one data item at one time, identified by (meter, item,
    data_time)."""

    meter: MeterId
    item: Annotated[str, Meta(pattern=ITEM_PATTERN)]
    data_time: Time
    read_at: Time
    values: dict[Name, Value]
    plan: str | UnsetType = UNSET
    quality: Literal["ok", "clock_suspect", "backfill"] | UnsetType = UNSET
    clock_offset_s: float | UnsetType = UNSET
    bus: str | UnsetType = UNSET


class ReadingsPayload(Struct, forbid_unknown_fields=True, gc=False):
    """A batch of readings. A reading is identified by (meter, item, data_time)."""

    schema: Literal["meterlink.readings/1"]
    concentrator: Annotated[str, Meta(pattern=CONCENTRATOR_ID)]
    batch_id: Annotated[str, Meta(min_length=1)]
    sent_at: Time
    readings: Annotated[list[Reading], Meta(min_length=1)]


def struct_schema(struct: type[Struct], schema_id: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) document of a payload struct: msgspec's own, with the
    payload struct at the top and the structs it uses under ``$defs``."""
    generated = msgspec.json.schema(struct)
    defs = dict(generated["$defs"])
    top = defs.pop(struct.__name__)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "title": top.pop("description", top.pop("title")),
        **{k: v for k, v in top.items() if k != "title"},
        "$defs": defs,
    }


class _Seen:
    """A pattern, and the strings that matched it lately: readings repeat their value names,
    items and times, so each is searched for once, not once per reading. Called with a
    string: whether it matches; `each` checks every string of an iterable (a dict's keys)."""

    def __init__(self, pattern: str) -> None:
        self._search = re.compile(pattern).search
        self.seen: set[str] = set()
        contains, ok = self.seen.__contains__, self.ok
        self.each: Callable[[Any], bool] = lambda texts: (
            all(map(contains, texts)) or all(map(ok, texts))
        )

    def __call__(self, text: str) -> bool:
        return text in self.seen or self.ok(text)

    def ok(self, text: str) -> bool:
        if text in self.seen:
            return True
        if self._search(text) is None:
            return False
        if len(self.seen) >= 100_000:
            self.seen.clear()
        self.seen.add(text)
        return True


Check = Callable[[Any], bool]
S = TypeVar("S", bound=Struct)


class CheckedDecoder(Generic[S]):
    """Decodes JSON into `struct` with exactly the struct's verdicts, faster: a twin of the
    struct (derived from it: the same fields, their patterns left out) decodes, then the
    patterns are checked against the strings that matched before. When anything is refused,
    the struct's own decoder decodes again and raises msgspec's error, with its path.

    The twin keeps every other constraint (types, lengths, unknown fields); a pattern may sit
    on a string field, on a dict's keys, inside lists and nested structs — anywhere else the
    derivation raises `TypeError`, at import."""

    def __init__(self, struct: type[S]) -> None:
        self._exact = msgspec.json.Decoder(struct)
        twin, check = self._derive(struct)
        self._check: Check = check or (lambda _value: True)
        self._fast = msgspec.json.Decoder(twin)

    def decode(self, body: bytes) -> S:
        try:
            value = self._fast.decode(body)
        except msgspec.ValidationError:
            return self._exact.decode(body)  # raises, saying what and where
        if not self._check(value):
            return self._exact.decode(body)
        return cast(S, value)

    def _derive(self, struct: type[Struct]) -> tuple[type[Struct], Check | None]:
        """The twin of `struct` and the check of its patterns (`struct` itself and None when
        no pattern is in it)."""
        fields: list[Any] = []
        checks: list[tuple[str, Check]] = []
        changed = False
        for f in msgspec.structs.fields(struct):
            tp, check = self._strip(f.type)
            changed |= tp is not f.type
            fields.append((f.name, tp) if f.required else (f.name, tp, f.default))
            if check is not None:
                checks.append((f.name, check))
        if not changed and not checks:
            return struct, None
        config = struct.__struct_config__
        twin = msgspec.defstruct(
            f"{struct.__name__}Twin",
            fields,
            forbid_unknown_fields=config.forbid_unknown_fields,
            gc=config.gc,
        )

        # one expression of every field's check, compiled once per struct: a reading is checked
        # without a call per field (a string seen before costs a set lookup)
        scope: dict[str, Any] = {}
        terms = []
        for i, (name, check) in enumerate(checks):
            if not name.isidentifier():
                raise TypeError(f"{struct.__name__}.{name}: not an identifier")
            if isinstance(check, _Seen):
                scope[f"s{i}"], scope[f"o{i}"] = check.seen, check.ok
                terms.append(f"(obj.{name} in s{i} or o{i}(obj.{name}))")
            else:
                scope[f"c{i}"] = check
                terms.append(f"c{i}(obj.{name})")
        # the source is made of our own structs' field names (checked above), never of input
        exec(f"def check_all(obj):\n    return {' and '.join(terms)}\n", scope)  # noqa: S102
        check_all: Check = scope["check_all"]
        return twin, check_all

    def _strip(self, tp: Any) -> tuple[Any, Check | None]:
        origin, args = get_origin(tp), get_args(tp)
        if origin is Annotated:
            metas = [m for m in args[1:] if isinstance(m, Meta)]
            patterns = [m.pattern for m in metas if m.pattern is not None]
            if not patterns:  # constraints on the container: kept, around its twin
                inner, check = self._strip(args[0])
                if inner is args[0]:
                    return tp, check
                return Annotated[(inner, *args[1:])], check
            if args[0] is not str or len(metas) != 1 or _others(metas[0]):
                raise TypeError(f"{tp}: a pattern only alone on a str")
            return str, _Seen(patterns[0])
        if isinstance(tp, type) and issubclass(tp, Struct):
            return self._derive(tp)
        if origin is list:
            item, check = self._strip(args[0])
            if check is None:
                return tp, None
            return list[item], lambda values: all(map(check, values))  # type: ignore[valid-type]
        if origin is dict:
            key, key_check = self._strip(args[0])
            value, value_check = self._strip(args[1])
            if key_check is None and value_check is None:
                return tp, None
            if value_check is None:  # the usual case: names as keys
                key_pattern = get_args(args[0])[1].pattern
                return dict[key, value], _Seen(key_pattern).each  # type: ignore[valid-type]
            ok_key = key_check or (lambda _k: True)
            return dict[key, value], lambda d: all(  # type: ignore[valid-type]
                ok_key(k) and value_check(v) for k, v in d.items()
            )
        if any(self._strip(a)[1] is not None for a in args):
            raise TypeError(f"{tp}: a pattern inside it is not supported")
        return tp, None


def _others(meta: Meta) -> bool:
    """Whether `meta` constrains more than a pattern."""
    keys = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz")
    return any(getattr(meta, k) is not None for k in keys)
