"""The tariff execution check (电价执行正确), per meter and data day: topup-tariff.md §C.4's six
steps, one outcome from a closed set, details kept.

Inputs per meter: its plan (the archive's ``tariff_plan``), the tariff set-ups the agent read
(``protocols.tariff.TariffSetup``; the latest one up to the end of the day, and the one before
it for the programming-event counters), the daily freezes of the day and the two before (total
and per-tariff forward energy), and the programming jobs meterlink ran on the meter.

The steps:

1. *Clock*: meter time − agent time (the day's freeze read when it carries the offset, else the
   set-up's read); ``|Δ| > clock_error_s`` (300 s) ⇒ CLOCK_DRIFT; ``> clock_warn_s`` (60 s)
   ⇒ the outcome is flagged clock-suspect.
2. *Structure* and 3. *equivalence*: the meter's tariff function (`protocols.tariff`, the
   meter's own selection, pending switch times included) and the plan's, as 1440-minute vectors
   for each of the next `horizon_days` (366) days from the data day. Equal vectors pass
   whatever the tables' form; a mismatching day is explained (which set, daily table, entry or
   holiday; expected vs found). A mismatch today is PARAM_MISMATCH — or SWITCH_MISSED when the
   meter still runs the version the plan replaced (or holds a switch time already passed). A
   later mismatch while the active set is the plan's in force (zones, tables, holidays) and
   the mismatch starts on or after the plan's next effective date is SWITCH_PENDING: today is
   right, the programmed change is not; any other later mismatch is PARAM_MISMATCH.
4. *Prices/ladder* (local plans): the current prices (after a passed price switch, the backup
   set) against the version in force; the backup set and price switch time against the next
   price change (SWITCH_PENDING when wrong); the ladder; the meter's current tariff price
   (02800021) against the plan's price at the meter's time. Tolerance: half the last digit
   (XXXX.XXXX ⇒ 0.00005 元/kWh).
5. *Energy allocation* on consecutive daily freezes (the freeze stamped D holds what was
   consumed up to D 00:00, so freezes D−1 → D are day D−1's consumption): Σ ΔTi must equal
   Δtotal within ``energy_tolerance_kwh`` × (registers + 1), and no register may gain more than
   2 × ``energy_tolerance_kwh`` on a day the plan gives its tariff no minute (± the clock
   offset at the day's ends). Flagged when every available pair of the last two violates.
   Without hourly freezes a misallocation between tariffs the plan does run that day is not
   visible (docs/tariff.md).
6. *Programming outside plan*: a programming-event counter (时段表, 时区表, 周休日, 节假日,
   费率参数表, 阶梯表 编程) that grew between two consecutive set-up reads (of those kept for the
   check: the last `max_setup_age_days` + 31 days) without a recorded job on the meter in
   between; it stays flagged while that pair of reads is in the window.

Precedence when several fail (the others stay in the details): NOT_READ, UNSUPPORTED_DI,
CLOCK_DRIFT, PROGRAMMED_OUTSIDE_PLAN, SWITCH_MISSED, PARAM_MISMATCH, PRICE_MISMATCH (billing
wrong now) before SWITCH_PENDING (wrong from a future date), ENERGY_MISALLOCATED, then OK.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from central.tariff.plans import MINUTES, Plan, PlanVersion
from central.tariff.store import FreezeFact, Outcome
from protocols.tariff import (
    IncompleteSetup,
    TariffSetup,
    meter_daily_table,
    meter_tariff_minutes,
)

__all__ = [
    "OUTCOMES",
    "PROGRAMMING_COUNTERS",
    "CheckSettings",
    "EquivalenceCache",
    "MeterFacts",
    "check_meter",
    "tou_digest",
]

OUTCOMES = (
    "OK",
    "CLOCK_DRIFT",
    "PARAM_MISMATCH",
    "SWITCH_PENDING",
    "SWITCH_MISSED",
    "ENERGY_MISALLOCATED",
    "PRICE_MISMATCH",
    "PROGRAMMED_OUTSIDE_PLAN",
    "UNSUPPORTED_DI",
    "NOT_READ",
)
#: the most serious first: the outcome is the first one found
PRECEDENCE = (
    "NOT_READ",
    "UNSUPPORTED_DI",
    "CLOCK_DRIFT",
    "PROGRAMMED_OUTSIDE_PLAN",
    "SWITCH_MISSED",
    "PARAM_MISMATCH",
    "PRICE_MISMATCH",
    "SWITCH_PENDING",
    "ENERGY_MISALLOCATED",
)
#: programming-event counters (总次数) that change what the meter bills; 校时 (03300400) is
#: meterlink's own daily business and 密钥更新 is not a tariff change
PROGRAMMING_COUNTERS = {
    "03300500": "时段表编程 daily tables",
    "03300600": "时区表编程 year zones",
    "03300700": "周休日编程 weekend rule",
    "03300800": "节假日编程 holidays",
    "03300F00": "费率参数表编程 prices",
    "03301000": "阶梯表编程 ladder",
}
#: the DIs without which the time-of-use check cannot be done
_TOU_DIS = ("04000201", "04000203", "04010000", "04020000")
_LOCAL_DIS = ("040501FF", "040502FF")
_MAX_DETAIL_DAYS = 5


@dataclass(frozen=True)
class CheckSettings:
    clock_warn_s: float = 60.0
    clock_error_s: float = 300.0
    horizon_days: int = 366
    #: a set-up older than this at the day's end does not count: the meter is NOT_READ
    max_setup_age_days: int = 8
    energy_tolerance_kwh: float = 0.01
    price_tolerance: float = 0.00005


@dataclass
class MeterFacts:
    concentrator: str
    meter: str
    plan: Plan
    #: set-ups read up to the end of the data day, oldest first
    setups: Sequence[TariffSetup]
    #: daily freezes by freeze day (D, D−1, D−2 as far as known)
    freezes: Mapping[str, FreezeFact] = field(default_factory=dict)
    #: programming jobs on the meter: (started, ended or None) unix seconds
    jobs: Sequence[tuple[int, int | None]] = ()
    #: `tou_digest` of the latest set-up's payload, when the caller has it
    digest: str | None = None


@dataclass
class _Findings:
    found: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock_suspect: bool = False

    def add(self, code: str, **detail: Any) -> None:
        self.found.setdefault(code, detail)

    def outcome(self, c: str, m: str, extra: dict[str, Any]) -> Outcome:
        code = next((p for p in PRECEDENCE if p in self.found), "OK")
        detail = {**extra, **({"findings": self.found} if self.found else {})}
        return Outcome(c, m, code, detail, self.clock_suspect)


# --- the meter's tariff function, cached --------------------------------------------------------
def tou_digest(payload: Mapping[str, Any]) -> str:
    """What decides the meter's tariff per minute (not its clock, prices or counters), from a
    set-up's payload form (`TariffSetup.to_payload()`)."""
    p = payload
    relevant = {k: p[k] for k in ("counts", "sets", "active", "weekend", "holidays")}
    relevant["switch"] = {k: p["switch"][k] for k in ("zones", "tables")}
    return hashlib.blake2b(
        json.dumps(relevant, sort_keys=True).encode(), digest_size=16
    ).hexdigest()


