"""The six steps of the tariff check on hand-made meters: one outcome per case, details kept."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from decimal import Decimal
from pathlib import Path

import pytest

from central.tariff.check import CheckSettings, EquivalenceCache, MeterFacts, check_meter
from central.tariff.expect import expected_set, holidays, weekend_word
from central.tariff.plans import Plan, PlanBook, load_plans, parse_plans
from central.tariff.store import FreezeFact, Outcome
from protocols.tariff import Holiday, Period, TariffSetup, TouSet

REPO = Path(__file__).resolve().parents[2]
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 6, 15)  # a Monday
DAY_END = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(), TZ)
READ_AT = dt.datetime.combine(DAY, dt.time(10), TZ)
BOOK: PlanBook = load_plans(REPO / "deploy" / "tariff-plans.example.toml")
TOU = BOOK.plans["resident-tou"]
LOCAL = BOOK.plans["prepaid-local"]


def good(plan: Plan, day: dt.date = DAY, **changes: object) -> TariffSetup:
    """A meter programmed exactly as `plan` wants on `day`."""
    v = plan.in_force(day)
    assert v is not None
    tou = expected_set(v)
    setup = TariffSetup(
        read_at=READ_AT.astimezone(dt.UTC),
        meter_time=READ_AT.replace(tzinfo=None),
        zone_count=len(tou.zones),
        table_count=len(tou.tables),
        period_count=max(len(p) for p in tou.tables.values()),
        tariff_count=v.tariffs,
        holiday_count=len(v.holidays),
        sets=(tou, TouSet()),
        weekend_workdays=weekend_word(v),
        weekend_table=v.weekend_table or 1,
        holidays=holidays(v, dt.date(2000, 1, 1)),
        event_counters={"03300500": 3, "03300600": 1},
    )
    if v.prices is not None:
        setup = dataclasses.replace(
            setup,
            prices_current=tuple(Decimal(str(p)) for p in v.prices),
            prices_backup=tuple(Decimal(str(p)) for p in v.prices),
        )
    return dataclasses.replace(setup, **changes)  # type: ignore[arg-type]


def check(plan: Plan, *setups: TariffSetup, **kw: object) -> Outcome:
    facts = MeterFacts("c-1", "m-1", plan, list(setups), **kw)  # type: ignore[arg-type]
    return check_meter(facts, DAY, DAY_END, TZ, CheckSettings(), EquivalenceCache())


def test_a_meter_programmed_as_planned_is_ok() -> None:
    out = check(TOU, good(TOU))
    assert (out.outcome, out.clock_suspect) == ("OK", False)
    assert "findings" not in out.detail


def test_equivalent_tables_in_another_form_pass() -> None:
    setup = good(TOU)
    first = setup.sets[0]
    # table 1 written unsorted, a period split in two with the same tariff, padding repeated
    t1 = list(reversed(first.tables[1]))
    t1.append(Period(9, 0, 3))  # 08:00 T3 already runs until 10:00
    t1 += [t1[-1]] * 3
    form = TouSet(first.zones[::-1], {**first.tables, 1: tuple(t1)})
    out = check(TOU, dataclasses.replace(setup, sets=(form, TouSet()), period_count=len(t1)))
    assert out.outcome == "OK", out.detail


def test_a_missing_holiday_fails_with_the_holiday_named() -> None:
    setup = good(TOU)
    out = check(TOU, dataclasses.replace(setup, holidays=setup.holidays[1:], holiday_count=1))
    assert out.outcome == "PARAM_MISMATCH"
    found = out.detail["findings"]["PARAM_MISMATCH"]
    assert found["holidays_missing"] == ["2026-10-01→3"]
    assert found["first_days"][0]["day"] == "2026-10-01"
    assert found["first_days"][0]["plan_table"] == 3


def test_a_wrong_period_boundary_names_table_and_entry() -> None:
    setup = good(TOU)
    first = setup.sets[0]
    t1 = tuple(Period(17, 30, 2) if (p.hour, p.minute) == (17, 0) else p for p in first.tables[1])
    wrong = TouSet(first.zones, {**first.tables, 1: t1})
    out = check(TOU, dataclasses.replace(setup, sets=(wrong, TouSet())))
    assert out.outcome == "PARAM_MISMATCH"
    found = out.detail["findings"]["PARAM_MISMATCH"]
    assert "17:00→T2" in found["tables"]["1"]["expected"]
    assert "17:30→T2" in found["tables"]["1"]["found"]
    first_day = found["first_days"][0]
    assert (first_day["day"], first_day["minutes"], first_day["from"]) == (
        "2026-06-15",
        30,
        "17:00",
    )
    assert (first_day["expected_tariff"], first_day["found_tariff"]) == (2, 3)


def test_clock_drift_beyond_300_s_fails_and_beyond_60_s_is_suspect() -> None:
    late = good(TOU, meter_time=(READ_AT + dt.timedelta(seconds=420)).replace(tzinfo=None))
    out = check(TOU, late)
    assert out.outcome == "CLOCK_DRIFT"
    assert out.detail["findings"]["CLOCK_DRIFT"]["clock_offset_s"] == 420
    warn = check(
        TOU, good(TOU, meter_time=(READ_AT - dt.timedelta(seconds=90)).replace(tzinfo=None))
    )
    assert (warn.outcome, warn.clock_suspect) == ("OK", True)
    # the day's freeze read gives the offset when it has one
    freeze = FreezeFact("c-1", "m-1", DAY.isoformat(), 10.0, (1.0, 2.0, 3.0, 4.0), 301.0)
    assert check(TOU, good(TOU), freezes={DAY.isoformat(): freeze}).outcome == "CLOCK_DRIFT"


SWITCHING = """
[[plan]]
name = "s"
  [[plan.version]]
  effective = 2026-01-01
  tariffs = 4
  zones = [ { start = "01-01", table = 1 } ]
    [plan.version.tables]
    1 = [ { start = "00:00", tariff = 4 }, { start = "08:00", tariff = 3 } ]
  [[plan.version]]
  effective = EFFECTIVE
  tariffs = 4
  zones = [ { start = "01-01", table = 1 } ]
    [plan.version.tables]
    1 = [ { start = "00:00", tariff = 4 }, { start = "07:00", tariff = 2 } ]
