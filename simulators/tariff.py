"""Tariff set-ups of simulated meters: the utility's plans, a meter programmed from one, the ways a
meter gets misprogrammed, and the truth a test compares the central side's verdict with.

* `builtin_plans(start, switch)` — the two plans the simulator programs meters with: a remote
  (远程费控) time-of-use plan ``resident-tou`` and a local-prepaid (本地费控) plan
  ``prepaid-local`` with prices and a ladder; each has a second version in force from `switch`
  (a new summer/evening table, new prices), which correctly programmed meters hold as their
  second set with the switch times (the utilities' way, topup-tariff.md §C.3).
* `plans_toml(plans)` — the plans in the central side's plan-file format (central/tariff/).
* `MeterTariff` — what one meter stores and does: answers the tariff items
  (`protocols.dlt645.tariff`), flips its sets when a switch time is reached, books energy into
  the register its own set-up selects (`protocols.tariff.meter_day_minutes`), counts programming
  events, and carries its defect.
* `DEFECTS` — the misprogramming kinds, each with the outcome code the check must give.

Meter times are the meter's own clock (naive local time), as everywhere in the simulator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Final

from protocols.dlt645.tariff import (
    DI_CURRENT_PRICES,
    DI_EVENT_COUNTERS,
    replies_from_setup,
    tariff_item_name,
)
from protocols.tariff import (
    Holiday,
    Ladder,
    Period,
    SettlementDay,
    TariffSetup,
    TouSet,
    ZoneEntry,
    meter_day_minutes,
    meter_tariff,
    table_minutes,
)

__all__ = [
    "DEFECTS",
    "DEFECT_OUTCOMES",
    "EVENT_PERIODS",
    "LadderPlan",
    "MeterTariff",
    "Plan",
    "PlanVersion",
    "applicable",
    "builtin_plans",
    "misprogram",
    "plans_toml",
    "program",
]

DEFECTS: Final = (
    "wrong_boundary",
    "missing_holiday",
    "switch_missed",
    "wrong_price",
    "clock_drift",
    "wrong_register",
    "reprogrammed",
)
"""how a meter can be misprogrammed (the fleet's ``[tariff] misprogram_share``)"""

DEFECT_OUTCOMES: Final[dict[str, str]] = {
    "wrong_boundary": "PARAM_MISMATCH",
    "missing_holiday": "PARAM_MISMATCH",
    "switch_missed": "SWITCH_MISSED",
    "wrong_price": "PRICE_MISMATCH",
    "clock_drift": "CLOCK_DRIFT",
    "wrong_register": "ENERGY_MISALLOCATED",
    "reprogrammed": "PROGRAMMED_OUTSIDE_PLAN",
}
"""the outcome code each defect must give (on the days it shows, see `MeterTariff.outcome`)"""

_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""`read_at` of a programmed set-up: it was not read by anyone (the agent stamps its own)"""
EVENT_PERIODS: Final = 0x03300500
"""时段表编程 总次数: what an out-of-plan reprogramming of a daily table counts up"""


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


def _workdays(rest_days: Sequence[int]) -> int:
    """04000801: bit d (0 = Sunday) set = work day."""
    word = 0x7F
    for weekday in rest_days:
        word &= ~(1 << ((weekday + 1) % 7))
    return word


def program(plan: Plan, day: dt.date, *, counters: Mapping[str, int] | None = None) -> TariffSetup:
    """The set-up of a meter correctly programmed on `day`: the version in force as the first
    (active) set, the next version (if its tables differ) as the second set with the switch
    times, prices likewise for a local plan."""
    now = plan.in_force(day)
    nxt = plan.next_version(day)
    second = nxt if nxt is not None else now
    tou_switch = (
        dt.datetime.combine(nxt.effective, dt.time())
        if nxt is not None and nxt.tou() != now.tou()
        else None
    )
    price_switch = (
        dt.datetime.combine(nxt.effective, dt.time())
        if nxt is not None and nxt.prices != now.prices
        else None
    )
    tables = {n for v in (now, second) for n in v.tables}
    local = plan.mode == "local"
    return TariffSetup(
        read_at=_EPOCH,
        zone_count=max(len(now.zones), len(second.zones)),
        table_count=max(tables),
        period_count=max(len(p) for v in (now, second) for p in v.tables.values()),
        tariff_count=4,
        holiday_count=len(now.holidays),
        ladder_count=len(now.ladder.thresholds) if local and now.ladder is not None else None,
        sets=(
            TouSet(zones=now.zones, tables=dict(now.tables)),
            TouSet(zones=second.zones, tables=dict(second.tables)),
        ),
        switch_zones=tou_switch,
        switch_tables=tou_switch,
        switch_prices=price_switch if local else None,
        weekend_workdays=_workdays(now.rest_days),
        weekend_table=now.weekend_table if now.weekend_table is not None else 1,
        holidays=now.holidays,
        prices_current=now.prices if local else None,
        prices_backup=second.prices if local else None,
        ladders_current=(now.ladder.as_ladder(),) if local and now.ladder is not None else (),
        ladders_backup=(second.ladder.as_ladder(),) if local and second.ladder is not None else (),
        ladder_zones_current=(ZoneEntry(1, 1, 1),) if local else (),
        ladder_zones_backup=(ZoneEntry(1, 1, 1),) if local else (),
        event_counters=dict(counters or {}),
    )


def _flip(setup: TariffSetup, now: dt.datetime) -> TariffSetup:
    """What the meter shows at `now`: every switch time reached has flipped its set (and been
    cleared), as the firmware does (topup-tariff.md §C.2 step 1)."""
    changes: dict[str, object] = {}
    if setup.switch_zones is not None and setup.switch_zones <= now:
        changes["active_zone_set"] = 3 - setup.active_zone_set
        changes["switch_zones"] = None
    if setup.switch_tables is not None and setup.switch_tables <= now:
        changes["active_table_set"] = 3 - setup.active_table_set
        changes["switch_tables"] = None
    if setup.switch_prices is not None and setup.switch_prices <= now:
        changes["prices_current"] = setup.prices_backup
        changes["switch_prices"] = None
    if setup.switch_ladders is not None and setup.switch_ladders <= now:
        changes["ladders_current"] = setup.ladders_backup
        changes["switch_ladders"] = None
    if setup.switch_ladder_zones is not None and setup.switch_ladder_zones <= now:
        changes["ladder_zones_current"] = setup.ladder_zones_backup
        changes["switch_ladder_zones"] = None
    return replace(setup, **changes) if changes else setup  # type: ignore[arg-type]


_DAY_MINUTES: dict[tuple[tuple[object, ...], dt.date], tuple[int, ...]] = {}
"""(what decides a meter's tariff, day) → its minutes: meters programmed alike share them"""
_DAY_MINUTES_LIMIT = 200_000


def _tou_key(setup: TariffSetup) -> tuple[object, ...]:
    """Everything `meter_day_minutes` reads from a set-up."""
    return (
        tuple((tou.zones, tuple(sorted(tou.tables.items()))) for tou in setup.sets),
        setup.zone_count,
        setup.period_count,
        setup.active_zone_set,
        setup.active_table_set,
        setup.switch_zones,
        setup.switch_tables,
        setup.weekend_workdays,
        setup.weekend_table,
        setup.holidays,
        setup.holiday_count,
    )


@dataclass
class MeterTariff:
    """One meter's tariff set-up and how its firmware executes it."""

    plan: Plan
    programmed: TariffSetup
    registers: int
    """energy registers the meter keeps (its tariff count)"""
    defect: str | None = None
    detail: str = ""
    register_map: tuple[int, ...] = (1, 2, 3, 4)
    """firmware: the energy of tariff t is booked into register register_map[t - 1]"""
    denied: tuple[str, ...] = ()
    """hex prefixes of the tariff DIs this firmware does not know (answered "no such data")"""
    ladder_form: str = "2013"
    reprogram_at: dt.datetime | None = None
    """meter time of an out-of-plan reprogramming (then `reprogrammed` is stored)"""
    reprogrammed: TariffSetup | None = None
    since: dt.datetime | None = None
    """meter time from which the defect shows (None: from the start)"""
    _mapped: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict, repr=False
    )
    _key: tuple[TariffSetup, tuple[object, ...]] | None = field(default=None, repr=False)
    _days: dict[dt.date, Sequence[int]] = field(default_factory=dict, repr=False)

    @property
    def tariffs(self) -> int:
        return self.registers

    def stored(self, now: dt.datetime) -> TariffSetup:
        """The set-up in the meter's memory at `now` (before switch flips)."""
        reprogram_at, reprogrammed = self.reprogram_at, self.reprogrammed
        if reprogram_at is not None and reprogrammed is not None and now >= reprogram_at:
            return reprogrammed
        return self.programmed

    def setup_at(self, now: dt.datetime, status_word3: int = 0) -> TariffSetup:
        """What the meter answers at `now`: switches applied, its clock, its current prices."""
        setup = _flip(self.stored(now), now)
        word = status_word3 & ~(1 << 5 | 1)
        word |= (1 << 5 if setup.active_zone_set == 2 else 0) | (
            1 if setup.active_table_set == 2 else 0
        )
        changes: dict[str, object] = {
            "meter_time": now.replace(microsecond=0),
            "status_word3": word,
        }
        if setup.prices_current is not None:
            tariff = meter_tariff(setup, now.replace(tzinfo=None))
            tariff_price = setup.prices_current[min(tariff, len(setup.prices_current)) - 1]
            changes["current_tariff_price"] = tariff_price
        return replace(setup, **changes)  # type: ignore[arg-type]

    def with_prices(self, setup: TariffSetup, used_kwh: float) -> TariffSetup:
        """Add the ladder price for `used_kwh` since the settlement and the current price
        (= tariff price + ladder price, firmware `Price_Judge`)."""
        if setup.current_tariff_price is None:
            return setup
        ladder_price = Decimal("0.0000")
        if setup.ladders_current:
            ladder = setup.ladders_current[0]
            steps = len(ladder.thresholds)
            while steps > 1 and ladder.thresholds[steps - 1] == ladder.thresholds[steps - 2]:
                steps -= 1
            if steps and ladder.thresholds[steps - 1] == 0:
                steps -= 1
            if steps:
                i = 0
                while i < steps and Decimal(str(round(used_kwh, 2))) > ladder.thresholds[i]:
                    i += 1
                ladder_price = ladder.prices[i]
        return replace(
            setup,
            current_ladder_price=ladder_price,
            current_price=setup.current_tariff_price + ladder_price,
        )

    def replies(self, setup: TariffSetup) -> dict[int, bytes]:
        out = replies_from_setup(setup, ladder_form=self.ladder_form)
        if setup.prices_current is None:  # not a local meter: no prices, no ladder price
            for di in DI_CURRENT_PRICES.values():
                out.pop(di, None)
        return {di: v for di, v in out.items() if not self.denies(di)}

    def denies(self, di: int) -> bool:
        text = f"{di:08X}"
        return any(text.startswith(prefix) for prefix in self.denied)

    def knows(self, di: int) -> bool:
        return tariff_item_name(di) is not None

    # -- energy: which register each minute books into (simulators.energy.TariffClock) ----------
    def minutes(self, day: dt.date) -> Sequence[int]:
        setup = self.programmed
        if self._key is None or self._key[0] is not setup:
            self._key = (setup, _tou_key(setup))
            self._days.clear()
        known = self._days.get(day)
        if known is not None:
            return known
        minutes = self._minutes(setup, day)
        self._days[day] = minutes
        return minutes

    def _minutes(self, setup: TariffSetup, day: dt.date) -> Sequence[int]:
        assert self._key is not None
        slot = (self._key[1], day)
        tariffs = _DAY_MINUTES.get(slot)
        if tariffs is None:
            if len(_DAY_MINUTES) > _DAY_MINUTES_LIMIT:
                _DAY_MINUTES.clear()
            tariffs = _DAY_MINUTES[slot] = meter_day_minutes(setup, day)
        if self.register_map == (1, 2, 3, 4) and self.registers >= 4:
            return tariffs
        cached = self._mapped.get(id(tariffs))
        if cached is not None and cached[0] is tariffs:
            return cached[1]
        top = self.registers
        mapped = tuple(min(self.register_map[min(t, 4) - 1], top) for t in tariffs)
        self._mapped[id(tariffs)] = (tariffs, mapped)
        return mapped

    # -- the truth -----------------------------------------------------------------------------
    def outcome(self, day: dt.date) -> str:
        """The outcome code the tariff check must give for this meter on `day` (a meter that is
        read; NOT_READ and UNSUPPORTED_DI are the fleet's business)."""
        if self.defect is None:
            return "OK"
        since = self.since.date() if self.since is not None else None
        if self.defect == "switch_missed":
            # before the planned switch the second set and the switch times differ from the plan
            return "SWITCH_MISSED" if since is None or day >= since else "PARAM_MISMATCH"
        if since is not None and day < since:
            return "OK"
        if self.defect == "wrong_register":
            plan = set(self.plan.minutes(day))
            booked = {min(self.register_map[t - 1], self.registers) for t in plan}
            # visible in daily freezes only when a register the plan leaves empty gets energy
            return "ENERGY_MISALLOCATED" if booked - plan else "OK"
        return DEFECT_OUTCOMES[self.defect]

    def technician_visit(self, now: dt.datetime) -> list[str]:
        """A technician reprograms the set-up on site as the plan says (a work order carried out):
        the plan's sets, switch times, weekend rule, holidays and prices as of `now`, each
        programming-event counter of what was written counting up. The firmware is not changed
        (a meter booking into the wrong register stays so). Returns the counters that moved."""
        old = _flip(self.stored(now), now)
        counters = dict(old.event_counters)
        fresh = program(self.plan, now.date(), counters=counters)
        written = ["03300500", "03300600", "03300700", "03300800"]
        if fresh.prices_current is not None:
            written += ["03300F00", "03301000"]
        moved = []
        for key in written:
            if key in counters:
                counters[key] += 1
                moved.append(key)
        self.programmed = replace(fresh, event_counters=counters)
        self.reprogram_at = self.reprogrammed = None
        if self.defect != "wrong_register":
            self.defect, self.detail, self.since = None, "", None
        return moved

    def counters_at(self, now: dt.datetime) -> dict[str, int]:
        return dict(self.stored(now).event_counters)


EVENT_DIS: Final = tuple(f"{di:08X}" for di in DI_EVENT_COUNTERS)


def applicable(defect: str, tariff: MeterTariff) -> bool:
    """Whether `defect` can be given to this meter (prices only on local meters, a missed switch
    only when the plan has one, a holiday only when the plan has holidays)."""
    setup = tariff.programmed
    if defect == "wrong_price":
        return setup.prices_current is not None
    if defect == "switch_missed":
        return setup.switch_zones is not None or setup.switch_tables is not None
    if defect == "missing_holiday":
        return bool(setup.holidays)
    if defect == "wrong_register":
        return tariff.registers >= 2
    return True


def _shift_boundary(periods: tuple[Period, ...]) -> tuple[tuple[Period, ...], str]:
    """Move the start of the latest period but one by 30 minutes (an operator's typo)."""
    ordered = sorted(periods, key=lambda p: (p.hour, p.minute))
    target = ordered[-2] if len(ordered) >= 2 else ordered[-1]
    start = target.hour * 60 + target.minute + 30
    moved = Period(start // 60 % 24, start % 60, target.tariff)
    out = tuple(moved if p is target else p for p in periods)
    return out, f"{target.hour:02d}:{target.minute:02d} -> {moved.hour:02d}:{moved.minute:02d}"


def misprogram(
    tariff: MeterTariff, defect: str, *, start: dt.datetime, reprogram_at: dt.datetime
) -> None:
    """Give `tariff` the set-up defect `defect` (all but ``clock_drift``, which is the meter
    clock's: the fleet sets it). `start` is the meter time the fleet starts at."""
    setup = tariff.programmed
    tariff.defect = defect
    if defect == "wrong_boundary":
        sets = []
        details = []
        for tou in setup.sets:
            periods, detail = _shift_boundary(tou.tables[1])
            sets.append(TouSet(zones=tou.zones, tables={**tou.tables, 1: periods}))
            details.append(detail)
        tariff.programmed = replace(setup, sets=(sets[0], sets[1]))
        tariff.detail = f"daily table 1 of both sets: {'; '.join(details)}"
    elif defect == "missing_holiday":
        upcoming = [h for h in setup.holidays if h.date >= start.date()] or list(setup.holidays)
        dropped = upcoming[0]
        holidays = tuple(h for h in setup.holidays if h is not dropped)
        tariff.programmed = replace(setup, holidays=holidays, holiday_count=len(holidays))
        tariff.detail = f"holiday {dropped.date.isoformat()} (table {dropped.table}) missing"
    elif defect == "switch_missed":
        switch = setup.switch_tables or setup.switch_zones
        tariff.programmed = replace(
            setup, sets=(setup.sets[0], setup.sets[0]), switch_zones=None, switch_tables=None
        )
        tariff.since = switch
        tariff.detail = f"the switch planned for {switch} was never written (second set stale)"
    elif defect == "wrong_price":
        assert setup.prices_current is not None
        assert setup.prices_backup is not None
        bump = Decimal("0.0500")
        current = tuple(p + bump if i == 1 else p for i, p in enumerate(setup.prices_current))
        backup = tuple(p + bump if i == 1 else p for i, p in enumerate(setup.prices_backup))
        tariff.programmed = replace(setup, prices_current=current, prices_backup=backup)
        tariff.detail = f"T2 price {setup.prices_current[1]} -> {current[1]} (both sets)"
    elif defect == "clock_drift":
        tariff.detail = "clock set beyond the 300 s limit"
    elif defect == "wrong_register":
        tariff.register_map = (1, 1, 3, 4)
        tariff.detail = "firmware books 峰 (T2) energy into the 尖 (T1) register"
    elif defect == "reprogrammed":
        active = setup.sets[setup.active_table_set - 1]
        table = active.tables[1]
        # the same periods written in another order: it bills alike, but nobody planned it
        rewritten = TouSet(zones=active.zones, tables={**active.tables, 1: tuple(reversed(table))})
        sets = list(setup.sets)
        sets[setup.active_table_set - 1] = rewritten
        counters = dict(setup.event_counters)
        key = f"{EVENT_PERIODS:08X}"
        counters[key] = counters.get(key, 0) + 1
        tariff.reprogrammed = replace(setup, sets=(sets[0], sets[1]), event_counters=counters)
        tariff.reprogram_at = reprogram_at
        tariff.since = reprogram_at
        tariff.detail = f"daily table 1 rewritten at {reprogram_at} outside any plan"
    else:
        raise ValueError(f"unknown defect {defect!r}; known: {', '.join(DEFECTS)}")
