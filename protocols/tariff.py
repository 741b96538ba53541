"""A meter's tariff set-up (电价/时段 parameters) as read, and how the meter picks its tariff.

Shared by the agent (which reads the set-up and publishes it), the simulator (whose meters
execute it) and the central side (which compares it with the utility's plan). Pure: no I/O and
no import of `protocols.dlt645` — the codec turns the meter's bytes into these values
(`protocols.dlt645.tariff`), the central side only ever sees them.

* `TariffSetup` — everything §C.4 of the tariff reference collects, decoded: counts, the two
  stored time-zone / daily-table sets, which set is active, pending switch times, weekend rule,
  holidays, prices and ladders (local-prepaid meters), programming-event counters, and the
  data identifiers the meter denied. `to_payload()` / `from_payload()` give a JSON-safe dict.
* `meter_tariff(setup, when)` — the tariff (1..4 = 尖/峰/平/谷) the meter runs at its own clock
  reading `when`, replicating the meter's selection (reference §C.2, firmware `tariff.c`).
* `meter_tariff_minutes(setup, day)` — the same for the 1440 minutes of one day, for fast
  equivalence checks over many days.

Selection rules, as the firmware does them (reference §C.2):

1. A switch time (两套时区表/日时段表切换时间) that is set and ≤ the clock flips the active set
   (the meter then clears it; a set-up read before that still shows it pending).
2. Zone: the first p entries of the active zone table (p = 0 or > 14 counts as 1), sorted by
   (month, day); the zone is the last entry whose start ≤ today; before the first entry ⇒ the
   last one (wrap-around); an entry whose month and day are 0 sorts first, and a second such
   entry right after it ends the search (firmware `FindSQ`).
3. Daily table = the zone's table number; a public holiday's table takes precedence (see
   below), then the weekend rule (bit d of 04000801 = 0 ⇒ weekday d is a rest day, use
   04000802; d = 0 is Sunday); table numbers 0 or > 8 fall back to table 1.
4. Period: the first m entries of that daily table (m = 0 or > 14 counts as 1), sorted by
   (hour, minute); the period is the last entry whose start ≤ now; before the first ⇒ the last
   entry. Tariff numbers 0 or > 4 fall back to T1.

Holidays: the public firmware has its holiday lookup commented out in the time-of-use path; the
standard's precedence holiday > weekend > zone is what utilities declare, so this model applies
it (the first n = 04000205 holidays). A meter that ignores holidays fails the check on those days,
which is what the utility wants to know.

Meter times (clock, switch times, `when`) are the meter's local wall clock: naive datetimes.
`read_at` is the agent's clock when the set-up was read (aware, UTC).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = [
    "MAX_DAILY_TABLES",
    "MAX_PERIODS",
    "MAX_TARIFFS",
    "MAX_ZONES",
    "MINUTES_PER_DAY",
    "PAYLOAD_VERSION",
    "SWITCH_KINDS",
    "Holiday",
    "IncompleteSetup",
    "Ladder",
    "Period",
    "SettlementDay",
    "TariffPayloadError",
    "TariffSetup",
    "TouSet",
    "ZoneEntry",
    "active_sets_from_status3",
    "meter_daily_table",
    "meter_day_minutes",
    "meter_tariff",
    "meter_tariff_minutes",
    "table_minutes",
]

MAX_ZONES: Final = 14
"""年时区数 p ≤ 14: entries per zone table"""
MAX_PERIODS: Final = 14
"""日时段数 m ≤ 14: entries per daily table"""
MAX_DAILY_TABLES: Final = 8
"""日时段表数 q ≤ 8"""
MAX_TARIFFS: Final = 4
"""the firmware runs T1..T4 (尖 峰 平 谷); other numbers fall back to T1"""
MINUTES_PER_DAY: Final = 1440
PAYLOAD_VERSION: Final = 1

SWITCH_KINDS: Final = ("zones", "tables", "prices", "ladders", "ladder_zones")
"""the five switch times 04000106..0A, in DI order"""

STATUS3_TABLE_SET_BIT: Final = 0
"""status word 3 (04000503) bit 0: 当前运行时段 — the second daily-table set is active"""
STATUS3_ZONE_SET_BIT: Final = 5
"""status word 3 bit 5: 当前运行时区 — the second time-zone set is active"""


class TariffPayloadError(ValueError):
    """A tariff payload that does not have the shape `TariffSetup.to_payload` gives."""


class IncompleteSetup(ValueError):
    """The set-up lacks an item the meter's selection needs (a daily table it refers to was not
    read, or the meter denied it): the meter's tariff cannot be computed from what was read."""