"""


def _switching(effective: str) -> Plan:
    return parse_plans(SWITCHING.replace("EFFECTIVE", effective)).plans["s"]


def test_a_switch_date_passed_without_the_flip_is_switch_missed() -> None:
    plan = _switching("2026-06-01")
    old = good(plan, dt.date(2026, 5, 1))  # still the version the plan replaced
    out = check(plan, old)
    assert out.outcome == "SWITCH_MISSED", out.detail
    assert out.detail["findings"]["SWITCH_MISSED"]["plan_effective"] == "2026-06-01"
    assert check(plan, good(plan)).outcome == "OK"


def test_a_coming_change_needs_the_backup_set_and_the_switch_time() -> None:
    plan = _switching("2026-07-01")
    now = good(plan)
    out = check(plan, now)
    assert out.outcome == "SWITCH_PENDING"
    found = out.detail["findings"]["SWITCH_PENDING"]
    assert found["expected_switch"] == "2026-07-01T00:00:00"
    assert found["first_days"][0]["day"] == "2026-07-01"
    new = plan.in_force(dt.date(2026, 7, 1))
    assert new is not None
    ready = dataclasses.replace(
        now,
        sets=(now.sets[0], expected_set(new)),
        switch_zones=dt.datetime(2026, 7, 1),
        switch_tables=dt.datetime(2026, 7, 1),
    )
    assert check(plan, ready).outcome == "OK"
    a_day_late = dataclasses.replace(ready, switch_tables=dt.datetime(2026, 7, 2))
    assert check(plan, a_day_late).outcome == "SWITCH_PENDING"


def test_local_prices_ladder_and_price_switch() -> None:
    setup = good(LOCAL)
    assert check(LOCAL, setup).outcome == "SWITCH_PENDING"  # the 2027 price change not written
    v27 = LOCAL.version[1]
    assert v27.prices is not None
    ready = dataclasses.replace(
        setup,
        prices_backup=tuple(Decimal(str(p)) for p in v27.prices),
        switch_prices=dt.datetime(2027, 1, 1),
    )
    assert check(LOCAL, ready).outcome == "OK"
    wrong = dataclasses.replace(
        ready, prices_current=(Decimal("1.0"), Decimal("0.8"), Decimal("0.6"), Decimal("0.3"))
    )
    out = check(LOCAL, wrong)
    assert out.outcome == "PRICE_MISMATCH"
    assert out.detail["findings"]["PRICE_MISMATCH"]["found"] == [1.0, 0.8, 0.6, 0.3]
    # 02800021 at the meter's time (10:00: T2 peak, 0.8)
    assert (
        check(LOCAL, dataclasses.replace(ready, current_tariff_price=Decimal("0.8"))).outcome
        == "OK"
    )
    assert check(
        LOCAL, dataclasses.replace(ready, current_tariff_price=Decimal("0.3"))
    ).outcome == ("PRICE_MISMATCH")


def _freeze(day: dt.date, regs: tuple[float, ...]) -> FreezeFact:
    return FreezeFact("c-1", "m-1", day.isoformat(), sum(regs), regs, 0.0)


def test_energy_in_a_register_the_plan_does_not_run_is_misallocated() -> None:
    d = [DAY - dt.timedelta(days=i) for i in (2, 1, 0)]
    # consumed on Saturday and Sunday: the weekend table runs T3 and T4 only
    right = {x.isoformat(): _freeze(x, (0.0, 0.0, 4.0 * i, 5.0 * i)) for i, x in enumerate(d)}
    assert check(TOU, good(TOU), freezes=right).outcome == "OK"
    wrong = {x.isoformat(): _freeze(x, (0.0, 2.0 * i, 4.0 * i, 3.0 * i)) for i, x in enumerate(d)}
    out = check(TOU, good(TOU), freezes=wrong)
    assert out.outcome == "ENERGY_MISALLOCATED"
    problems = out.detail["findings"]["ENERGY_MISALLOCATED"]["days"]
    assert problems[0]["problems"][0]["register"] == "T2"
    # one day of two wrong is not enough (two consecutive days are)
    one = {**right, DAY.isoformat(): _freeze(DAY, (0.0, 2.0, 8.0, 8.0))}
    assert check(TOU, good(TOU), freezes=one).outcome == "OK"
    # the total not the sum of the tariffs
    bad_sum = {k: dataclasses.replace(v, total=v.total * 1.5) for k, v in right.items()}
    assert check(TOU, good(TOU), freezes=bad_sum).outcome == "ENERGY_MISALLOCATED"


def test_programming_outside_a_job_is_flagged_inside_one_not() -> None:
    before = good(TOU, read_at=(READ_AT - dt.timedelta(days=7)).astimezone(dt.UTC))
    after = good(TOU, event_counters={"03300500": 4, "03300600": 1, "03300400": 9})
    out = check(TOU, before, after)
    assert out.outcome == "PROGRAMMED_OUTSIDE_PLAN"
    counters = out.detail["findings"]["PROGRAMMED_OUTSIDE_PLAN"]["counters"]
    assert counters == {"03300500": {"event": "时段表编程 daily tables", "before": 3, "after": 4}}
    job = int((READ_AT - dt.timedelta(days=3)).timestamp())
    assert check(TOU, before, after, jobs=[(job, job + 60)]).outcome == "OK"


def test_unsupported_items_and_no_read() -> None:
    old = good(TOU, unsupported=frozenset({"04020000", "04000205"}))
    out = check(TOU, old)
    assert out.outcome == "UNSUPPORTED_DI"
    assert out.detail["findings"]["UNSUPPORTED_DI"]["dis"] == ["04000205", "04020000"]
    assert check(TOU).outcome == "NOT_READ"
    stale = good(TOU, read_at=(READ_AT - dt.timedelta(days=9)).astimezone(dt.UTC))
    assert check(TOU, stale).outcome == "NOT_READ"


@pytest.mark.parametrize("day", [dt.date(2026, 7, 4), dt.date(2026, 10, 1), dt.date(2026, 12, 31)])
def test_the_meters_function_is_the_plans_minute_by_minute(day: dt.date) -> None:
    from protocols.tariff import meter_tariff

    setup = good(TOU)
    for minute in range(0, 1440, 7):
        when = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=minute)
        assert meter_tariff(setup, when) == TOU.tariff(day, minute)
    assert Holiday(dt.date(2026, 10, 1), 3) in setup.holidays


def test_a_wrong_table_seen_only_after_a_coming_change_is_still_param_mismatch() -> None:
    plan = _switching("2026-06-22")
    now = good(plan)
    new = plan.in_force(dt.date(2026, 6, 22))
    assert new is not None
    wrong_now = TouSet(now.sets[0].zones, {1: (Period(0, 0, 4), Period(8, 0, 3))})
    ready = dataclasses.replace(
        now,
        sets=(wrong_now, expected_set(new)),
        switch_zones=dt.datetime(2026, 6, 22),
        switch_tables=dt.datetime(2026, 6, 22),
    )
    assert check(plan, ready).outcome == "OK"  # the active set is right
    future_wrong = TouSet(expected_set(new).zones, {1: (Period(0, 0, 4), Period(7, 30, 2))})
    late = dataclasses.replace(ready, sets=(wrong_now, future_wrong))
    assert check(plan, late).outcome == "SWITCH_PENDING"  # today right, the change wrong


def test_denied_holidays_are_unsupported_and_wrong_prices_win_over_a_stale_backup() -> None:
    no_holidays = good(TOU, holidays=(), holiday_count=0, unsupported=frozenset({"04030001"}))
    out = check(TOU, no_holidays)
    assert out.outcome == "UNSUPPORTED_DI"
    assert out.detail["findings"]["UNSUPPORTED_DI"]["dis"] == ["04030001"]
    setup = good(LOCAL)
    bumped = tuple(
        p + Decimal("0.05") if i == 1 else p for i, p in enumerate(setup.prices_current or ())
    )
    out = check(LOCAL, dataclasses.replace(setup, prices_current=bumped, prices_backup=bumped))
    assert out.outcome == "PRICE_MISMATCH"
    assert "SWITCH_PENDING" in out.detail["findings"]
