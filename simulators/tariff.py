"""Tariff set-ups of simulated meters: the utility's plans, a meter programmed from one, the ways a
meter gets misprogrammed, and the truth a test compares the central side's verdict with.

* the plans (`simulators.tariff_plans`, re-exported here) and `program(plan, day)`: a meter
  correctly programmed holds the version in force as its active set and the next version as its
  second set with the switch times (the utilities' way, topup-tariff.md §C.3).
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
    decode_period_table,
    decode_prices,
    decode_switch_time,
    decode_zone_table,
    padded,
    replies_from_setup,
    tariff_item_name,
)
from protocols.dlt645.tariff import decode_holiday as _decode_holiday
from protocols.errors import ValueFormatError
from protocols.tariff import (
    Period,
    TariffSetup,
    TouSet,
    ZoneEntry,
    meter_day_minutes,
    meter_tariff,
)
from protocols.tariff_write import DI_BACKUP_PRICES, DI_HOLIDAY_COUNT, read_only
from simulators.tariff_plans import LadderPlan, Plan, PlanVersion, builtin_plans, plans_toml

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
    "switch_missed": "SWITCH_MISSED",  # SWITCH_PENDING before the switch date
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


_DAY_MINUTES: dict[tuple[int, dt.date], tuple[int, ...]] = {}
"""(what decides a meter's tariff, day) → its minutes: meters programmed alike share them"""
_DAY_MINUTES_LIMIT = 200_000


_TOU_IDS: dict[tuple[object, ...], int] = {}
"""each distinct `_tou_key` as a small number: the day cache's key is hashed ~1000 times per
meter while a fleet is built, a nested tuple of the whole time-of-use set-up each time"""


def _tou_id(setup: TariffSetup) -> int:
    key = _tou_key(setup)
    found = _TOU_IDS.get(key)
    if found is None:
        found = _TOU_IDS[key] = len(_TOU_IDS)
    return found


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
    written: bool = False
    """a secure write reached the set-up (a correction order): the truth follows the meter"""
    _mapped: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict, repr=False
    )
    _key: tuple[TariffSetup, int] | None = field(default=None, repr=False)
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
            self._key = (setup, _tou_id(setup))
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
        # corrected remotely (a price written as backup flips a few minutes later)
        end = dt.datetime.combine(day, dt.time(23, 59))
        correctable = self.defect not in ("wrong_register", "clock_drift")
        if self.written and correctable and self.executes_plan(end):
            return "OK"
        since = self.since.date() if self.since is not None else None
        if self.defect == "switch_missed":
            # before the planned switch today's tables are right, the planned change is not
            # programmed (SWITCH_PENDING); from the switch on the meter runs the old version
            return "SWITCH_MISSED" if since is None or day >= since else "SWITCH_PENDING"
        if since is not None and day < since:
            return "OK"
        if self.defect == "wrong_register":
            # the check of day D has the freezes of D-2, D-1 and D: the consumption of D-2 and
            # D-1, and flags only when both show energy in a register the plan leaves empty
            days = (day - dt.timedelta(days=2), day - dt.timedelta(days=1))
            return "ENERGY_MISALLOCATED" if all(self._misbooks(d) for d in days) else "OK"
        return DEFECT_OUTCOMES[self.defect]

    def _misbooks(self, day: dt.date) -> bool:
        """Whether this meter books energy of `day` into a register the plan gives no minute."""
        plan = set(self.plan.minutes(day))
        booked = {min(self.register_map[t - 1], self.registers) for t in plan}
        return bool(booked - plan)

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

    def write_item(self, di: int, value: bytes, now: dt.datetime) -> str:
        """A secure 14H write of tariff item `di` (value bytes as the meter stores them) that
        the ESAM verified: the item is stored, its programming-event counter counts up (one
        event per write), and when the set-up now executes the plan the set-up defect is gone
        (the truth follows the meter). Raises `ValueFormatError` for a value the item's layout
        does not take, ValueError for an item this model does not write. Returns the item's
        name."""
        base = _flip(self.stored(now), now)
        setup, event = _with_item(base, di, value)
        counters = dict(base.event_counters)
        if event in counters:
            counters[event] += 1
        self.programmed = replace(setup, event_counters=counters)
        self.written = True
        if self.reprogram_at is not None and self.reprogram_at <= now:
            self.reprogram_at = self.reprogrammed = None
        if self.defect not in (None, "wrong_register", "clock_drift") and self.executes_plan(now):
            self.defect, self.detail, self.since = None, "", None
        return tariff_item_name(di) or f"{di:08X}"

    def executes_plan(self, now: dt.datetime) -> bool:
        """Whether the stored set-up holds what the plan says at `now` (active set = the
        version in force, backup set + switch time = the next one, weekend rule, holidays,
        prices): what a correction must achieve."""
        have = padded(_flip(self.stored(now), now))
        want = padded(program(self.plan, now.date()))
        active = have.active_table_set - 1
        sets = (have.sets[active], have.sets[1 - active])
        if have.active_zone_set != have.active_table_set:
            return False
        return (
            sets == want.sets
            and have.switch_zones == want.switch_zones
            and have.switch_tables == want.switch_tables
            and have.weekend_workdays == want.weekend_workdays
            and have.weekend_table == want.weekend_table
            and have.holidays[: have.holiday_count or 0] == want.holidays
            and have.prices_current == want.prices_current
            and (want.prices_backup is None or have.prices_backup == want.prices_backup)
        )

    def counters_at(self, now: dt.datetime) -> dict[str, int]:
        return dict(self.stored(now).event_counters)