class EquivalenceCache:
    """Meters with the same tariff set-up checked against the same plan on the same day get the
    same answer: computed once (a fleet mostly shares a handful of set-ups)."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str, dt.date, int], _Equivalence] = {}

    def get(
        self, setup: TariffSetup, plan: Plan, day: dt.date, horizon: int, digest: str | None = None
    ) -> _Equivalence:
        key = (digest or tou_digest(setup.to_payload()), plan.name, day, horizon)
        got = self._results.get(key)
        if got is None:
            got = self._results[key] = _equivalence(setup, plan, day, horizon)
        return got

    def __len__(self) -> int:
        return len(self._results)


@dataclass(frozen=True)
class _BadDay:
    day: dt.date
    minutes: int
    first_minute: int
    expected: int
    found: int
    meter_table: tuple[int, int]  # (set, table)
    plan_table: int


@dataclass(frozen=True)
class _Equivalence:
    bad: tuple[_BadDay, ...]
    incomplete: str | None = None  # the meter's tariff cannot be computed (a table not read)
    #: the days the meter's function equals the plan version before the one in force
    #: the meter's mismatching days are the plan version before the one in force
    matches_previous: bool = False


def meter_vectors(
    setup: TariffSetup, first: dt.date, count: int
) -> list[tuple[bytes, tuple[int, int]]]:
    """f_meter for `count` days from `first`: (1440-byte vector, (table set, table)) per day.
    A day without a switch time inside it runs one daily table all day: each (set, table) is
    computed once."""
    switch_days = {s.date() for s in (setup.switch_zones, setup.switch_tables) if s is not None}
    by_table: dict[tuple[int, int], bytes] = {}
    out = []
    for i in range(count):
        day = first + dt.timedelta(days=i)
        which = meter_daily_table(setup, dt.datetime.combine(day, dt.time()))
        if day in switch_days:
            out.append((bytes(meter_tariff_minutes(setup, day)), which))
            continue
        vector = by_table.get(which)
        if vector is None:
            vector = by_table[which] = bytes(meter_tariff_minutes(setup, day))
        out.append((vector, which))
    return out


_CHANGES: dict[bytes, tuple[int, ...]] = {}


def _changes(vector: bytes) -> tuple[int, ...]:
    """The minutes at which a day vector changes tariff (0 included), cached per vector."""
    got = _CHANGES.get(vector)
    if got is None:
        if len(_CHANGES) > 10_000:
            _CHANGES.clear()
        got = _CHANGES[vector] = (0, *(m for m in range(1, MINUTES) if vector[m] != vector[m - 1]))
    return got


def _diff(a: bytes, b: bytes) -> tuple[int, int]:
    """(minutes where `a` and `b` differ, the first of them), run by run."""
    cuts = sorted({*_changes(a), *_changes(b), MINUTES})
    count, first = 0, -1
    for start, end in itertools.pairwise(cuts):
        if a[start] != b[start]:
            count += end - start
            if first < 0:
                first = start
    return count, first


def _equivalence(setup: TariffSetup, plan: Plan, day: dt.date, horizon: int) -> _Equivalence:
    try:
        meter = meter_vectors(setup, day, horizon)
    except IncompleteSetup as exc:
        return _Equivalence((), incomplete=str(exc))
    bad = []
    for i, (vector, which) in enumerate(meter):
        d = day + dt.timedelta(days=i)
        version = plan.in_force(d)
        if version is None:
            continue
        table = version.table_on(d)
        expected = version.vectors[table]
        if vector == expected:
            continue
        minutes, first = _diff(vector, expected)
        bad.append(_BadDay(d, minutes, first, expected[first], vector[first], which, table))
    # the meter still runs the version the plan replaced: every mismatching day (up to the
    # plan's next change) is exactly what that version said
    previous = False
    current = plan.in_force(day)
    before = [v for v in plan.version if current is not None and v.effective < current.effective]
    if bad and before:
        old = before[-1]
        nxt = plan.next_change(day, "tou")
        until = nxt.effective if nxt is not None else None
        considered = [b for b in bad if until is None or b.day < until]
        previous = bool(considered) and all(
            meter[(b.day - day).days][0] == old.vectors[old.table_on(b.day)] for b in considered
        )
    return _Equivalence(tuple(bad), None, previous)


# --- the check ---------------------------------------------------------------------------------
def check_meter(
    facts: MeterFacts,
    day: dt.date,
    day_end: dt.datetime,
    tz: dt.tzinfo,
    settings: CheckSettings,
    cache: EquivalenceCache | None = None,
) -> Outcome:
    """The outcome of one meter for data day `day` (`day_end`: its end, aware)."""
    f = _Findings()
    c, m, plan = facts.concentrator, facts.meter, facts.plan
    extra: dict[str, Any] = {"plan": plan.name}
    setups = [s for s in facts.setups if s.read_at <= day_end]
    if not setups or day_end - setups[-1].read_at > dt.timedelta(days=settings.max_setup_age_days):
        last = setups[-1].read_at.isoformat() if setups else None
        f.add("NOT_READ", last_setup_read=last, max_age_days=settings.max_setup_age_days)
        return f.outcome(c, m, extra)
    setup = setups[-1]
    extra["setup_read_at"] = setup.read_at.isoformat()
    version = plan.in_force(day)
    if version is None:
        extra["note"] = f"plan {plan.name} starts {plan.version[0].effective}"
        return f.outcome(c, m, extra)

    # 0. what the meter denied
    needed = [di for di in _TOU_DIS if di in setup.unsupported]
    needed += [di for di in setup.unsupported if di[:6] in ("040100", "040200")]
    if any(v.holidays for v in plan.version):
        needed += [di for di in setup.unsupported if di[:6] == "040300" or di == "04000205"]
    if any(v.rest_days for v in plan.version):
        needed += [di for di in setup.unsupported if di in ("04000801", "04000802")]
    if plan.mode == "local":
        needed += [di for di in _LOCAL_DIS if di in setup.unsupported]
    if needed:
        f.add("UNSUPPORTED_DI", dis=sorted(set(needed)))

    # 1. clock
    freeze = facts.freezes.get(day.isoformat())
    offset: float | None = freeze.clock_offset_s if freeze is not None else None
    if offset is None:
        delta = setup.clock_offset_in(tz)
        offset = None if delta is None else delta.total_seconds()
    if offset is not None:
        extra["clock_offset_s"] = round(offset, 1)
        if abs(offset) > settings.clock_error_s:
            f.add("CLOCK_DRIFT", clock_offset_s=round(offset, 1), limit_s=settings.clock_error_s)
        if abs(offset) > settings.clock_warn_s:
            f.clock_suspect = True

    # 6. programming outside plan
    for before, after in itertools.pairwise(setups):
        _programming(before, after, facts.jobs, f)

    # 2 + 3. structure and equivalence
    digest = facts.digest if setup is facts.setups[-1] else None
    eq = (cache if cache is not None else EquivalenceCache()).get(
        setup, plan, day, settings.horizon_days, digest
    )
    if eq.incomplete is not None:
        if "UNSUPPORTED_DI" not in f.found:
            f.add("PARAM_MISMATCH", reason=eq.incomplete)
    elif eq.bad:
        _classify(eq, setup, plan, version, day, f)

    # 4. prices and ladder
    if plan.mode == "local":
        _prices(setup, plan, version, day, settings, f)

    # 5. energy allocation
    _energy(facts.freezes, plan, day, offset or 0.0, settings, f, extra)
    return f.outcome(c, m, extra)


def _programming(
    before: TariffSetup, after: TariffSetup, jobs: Sequence[tuple[int, int | None]], f: _Findings
) -> None:
    changed = {
        di: (before.event_counters[di], after.event_counters[di])
        for di in PROGRAMMING_COUNTERS
        if di in before.event_counters
        and di in after.event_counters
        and after.event_counters[di] > before.event_counters[di]
    }
    if not changed:
        return
    start, end = before.read_at.timestamp(), after.read_at.timestamp()
    covered = any(s <= end and (e is None or e >= start) for s, e in jobs)
    if not covered:
        f.add(
            "PROGRAMMED_OUTSIDE_PLAN",
            counters={
                di: {"event": PROGRAMMING_COUNTERS[di], "before": b, "after": a}
                for di, (b, a) in changed.items()
            },
            between=[before.read_at.isoformat(), after.read_at.isoformat()],
        )


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _bad_day(b: _BadDay) -> dict[str, Any]:
    return {
        "day": b.day.isoformat(),
        "minutes": b.minutes,
        "from": _hhmm(b.first_minute),
        "expected_tariff": b.expected,
        "found_tariff": b.found,
        "meter_set": b.meter_table[0],
        "meter_table": b.meter_table[1],
        "plan_table": b.plan_table,
    }


def _classify(
    eq: _Equivalence,
    setup: TariffSetup,
    plan: Plan,
    version: PlanVersion,
    day: dt.date,
    f: _Findings,
) -> None:
    days = [_bad_day(b) for b in eq.bad[:_MAX_DETAIL_DAYS]]
    detail: dict[str, Any] = {"mismatching_days": len(eq.bad), "first_days": days}
    detail.update(_structure(setup, version, day))
    first = eq.bad[0].day
    passed = [
        s.isoformat()
        for s in (setup.switch_zones, setup.switch_tables)
        if s is not None and setup.meter_time is not None and s <= setup.meter_time
    ]
    if eq.matches_previous or (first == day and passed):
        f.add(
            "SWITCH_MISSED",
            plan_effective=version.effective.isoformat(),
            passed_switch_times=passed,
            **detail,
        )
        return
    if first == day:
        f.add("PARAM_MISMATCH", **detail)
        return
    change = plan.next_change(day, "tou")
    expected_switch = (
        dt.datetime.combine(change.effective, dt.time()) if change is not None else None
    )
    switches = {
        "zones": setup.switch_zones.isoformat() if setup.switch_zones else None,
        "tables": setup.switch_tables.isoformat() if setup.switch_tables else None,
    }
    active_as_planned = not any(k in detail for k in ("zones", "tables", "holidays_missing"))
    if change is not None and active_as_planned and first >= change.effective:
        f.add(
            "SWITCH_PENDING",
            expected_switch=expected_switch.isoformat() if expected_switch else None,
            found_switch=switches,
            **detail,
        )
    else:
        f.add("PARAM_MISMATCH", **detail)


def _structure(setup: TariffSetup, version: PlanVersion, day: dt.date) -> dict[str, Any]:
    """Where the active set differs from the plan in force: zones, tables, holidays, weekend
    (entries as the meter uses them: the first p / m, sorted; padding dropped)."""
    out: dict[str, Any] = {}
    midnight = dt.datetime.combine(day, dt.time())
    zone_no, table_no = setup.active_zone_set, setup.active_table_set
    if setup.switch_zones is not None and setup.switch_zones <= midnight:
        zone_no = 3 - zone_no  # flipped since the read (the meter clears the time then)
    if setup.switch_tables is not None and setup.switch_tables <= midnight:
        table_no = 3 - table_no
    zone_set = setup.sets[zone_no - 1]
    table_set = setup.sets[table_no - 1]
    p = setup.zone_count or len(zone_set.zones)
    zones = sorted({(z.month, z.day, z.table) for z in zone_set.zones[:p]})
    want = sorted((*z.month_day, z.table) for z in version.zones)
    if zones != want:
        out["zones"] = {
            "set": zone_no,
            "expected": [f"{mo:02d}-{d:02d}→{t}" for mo, d, t in want],
            "found": [f"{mo:02d}-{d:02d}→{t}" for mo, d, t in zones],
        }
    tables = {}
    n = setup.period_count
    for key, periods in sorted(version.tables.items()):
        number = int(key)
        expected = sorted(_dedupe([(p.minute, p.tariff) for p in periods]))
        got_raw = table_set.tables.get(number, ())
        got = sorted(_dedupe([(e.start, e.tariff) for e in got_raw[: n or len(got_raw)]]))
        if expected != got:
            tables[key] = {
                "set": table_no,
                "expected": [f"{_hhmm(a)}→T{t}" for a, t in expected],
                "found": [f"{_hhmm(a)}→T{t}" for a, t in got],
            }
    if tables:
        out["tables"] = tables
    horizon = day + dt.timedelta(days=366)
    held = {(h.date, h.table) for h in setup.holidays[: setup.holiday_count or None]}
    missing = [
        f"{h.date.isoformat()}→{h.table}"
        for h in version.holidays
        if day <= h.date <= horizon and (h.date, h.table) not in held
    ]
    if missing:
        out["holidays_missing"] = missing
    return out


def _dedupe(entries: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Padding repeats the last entry: an entry equal to an earlier one adds nothing."""
    seen: dict[int, int] = {}
    for start, tariff in entries:
        seen.setdefault(start, tariff)
    return list(seen.items())


