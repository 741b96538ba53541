"""Payloads in, InfluxDB line protocol and coverage facts out. Pure: no I/O.

Measurements (docs/influx.md has the full table):

- ``reading``      tags concentrator, meter, item; one field per value; time = data_time
- ``round``        tags concentrator, plan; time = the round's end
- ``read_failure`` tags concentrator, meter, plan; field reason; time = the round's end
- ``event``        tags concentrator, event, meter; time = at
- ``agent_status`` tags concentrator; time = at
- ``archive``      tags concentrator; fields version, meters; time = updated_at

Every point's identity (measurement, tags, time) comes from the payload itself, never from the
time it arrived, so a replayed payload overwrites its own points.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from protocols.payload_types import UNSET, Reading, ReadingsPayload
from protocols.tariff import TariffSetup

__all__ = [
    "DAILY_ITEM",
    "ArchiveFact",
    "Converted",
    "DailyRead",
    "Failure",
    "NotConvertible",
    "convert",
    "convert_readings",
    "epoch",
    "escape_tag",
    "field_value",
]

DAILY_ITEM = "daily_freeze"
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\\": "\\\\"})


def escape_tag(text: str) -> str:
    """Tag keys and values: comma, equals sign, space (and backslash, newline) escaped."""
    return text if text.isalnum() else text.translate(_TAG_ESCAPES)


def field_value(value: object) -> str:
    """A line-protocol field value: numbers are always floats (one type per field), text is a
    quoted string, booleans are booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


class NotConvertible(ValueError):
    """A payload its schema accepts whose values cannot be stored: an impossible date
    (``2026-02-30``: the schema's patterns check the shape of a time, not the calendar), a
    time InfluxDB cannot hold, a number SQLite cannot."""


_EPOCHS: dict[str, int] = {}
#: what InfluxDB can store (int64 nanoseconds: 1677-09-21 .. 2262-04-11), in whole seconds
MIN_EPOCH = -9_223_372_035
MAX_EPOCH = 9_223_372_035
#: the data days coverage can do date arithmetic on (a day, ± the streak horizon)
FIRST_DAY, LAST_DAY = "1677-09-22", "2262-04-10"
_MAX_INT64 = 2**63 - 1


def epoch(stamp: str) -> int:
    """Unix seconds of an ISO 8601 time with an offset (a time without one is taken as UTC).
    Raises `ValueError` for an impossible time or one outside what InfluxDB can store."""
    cached = _EPOCHS.get(stamp)
    if cached is not None:
        return cached
    when = dt.datetime.fromisoformat(stamp)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = int(when.timestamp())
    if not MIN_EPOCH <= seconds <= MAX_EPOCH:
        raise ValueError(f"{stamp}: outside the times InfluxDB can store")
    if len(_EPOCHS) > 100_000:  # bounded: readings of one batch mostly share their stamp
        _EPOCHS.clear()
    _EPOCHS[stamp] = seconds
    return seconds


class DailyRead(NamedTuple):
    """A daily freeze collected: the fact coverage counts (a tuple: one per reading, hot)."""

    concentrator: str
    meter: str
    day: str  # the freeze stamp's calendar date in the meter's local time
    day_start: int  # unix seconds of that local midnight
    read_at: int
    values: AbstractSet[str]  # the names of its values (a view of the payload's dict)
    backfill: bool


@dataclass(frozen=True, slots=True)
class Failure:
    """A meter a daily round could not read, with the agent's reason."""

    concentrator: str
    meter: str
    day: str
    reason: str
    detail: str
    reported_at: int


@dataclass(frozen=True, slots=True)
class ArchiveFact:
    concentrator: str
    version: int
    updated_at: int
    day_from: str  # the local date of updated_at: the first data day this version is in force
    meters: tuple[tuple[str, str, str, str], ...]  # meter, district, manufacturer, bus
    digest: str  # `archive_digest(meters, extras)`
    #: per meter (in `meters`' order): model, tariff_plan ("" when the archive has none)
    extras: tuple[tuple[str, str], ...] = ()


