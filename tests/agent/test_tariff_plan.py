"""The tariff plan against the simulator: set-ups read in stages and published as `tariff`
payloads that decode to what the meters hold; denied items recorded once; reads due weekly,
after a programming-event counter moved in the daily read, and the day after a switch."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import replace
from pathlib import Path

from agent.config import DailyPlan, TariffPlan
from agent.plans.daily import DailyPlanner
from agent.plans.tariff import TariffPlanner, TariffWatch
from protocols.dlt645.tariff import padded
from protocols.tariff import TariffSetup, meter_tariff_minutes
from simulators.record import AnswerRecord
from tests.agent.simenv import SimAgent, sim_agent

START = dt.datetime(2026, 3, 10, 12, 0)  # a Tuesday; the plans switch on 2026-03-12

FLEET = """
seed = 5
start = "2026-03-10T12:00:00"
frozen = true
[tariff]
misprogram_share = {share}
[[district]]
name = "d1"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 2, DTSD1352 = 1 }}
    prepaid = 0.6
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    [[district.bus.meters]]
    count = 1
    first_address = "000000000901"
    models = {{ "DDS-2009" = 1 }}
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    [[district.bus.meters]]
    count = 1
    first_address = "000000000971"
    models = {{ DDS1997 = 1 }}
"""


def _check_against_meter(sa: SimAgent, payload: dict[str, object]) -> TariffSetup:
    setup = TariffSetup.from_payload(payload["setup"])  # type: ignore[arg-type]
    meter = sa.fleet.meter(str(payload["meter"]))
    shown = meter.tariff_setup()
    assert shown is not None
    expected = replace(
        padded(shown),
        read_at=setup.read_at,
        unsupported=setup.unsupported,
        meter_time=setup.meter_time,
    )
    if meter.tariff is not None and meter.tariff.plan.mode == "remote":
        # a remote meter is not asked for prices and ladders
        expected = replace(
            expected, current_price=None, current_tariff_price=None, current_ladder_price=None
        )
    if (
        meter.tariff is not None and meter.tariff.denied
    ):  # old firmware: no holidays, weekend rule, counters
        expected = replace(
            expected, holiday_count=None, holidays=(), weekend_workdays=None, weekend_table=None,
            event_counters={},
        )  # fmt: skip
    assert setup == expected
    day = sa.fleet.world.now().date()
    assert meter_tariff_minutes(setup, day) == meter_tariff_minutes(shown, day)
    return setup


def _requests(sa: SimAgent, meter: str) -> Counter[str]:
    return Counter(
        r.di
        for r in sa.fleet.recorder.records
        if isinstance(r, AnswerRecord) and r.meter == meter and r.di
    )


async def test_set_ups_are_read_published_and_decode_to_what_the_meters_hold(
    tmp_path: Path,
) -> None:
    async with sim_agent(FLEET.format(share=0.5, count=8), tmp_path) as sa:
        plan = TariffPlanner(TariffPlan(enabled=True), sa.ctx)
        day = START.date()
        assert await plan.run_once(day) == 9
        payloads = {p["meter"]: p for p in sa.sink.of("tariff")}
        assert "000000000971" not in payloads  # 1997 edition: no tariff items
        for p in payloads.values():
            assert p["reason"] == "first"
            setup = _check_against_meter(sa, p)
            assert setup.meter_time is not None
            drifted = sa.fleet.meter(str(p["meter"])).tariff.defect == "clock_drift"  # type: ignore[union-attr]
            assert (abs(p["clock_offset_s"]) > 300) is drifted  # type: ignore[arg-type]
            assert set(p["raw"]) >= {"0400010C", "04000503", "04010000", "04010001"}  # type: ignore[arg-type]
        old = TariffSetup.from_payload(payloads["000000000901"]["setup"])  # type: ignore[arg-type]
        assert {"04030001", "04000205", "04000801", "03300500"} <= old.unsupported
        assert old.holidays == ()
        local = [p for p in payloads.values() if sa.fleet.meter(str(p["meter"])).wallet is not None]
        assert local
        for p in local:
            s = TariffSetup.from_payload(p["setup"])  # type: ignore[arg-type]
            assert s.prices_current is not None
            assert s.ladders_current
            assert s.current_price is not None
        # nothing is due again today; a week later every meter is read again, and the items the
        # old firmware denied are not asked for a second time
        assert await plan.run_once(day) == 0
        before = _requests(sa, "000000000901")
        sa.fleet.world.set(START + dt.timedelta(days=7))
        assert await plan.run_once(day + dt.timedelta(days=7)) == 9
        again = _requests(sa, "000000000901") - before
        assert {p["reason"] for p in sa.sink.of("tariff")[9:]} <= {"weekly", "after_switch"}
        assert "04030001" not in again
        assert "04000205" not in again
        assert again["04010001"] == 1


async def test_a_counter_change_in_the_daily_read_and_a_passed_switch_make_reads_due(
    tmp_path: Path,
) -> None:
    async with sim_agent(FLEET.format(share=1.0, count=12), tmp_path) as sa:
        cfg = TariffPlan(enabled=True)
        plan = TariffPlanner(cfg, sa.ctx)
        daily = DailyPlanner(DailyPlan(backfill_days=0), sa.ctx, watch=TariffWatch(cfg, sa.ctx))
        assert await plan.run_once(START.date()) > 0
        first = len(sa.sink.of("tariff"))
        reprogrammed = [
            m for m in sa.fleet.meters() if m.tariff and m.tariff.defect == "reprogrammed"
        ]
        assert reprogrammed
        # the next day after 10:00 the reprogramming happened; the daily read sees the counter
        sa.fleet.world.set(dt.datetime(2026, 3, 11, 11, 0))
        await daily.run_round(dt.date(2026, 3, 11), final=False)
        assert await plan.run_once(dt.date(2026, 3, 11)) == len(reprogrammed)
        changed = sa.sink.of("tariff")[first:]
        assert {p["meter"] for p in changed} == {m.identity.meter_id for m in reprogrammed}
        for p in changed:
            assert p["reason"] == "counter_change"
            assert p["changed_counters"] == ["03300500"]
            assert TariffSetup.from_payload(p["setup"]).event_counters["03300500"] == 2  # type: ignore[arg-type]
        # the day after the switch (2026-03-12 00:00) every meter that held it is read again
        sa.fleet.world.set(dt.datetime(2026, 3, 13, 12, 0))
        count = len(sa.sink.of("tariff"))
        await plan.run_once(dt.date(2026, 3, 13))
        after = sa.sink.of("tariff")[count:]
        assert after
        assert {p["reason"] for p in after} == {"after_switch"}
        for p in after:
            setup = TariffSetup.from_payload(p["setup"])  # type: ignore[arg-type]
            assert setup.switch_tables is None  # flipped and cleared
            assert setup.switch_prices is None
            if setup.prices_current is None:  # remote plan: new tables from the switch on
                assert (setup.active_zone_set, setup.active_table_set) == (2, 2)
            else:  # local plan: new prices from the switch on
                assert setup.prices_current[0] == setup.prices_backup[0]  # type: ignore[index]
            _check_against_meter(sa, p)
        switch_missed = [
            m for m in sa.fleet.meters() if m.tariff and m.tariff.defect == "switch_missed"
        ]
        assert switch_missed
        assert not {m.identity.meter_id for m in switch_missed} & {p["meter"] for p in after}
