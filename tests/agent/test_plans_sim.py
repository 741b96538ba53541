"""The agent's plans against the simulator: every live meter read with the simulator's own
values, dead meters explained and backed off, history backfilled, clocks measured and synced."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from pathlib import Path

import pytest

from agent.config import ClockPlan, DailyPlan, HealthConfig, IntervalPlan
from agent.plans.clock import ClockPlanner
from agent.plans.daily import DailyPlanner
from agent.plans.interval import IntervalPlanner
from tests.agent.simenv import TZ, sim_agent

DAY = dt.date(2026, 3, 11)

FLEET = """
seed = 11
start = "2026-03-11T00:10:00"
frozen = true
[[district]]
name = "d1"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = 20
    first_address = "000000000001"
    models = {{ DDZY666 = 3, DTZY666 = 1 }}
    prepaid = 1.0
    dead = {dead}
    offset_s = [{offset}, {offset}]
    drift_ppm = [0, 0]
    wakeup = [0, 4]
"""


def _daily(**kw: object) -> DailyPlan:
    return DailyPlan(**kw)  # type: ignore[arg-type]


async def test_daily_round_reads_every_live_meter_with_the_simulators_values(
    tmp_path: Path,
) -> None:
    async with sim_agent(FLEET.format(dead=0.1, offset=0), tmp_path) as sa:
        dead = {m.identity.meter_id for m in sa.fleet.meters() if m.faults.dead}
        assert 0 < len(dead) < 20
        planner = DailyPlanner(_daily(backfill_days=0), sa.ctx)
        report = await planner.run_round(DAY, final=False)

        readings = sa.sink.of("readings")
        assert {r["meter"] for r in readings} == {
            m.identity.meter_id for m in sa.fleet.meters()
        } - dead
        for r in readings:
            meter = sa.fleet.meter(r["meter"])
            (record,) = [f for f in meter.freeze_history() if f.time.date() == DAY]
            assert r["item"] == "daily_freeze"
            assert dt.datetime.fromisoformat(r["data_time"]) == record.time.replace(tzinfo=TZ)
            expected = record.values()
            for name, value in r["values"].items():
                if name != "balance_yuan":
                    assert value["value"] == pytest.approx(expected[name]), (r["meter"], name)
            assert r["values"]["balance_yuan"]["value"] == pytest.approx(
                meter.values()["balance_yuan"]
            )
        assert report["expected"] == 20
        assert report["read"] == 20 - len(dead)
        assert {f["meter"]: f["reason"] for f in report["failed"]} == dict.fromkeys(
            dead, "no_reply"
        )
        assert report["failed_by_reason"] == {"no_reply": len(dead)}
        assert report["bus_busy_s"]["b1"] > 0

        # a second round only touches the meters still missing, and only after the spacing
        again = await planner.run_round(DAY, final=False)
        assert again["read"] == report["read"]
        assert len(sa.sink.of("readings")) == len(readings)  # nobody read twice
        assert all(f["attempts"] == 1 for f in again["failed"])  # spacing not over: not retried


async def test_dead_meters_go_offline_after_count_and_time_then_cost_nothing(
    tmp_path: Path,
) -> None:
    health = HealthConfig(
        offline_after_failures=3, offline_after_minutes=30, reprobe_min_minutes=60
    )
    async with sim_agent(FLEET.format(dead=0.1, offset=0), tmp_path, health=health) as sa:
        dead = {m.identity.meter_id for m in sa.fleet.meters() if m.faults.dead}
        planner = DailyPlanner(_daily(backfill_days=0, retry_spacing_minutes=10), sa.ctx)
        bus = sa.pollers["b1"]
        for step in range(3):
            await planner.run_round(DAY, final=False)
            if step < 2:
                assert not sa.ctx.health.offline
                sa.fleet.world.advance(16 * 60)
        assert set(sa.ctx.health.offline) == dead  # 3 failures over 32 minutes
        assert [e for e, m, _ in sa.events if e == "meter_offline"] == ["meter_offline"] * len(dead)

        sa.fleet.world.advance(11 * 60)
        before = bus.transport.exchanges
        report = await planner.run_round(DAY, final=False)
        assert bus.transport.exchanges == before  # offline meters cost no bus time
        assert {f["reason"] for f in report["failed"]} == {"meter_offline"}

        sa.fleet.world.advance(50 * 60)  # re-probe due: one attempt each, then back off again
        await planner.run_round(DAY, final=False)
        assert bus.transport.exchanges == before + len(dead)


async def test_a_reading_evicted_before_its_record_is_read_again(tmp_path: Path) -> None:
    """The disk budget can evict a reading the moment after it was committed, and the agent's
    "read it again" (from the outbox's writer thread) can run before the plan records it as
    read: the record must not win (a soak lost one committed reading so)."""
    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        gone = {2, 5}  # the outbox rows of the 3rd and 6th readings were evicted meanwhile
        sa.sink.was_evicted = lambda kind, row_id: kind == "readings" and row_id in gone  # type: ignore[attr-defined]
        planner = DailyPlanner(_daily(backfill_days=0), sa.ctx)
        report = await planner.run_round(DAY, final=False)
        rows = sa.sink.of("readings")
        assert len(rows) == 20  # read and committed, all of them ...
        again = {rows[i]["meter"] for i in gone}
        assert report["read"] == 18  # ... 2 of them gone before delivery: not counted read
        status = sa.ctx.state.day(DAY)
        assert {m for m, st in status.items() if st.status != "read"} == again
        sa.fleet.world.advance(31 * 60)  # the retry spacing
        await planner.run_round(DAY, final=False)
        assert {r["meter"] for r in sa.sink.of("readings")[20:]} == again  # asked again


async def test_backfill_reads_missed_days_from_frozen_history(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        planner = DailyPlanner(_daily(backfill_days=3), sa.ctx)
        await planner.run_round(DAY, final=False)
        recovered = await planner.backfill(DAY)
        assert recovered == 20 * 3
        backfilled = [r for r in sa.sink.of("readings") if r.get("quality") == "backfill"]
        for r in backfilled:
            data_time = dt.datetime.fromisoformat(r["data_time"])
            (record,) = [
                f
                for f in sa.fleet.meter(r["meter"]).freeze_history()
                if f.time == data_time.replace(tzinfo=None)
            ]
            assert r["values"]["energy_import_total_kwh"]["value"] == pytest.approx(
                record.values()["energy_import_total_kwh"]
            )
        assert sorted({r["data_time"][:10] for r in backfilled}) == [
            "2026-03-08",
            "2026-03-09",
            "2026-03-10",
        ]
        reports = [r for r in sa.sink.of("rounds") if "backfill" in r["round_id"]]
        assert [(r["data_day"], r["read"]) for r in reports] == [
            ("2026-03-10", 20),
            ("2026-03-09", 20),
            ("2026-03-08", 20),
        ]
        assert await planner.backfill(DAY) == 0  # nothing left to recover


async def test_a_meter_whose_clock_is_behind_midnight_is_retried_not_misread(
    tmp_path: Path,
) -> None:
    # world 00:10, meter clocks 15 minutes behind: the newest freeze is yesterday's
    async with sim_agent(FLEET.format(dead=0.0, offset=-900), tmp_path) as sa:
        planner = DailyPlanner(_daily(backfill_days=0), sa.ctx)
        report = await planner.run_round(DAY, final=False)
        assert report["read"] == 0
        assert {f["reason"] for f in report["failed"]} == {"implausible_value"}
        assert "newest daily freeze is 2026-03-10" in report["failed"][0]["detail"]
        assert not sa.sink.of("readings")


async def test_final_report_explains_every_unread_meter(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(dead=0.1, offset=0), tmp_path) as sa:
        planner = DailyPlanner(_daily(backfill_days=0), sa.ctx)
        await planner.run_round(DAY, final=False)
        final = await planner.run_round(DAY, final=True)
        assert final["final"] is True
        assert final["read"] + len(final["failed"]) == final["expected"] == 20


async def test_clock_plan_measures_offsets_and_syncs_within_the_rules(tmp_path: Path) -> None:
    fleet = FLEET.format(dead=0.0, offset=0).replace(
        'start = "2026-03-11T00:10:00"', 'start = "2026-03-11T10:00:00"'
    )
    fleet = fleet.replace("offset_s = [0, 0]", "offset_s = [-200, 200]")
    async with sim_agent(fleet, tmp_path) as sa:
        errors = {m.identity.meter_id: m.clock.error_s for m in sa.fleet.meters()}
        planner = ClockPlanner(ClockPlan(sync_threshold_s=10, max_offset_s=60), sa.ctx)
        offsets = await planner.check_all()
        for meter, offset in offsets.items():
            assert offset == pytest.approx(errors[meter], abs=1.0)
        synced = [e for e in sa.events if e[0] == "time_sync"]
        assert len(synced) == 1
        after = {m.identity.meter_id: m.clock.error_s for m in sa.fleet.meters()}
        for meter, before in errors.items():
            if abs(before) <= 10:
                continue
            assert abs(after[meter]) <= 1.0, (meter, before, after[meter])  # accepted and fixed
        clock_readings = [r for r in sa.sink.of("readings") if r["item"] == "clock"]
        assert len(clock_readings) >= 20
        drift = {m for e, m, _ in sa.events if e == "clock_drift"}
        assert drift == {m for m, e in errors.items() if abs(e) > 60}
        # once a day: a second check does not broadcast again
        await planner.check_all()
        assert len([e for e in sa.events if e[0] == "time_sync"]) == 1


async def test_interval_plan_stamps_readings_with_the_slot(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        sa.fleet.world.set(dt.datetime(2026, 3, 11, 10, 7, 12))
        planner = IntervalPlanner(
            IntervalPlan(enabled=True, every_minutes=15, items=["00010000", "voltage_a_v"]), sa.ctx
        )
        slot = planner._slot(sa.ctx.clock.now())
        assert slot.time() == dt.time(10, 0)
        assert await planner.run_slot(slot) == 40
        readings = sa.sink.of("readings")
        assert {r["item"] for r in readings} == {"00010000", "02010100"}
        assert {r["data_time"] for r in readings} == {"2026-03-11T10:00:00+08:00"}
        for r in readings:
            if r["item"] == "00010000":
                meter = sa.fleet.meter(r["meter"])
                assert r["values"]["energy_import_total_kwh"]["value"] == pytest.approx(
                    meter.values()["energy_import_total_kwh"]
                )


MODBUS_FLEET = """
seed = 4
start = "2026-03-11T00:10:00"
frozen = true
[[district]]
name = "d1"
  [[district.bus]]
  name = "m1"
  protocol = "modbus"
    [[district.bus.meters]]
    count = 2
    first_unit = 1
    models = { DTSU666 = 1, SDM630 = 1 }
    [[district.bus.meters]]
    count = 1
    first_unit = 9
    models = { DTSU666 = 1 }
    dead = 1.0
"""


async def test_modbus_meters_in_the_daily_plan(tmp_path: Path) -> None:
    async with sim_agent(MODBUS_FLEET, tmp_path) as sa:
        report = await DailyPlanner(_daily(backfill_days=0), sa.ctx).run_round(DAY, final=False)
        readings = {r["meter"]: r for r in sa.sink.of("readings")}
        assert set(readings) == {"m1:1", "m1:2"}
        for meter_id, r in readings.items():
            meter = sa.fleet.meter(meter_id)
            assert r["values"]["energy_import_total_kwh"]["value"] == pytest.approx(
                meter.values()["energy_import_total_kwh"], rel=1e-6
            )
            assert r["data_time"] == r["read_at"]  # no frozen history: stamped with the read
        assert report["failed"] == [
            {
                "meter": "m1:9",
                "reason": "no_reply",
                "attempts": 1,
                "detail": report["failed"][0]["detail"],
                "last_attempt_at": report["failed"][0]["last_attempt_at"],
            }
        ]


async def test_backfill_asks_only_meters_alive_today_and_stops_at_silence(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(dead=0.1, offset=0), tmp_path) as sa:
        dead = {m.identity.meter_id for m in sa.fleet.meters() if m.faults.dead}
        planner = DailyPlanner(_daily(backfill_days=7), sa.ctx)
        await planner.run_round(DAY, final=False)
        bus = sa.pollers["b1"]
        before = bus.transport.exchanges
        dead_attempts = [r for r in sa.fleet.recorder.records if r.meter in dead]
        recovered = await planner.backfill(DAY)
        assert recovered == (20 - len(dead)) * 7
        # dead meters cost nothing more; their one failure today does not grow into eight
        assert [r for r in sa.fleet.recorder.records if r.meter in dead] == dead_attempts
        assert all(sa.ctx.health.state(m).failures == 1 for m in dead)
        assert bus.transport.exchanges > before
        # what was recovered is not asked again; what failed waits for the retry spacing
        before = bus.transport.exchanges
        assert await planner.backfill(DAY) == 0
        assert bus.transport.exchanges == before


async def test_outcomes_survive_a_round_cut_short(tmp_path: Path) -> None:
    import asyncio

    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        planner = DailyPlanner(_daily(backfill_days=0), sa.ctx)
        task = asyncio.create_task(planner.run_round(DAY, final=False))
        while len(sa.sink.of("readings")) < 5:  # noqa: ASYNC110 - polling a plain list
            await asyncio.sleep(0.005)
        task.cancel()  # SIGHUP reload: the plan task is cancelled mid-round
        with pytest.raises(asyncio.CancelledError):
            await task
        published = {r["meter"] for r in sa.sink.of("readings")}
        recorded = {m for m, s in sa.ctx.state.day(DAY).items() if s.status == "read"}
        assert published <= recorded  # nothing published is forgotten
        await planner.run_round(DAY, final=False)
        meters = [r["meter"] for r in sa.sink.of("readings")]
        assert len(meters) == len(set(meters)) == 20  # and nobody is read twice


async def test_a_meter_whose_energy_runs_backwards_is_not_believed(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        liar = sa.fleet.meters()[3].identity.meter_id
        (today,) = [f for f in sa.fleet.meter(liar).freeze_history() if f.time.date() == DAY]
        yesterday = dt.datetime.combine(DAY - dt.timedelta(days=1), dt.time()).replace(tzinfo=TZ)
        # the meter's own history says it was above today's value yesterday
        sa.ctx.state.set_energy(liar, yesterday, today.values()["energy_import_total_kwh"] + 5)
        report = await DailyPlanner(_daily(backfill_days=0), sa.ctx).run_round(DAY, final=False)
        (failed,) = report["failed"]
        assert failed["meter"] == liar
        assert failed["reason"] == "implausible_value"
        assert "energy never runs backwards" in failed["detail"]
        assert liar not in {r["meter"] for r in sa.sink.of("readings")}


class _History:
    """A meter's daily-freeze stamps by record number, for the record search."""

    def __init__(self, stamps: list[str]) -> None:
        self.stamps = [dt.datetime.fromisoformat(s) for s in stamps]
        self.asked: list[int] = []

    async def read(self, address: object, di: int, edition: object = None) -> object:
        from agent.dlt645 import ReadResult
        from protocols.dlt645 import ErrorFlags, MeterError
        from protocols.measurements import Measurement

        nn = di & 0xFF
        self.asked.append(nn)
        if nn > len(self.stamps):
            raise MeterError(0x11, ErrorFlags.NO_DATA)
        value = Measurement("freeze_time", self.stamps[nn - 1].isoformat(), None)
        return ReadResult(di, b"", [value])


@pytest.mark.parametrize(
    ("stamps", "day", "nn"),
    [
        (["2026-03-11", "2026-03-10", "2026-03-09"], "2026-03-09", 3),
        # the meter was off at midnight on 03-10: older records moved up one
        (["2026-03-11", "2026-03-09", "2026-03-08"], "2026-03-09", 2),
        (["2026-03-11", "2026-03-09", "2026-03-08"], "2026-03-08", 3),
        # two freezes on 03-10 (clock set back): older records moved down one
        (["2026-03-11", "2026-03-10", "2026-03-10", "2026-03-09"], "2026-03-09", 4),
    ],
)
async def test_the_record_of_a_day_is_found_across_gaps(
    stamps: list[str], day: str, nn: int, tmp_path: Path
) -> None:
    from agent.plans.daily import NotFrozenYet
    from protocols.dlt645 import Address

    history = _History([f"{s}T00:00:00" for s in stamps])
    planner = DailyPlanner(_daily(), None)  # type: ignore[arg-type]
    found, stamp = await planner._find_freeze(
        history, Address.parse("1"), dt.date.fromisoformat(day)
    )  # type: ignore[arg-type]
    assert (found, stamp.date().isoformat()) == (nn, day)
    gap = _History([f"{s}T00:00:00" for s in ["2026-03-11", "2026-03-09", "2026-03-08"]])
    with pytest.raises(NotFrozenYet, match="no daily freeze for 2026-03-10"):
        await planner._find_freeze(gap, Address.parse("1"), dt.date(2026, 3, 10))  # type: ignore[arg-type]


async def test_a_reading_evicted_before_delivery_is_backfilled_again(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        planner = DailyPlanner(_daily(backfill_days=2, retry_spacing_minutes=0.001), sa.ctx)
        await planner.run_round(DAY, final=False)
        assert await planner.backfill(DAY) == 40
        yesterday = DAY - dt.timedelta(days=1)
        sa.ctx.state.forget_read(yesterday, "000000000007")  # what the daemon does on eviction
        sa.fleet.world.advance(1)
        assert await planner.backfill(DAY) == 1
        again = [
            r
            for r in sa.sink.of("readings")
            if r["meter"] == "000000000007" and r["data_time"].startswith(yesterday.isoformat())
        ]
        assert len(again) == 2


async def test_a_rejection_that_cannot_pass_is_tried_once_a_day(tmp_path: Path) -> None:
    """A meter without daily freezes answers 05060001 with "no such data": asking again every
    round cannot pass, so the meter is tried once that day and reported with its reason;
    a silent meter (retryable) is still retried after the spacing."""
    async with sim_agent(FLEET.format(dead=0.0, offset=0), tmp_path) as sa:
        meters = sa.fleet.meters()
        no_freezes, silent = meters[2], meters[5]
        no_freezes.freezes.clear()
        silent.faults = dataclasses.replace(silent.faults, dead=True)
        planner = DailyPlanner(_daily(backfill_days=0), sa.ctx)
        first = await planner.run_round(DAY, final=False)
        failed = {f["meter"]: f for f in first["failed"]}
        assert failed[no_freezes.identity.meter_id]["reason"] == "abnormal_reply"
        assert "not retried today" in failed[no_freezes.identity.meter_id]["detail"]
        assert failed[silent.identity.meter_id]["reason"] == "no_reply"

        sa.fleet.world.set(sa.fleet.world.now() + dt.timedelta(minutes=31))  # spacing over
        asked = Counter(r.meter for r in sa.fleet.recorder.records)
        second = await planner.run_round(DAY, final=False)
        now_asked = Counter(r.meter for r in sa.fleet.recorder.records)
        assert now_asked[no_freezes.identity.meter_id] == asked[no_freezes.identity.meter_id]
        assert now_asked[silent.identity.meter_id] > asked[silent.identity.meter_id]
        again = {f["meter"]: f for f in second["failed"]}
        assert again[no_freezes.identity.meter_id]["attempts"] == 1  # reported, not retried
        assert again[no_freezes.identity.meter_id]["reason"] == "abnormal_reply"
        assert again[silent.identity.meter_id]["attempts"] == 2