class Freeze(NamedTuple):
    """A daily freeze's forward energy (total, T1..Tn), for the tariff check's allocation step."""

    concentrator: str
    meter: str
    day: str
    total: float
    registers: tuple[float, ...]
    clock_offset_s: float | None


@dataclass(frozen=True, slots=True)
class TariffRead:
    """A tariff set-up an agent read (`protocols.tariff.TariffSetup.to_payload()`)."""

    concentrator: str
    meter: str
    read_at: int
    setup: dict[str, Any]


@dataclass
class Converted:
    lines: list[str] = field(default_factory=list)
    reads: list[DailyRead] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    archives: list[ArchiveFact] = field(default_factory=list)
    readings: int = 0
    freezes: list[Freeze] = field(default_factory=list)
    tariffs: list[TariffRead] = field(default_factory=list)


def _fields(pairs: Mapping[str, object]) -> str:
    return ",".join(f"{k}={field_value(v)}" for k, v in pairs.items() if v is not None)


_DAYS: dict[str, tuple[str, int]] = {}


def _data_day(data_time: str) -> tuple[str, int]:
    """(calendar date in the stamp's own offset, unix seconds of that local midnight)."""
    cached = _DAYS.get(data_time)
    if cached is None:
        stamp = dt.datetime.fromisoformat(data_time)
        midnight = dt.datetime.combine(stamp.date(), dt.time(), stamp.tzinfo or dt.UTC)
        cached = (stamp.date().isoformat(), int(midnight.timestamp()))
        if len(_DAYS) > 100_000:
            _DAYS.clear()
        _DAYS[data_time] = cached
    return cached


_ITEM_TAGS: dict[str, str] = {}
_TEXT_FIELDS: dict[str, str] = {}


def _item_tag(item: str) -> str:
    tag = _ITEM_TAGS.get(item)
    if tag is None:
        tag = escape_tag(item)
        if len(_ITEM_TAGS) > 10_000:
            _ITEM_TAGS.clear()
        _ITEM_TAGS[item] = tag
    return tag


def _text_field(text: str) -> str:
    """`field_value` of a short text that repeats (a plan name), remembered."""
    value = _TEXT_FIELDS.get(text)
    if value is None:
        value = field_value(text)
        if len(_TEXT_FIELDS) > 10_000:
            _TEXT_FIELDS.clear()
        _TEXT_FIELDS[text] = value
    return value


def _readings(payload: ReadingsPayload, out: Converted) -> None:
    """The hot path: a decoded payload (numbers are floats already) to lines and facts."""
    c = payload.concentrator
    head = f"reading,concentrator={escape_tag(c)},item="
    lines, reads = out.lines, out.reads
    new_read = tuple.__new__  # DailyRead's own __new__ is Python, this is not
    for r in payload.readings:
        values = r.values
        parts = [
            f"{name}={v.value!r}" if type(v.value) is float else f"{name}={field_value(v.value)}"
            for name, v in values.items()
        ]
        quality = "ok" if r.quality is UNSET else r.quality
        read_at = epoch(r.read_at)
        parts.append(f'quality="{quality}",read_at={read_at}i')
        if r.plan is not UNSET:
            parts.append(f"plan={_text_field(r.plan)}")
        if r.clock_offset_s is not UNSET:
            parts.append(f"clock_offset_s={r.clock_offset_s!r}")
        data_time, item, meter = r.data_time, r.item, r.meter
        lines.append(
            f"{head}{_item_tag(item)},meter={escape_tag(meter)}"
            f" {','.join(parts)} {epoch(data_time)}"
        )
        if item == DAILY_ITEM:
            day, day_start = _data_day(data_time)
            reads.append(
                new_read(
                    DailyRead,
                    (c, meter, day, day_start, read_at, values.keys(), quality == "backfill"),
                )
            )
            if _TOTAL in values:
                _freeze(c, r, day, out)
    out.readings += len(payload.readings)


_TOTAL = "energy_import_total_kwh"
_REGISTERS = tuple(f"energy_import_t{i}_kwh" for i in range(1, 5))