_EVENT_ZONES = "03300600"
_EVENT_TABLES = "03300500"
_EVENT_WEEKEND = "03300700"
_EVENT_HOLIDAYS = "03300800"
_EVENT_PRICES = "03300F00"


def _with_item(setup: TariffSetup, di: int, value: bytes) -> tuple[TariffSetup, str]:
    """`setup` with item `di` replaced by `value`, and the programming event it counts."""
    if read_only(di):
        raise ValueError(f"{di:08X} is read-only (the current price set)")
    sets = list(setup.sets)
    if di in (0x04010000, 0x04020000):
        s = (di >> 16 & 0xF) - 1
        sets[s] = TouSet(zones=decode_zone_table(value), tables=sets[s].tables)
        return replace(setup, sets=(sets[0], sets[1])), _EVENT_ZONES
    if di >> 8 in (0x040100, 0x040200) and 1 <= di & 0xFF <= 8:
        s = (di >> 16 & 0xF) - 1
        tables = {**sets[s].tables, di & 0xFF: decode_period_table(value)}
        sets[s] = TouSet(zones=sets[s].zones, tables=tables)
        return replace(setup, sets=(sets[0], sets[1])), _EVENT_TABLES
    if di >> 8 == 0x040300 and 1 <= di & 0xFF <= 254:
        index = di & 0xFF
        holidays = list(setup.holidays)
        if index > len(holidays) + 1:
            raise ValueFormatError(f"holiday {index}: holidays 1..{len(holidays)} are stored")
        holiday = _decode_holiday(value)
        if index == len(holidays) + 1:
            holidays.append(holiday)
        else:
            holidays[index - 1] = holiday
        return replace(setup, holidays=tuple(holidays)), _EVENT_HOLIDAYS
    counts = {0x04000201: "zone_count", 0x04000202: "table_count", 0x04000203: "period_count"}
    if di in counts:
        if len(value) != 1:
            raise ValueFormatError(f"{di:08X}: one byte")
        number = int(f"{value[0]:02X}")
        event = _EVENT_ZONES if di == 0x04000201 else _EVENT_TABLES
        return replace(setup, **{counts[di]: number}), event  # type: ignore[arg-type]
    if di == DI_HOLIDAY_COUNT:
        if len(value) != 2:
            raise ValueFormatError("holiday count: two bytes")
        number = int(value[::-1].hex())
        return replace(setup, holiday_count=number), _EVENT_HOLIDAYS
    switches = {
        0x04000106: "switch_zones",
        0x04000107: "switch_tables",
        0x04000108: "switch_prices",
    }
    if di in switches:
        event = {0x04000106: _EVENT_ZONES, 0x04000107: _EVENT_TABLES}.get(di, _EVENT_PRICES)
        return replace(setup, **{switches[di]: decode_switch_time(value)}), event  # type: ignore[arg-type]
    if di == 0x04000801:
        if len(value) != 1:
            raise ValueFormatError("weekend word: one byte")
        return replace(setup, weekend_workdays=value[0]), _EVENT_WEEKEND
    if di == 0x04000802:
        if len(value) != 1:
            raise ValueFormatError("weekend table: one byte")
        return replace(setup, weekend_table=int(f"{value[0]:02X}")), _EVENT_WEEKEND
    if di == DI_BACKUP_PRICES:
        if setup.prices_current is None:
            raise ValueError("not a local meter: no prices")
        return replace(setup, prices_backup=decode_prices(value)), _EVENT_PRICES
    raise ValueError(f"{di:08X} is not written by this meter model")


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