@dataclass(frozen=True, slots=True)
class ZoneEntry:
    """One time zone (时区): from `month`/`day` on, daily table `table` (MMDDNN on the wire)."""

    month: int
    day: int
    table: int


@dataclass(frozen=True, slots=True)
class Period:
    """One daily period (时段): from `hour`:`minute` on, tariff `tariff` (hhmmNN on the wire)."""

    hour: int
    minute: int
    tariff: int

    @property
    def start(self) -> int:
        """Minutes after midnight (may exceed 1439 for a nonsense entry the meter holds)."""
        return self.hour * 60 + self.minute


@dataclass(frozen=True, slots=True)
class Holiday:
    """One public holiday (公共假日, YYMMDDNN): on `date`, daily table `table`."""

    date: dt.date
    table: int


@dataclass(frozen=True, slots=True)
class SettlementDay:
    """A yearly settlement day of a ladder (年结算日, 3 bytes MMDDhh); 99 in every field = unset
    (all unset ⇒ the ladder settles monthly)."""

    month: int
    day: int
    hour: int


@dataclass(frozen=True, slots=True)
class Ladder:
    """A ladder (阶梯) block: thresholds in kWh (NNNNNN.NN), prices in 元/kWh (XXXX.XXXX),
    yearly settlement days — all as stored (6, 7, and 4 or 6 of them)."""

    thresholds: tuple[Decimal, ...]
    prices: tuple[Decimal, ...]
    settlement_days: tuple[SettlementDay, ...]


