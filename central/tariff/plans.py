"""Tariff plans as the utility declares them (电价方案): a strict TOML file, and the plan's
tariff function f_plan(date, minute) → tariff, one 1440-minute vector per day.

A plan belongs to a customer class or meter group; the archive names the plan each meter must
follow (``tariff_plan``). A plan is a list of *versions*, each in force from its ``effective``
date (local calendar, 00:00) until the next one. A version holds the time-of-use plan (year
zones, daily tables, weekend rule, holidays, number of tariffs) and, for local-prepaid plans
(``mode = "local"``), the prices per tariff and the ladder. docs/tariff.md has the format and
deploy/tariff-plans.example.toml a commented example.

Selection, per day: a holiday's table, else the weekend table on a rest day, else the table of
the year zone the date falls in (the last zone starting on or before it; before the first zone
the last zone, wrapping over New Year, as the meter does). Within a day the period starting
last at or before the minute; before the first period the last one (wrapping over midnight).
Holiday over weekend over zone is the standard's precedence (topup-tariff.md §C.2 marks it
UNCONFIRMED; the plan is what the utility decided, so it is what the meter must do).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
import tomllib
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from common.config import ConfigError, build

__all__ = [
    "MINUTES",
    "WEEKDAYS",
    "HolidaySpec",
    "LadderSpec",
    "PeriodSpec",
    "Plan",
    "PlanBook",
    "PlanVersion",
    "ZoneSpec",
    "parse_plans",
    "table_vector",
]

MINUTES = 1440
#: weekday names as the file writes them; index = Python's weekday() (Monday = 0)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: firmware limits (topup-tariff.md §C.1)
MAX_ZONES, MAX_TABLES, MAX_PERIODS, MAX_TARIFFS, MAX_HOLIDAYS, MAX_LADDER = 14, 8, 14, 4, 254, 6
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MMDD = re.compile(r"^(\d\d)-(\d\d)$")
_HHMM = re.compile(r"^(\d\d):(\d\d)$")


def _mmdd(text: str) -> tuple[int, int]:
    m = _MMDD.match(text)
    if not m:
        raise ValueError(f"{text!r} is not MM-DD")
    month, day = int(m[1]), int(m[2])
    try:
        dt.date(2024, month, day)  # a leap year: 02-29 is a valid zone start
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar day") from None
    return month, day


def _hhmm(text: str) -> int:
    m = _HHMM.match(text)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"{text!r} is not a time of day HH:MM (00:00..23:59)")
    return int(m[1]) * 60 + int(m[2])


@dataclass(frozen=True)
class ZoneSpec:
    """A year zone (时区): from `start` (MM-DD) on, daily table `table`."""

    start: str
    table: int

    def __post_init__(self) -> None:
        _mmdd(self.start)

    @property
    def month_day(self) -> tuple[int, int]:
        return _mmdd(self.start)


@dataclass(frozen=True)
class PeriodSpec:
    """A period (时段) of a daily table: from `start` (HH:MM) on, tariff `tariff` (1 尖, 2 峰,
    3 平, 4 谷)."""

    start: str
    tariff: int

    def __post_init__(self) -> None:
        _hhmm(self.start)

    @property
    def minute(self) -> int:
        return _hhmm(self.start)


@dataclass(frozen=True)
class HolidaySpec:
    """A public holiday (公共假日): on `date`, daily table `table`."""

    date: dt.date
    table: int

    def __post_init__(self) -> None:
        if isinstance(self.date, dt.datetime):
            raise ValueError(f"holiday {self.date}: a date (YYYY-MM-DD), not a date and time")


@dataclass(frozen=True)
class LadderSpec:
    """The ladder (阶梯) of a local-prepaid plan: `thresholds` in kWh (ascending, ≤ 6),
    `prices` yuan/kWh (one more than thresholds), `settlement` days MM-DD (empty = monthly)."""

    thresholds: list[float]
    prices: list[float]
    settlement: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.thresholds) > MAX_LADDER:
            raise ValueError(f"ladder: at most {MAX_LADDER} thresholds")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise ValueError("ladder: thresholds must ascend")
        if len(self.prices) != len(self.thresholds) + 1:
            raise ValueError(
                f"ladder: {len(self.thresholds)} thresholds need {len(self.thresholds) + 1} prices,"
                f" got {len(self.prices)}"
            )
        if any(p < 0 for p in self.prices) or any(t < 0 for t in self.thresholds):
            raise ValueError("ladder: thresholds and prices must be >= 0")
        if len(self.settlement) > 4:
            raise ValueError("ladder: at most 4 settlement days")
        for s in self.settlement:
            _mmdd(s)


@dataclass(frozen=True)
class PlanVersion:
    """What is in force from `effective` (00:00 local) until the next version."""

    effective: dt.date
    #: number of tariffs (费率数 k), 1..4
    tariffs: int
    zones: list[ZoneSpec]
    #: daily tables by number "1".."8" (日时段表)
    tables: dict[str, list[PeriodSpec]]
    #: weekdays on which `weekend_table` applies (周休日); the others follow the zones
    rest_days: list[str] = field(default_factory=list)
    weekend_table: int | None = None
    holidays: list[HolidaySpec] = field(default_factory=list)
    #: local plans: yuan/kWh per tariff T1..Tk (费率电价)
    prices: list[float] | None = None
    ladder: LadderSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.effective, dt.datetime):
            raise ValueError("effective: a date (YYYY-MM-DD), not a date and time")
        if not 1 <= self.tariffs <= MAX_TARIFFS:
            raise ValueError(f"tariffs: 1..{MAX_TARIFFS} (firmware maximum), got {self.tariffs}")
        if not 1 <= len(self.zones) <= MAX_ZONES:
            raise ValueError(f"zones: 1..{MAX_ZONES} zones, got {len(self.zones)}")
        starts = [z.month_day for z in self.zones]
        if len(set(starts)) != len(starts):
            raise ValueError("zones: two zones start on the same day")
        if not 1 <= len(self.tables) <= MAX_TABLES:
            raise ValueError(f"tables: 1..{MAX_TABLES} daily tables, got {len(self.tables)}")
        for key, periods in self.tables.items():
            if not key.isdigit() or not 1 <= int(key) <= MAX_TABLES:
                raise ValueError(f"tables.{key}: a daily table number 1..{MAX_TABLES}")
            if not 1 <= len(periods) <= MAX_PERIODS:
                raise ValueError(f"tables.{key}: 1..{MAX_PERIODS} periods, got {len(periods)}")
            minutes = sorted(p.minute for p in periods)
            if len(set(minutes)) != len(minutes):
                raise ValueError(f"tables.{key}: two periods start at the same minute")
            # the firmware refuses periods closer than 15 minutes (topup-tariff.md §C.1)
            gaps = [b - a for a, b in itertools.pairwise(minutes)]
            if gaps and min(gaps) < 15:
                raise ValueError(f"tables.{key}: periods must start >= 15 minutes apart")
            for p in periods:
                if not 1 <= p.tariff <= self.tariffs:
                    raise ValueError(
                        f"tables.{key}: tariff {p.tariff} at {p.start} is not 1..{self.tariffs}"
                    )
        used = {z.table for z in self.zones} | {h.table for h in self.holidays}
        if self.weekend_table is not None:
            used.add(self.weekend_table)
        missing = sorted(t for t in used if str(t) not in self.tables)
        if missing:
            raise ValueError(f"daily table(s) {missing} used but not defined in tables")
        for d in self.rest_days:
            if d not in WEEKDAYS:
                raise ValueError(f"rest_days: {d!r} is not one of {', '.join(WEEKDAYS)}")
        if self.rest_days and self.weekend_table is None:
            raise ValueError("rest_days needs weekend_table")
        if len(self.holidays) > MAX_HOLIDAYS:
            raise ValueError(f"holidays: at most {MAX_HOLIDAYS}")
        days = [h.date for h in self.holidays]
        if len(set(days)) != len(days):
            raise ValueError("holidays: a date listed twice")
        if self.prices is not None:
            if len(self.prices) != self.tariffs:
                raise ValueError(f"prices: one per tariff ({self.tariffs}), got {len(self.prices)}")
            if any(p < 0 for p in self.prices):
                raise ValueError("prices must be >= 0")

    # --- the tariff function -------------------------------------------------------------------
    @cached_property
    def _zones(self) -> tuple[list[tuple[int, int]], list[int]]:
        ordered = sorted((z.month_day, z.table) for z in self.zones)
        return [md for md, _ in ordered], [t for _, t in ordered]

    @cached_property
    def _rest(self) -> frozenset[int]:
        return frozenset(WEEKDAYS.index(d) for d in self.rest_days)

    @cached_property
    def _holidays(self) -> dict[dt.date, int]:
        return {h.date: h.table for h in self.holidays}

    @cached_property
    def vectors(self) -> dict[int, bytes]:
        """Each daily table as its 1440-minute tariff vector."""
        return {
            int(k): table_vector([(p.minute, p.tariff) for p in v]) for k, v in self.tables.items()
        }

    def table_on(self, day: dt.date) -> int:
        """The daily table number that applies on `day` (holiday > weekend > zone)."""
        holiday = self._holidays.get(day)
        if holiday is not None:
            return holiday
        if day.weekday() in self._rest and self.weekend_table is not None:
            return self.weekend_table
        starts, tables = self._zones
        i = bisect_right(starts, (day.month, day.day))
        return tables[i - 1]  # i == 0: before the first zone, the last one (wrap-around)

    def tou_key(self) -> tuple[object, ...]:
        """What decides the tariff per minute: two versions with equal keys bill alike."""
        return (
            tuple(sorted((z.month_day, z.table) for z in self.zones)),
            tuple(sorted((k, v) for k, v in self.vectors.items())),
            tuple(sorted(self._rest)),
            self.weekend_table if self._rest else None,
            tuple(sorted(self._holidays.items())),
        )

    def price_key(self) -> tuple[object, ...] | None:
        if self.prices is None and self.ladder is None:
            return None
        ladder = self.ladder
        return (
            tuple(self.prices or ()),
            None
            if ladder is None
            else (tuple(ladder.thresholds), tuple(ladder.prices), tuple(ladder.settlement)),
        )


def table_vector(periods: Sequence[tuple[int, int]]) -> bytes:
    """A daily table [(start minute, tariff), ...] (any order) as 1440 bytes: the tariff of each
    minute. Before the first start the last period runs (it wrapped over midnight)."""
    ordered = sorted(periods)
    if not ordered:
        raise ValueError("a daily table needs at least one period")
    out = bytearray(MINUTES)
    out[: ordered[0][0]] = bytes([ordered[-1][1]]) * ordered[0][0]
    for (start, tariff), nxt in zip(ordered, [*ordered[1:], (MINUTES, 0)], strict=True):
        out[start : nxt[0]] = bytes([tariff]) * (nxt[0] - start)
    return bytes(out)


@dataclass(frozen=True)
class Plan:
    """A customer class's or meter group's plan, in versions by effective date."""

    name: str
    version: list[PlanVersion]
    #: "remote" (远程费控: the meter runs the time-of-use plan, billing prices) or "local"
    #: (本地费控: the meter also holds the prices and ladder, which are checked too)
    mode: Literal["remote", "local"] = "remote"
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"plan name {self.name!r} must match {_NAME.pattern}")
        if not self.version:
            raise ValueError(f"plan {self.name}: at least one [[plan.version]]")
        dates = [v.effective for v in self.version]
        if dates != sorted(set(dates)):
            raise ValueError(f"plan {self.name}: versions must have ascending effective dates")
        for v in self.version:
            if self.mode == "local" and v.prices is None:
                raise ValueError(f"plan {self.name} is local: version {v.effective} needs prices")
            if self.mode == "remote" and (v.prices is not None or v.ladder is not None):
                raise ValueError(
                    f"plan {self.name} is remote: prices and ladder belong to local plans"
                )

    def in_force(self, day: dt.date) -> PlanVersion | None:
        """The version in force on `day`; None before the first one."""
        i = bisect_right([v.effective for v in self.version], day)
        return self.version[i - 1] if i else None

    def next_change(self, day: dt.date, what: Literal["tou", "price"]) -> PlanVersion | None:
        """The first version after `day` whose time-of-use (or prices) differ from `day`'s."""

        def key(v: PlanVersion) -> object:
            return v.tou_key() if what == "tou" else v.price_key()

        current = self.in_force(day)
        now = key(current) if current is not None else None
        for v in self.version:
            if v.effective > day and key(v) != now:
                return v
        return None

    def day_vector(self, day: dt.date) -> bytes | None:
        """f_plan(day, ·): the tariff of each minute of `day` (None before the plan starts)."""
        v = self.in_force(day)
        return None if v is None else v.vectors[v.table_on(day)]

    def tariff(self, day: dt.date, minute: int) -> int | None:
        """f_plan(day, minute)."""
        vector = self.day_vector(day)
        return None if vector is None else vector[minute]

    def days(self, first: dt.date, count: int) -> Iterator[tuple[dt.date, int, PlanVersion]]:
        """(day, table number, version) for `count` days from `first` (days before the plan
        starts are skipped)."""
        for i in range(count):
            day = first + dt.timedelta(days=i)
            v = self.in_force(day)
            if v is not None:
                yield day, v.table_on(day), v


@dataclass(frozen=True)
class _PlanFile:
    plan: list[Plan]


@dataclass(frozen=True)
class PlanBook:
    """Every plan of the utility, by name, as loaded from one file."""

    plans: Mapping[str, Plan]
    #: the file's text, as stored and served back
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def get(self, name: str) -> Plan | None:
        return self.plans.get(name)


def parse_plans(text: str, where: str = "tariff plans") -> PlanBook:
    """Parse and check a plan file strictly. Raises `ConfigError` naming the key path
    (``plan[0].version[1].tables.2[3].tariff: expected int, got a string '3'``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        book = build(_PlanFile, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    names = [p.name for p in book.plan]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: plan {twice[0]!r} defined twice")
    return PlanBook({p.name: p for p in book.plan}, text)


def load_plans(path: Path) -> PlanBook:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_plans(text, str(path))