def _freeze(c: str, r: Reading, day: str, out: Converted) -> None:
    """The per-tariff energy of a daily freeze (T1.. as far as the freeze has them)."""
    values = r.values
    registers = []
    for name in _REGISTERS:
        v = values.get(name)
        if v is None or not isinstance(v.value, int | float):
            break
        registers.append(float(v.value))
    total = values[_TOTAL].value
    if registers and isinstance(total, int | float):
        offset = r.clock_offset_s
        out.freezes.append(
            Freeze(c, r.meter, day, float(total), tuple(registers),
                   float(offset) if isinstance(offset, int | float) else None)
        )  # fmt: skip


def _rounds(payload: dict[str, Any], out: Converted) -> None:
    c = escape_tag(payload["concentrator"])
    plan = payload["plan"]
    at = epoch(payload["ended_at"])
    failed = payload["failed"]
    fields = {
        "round_id": payload["round_id"],
        "expected": payload["expected"],
        "collected": payload["read"],  # READ is an InfluxQL keyword
        # a report sent in parts (`part`): every part writes this same point, so the whole count
        "failed": payload["part"]["failed_total"] if "part" in payload else len(failed),
        "final": payload.get("final", False),
        "duration_s": payload.get("duration_s"),
        "data_day": payload.get("data_day"),
    }
    out.lines.append(f"round,concentrator={c},plan={escape_tag(plan)} {_fields(fields)} {at}")
    for f in failed:
        detail = {"reason": f["reason"], "detail": f.get("detail"), "attempts": f.get("attempts")}
        out.lines.append(
            f"read_failure,concentrator={c},meter={escape_tag(f['meter'])},plan={escape_tag(plan)}"
            f" {_fields(detail)} {at}"
        )
    day = payload.get("data_day")
    if day is not None:
        _check_day(day)
    if plan == "daily" and day is not None:
        out.failures += [
            Failure(payload["concentrator"], f["meter"], day, f["reason"], f.get("detail", ""), at)
            for f in failed
        ]


def _event(payload: dict[str, Any], out: Converted) -> None:
    tags = f"event,concentrator={escape_tag(payload['concentrator'])},event={payload['event']}"
    if payload.get("meter"):
        tags += f",meter={escape_tag(payload['meter'])}"
    fields = {
        "detail": json.dumps(payload.get("detail", {}), sort_keys=True),
        "bus": payload.get("bus"),
    }
    out.lines.append(f"{tags} {_fields(fields)} {epoch(payload['at'])}")


def _status(payload: dict[str, Any], out: Converted) -> None:
    fields = {
        "state": payload["state"],
        "online": payload["state"] == "online",
        "version": payload.get("version"),
        "archive_version": payload.get("archive_version"),
        "outbox_depth": payload.get("outbox_depth"),
    }
    out.lines.append(
        f"agent_status,concentrator={escape_tag(payload['concentrator'])} {_fields(fields)}"
        f" {epoch(payload['at'])}"
    )


def _check_day(day: str) -> None:
    if not FIRST_DAY <= dt.date.fromisoformat(day).isoformat() <= LAST_DAY:
        raise ValueError(f"data day {day} is outside {FIRST_DAY} .. {LAST_DAY}")