def _dec(values: Sequence[Decimal] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _prices_differ(found: Sequence[Decimal] | None, want: Sequence[float], tol: float) -> bool:
    if found is None or len(found) < len(want):
        return True
    return any(abs(float(a) - b) > tol for a, b in zip(found, want, strict=False))


def _prices(
    setup: TariffSetup,
    plan: Plan,
    version: PlanVersion,
    day: dt.date,
    settings: CheckSettings,
    f: _Findings,
) -> None:
    tol = settings.price_tolerance
    midnight = dt.datetime.combine(day, dt.time())
    switched = setup.switch_prices is not None and setup.switch_prices <= midnight
    current = setup.prices_backup if switched else setup.prices_current
    want = version.prices or []
    if _prices_differ(current, want, tol):
        before = [v for v in plan.version if v.effective < version.effective and v.prices]
        detail = {
            "expected": want,
            "found": _dec(current),
            "set": "backup" if switched else "current",
        }
        if before and not _prices_differ(current, before[-1].prices or [], tol):
            f.add(
                "SWITCH_MISSED",
                what="prices",
                plan_effective=version.effective.isoformat(),
                **detail,
            )
        else:
            f.add("PRICE_MISMATCH", what="prices", **detail)
    ladder = version.ladder
    ladders = (
        setup.ladders_backup
        if setup.switch_ladders is not None and setup.switch_ladders <= midnight
        else setup.ladders_current
    )
    if ladder is not None and ladders:
        got = ladders[0]
        n = len(ladder.thresholds)
        if _prices_differ(got.thresholds, ladder.thresholds, 0.005) or _prices_differ(
            got.prices, ladder.prices, tol
        ):
            f.add(
                "PRICE_MISMATCH",
                what="ladder",
                expected={"thresholds": ladder.thresholds, "prices": ladder.prices},
                found={"thresholds": _dec(got.thresholds[:n]), "prices": _dec(got.prices[: n + 1])},
            )
    if setup.current_tariff_price is not None and setup.meter_time is not None and version.prices:
        at = setup.meter_time
        v = plan.in_force(at.date())
        if v is not None and v.prices:
            tariff = v.vectors[v.table_on(at.date())][at.hour * 60 + at.minute]
            expected = v.prices[tariff - 1]
            if abs(float(setup.current_tariff_price) - expected) > tol:
                f.add(
                    "PRICE_MISMATCH",
                    what="current tariff price 02800021",
                    at=at.isoformat(),
                    tariff=tariff,
                    expected=expected,
                    found=float(setup.current_tariff_price),
                )
    change = plan.next_change(day, "price")
    if change is not None and change.prices is not None and not switched:
        expected_switch = dt.datetime.combine(change.effective, dt.time())
        wrong = []
        if setup.switch_prices != expected_switch:
            wrong.append("switch time")
        if _prices_differ(setup.prices_backup, change.prices, tol):
            wrong.append("backup prices")
        if wrong:
            f.add(
                "SWITCH_PENDING",
                what="prices",
                wrong=wrong,
                expected_switch=expected_switch.isoformat(),
                found_switch=setup.switch_prices.isoformat() if setup.switch_prices else None,
                expected_backup=change.prices,
                found_backup=_dec(setup.prices_backup),
            )


def _energy(
    freezes: Mapping[str, FreezeFact],
    plan: Plan,
    day: dt.date,
    offset_s: float,
    settings: CheckSettings,
    f: _Findings,
    extra: dict[str, Any],
) -> None:
    tol = settings.energy_tolerance_kwh
    pairs = []
    for back in (0, 1):
        later = freezes.get((day - dt.timedelta(days=back)).isoformat())
        earlier = freezes.get((day - dt.timedelta(days=back + 1)).isoformat())
        if later is not None and earlier is not None:
            pairs.append((earlier, later, day - dt.timedelta(days=back + 1)))
    if not pairs:
        return
    edge = math.ceil(abs(offset_s) / 60) + 1
    violations = []
    for earlier, later, consumed in pairs:
        n = min(len(earlier.registers), len(later.registers))
        deltas = [later.registers[i] - earlier.registers[i] for i in range(n)]
        total = later.total - earlier.total
        problems: list[dict[str, Any]] = []
        if abs(sum(deltas) - total) > tol * (n + 1):
            problems.append({"sum_of_tariffs": round(sum(deltas), 3), "total": round(total, 3)})
        allowed = _tariffs_run(plan, consumed, edge)
        for i, d in enumerate(deltas):
            if d > 2 * tol and (i + 1) not in allowed:
                problems.append(
                    {"register": f"T{i + 1}", "kwh": round(d, 3), "plan_tariffs": sorted(allowed)}
                )
        if problems:
            violations.append({"day": consumed.isoformat(), "problems": problems})
    extra["energy_pairs"] = len(pairs)
    if len(violations) == len(pairs):
        f.add("ENERGY_MISALLOCATED", days=violations, tolerance_kwh=tol)


_RUN: dict[tuple[bytes | None, bytes | None, bytes | None, int], frozenset[int]] = {}


def _tariffs_run(plan: Plan, day: dt.date, edge: int) -> frozenset[int]:
    """The tariffs the plan runs on `day`, and in the `edge` minutes either side of it."""
    key = (plan.day_vector(day - dt.timedelta(days=1)), plan.day_vector(day),
           plan.day_vector(day + dt.timedelta(days=1)), edge)  # fmt: skip
    got = _RUN.get(key)
    if got is None:
        before, today, after = key[:3]
        out: set[int] = set(today or ())
        out.update(before[-edge:] if before is not None else ())
        out.update(after[:edge] if after is not None else ())
        if len(_RUN) > 10_000:
            _RUN.clear()
        got = _RUN[key] = frozenset(out)
    return got
