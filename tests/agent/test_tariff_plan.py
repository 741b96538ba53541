"""The tariff plan against the simulator: set-ups read in stages and published as `tariff`
payloads that decode to what the meters hold; denied items recorded once; reads due weekly,
after a programming-event counter moved in the daily read, and the day after a switch."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import DailyPlan, TariffPlan
from agent.plans.daily import DailyPlanner
from agent.plans.tariff import TariffPlanner, TariffWatch
from protocols.dlt645.tariff import padded
from protocols.tariff import TariffSetup, meter_tariff_minutes
from simulators.record import AnswerRecord
from tests.agent.simenv import TZ, SimAgent, sim_agent

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


async def test_over_a_carrier_bus_items_are_packed(tmp_path: Path) -> None:
    from tests.agent.test_carrier_sim import fleet_toml

    toml = fleet_toml(6).replace('start = "2026-03-11T10:00:00"', 'start = "2026-03-11T12:00:00"')
    async with sim_agent(toml, tmp_path, time_scale=0.01, carrier_options="in_flight=8") as sa:
        client = sa.pollers["plc"].client
        await client.module_info()
        await sa.serving.module("plc").wait_formed()
        plan = TariffPlanner(TariffPlan(enabled=True), sa.ctx)
        assert await plan.run_once(dt.date(2026, 3, 11)) == 6
        for p in sa.sink.of("tariff"):
            _check_against_meter(sa, p)
        reads = [r for r in sa.fleet.recorder.carrier if r.dir == "down" and r.afn == "F1"]
        frames = sum(r.frames for r in reads)
        # several 645 items ride in one module exchange
        assert frames > 2 * len(reads)
        # the daily read carries the per-tariff frozen energy the allocation check needs
        daily = DailyPlanner(
            DailyPlan(backfill_days=0), sa.ctx, watch=TariffWatch(TariffPlan(), sa.ctx)
        )
        before = len(sa.fleet.recorder.carrier)
        await daily.run_round(dt.date(2026, 3, 11), final=False)
        daily_reads = [
            r
            for r in sa.fleet.recorder.carrier[before:]
            if r.dir == "down" and r.afn == "F1" and r.outcome == "answered"
        ]
        # one module exchange per meter: stamp, energy and the two watched counters together
        assert len(daily_reads) == 6
        assert {tuple(r.dis) for r in daily_reads} == {
            ("05060001", "05060101", "03300500", "03300600")
        }
        for r in sa.sink.of("readings"):
            values = r["values"]
            total = values["energy_import_total_kwh"]["value"]
            parts = [values[f"energy_import_t{t}_kwh"]["value"] for t in (1, 2, 3, 4)]
            assert abs(sum(parts) - total) < 0.015


def test_the_daily_budget_includes_the_tariff_plan(tmp_path: Path) -> None:
    from agent.archive import ArchiveStore
    from agent.budget import daily_budget, tariff_read_s
    from agent.config import load_config

    many = "".join(f'[[archive.meters]]\naddress = "{i}"\nbus = "b1"\n' for i in range(1, 501))
    base = f'[agent]\nconcentrator = "c-1"\nstate_dir = "{tmp_path}"\n'
    base += '[[buses]]\nname = "b1"\nurl = "serial:///dev/ttyS1?baud=2400"\n' + many
    budgets = {}
    for enabled in (False, True):
        path = tmp_path / f"agent-{enabled}.toml"
        path.write_text(base + f"[plans.tariff]\nenabled = {str(enabled).lower()}\n")
        cfg = load_config(path)
        meters = ArchiveStore.preview(cfg)
        (budgets[enabled],) = daily_budget(cfg, meters)
    off, on = budgets[False], budgets[True]
    assert off.tariff_s == 0
    # two watched counters per meter ride with the daily read
    assert on.exchanges_per_round == off.exchanges_per_round + 2 * 500
    url = cfg.buses[0].bus_url
    exchanges, seconds = tariff_read_s(url, meters[0])
    assert exchanges == 34  # clock + 12 first-stage items, 6 daily tables, 10 holidays, 5 counters
    assert on.tariff_s == pytest.approx(500 * seconds / 7)
    assert on.rounds_possible == pytest.approx((on.window_s - on.tariff_s) / on.round_s)
    assert "tariff plan" in on.describe()


async def test_an_outbox_of_schema_2_takes_tariff_rows_and_keeps_counting(tmp_path: Path) -> None:
    import sqlite3

    from agent.outbox import MIGRATIONS, Outbox

    path = tmp_path / "outbox.sqlite"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:2]:
        for statement in step:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    for i in range(3):
        conn.execute(
            "INSERT INTO outbox (kind, payload, size, created_at) VALUES ('events', ?, 2, 0)",
            (f'{{"n": {i}}}',),
        )
    conn.execute("DELETE FROM outbox WHERE id = 3")  # the sequence stays at 3
    conn.commit()
    conn.close()
    box = await Outbox.open(path)
    try:
        assert (await box.depth())["events"] == 2
        rid = await box.put("tariff", {"meter": "m"})
        assert rid == 4
        assert (await box.depth())["tariff"] == 1
    finally:
        await box.close()


async def test_meterlink_read_shows_tariff_items_decoded() -> None:
    import asyncio
    import sys

    from simulators import parse_fleet, serve_fleet

    fleet = parse_fleet(FLEET.format(share=0.0, count=1))
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("b1").address or ("", 0)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterlink", "read", "--bus", f"tcp://{host}:{port}?parity=N",
            "--meter", "000000000001", "04010001", "04000107", "04030099",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = out.decode().splitlines()
    assert proc.returncode == 1, err.decode()  # holiday 0x99 is not set: that item failed
    assert lines[0].startswith('04010001  set 1 daily table 1 = [["00:00", 4], ["08:00", 3]')
    assert lines[1] == '04000107  tables switch time = "2026-03-12T00:00"'
    assert lines[2].startswith("04030099  FAILED abnormal_reply")


async def test_the_centres_tariff_command_reads_now(tmp_path: Path) -> None:
    from agent.commands import CommandExecutor

    async with sim_agent(FLEET.format(share=0.0, count=2), tmp_path) as sa:

        class _Archive:
            current = sa.ctx.archive()

        async def nothing() -> None:
            return None

        executor = CommandExecutor(sa.ctx, _Archive(), nothing)  # type: ignore[arg-type]
        reply = await executor({"command": "tariff", "meter": "000000000001"})
        assert reply["ok"], reply
        assert reply["result"]["reason"] == "command"
        (published,) = sa.sink.of("tariff")
        assert published == reply["result"]
        _check_against_meter(sa, published)
        refused = await executor({"command": "tariff", "meter": "000000000971"})  # 1997
        assert not refused["ok"]
        assert refused["reason"] == "invalid"
        # the plan state learnt the read: nothing is due today
        plan = TariffPlanner(TariffPlan(enabled=True), sa.ctx)
        due = {m.meter_id for m, _ in plan.due(START.date(), START.replace(tzinfo=TZ))}
        assert "000000000001" not in due


async def test_a_meter_without_0400010C_gives_its_clock_from_date_and_time(tmp_path: Path) -> None:
    async with sim_agent(FLEET.format(share=0.0, count=1), tmp_path) as sa:
        meter = sa.fleet.meter("000000000001")
        assert meter.tariff is not None
        meter.tariff.denied = ("0400010C",)
        plan = TariffPlanner(TariffPlan(enabled=True), sa.ctx)
        archived = next(m for m in sa.ctx.archive().meters if m.meter_id == "000000000001")
        payload = await plan.read_now(archived, "first")
        setup = TariffSetup.from_payload(payload["setup"])
        assert "0400010C" in setup.unsupported
        assert {"04000101", "04000102"} <= set(payload["raw"])
        assert setup.meter_time == meter.now().replace(microsecond=0)
        assert abs(payload["clock_offset_s"]) < 2