@dataclass(frozen=True)
class TouSet:
    """One of the two stored time-of-use sets: the zone table (04010000 / 04020000) and the
    daily tables by number (040100nn / 040200nn), entries as stored (padding included)."""

    zones: tuple[ZoneEntry, ...] = ()
    tables: dict[int, tuple[Period, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TariffSetup:
    """A meter's tariff set-up as read at `read_at` (agent time) when its clock said
    `meter_time`. ``None`` = not read (denied, or not applicable to this meter)."""

    read_at: dt.datetime
    meter_time: dt.datetime | None = None
    zone_count: int | None = None
    """年时区数 p (04000201)"""
    table_count: int | None = None
    """日时段表数 q (04000202)"""
    period_count: int | None = None
    """日时段数 m (04000203)"""
    tariff_count: int | None = None
    """费率数 k (04000204)"""
    holiday_count: int | None = None
    """公共假日数 n (04000205)"""
    ladder_count: int | None = None
    """阶梯数 (04000207, local meters)"""
    sets: tuple[TouSet, TouSet] = (TouSet(), TouSet())
    """first and second set, as stored (not reordered by which one is active)"""
    status_word3: int | None = None
    """04000503 as read; the active sets below come from its bits 5 and 0"""
    active_zone_set: int = 1
    active_table_set: int = 1
    switch_zones: dt.datetime | None = None
    """04000106 两套时区表切换时间 (None = not set / cleared)"""
    switch_tables: dt.datetime | None = None
    """04000107 两套日时段表切换时间"""
    switch_prices: dt.datetime | None = None
    """04000108 两套费率电价切换时间"""
    switch_ladders: dt.datetime | None = None
    """04000109 两套阶梯切换时间"""
    switch_ladder_zones: dt.datetime | None = None
    """0400010A 两套阶梯时区切换时间"""
    weekend_workdays: int | None = None
    """04000801 周休日特征字: bit d set = weekday d (0 = Sunday) is a work day"""
    weekend_table: int | None = None
    """04000802 周休日采用的日时段表号"""
    holidays: tuple[Holiday, ...] = ()
    """040300nn, nn = 1..n, in order"""
    prices_current: tuple[Decimal, ...] | None = None
    """040501FF 当前套费率电价 T1..Tk"""
    prices_backup: tuple[Decimal, ...] | None = None
    """040502FF 备用套费率电价"""
    ladders_current: tuple[Ladder, ...] = ()
    """当前套阶梯: one block (040604FF / 2009 040600FF+040601FF) or two tables (040606FF, 07FF)"""
    ladders_backup: tuple[Ladder, ...] = ()
    """备用套阶梯: 040605FF, or 04060AFF / 0BFF"""
    ladder_zones_current: tuple[ZoneEntry, ...] = ()
    """04070000 当前套阶梯时区表 (NN = ladder table)"""
    ladder_zones_backup: tuple[ZoneEntry, ...] = ()
    """04070001 备用套阶梯时区表"""
    current_ladder_price: Decimal | None = None
    """0280000B 当前阶梯电价"""
    current_price: Decimal | None = None
    """02800020 当前电价"""
    current_tariff_price: Decimal | None = None
    """02800021 当前费率电价"""
    event_counters: dict[str, int] = field(default_factory=dict)
    """programming-event 总次数 by DI (03300400 校时, 03300500 时段表编程, …)"""
    unsupported: frozenset[str] = frozenset()
    """DIs (8 upper-case hex digits) the meter denied: old firmware, or not a local meter"""

    def switch_time(self, kind: str) -> dt.datetime | None:
        """The switch time of `kind` (one of `SWITCH_KINDS`)."""
        if kind not in SWITCH_KINDS:
            raise ValueError(f"switch kind must be one of {SWITCH_KINDS}, not {kind!r}")
        value: dt.datetime | None = getattr(self, f"switch_{kind}")
        return value

    def clock_offset_in(self, zone: dt.tzinfo) -> dt.timedelta | None:
        """Meter time − agent time, reading the meter's wall clock in `zone`."""
        if self.meter_time is None:
            return None
        return self.meter_time.replace(tzinfo=zone) - self.read_at

    # --- JSON-safe form --------------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """A JSON-safe dict (decimals as strings, times ISO 8601); `from_payload` inverts it."""
        return {
            "version": PAYLOAD_VERSION,
            "read_at": self.read_at.isoformat(),
            "meter_time": _iso(self.meter_time),
            "counts": {
                "zones": self.zone_count,
                "tables": self.table_count,
                "periods": self.period_count,
                "tariffs": self.tariff_count,
                "holidays": self.holiday_count,
                "ladders": self.ladder_count,
            },
            "sets": [_set_payload(s) for s in self.sets],
            "status_word3": self.status_word3,
            "active": {"zones": self.active_zone_set, "tables": self.active_table_set},
            "switch": {kind: _iso(self.switch_time(kind)) for kind in SWITCH_KINDS},
            "weekend": {"workdays": self.weekend_workdays, "table": self.weekend_table},
            "holidays": [[h.date.isoformat(), h.table] for h in self.holidays],
            "prices": {
                "current": _decimals(self.prices_current),
                "backup": _decimals(self.prices_backup),
            },
            "ladders": {
                "current": [_ladder_payload(x) for x in self.ladders_current],
                "backup": [_ladder_payload(x) for x in self.ladders_backup],
            },
            "ladder_zones": {
                "current": [_zone_payload(z) for z in self.ladder_zones_current],
                "backup": [_zone_payload(z) for z in self.ladder_zones_backup],
            },
            "now": {
                "ladder_price": _dec_str(self.current_ladder_price),
                "price": _dec_str(self.current_price),
                "tariff_price": _dec_str(self.current_tariff_price),
            },
            "event_counters": dict(sorted(self.event_counters.items())),
            "unsupported": sorted(self.unsupported),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TariffSetup:
        """The inverse of `to_payload`; any deviation raises `TariffPayloadError` naming the key."""
        p = _Reader(payload, "tariff")
        p.keys(
            "version", "read_at", "meter_time", "counts", "sets", "status_word3", "active",
            "switch", "weekend", "holidays", "prices", "ladders", "ladder_zones", "now",
            "event_counters", "unsupported",
        )  # fmt: skip
        if p.get_int("version") != PAYLOAD_VERSION:
            raise TariffPayloadError(f"tariff.version: only {PAYLOAD_VERSION} is known")
        read_at = p.datetime("read_at")
        if read_at is None or read_at.tzinfo is None:
            raise TariffPayloadError("tariff.read_at: an ISO 8601 time with its UTC offset")
        counts = p.sub("counts")
        counts.keys("zones", "tables", "periods", "tariffs", "holidays", "ladders")
        sets = p.get_list("sets")
        if len(sets) != 2:
            raise TariffPayloadError("tariff.sets: exactly two sets (first, second)")
        active = p.sub("active")
        active.keys("zones", "tables")
        switch = p.sub("switch")
        switch.keys(*SWITCH_KINDS)
        weekend = p.sub("weekend")
        weekend.keys("workdays", "table")
        prices = p.sub("prices")
        prices.keys("current", "backup")
        ladders = p.sub("ladders")
        ladders.keys("current", "backup")
        ladder_zones = p.sub("ladder_zones")
        ladder_zones.keys("current", "backup")
        now = p.sub("now")
        now.keys("ladder_price", "price", "tariff_price")
        counters = p.sub("event_counters")
        unsupported = p.get_list("unsupported")
        for i, di in enumerate(unsupported):
            if not (isinstance(di, str) and len(di) == 8 and _is_hex_upper(di)):
                raise TariffPayloadError(f"tariff.unsupported[{i}]: 8 upper-case hex digits")
        return cls(
            read_at=read_at,
            meter_time=_naive(p.datetime("meter_time"), "tariff.meter_time"),
            zone_count=counts.opt_int("zones"),
            table_count=counts.opt_int("tables"),
            period_count=counts.opt_int("periods"),
            tariff_count=counts.opt_int("tariffs"),
            holiday_count=counts.opt_int("holidays"),
            ladder_count=counts.opt_int("ladders"),
            sets=(
                _set_from(_Reader.of(sets[0], "tariff.sets[0]")),
                _set_from(_Reader.of(sets[1], "tariff.sets[1]")),
            ),
            status_word3=p.opt_int("status_word3"),
            active_zone_set=active.set_no("zones"),
            active_table_set=active.set_no("tables"),
            switch_zones=_naive(switch.datetime("zones"), "tariff.switch.zones"),
            switch_tables=_naive(switch.datetime("tables"), "tariff.switch.tables"),
            switch_prices=_naive(switch.datetime("prices"), "tariff.switch.prices"),
            switch_ladders=_naive(switch.datetime("ladders"), "tariff.switch.ladders"),
            switch_ladder_zones=_naive(
                switch.datetime("ladder_zones"), "tariff.switch.ladder_zones"
            ),
            weekend_workdays=weekend.opt_int("workdays"),
            weekend_table=weekend.opt_int("table"),
            holidays=tuple(
                _holiday_from(h, f"tariff.holidays[{i}]")
                for i, h in enumerate(p.get_list("holidays"))
            ),
            prices_current=prices.opt_decimals("current"),
            prices_backup=prices.opt_decimals("backup"),
            ladders_current=tuple(
                _ladder_from(_Reader.of(x, f"tariff.ladders.current[{i}]"))
                for i, x in enumerate(ladders.get_list("current"))
            ),
            ladders_backup=tuple(
                _ladder_from(_Reader.of(x, f"tariff.ladders.backup[{i}]"))
                for i, x in enumerate(ladders.get_list("backup"))
            ),
            ladder_zones_current=_zones_from(ladder_zones, "current"),
            ladder_zones_backup=_zones_from(ladder_zones, "backup"),
            current_ladder_price=now.opt_decimal("ladder_price"),
            current_price=now.opt_decimal("price"),
            current_tariff_price=now.opt_decimal("tariff_price"),
            event_counters={k: counters.get_int(k) for k in counters.data},
            unsupported=frozenset(unsupported),
        )


def active_sets_from_status3(word: int) -> tuple[int, int]:
    """(active zone set, active daily-table set), each 1 or 2, from status word 3 (04000503)."""
    zone = 2 if word >> STATUS3_ZONE_SET_BIT & 1 else 1
    table = 2 if word >> STATUS3_TABLE_SET_BIT & 1 else 1
    return zone, table


# --- the meter's selection (reference §C.2) -------------------------------------------------------


def _count(value: int | None, available: int, limit: int) -> int:
    """The firmware's use of a count: 0 or over the limit counts as 1; an unread count uses
    every stored entry."""
    if value is None:
        return max(1, min(available, limit))
    return 1 if value == 0 or value > limit else value


def _active_sets(setup: TariffSetup, when: dt.datetime) -> tuple[TouSet, TouSet]:
    """(set whose zone table runs, set whose daily tables run) at `when`, flipping for a
    switch time that is set and reached."""
    zone_set = setup.active_zone_set
    if setup.switch_zones is not None and setup.switch_zones <= when:
        zone_set = 3 - zone_set
    table_set = setup.active_table_set
    if setup.switch_tables is not None and setup.switch_tables <= when:
        table_set = 3 - table_set
    return setup.sets[zone_set - 1], setup.sets[table_set - 1]


def _zone_table(zones: tuple[ZoneEntry, ...], count: int | None, day: dt.date) -> int:
    """The daily-table number the zone table gives for `day` (firmware `FindSQ`)."""
    return _zone_table_on(zones, count, day.month, day.day)


@functools.lru_cache(maxsize=65536)
def _zone_table_on(zones: tuple[ZoneEntry, ...], count: int | None, month: int, day: int) -> int:
    if not zones:
        return 1
    p = min(_count(count, len(zones), MAX_ZONES), len(zones))
    ordered = sorted(zones[:p], key=lambda z: (z.month, z.day)) + list(zones[p:])
    today = (month, day)
    before_first = False
    chosen = p - 1
    for i in range(p):
        if not before_first and (ordered[i].month, ordered[i].day) > today:
            if i == 0:
                before_first = True  # before the first zone ⇒ the last one
            else:
                chosen = i - 1
                break
        if i + 1 < len(ordered) and ordered[i + 1].month == 0 and ordered[i + 1].day == 0:
            chosen = i  # a following empty entry ends the list
            break
    return ordered[chosen].table


def meter_daily_table(setup: TariffSetup, when: dt.datetime) -> tuple[int, int]:
    """(daily-table set 1|2, daily-table number 1..8) the meter uses at `when`."""
    _check_naive(when)
    zone_set, table_set = _active_sets(setup, when)
    table_set_no = 1 if table_set is setup.sets[0] else 2
    return table_set_no, _day_table(setup, zone_set, when.date())


def _day_table(setup: TariffSetup, zone_set: TouSet, day: dt.date) -> int:
    table = _zone_table(zone_set.zones, setup.zone_count, day)
    weekday = day.isoweekday() % 7  # 0 = Sunday, as in the weekend word
    if setup.weekend_workdays is not None and not setup.weekend_workdays >> weekday & 1:
        table = setup.weekend_table if setup.weekend_table is not None else table
    holidays = setup.holidays
    if setup.holiday_count is not None:
        holidays = holidays[: setup.holiday_count]
    for holiday in holidays:
        if holiday.date == day:
            table = holiday.table
            break
    return 1 if table == 0 or table > MAX_DAILY_TABLES else table


def _entries(table_set: TouSet, table: int) -> tuple[Period, ...]:
    try:
        entries = table_set.tables[table]
    except KeyError:
        raise IncompleteSetup(f"daily table {table} was not read") from None
    if not entries:
        raise IncompleteSetup(f"daily table {table} holds no entries")
    return entries


@functools.lru_cache(maxsize=4096)
def _periods(entries: tuple[Period, ...], count: int | None) -> tuple[Period, ...]:
    """The first m entries, sorted by start (stable: equal starts keep their stored order)."""
    m = min(_count(count, len(entries), MAX_PERIODS), len(entries))
    return tuple(sorted(entries[:m], key=lambda e: (e.hour, e.minute)))


def _tariff_no(period: Period) -> int:
    return 1 if period.tariff == 0 or period.tariff > MAX_TARIFFS else period.tariff


def meter_tariff(setup: TariffSetup, when: dt.datetime) -> int:
    """The tariff (1..4) the meter runs when its own clock reads `when` (naive wall clock).

    Raises `IncompleteSetup` when the daily table the meter would use was not read."""
    _check_naive(when)
    zone_set, table_set = _active_sets(setup, when)
    entries = _entries(table_set, _day_table(setup, zone_set, when.date()))
    periods = _periods(entries, setup.period_count)
    now = when.hour * 60 + when.minute
    chosen = periods[-1]  # before the first period ⇒ the last one
    for period in periods:
        if period.start > now:
            break
        chosen = period
    return _tariff_no(chosen)


@functools.lru_cache(maxsize=4096)
def table_minutes(entries: tuple[Period, ...], count: int | None) -> tuple[int, ...]:
    """The tariff of each minute (1440) a daily table gives, as the meter uses it (its first
    `count` entries, sorted, wrap-around, fall-backs). Cached: equal tables give the same tuple."""
    periods = _periods(entries, count)
    minutes = [_tariff_no(periods[-1])] * MINUTES_PER_DAY
    for i, period in enumerate(periods):
        end = periods[i + 1].start if i + 1 < len(periods) else MINUTES_PER_DAY
        start, end = min(period.start, MINUTES_PER_DAY), min(end, MINUTES_PER_DAY)
        minutes[start:end] = [_tariff_no(period)] * (end - start)
    return tuple(minutes)


def meter_tariff_minutes(setup: TariffSetup, day: dt.date) -> list[int]:
    """The meter's tariff for each minute of `day` (1440 values, index = minute after midnight);
    equal to `meter_tariff` minute by minute, switch times inside the day included."""
    return list(meter_day_minutes(setup, day))


def meter_day_minutes(setup: TariffSetup, day: dt.date) -> tuple[int, ...]:
    """`meter_tariff_minutes` as a tuple, shared between days and meters that bill alike
    (no copy for a day without a switch inside it)."""
    midnight = dt.datetime.combine(day, dt.time())
    if not any(
        s is not None and s.date() == day for s in (setup.switch_zones, setup.switch_tables)
    ):
        zone_set, table_set = _active_sets(setup, midnight)
        entries = _entries(table_set, _day_table(setup, zone_set, day))
        return table_minutes(entries, setup.period_count)
    cuts = {0, MINUTES_PER_DAY}
    for switch in (setup.switch_zones, setup.switch_tables):
        if switch is not None and switch.date() == day:
            cuts.add(_first_minute_at_or_after(switch))
    result: list[int] = []
    bounds = sorted(cuts)
    for start, end in itertools.pairwise(bounds):
        when = midnight + dt.timedelta(minutes=start)
        zone_set, table_set = _active_sets(setup, when)
        entries = _entries(table_set, _day_table(setup, zone_set, day))
        result.extend(table_minutes(entries, setup.period_count)[start:end])
    return tuple(result)


def _first_minute_at_or_after(switch: dt.datetime) -> int:
    """The first minute of the day whose start the switch has reached: a switch at 15:00 counts
    from minute 900, one at 15:00:00.8 (a time with seconds, from a payload) from minute 901 —
    `meter_tariff` at 15:00 still sees the old sets. 1440: from no minute of that day."""
    minute = switch.hour * 60 + switch.minute
    return minute + 1 if (switch.second, switch.microsecond) != (0, 0) else minute


def _check_naive(when: dt.datetime) -> None:
    if when.tzinfo is not None:
        raise ValueError("a meter time is the meter's wall clock: a naive datetime")


# --- payload helpers -------------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dec_str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimals(values: tuple[Decimal, ...] | None) -> list[str] | None:
    return None if values is None else [str(v) for v in values]


def _zone_payload(zone: ZoneEntry) -> list[int]:
    return [zone.month, zone.day, zone.table]


def _set_payload(tou: TouSet) -> dict[str, Any]:
    return {
        "zones": [_zone_payload(z) for z in tou.zones],
        "tables": {
            str(no): [[p.hour, p.minute, p.tariff] for p in periods]
            for no, periods in sorted(tou.tables.items())
        },
    }


def _ladder_payload(ladder: Ladder) -> dict[str, Any]:
    return {
        "thresholds": [str(v) for v in ladder.thresholds],
        "prices": [str(v) for v in ladder.prices],
        "settlement_days": [[s.month, s.day, s.hour] for s in ladder.settlement_days],
    }


def _is_hex_upper(text: str) -> bool:
    return all(c in "0123456789ABCDEF" for c in text)


def _naive(value: dt.datetime | None, where: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is not None:
        raise TariffPayloadError(f"{where}: the meter's wall clock, without a UTC offset")
    return value


class _Reader:
    """Typed access to one JSON object, every error naming the key path."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    @classmethod
    def of(cls, value: object, where: str) -> _Reader:
        if not isinstance(value, Mapping):
            raise TariffPayloadError(f"{where}: an object")
        return cls(value, where)

    def _err(self, key: str, what: str) -> TariffPayloadError:
        return TariffPayloadError(f"{self.where}.{key}: {what}")

    def keys(self, *names: str) -> None:
        missing = [n for n in names if n not in self.data]
        extra = sorted(set(self.data) - set(names))
        if missing:
            raise TariffPayloadError(f"{self.where}: missing {', '.join(missing)}")
        if extra:
            raise TariffPayloadError(f"{self.where}: unknown {', '.join(map(str, extra))}")

    def sub(self, key: str) -> _Reader:
        return _Reader.of(self.data.get(key), f"{self.where}.{key}")

    def get_list(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if not isinstance(value, list):
            raise self._err(key, "a list")
        return value

    def get_int(self, key: str) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._err(key, "a non-negative integer")
        return value

    def opt_int(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.get_int(key)

    def set_no(self, key: str) -> int:
        value = self.get_int(key)
        if value not in (1, 2):
            raise self._err(key, "1 or 2")
        return value

    def datetime(self, key: str) -> dt.datetime | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._err(key, "an ISO 8601 time or null")
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            raise self._err(key, f"not an ISO 8601 time: {value!r}") from None

    def opt_decimal(self, key: str) -> Decimal | None:
        value = self.data.get(key)
        return None if value is None else _decimal(value, f"{self.where}.{key}")

    def opt_decimals(self, key: str) -> tuple[Decimal, ...] | None:
        if self.data.get(key) is None:
            return None
        return tuple(
            _decimal(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(self.get_list(key))
        )


def _decimal(value: object, where: str) -> Decimal:
    if not isinstance(value, str):
        raise TariffPayloadError(f"{where}: a decimal as a string")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise TariffPayloadError(f"{where}: not a decimal: {value!r}") from None
    if not result.is_finite():
        raise TariffPayloadError(f"{where}: not a finite decimal")
    return result


def _triples(value: object, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        raise TariffPayloadError(f"{where}: three integers 0..255")
    return value[0], value[1], value[2]


def _zones_from(reader: _Reader, key: str) -> tuple[ZoneEntry, ...]:
    return tuple(
        ZoneEntry(*_triples(z, f"{reader.where}.{key}[{i}]"))
        for i, z in enumerate(reader.get_list(key))
    )


def _set_from(reader: _Reader) -> TouSet:
    reader.keys("zones", "tables")
    tables_reader = reader.sub("tables")
    tables: dict[int, tuple[Period, ...]] = {}
    for key in tables_reader.data:
        if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 255):
            raise TariffPayloadError(f"{reader.where}.tables: key {key!r} is not a table number")
        tables[int(key)] = tuple(
            Period(*_triples(p, f"{reader.where}.tables.{key}[{i}]"))
            for i, p in enumerate(tables_reader.get_list(key))
        )
    return TouSet(zones=_zones_from(reader, "zones"), tables=tables)


def _holiday_from(value: object, where: str) -> Holiday:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] <= 255
    ):
        raise TariffPayloadError(f"{where}: [ISO date, table number]")
    try:
        date = dt.date.fromisoformat(value[0])
    except ValueError:
        raise TariffPayloadError(f"{where}: not an ISO date: {value[0]!r}") from None
    return Holiday(date, value[1])


def _ladder_from(reader: _Reader) -> Ladder:
    reader.keys("thresholds", "prices", "settlement_days")
    thresholds = reader.opt_decimals("thresholds") or ()
    prices = reader.opt_decimals("prices") or ()
    days = tuple(
        SettlementDay(*_triples(s, f"{reader.where}.settlement_days[{i}]"))
        for i, s in enumerate(reader.get_list("settlement_days"))
    )
    return Ladder(thresholds=thresholds, prices=prices, settlement_days=days)
