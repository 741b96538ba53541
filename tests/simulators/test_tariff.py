"""Simulated meters carry a tariff set-up: they answer its items, execute it (energy registers,
switches) and a seeded share is misprogrammed in every way the outcome set names, with the truth."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections import Counter
from dataclasses import replace
from decimal import Decimal

import pytest

from protocols.dlt645 import ErrorFlags, ErrorReply, ReadReply, ReadRequest
from protocols.dlt645.tariff import (
    DI_COUNTS,
    DI_EVENT_COUNTERS,
    DI_PRICE_BLOCKS,
    DI_STATUS3,
    DI_SWITCH,
    di_daily_table,
    di_holiday,
    di_zone_table,
    padded,
    setup_from_replies,
)
from protocols.payloads import validate
from protocols.tariff import meter_tariff_minutes
from simulators import Fleet, parse_fleet
from simulators.fleet import FleetError
from simulators.meter import Meter
from simulators.record import TARIFF_OUTCOMES
from simulators.tariff import DEFECT_OUTCOMES, DEFECTS
from tests.simulators.conftest import DirectMaster

START = dt.datetime(2026, 3, 10, 9, 30)  # a Tuesday
READ_AT = dt.datetime(2026, 3, 10, 1, 30, tzinfo=dt.UTC)


def fleet_text(tariff: str = "", count: int = 60) -> str:
    return f"""
seed = 11
start = "{START.isoformat()}"
frozen = true
{tariff}
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 3, DTZY666 = 1, DTSD1352 = 2 }}
    prepaid = 0.5
    [[district.bus.meters]]
    count = 2
    first_address = "000000000901"
    models = {{ "DDS-2009" = 1 }}
    [[district.bus.meters]]
    count = 1
    first_address = "000000000951"
    models = {{ DDZY666 = 1 }}
    dead = 1.0
    [[district.bus.meters]]
    count = 1
    first_address = "000000000971"
    models = {{ DDS1997 = 1 }}