def archive_digest(
    meters: tuple[tuple[str, str, str, str], ...], extras: tuple[tuple[str, str], ...] = ()
) -> str:
    """The archive's content as coverage uses it (meter, district, manufacturer, bus), in any
    order: two archives with the same digest expect the same meters the same way. The model
    and tariff plan (`extras`, per meter in the same order) count only when an archive names a
    tariff plan, so an archive without one keeps the digest it had before they were kept (a
    retained copy seen again after an upgrade is not taken for a new version)."""
    if not any(plan for _, plan in extras):
        return hashlib.sha256(json.dumps(sorted(meters)).encode()).hexdigest()
    rows = sorted([*m, *e] for m, e in zip(meters, extras, strict=True))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _archive(payload: dict[str, Any], out: Converted) -> None:
    c = payload["concentrator"]
    at = epoch(payload["updated_at"])
    updated = dt.datetime.fromisoformat(payload["updated_at"])
    version = payload["version"]
    if version > _MAX_INT64:
        raise ValueError(f"archive version {version} does not fit in 64 bits")
    meters = tuple(
        (m["meter"], m.get("district", ""), m.get("manufacturer", ""), m["bus"])
        for m in payload["meters"]
    )
    extras = tuple((m.get("model", ""), m.get("tariff_plan", "")) for m in payload["meters"])
    listed = Counter(m[0] for m in meters)
    if len(listed) < len(meters):  # the ledger keys an archive's meters by their id
        twice = min(m for m, n in listed.items() if n > 1)
        raise NotConvertible(f"archive lists meter {twice!r} more than once")
    day_from = updated.date().isoformat()
    out.archives.append(
        ArchiveFact(c, version, at, day_from, meters, archive_digest(meters, extras), extras)
    )
    fields = {"version": payload["version"], "meters": len(meters)}
    out.lines.append(f"archive,concentrator={escape_tag(c)} {_fields(fields)} {at}")


def _setup_keys() -> frozenset[str]:
    """The keys of a set-up's payload form (`protocols.tariff.TariffSetup.to_payload`)."""
    return frozenset(TariffSetup(read_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).to_payload())


_SETUP_KEYS = _setup_keys()


def _tariff(payload: dict[str, Any], out: Converted) -> None:
    """A tariff set-up read (the agent's ``tariff`` payload: one meter's set-up, or several
    under ``meters``): the set-up goes to the tariff check's store, a point per meter to
    InfluxDB (``tariff_read``: why it was read, how many items the meter denied)."""
    c = payload["concentrator"]
    items = payload["meters"] if isinstance(payload.get("meters"), list) else [payload]
    for item in items:
        setup = {k: v for k, v in item.items() if k in _SETUP_KEYS}
        if "setup" in item and isinstance(item["setup"], dict):
            setup = item["setup"]
        TariffSetup.from_payload(setup)  # strict: a set-up the check cannot read is refused
        read_at = epoch(setup["read_at"])
        meter = item["meter"]
        out.tariffs.append(TariffRead(c, meter, read_at, setup))
        fields = {
            "reason": item.get("reason"),
            "unsupported": len(setup.get("unsupported") or ()),
            "clock_offset_s": item.get("clock_offset_s"),
        }
        out.lines.append(
            f"tariff_read,concentrator={escape_tag(c)},meter={escape_tag(meter)}"
            f" {_fields(fields)} {read_at}"
        )


def _readings_dict(payload: dict[str, Any], out: Converted) -> None:
    _readings(msgspec.convert(payload, ReadingsPayload), out)


_CONVERTERS = {
    "tariff": _tariff,
    "readings": _readings_dict,
    "rounds": _rounds,
    "events": _event,
    "status": _status,
    "archive": _archive,
}


def convert(kind: str, payload: dict[str, Any], out: Converted) -> None:
    """Add the points and facts of one schema-valid payload to `out`: all of them, or — when
    a value cannot be stored — none, raising `NotConvertible`."""
    _all_or_none(kind, lambda: _CONVERTERS[kind](payload, out), out)


def convert_readings(payload: ReadingsPayload, out: Converted) -> None:
    """`convert` of a readings payload `protocols.payloads.decode_readings` decoded."""
    _all_or_none("readings", lambda: _readings(payload, out), out)


def _all_or_none(kind: str, add: Callable[[], None], out: Converted) -> None:
    marks = (len(out.lines), len(out.reads), len(out.failures), len(out.archives), out.readings,
             len(out.freezes), len(out.tariffs))  # fmt: skip
    try:
        add()
    except Exception as exc:
        del out.lines[marks[0] :], out.reads[marks[1] :], out.failures[marks[2] :]
        del out.archives[marks[3] :], out.freezes[marks[5] :], out.tariffs[marks[6] :]
        out.readings = marks[4]
        raise NotConvertible(
            f"{kind} payload not convertible: {type(exc).__name__}: {exc}"
        ) from exc
