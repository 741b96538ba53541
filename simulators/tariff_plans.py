"""The utility's tariff plans the simulator programs its meters from, and their plan file.

* `builtin_plans(start, switch)` — a remote (远程费控) time-of-use plan ``resident-tou`` and a
  local-prepaid (本地费控) plan ``prepaid-local`` with prices and a ladder; each has a second
  version in force from `switch` (a new evening table, new prices).
* `plans_toml(plans)` — the plans in the central side's plan-file format (central/tariff/).
* `Plan.minutes(day)` — f_plan(day, ·), what a correctly programmed meter runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from protocols.tariff import Holiday, Ladder, Period, SettlementDay, ZoneEntry, table_minutes

__all__ = ["LadderPlan", "Plan", "PlanVersion", "builtin_plans", "plans_toml"]


@dataclass(frozen=True, slots=True)
class LadderPlan:
    """A ladder as the utility declares it: thresholds in use, one more price, settlement days
    (month, day; empty = monthly)."""

    thresholds: tuple[Decimal, ...]
    prices: tuple[Decimal, ...]
    settlement: tuple[tuple[int, int], ...] = ()

    def as_ladder(self, settlement_slots: int = 4) -> Ladder:
        """The 6 thresholds / 7 prices a meter stores (unused ones repeat the last: the firmware
        counts repeated thresholds as one), settlement days as MMDDhh with 99 for unused."""
        thresholds = self.thresholds + (self.thresholds[-1],) * (6 - len(self.thresholds))
        prices = self.prices + (self.prices[-1],) * (7 - len(self.prices))
        days = tuple(SettlementDay(m, d, 0) for m, d in self.settlement)
        days += (SettlementDay(99, 99, 99),) * (settlement_slots - len(days))
        return Ladder(thresholds, prices, days)


@dataclass(frozen=True)
class PlanVersion:
    """What a plan holds from `effective` (00:00) on."""

    effective: dt.date
    zones: tuple[ZoneEntry, ...]
    tables: dict[int, tuple[Period, ...]]
    rest_days: tuple[int, ...] = ()
    """Python weekday numbers (Monday = 0) on which `weekend_table` runs"""
    weekend_table: int | None = None
    holidays: tuple[Holiday, ...] = ()
    prices: tuple[Decimal, ...] | None = None
    ladder: LadderPlan | None = None

    def table_on(self, day: dt.date) -> int:
        for h in self.holidays:
            if h.date == day:
                return h.table
        if day.weekday() in self.rest_days and self.weekend_table is not None:
            return self.weekend_table
        ordered = sorted(self.zones, key=lambda z: (z.month, z.day))
        chosen = ordered[-1]
        for z in ordered:
            if (z.month, z.day) <= (day.month, day.day):
                chosen = z
        return chosen.table

    def minutes(self, day: dt.date) -> tuple[int, ...]:
        """f_plan(day, ·): the tariff of each minute."""
        return table_minutes(self.tables[self.table_on(day)], None)

    def tou(self) -> tuple[object, ...]:
        return (
            self.zones,
            tuple(sorted(self.tables.items())),
            self.rest_days,
            self.weekend_table,
            self.holidays,
        )


@dataclass(frozen=True)
class Plan:
    name: str
    mode: str
    """"remote" or "local" (the meter also holds prices and the ladder)"""
    description: str
    versions: tuple[PlanVersion, ...]

    def in_force(self, day: dt.date) -> PlanVersion:
        current = self.versions[0]
        for v in self.versions:
            if v.effective <= day:
                current = v
        return current

    def next_version(self, day: dt.date) -> PlanVersion | None:
        for v in self.versions:
            if v.effective > day:
                return v
        return None

    def minutes(self, day: dt.date) -> tuple[int, ...]:
        return self.in_force(day).minutes(day)


def _holidays(year: int) -> tuple[Holiday, ...]:
    """New Year, Labour Day and three National Day holidays of `year` and the next, table 3."""
    days: list[dt.date] = []
    for y in (year, year + 1):
        days += [dt.date(y, 1, 1), dt.date(y, 5, 1)]
        days += [dt.date(y, 10, d) for d in (1, 2, 3)]
    return tuple(Holiday(d, 3) for d in sorted(days))


def _p(text: str, tariff: int) -> Period:
    hour, minute = text.split(":")
    return Period(int(hour), int(minute), tariff)


def _prices(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


def builtin_plans(start: dt.date, switch: dt.date | None) -> dict[str, Plan]:
    """The simulator's plans as of `start` (first version in force from 1 January of `start`'s
    year), with a second version from `switch` when given."""
    first = dt.date(start.year, 1, 1)
    holidays = _holidays(start.year)
    weekday = (_p("00:00", 4), _p("08:00", 3), _p("10:00", 2), _p("12:00", 3), _p("17:00", 2),
               _p("22:00", 4))  # fmt: skip
    summer = (_p("00:00", 4), _p("08:00", 3), _p("10:00", 2), _p("11:00", 1), _p("13:00", 3),
              _p("17:00", 2), _p("22:00", 4))  # fmt: skip
    weekend = (_p("00:00", 4), _p("08:00", 3), _p("22:00", 4))
    zones = (ZoneEntry(1, 1, 1), ZoneEntry(7, 1, 2), ZoneEntry(9, 1, 1))
    tou_v1 = PlanVersion(first, zones, {1: weekday, 2: summer, 3: weekend}, (5, 6), 3, holidays)
    # the new version moves the evening peak by an hour and half an hour (a retuned table)
    evening = (_p("00:00", 4), _p("08:00", 3), _p("10:00", 2), _p("12:00", 3), _p("18:00", 2),
               _p("22:30", 4))  # fmt: skip
    tou_versions = [tou_v1]
    if switch is not None:
        tou_versions.append(replace(tou_v1, effective=switch, tables={**tou_v1.tables, 1: evening}))
    ladder = LadderPlan(
        (Decimal("2160.00"), Decimal("4200.00")),
        _prices("0.0000", "0.0500", "0.3000"),
        ((1, 1),),
    )
    local_v1 = PlanVersion(
        first,
        (ZoneEntry(1, 1, 1),),
        {1: (_p("00:00", 4), _p("08:00", 2), _p("12:00", 3), _p("17:00", 2), _p("22:00", 4))},
        prices=_prices("1.0000", "0.8000", "0.5500", "0.3000"),
        ladder=ladder,
    )
    local_versions = [local_v1]
    if switch is not None:
        local_versions.append(
            replace(
                local_v1, effective=switch, prices=_prices("1.0500", "0.8500", "0.5800", "0.3100")
            )
        )
    return {
        "resident-tou": Plan(
            "resident-tou",
            "remote",
            "居民分时 (simulated): weekday, summer and weekend tables, public holidays",
            tuple(tou_versions),
        ),
        "prepaid-local": Plan(
            "prepaid-local",
            "local",
            "本地费控 (simulated): one table, prices and a yearly ladder held by the meter",
            tuple(local_versions),
        ),
    }


_WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def plans_toml(plans: Mapping[str, Plan]) -> str:
    """The plans as the central side's plan file (central/tariff/plans.py, docs/tariff.md)."""
    lines = [
        "# tariff plans of the simulated fleet (meterlink sim fleet --tariff-plans)",
        "# Tariffs: 1 = 尖, 2 = 峰, 3 = 平, 4 = 谷; times are the meters' local time.",
    ]
    for plan in plans.values():
        lines += ["", "[[plan]]", f'name = "{plan.name}"', f'description = "{plan.description}"']
        lines.append(f'mode = "{plan.mode}"')
        for v in plan.versions:
            lines += ["", "  [[plan.version]]", f"  effective = {v.effective.isoformat()}"]
            used = {p.tariff for periods in v.tables.values() for p in periods}
            lines.append(f"  tariffs = {max(4, max(used))}")
            zones = ", ".join(
                f'{{ start = "{z.month:02d}-{z.day:02d}", table = {z.table} }}' for z in v.zones
            )
            lines.append(f"  zones = [ {zones} ]")
            if v.rest_days:
                rest = ", ".join(f'"{_WEEKDAY_NAMES[d]}"' for d in v.rest_days)
                lines += [f"  rest_days = [ {rest} ]", f"  weekend_table = {v.weekend_table}"]
            if v.holidays:
                holidays = ", ".join(
                    f"{{ date = {h.date.isoformat()}, table = {h.table} }}" for h in v.holidays
                )
                lines.append(f"  holidays = [ {holidays} ]")
            if v.prices is not None:
                lines.append(f"  prices = [ {', '.join(str(p) for p in v.prices)} ]")
            if v.ladder is not None:
                settlement = ", ".join(f'"{m:02d}-{d:02d}"' for m, d in v.ladder.settlement)
                lines.append(
                    f"  ladder = {{ thresholds = [ {', '.join(map(str, v.ladder.thresholds))} ],"
                    f" prices = [ {', '.join(map(str, v.ladder.prices))} ],"
                    f" settlement = [ {settlement} ] }}"
                )
            lines.append("    [plan.version.tables]")
            for n, periods in sorted(v.tables.items()):
                entries = ", ".join(
                    f'{{ start = "{p.hour:02d}:{p.minute:02d}", tariff = {p.tariff} }}'
                    for p in periods
                )
                lines.append(f"    {n} = [ {entries} ]")
    return "\n".join(lines) + "\n"