"""


@pytest.fixture(scope="module")
def misprogrammed() -> Fleet:
    return parse_fleet(fleet_text("[tariff]\nmisprogram_share = 0.5"))


def read_all(meter: Meter, dis: list[int]) -> tuple[dict[int, bytes], list[int]]:
    replies: dict[int, bytes] = {}
    denied: list[int] = []
    for di in dis:
        value = meter.read(di)
        if value is None:
            denied.append(di)
        else:
            replies[di] = value
    return replies, denied


def all_dis(setup_holidays: int, *, local: bool) -> list[int]:
    """What the agent reads: the local-only items (prices, ladders) of local meters only."""
    dis = [0x0400010C, DI_STATUS3, *DI_SWITCH.values(), *DI_COUNTS.values(), 0x04000801, 0x04000802]
    dis += [di_zone_table(s) for s in (1, 2)]
    dis += [di_daily_table(s, n) for s in (1, 2) for n in range(1, 9)]
    dis += [di_holiday(i) for i in range(1, setup_holidays + 1)]
    if local:
        dis += [*DI_PRICE_BLOCKS, 0x040604FF, 0x040605FF, 0x04070000, 0x04070001]
        dis += [0x0280000B, 0x02800020, 0x02800021]
    return [*dis, *DI_EVENT_COUNTERS]


def test_the_items_read_back_are_the_meters_setup(misprogrammed: Fleet) -> None:
    checked = Counter()
    for meter in misprogrammed.meters():
        if meter.tariff is None or meter.tariff.denied or meter.faults.dead:
            continue
        shown = meter.tariff_setup()
        assert shown is not None
        local = meter.tariff.plan.mode == "local"
        replies, denied = read_all(meter, all_dis(len(shown.holidays), local=local))
        read, errors = setup_from_replies(replies, read_at=READ_AT, denied=denied)
        assert errors == {}
        expected = replace(
            padded(shown), read_at=READ_AT, unsupported=frozenset(f"{d:08X}" for d in denied)
        )
        # tables the plan does not define are not stored: the meter denies them
        assert read == expected
        checked[meter.tariff.plan.mode] += 1
        if not local:
            assert read.prices_current is None
        else:
            assert read.prices_current is not None
            assert read.current_price == read.current_tariff_price + read.current_ladder_price
    assert checked["remote"] > 5
    assert checked["local"] > 5


async def test_over_the_line_with_the_codec() -> None:
    fleet = parse_fleet(fleet_text(count=4))
    master = DirectMaster(fleet.bus("b1"))
    meter = next(
        m for m in fleet.meters() if m.tariff and not m.tariff.denied and not m.faults.dead
    )
    _, message = await master.one(meter.identity.address, ReadRequest(di_daily_table(1, 1)))
    assert isinstance(message, ReadReply)
    assert len(message.value) == 42
    _, message = await master.one("000000000901", ReadRequest(di_holiday(1)))
    assert isinstance(message, ErrorReply)
    assert message.flags == ErrorFlags.NO_DATA
    assert fleet.meter("000000000971").tariff is None  # 1997 edition: no set-up at all


def test_energy_books_into_the_register_the_setup_selects() -> None:
    fleet = parse_fleet(fleet_text(count=6))
    meter = next(
        m
        for m in fleet.meters()
        if m.tariff is not None and m.tariff.plan.mode == "remote" and not m.faults.dead
        and not m.tariff.denied
    )  # fmt: skip
    day = dt.date(2026, 3, 10)
    fleet.world.set(dt.datetime(2026, 3, 11, 0, 5))
    freezes = meter.freeze_history()
    today, yesterday = freezes[0], freezes[1]
    assert today.time.date() == dt.date(2026, 3, 11)
    delta = [a - b for a, b in zip(today.imported, yesterday.imported, strict=True)]
    minutes = meter_tariff_minutes(meter.tariff_setup(dt.datetime(2026, 3, 10, 12)), day)
    plan = fleet.tariff_plans["resident-tou"].minutes(day)
    assert tuple(minutes) == plan
    # a weekday outside summer: 峰 peak and no 尖 sharp minute
    assert 1 not in minutes
    assert delta[0] == pytest.approx(0, abs=1e-9)
    assert all(d > 0 for d in delta[1:4])
    # the energy of each tariff is the load over that tariff's minutes
    shape = meter.importer.profile
    expected = [0.0] * 4
    for minute, tariff in enumerate(minutes):
        expected[tariff - 1] += (
            shape.base_kw * shape.shape[minute // 60] * shape.day_factor(day) / 60
        )
    assert delta == pytest.approx(expected, rel=1e-9)


def test_switches_flip_the_sets_at_their_time() -> None:
    fleet = parse_fleet(fleet_text(count=10))
    remote = next(m for m in fleet.meters() if m.tariff and m.tariff.plan.mode == "remote"
                  and not m.tariff.denied and m.tariff.defect is None)  # fmt: skip
    local = next(m for m in fleet.meters() if m.tariff and m.tariff.plan.mode == "local")
    before = remote.tariff_setup()
    assert before is not None
    assert before.switch_tables == dt.datetime(2026, 3, 12)
    assert (before.active_zone_set, before.active_table_set) == (1, 1)
    assert before.status_word3 is not None
    assert before.status_word3 & 0x21 == 0
    fleet.world.set(dt.datetime(2026, 3, 12, 0, 1))
    after = remote.tariff_setup()
    assert after is not None
    assert after.switch_tables is None
    assert after.switch_zones is None
    assert (after.active_zone_set, after.active_table_set) == (2, 2)
    assert remote.values()["status_word_3"] & 0x21 == 0x21
    # the new version's evening peak starts at 18:00
    new_day = meter_tariff_minutes(after, dt.date(2026, 3, 12))
    assert new_day[17 * 60 + 30] == 3
    assert new_day[18 * 60] == 2
    assert tuple(new_day) == fleet.tariff_plans["resident-tou"].minutes(dt.date(2026, 3, 12))
    shown = local.tariff_setup()
    assert shown is not None
    assert shown.prices_current == (
        Decimal("1.0500"),
        Decimal("0.8500"),
        Decimal("0.5800"),
        Decimal("0.3100"),
    )
    assert shown.switch_prices is None


def test_every_defect_is_given_and_its_truth_recorded(misprogrammed: Fleet) -> None:
    defects = Counter(m.tariff.defect for m in misprogrammed.meters() if m.tariff is not None)
    assert set(DEFECTS) <= set(defects)
    after_switch = misprogrammed.tariff_truth(dt.date(2026, 3, 13))
    outcomes = Counter(t.outcome for t in after_switch.values())
    assert set(outcomes) <= set(TARIFF_OUTCOMES)
    assert set(DEFECT_OUTCOMES.values()) | {"OK", "NOT_READ", "UNSUPPORTED_DI"} <= set(outcomes)
    assert after_switch["000000000951"].outcome == "NOT_READ"
    assert after_switch["000000000901"].outcome == "UNSUPPORTED_DI"
    assert "000000000971" not in after_switch  # 1997 edition: no plan, not counted
    before = misprogrammed.tariff_truth(dt.date(2026, 3, 10))
    for meter_id, truth in after_switch.items():
        assert truth.day == "2026-03-13"
        if truth.defect == "switch_missed":
            assert truth.outcome == "SWITCH_MISSED"
            assert before[meter_id].outcome == "SWITCH_PENDING"
        if truth.defect == "wrong_register":
            # the freezes of 03-13 hold the consumption of Wed 03-11 and Thu 03-12: both show it
            assert truth.outcome == "ENERGY_MISALLOCATED"
            # resident-tou: the consumption of Sat and Sun has no 峰 minute (weekend table), so
            # the checks of 03-16 (Sat + Sun) and 03-17 (Sun + Mon) cannot see it; 03-18 can
            weekend = "OK" if truth.plan == "resident-tou" else "ENERGY_MISALLOCATED"
            for day, outcome in (("2026-03-16", weekend), ("2026-03-17", weekend),
                                 ("2026-03-18", "ENERGY_MISALLOCATED")):  # fmt: skip
                later = misprogrammed.tariff_truth(dt.date.fromisoformat(day))[meter_id]
                assert later.outcome == outcome, (day, truth.plan)
        if truth.defect == "reprogrammed":
            assert truth.outcome == "PROGRAMMED_OUTSIDE_PLAN"
            assert before[meter_id].outcome == "OK"
        if truth.defect is None:
            assert truth.outcome == "OK"
    assert after_switch["000000000901"].as_json()["plan"] == "resident-tou"


def test_defects_show_in_what_the_meters_answer(misprogrammed: Fleet) -> None:
    meters = {m.tariff.defect: m for m in misprogrammed.meters() if m.tariff and m.tariff.defect}
    plans = misprogrammed.tariff_plans
    day = dt.date(2026, 3, 10)
    boundary = meters["wrong_boundary"].tariff_setup()
    assert boundary is not None
    assert tuple(meter_tariff_minutes(boundary, day)) != plans[
        meters["wrong_boundary"].tariff.plan.name
    ].minutes(day)
    holiday = meters["missing_holiday"].tariff_setup()
    assert holiday is not None
    assert holiday.holiday_count == len(holiday.holidays) == 9
    price = meters["wrong_price"].tariff_setup()
    assert price is not None
    assert price.prices_current is not None
    assert price.prices_current[1] == Decimal("0.8500")
    drift = meters["clock_drift"]
    assert abs((drift.now() - misprogrammed.world.now()).total_seconds()) > 300
    reprogrammed = meters["reprogrammed"]
    key = "03300500"
    first = reprogrammed.tariff_setup()
    assert first is not None
    misprogrammed.world.set(dt.datetime(2026, 3, 11, 10, 5))
    later = reprogrammed.tariff_setup()
    assert later is not None
    assert later.event_counters[key] == first.event_counters[key] + 1
    assert meter_tariff_minutes(later, day) == meter_tariff_minutes(first, day)  # bills alike
    # wrong register: 峰 energy lands in the 尖 register the plan leaves empty that day
    wrong = meters["wrong_register"]
    misprogrammed.world.set(dt.datetime(2026, 3, 11, 0, 5))
    f = wrong.freeze_history()
    delta = [a - b for a, b in zip(f[0].imported, f[1].imported, strict=True)]
    assert delta[0] > 0.02
    assert delta[1] == pytest.approx(0, abs=1e-9)
    misprogrammed.world.set(START)


def test_plan_file_archive_and_options() -> None:
    fleet = parse_fleet(fleet_text(count=4))
    doc = tomllib.loads(fleet.tariff_plans_toml())
    plans = {p["name"]: p for p in doc["plan"]}
    assert set(plans) == {"resident-tou", "prepaid-local"}
    versions = plans["resident-tou"]["version"]
    assert [v["effective"] for v in versions] == [dt.date(2026, 1, 1), dt.date(2026, 3, 12)]
    assert versions[1]["tables"]["1"][4] == {"start": "18:00", "tariff": 2}
    assert plans["prepaid-local"]["mode"] == "local"
    assert plans["prepaid-local"]["version"][1]["prices"] == [1.05, 0.85, 0.58, 0.31]
    archive = fleet.archive()
    validate(
        "archive",
        {
            "schema": "meterlink.archive/1",
            "concentrator": "sim",
            "version": 1,
            "updated_at": "2026-03-10T01:30:00Z",
            "meters": archive,
        },
    )
    plan_of = {e["meter"]: e.get("tariff_plan") for e in archive}
    assert plan_of["000000000971"] is None
    assert plan_of["000000000901"] == "resident-tou"
    no_plans = parse_fleet(fleet_text("[tariff]\nplans = false", count=2))
    assert all(m.tariff is None for m in no_plans.meters())
    assert no_plans.tariff_truth() == {}
    for bad, message in [
        ("[tariff]\nmisprogram_share = 2", "misprogram_share"),
        ("[tariff]\nclock_error_s = [100, 200]", "clock_error_s"),
        ("[tariff]\nsurprise = 1", "tariff.surprise"),
        ("[tariff]\nladder_form = '1997'", "ladder_form"),
    ]:
        with pytest.raises(FleetError, match=message):
            parse_fleet(fleet_text(bad, count=1))


def test_the_same_seed_gives_the_same_defects() -> None:
    a = parse_fleet(fleet_text("[tariff]\nmisprogram_share = 0.3", count=20))
    b = parse_fleet(fleet_text("[tariff]\nmisprogram_share = 0.3", count=20))
    assert a.tariff_truth() == b.tariff_truth()


def test_a_technician_visit_puts_a_meter_right() -> None:
    fleet = parse_fleet(fleet_text("[tariff]\nmisprogram_share = 0.5"))
    plans = fleet.tariff_plans
    day = dt.date(2026, 3, 10)
    for meter in fleet.meters():
        tariff = meter.tariff
        if tariff is None or tariff.defect is None:
            continue
        defect = tariff.defect
        before = meter.tariff_setup()
        assert before is not None
        energy = meter.values()["energy_import_total_kwh"]
        moved = meter.technician_visit()
        after = meter.tariff_setup()
        assert after is not None
        assert meter.values()["energy_import_total_kwh"] == energy  # registers continuous
        assert after.event_counters["03300500"] == before.event_counters["03300500"] + 1
        assert "03300500" in moved
        assert tuple(meter_tariff_minutes(after, day)) == plans[tariff.plan.name].minutes(day)
        truth = fleet.tariff_truth(dt.date(2026, 3, 13))[meter.identity.meter_id]
        if defect == "wrong_register":  # firmware: programming does not fix it
            assert truth.defect == "wrong_register"
        else:
            assert (truth.defect, truth.outcome) == (None, "OK"), defect
        if defect == "clock_drift":
            assert "03300400" in moved
            assert abs(meter.clock.error_s) < 1


async def test_the_control_channel_gives_plans_truth_and_visits() -> None:
    import aiohttp

    from simulators.control import serve_control

    fleet = parse_fleet(fleet_text("[tariff]\nmisprogram_share = 0.5", count=10))
    wrong = next(m for m in fleet.meters() if m.tariff and m.tariff.defect == "wrong_boundary")
    meter_id = wrong.identity.meter_id
    async with serve_control(fleet) as (host, port), aiohttp.ClientSession() as http:
        base = f"http://{host}:{port}/v1"
        async with http.get(f"{base}/tariff?day=2026-03-13") as r:
            body = await r.json()
        assert tomllib.loads(body["plans_toml"])["plan"][0]["name"] == "resident-tou"
        assert body["truth"][meter_id]["outcome"] == "PARAM_MISMATCH"
        async with http.post(f"{base}/meters/{meter_id}/tariff/visit") as r:
            assert r.status == 200
            assert "03300500" in (await r.json())["moved"]
        async with http.get(f"{base}/tariff?day=2026-03-13") as r:
            assert (await r.json())["truth"][meter_id]["outcome"] == "OK"
        async with http.get(f"{base}/tariff?day=tomorrow") as r:
            assert r.status == 400
        async with http.post(f"{base}/meters/000000000971/tariff/visit") as r:
            assert r.status == 400
