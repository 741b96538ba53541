"""The carrier client and the plans against the CCO simulator (simulators.carrier), on a pty
and on TCP: start-up sync, concurrent reads out of order, every deny path, forming, a reset
mid-round, a meter that drops out, router-led reading, a bad inner checksum.

The module's latencies run at a time scale (× 0.01 or smaller): seconds of field time become
milliseconds. Nothing here waits on the wall clock: tests wait on the module's and the client's
state (`wait_formed`, records, events) with generous bounds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.archive import ArchiveStore
from agent.carrier.client import ArchivedNode, CarrierClient
from agent.carrier.errors import ModuleStillBusy, RouteFailure
from agent.commands import CommandExecutor
from agent.config import DailyPlan, IntervalPlan, load_config
from agent.dlt645 import reason_of
from agent.plans.daily import DailyPlanner
from agent.plans.interval import IntervalPlanner
from protocols import dlt645
from protocols import q13762 as q
from protocols.payloads import FailureReason
from simulators import Fleet, parse_fleet, serve_fleet
from simulators.carrier import CarrierModule
from simulators.record import CarrierRecord
from tests.agent.helpers_mqtt import eventually
from tests.agent.simenv import sim_agent

ENERGY = 0x00010000
FREEZE_TIME = 0x05060001
FREEZE_ENERGY = 0x05060101
VOLTAGE = 0x02010100
DAY = dt.date(2026, 3, 11)

FLEET = """
seed = 7
start = "2026-03-11T10:00:00"
frozen = true
[[district]]
name = "d"
  [[district.bus]]
  name = "plc"
  protocol = "carrier"
    [district.bus.carrier]
    profile = "{profile}"
    boot_report_s = [0, 0]
    forming_s = {forming}
    reforming_s = {forming}
    {extra}
    [[district.bus.meters]]
    count = {count}
    first_address = "410100000001"
    models = {{ DDZY666 = 1 }}
    prepaid = 0.0
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    {meter_faults}
"""


def fleet_toml(
    count: int = 8,
    *,
    profile: str = "hplc",
    forming: float = 0,
    extra: str = "",
    meter_faults: str = "",
) -> str:
    return FLEET.format(
        count=count, profile=profile, forming=forming, extra=extra, meter_faults=meter_faults
    )


class Events(list[tuple[str, str | None, dict[str, Any]]]):
    def __call__(self, name: str, meter: str | None, detail: dict[str, Any]) -> None:
        self.append((name, meter, detail))

    def names(self) -> list[str]:
        return [e[0] for e in self]


@dataclass
class Cco:
    fleet: Fleet
    module: CarrierModule
    client: CarrierClient
    events: Events

    def reads(self) -> list[CarrierRecord]:
        """The module's record of the reads it was asked (1376.2 layer, down)."""
        return [r for r in self.fleet.recorder.carrier if r.dir == "down" and r.afn in ("F1", "13")]

    def meter(self, n: int) -> dlt645.Address:
        return dlt645.Address.parse(f"4101{n:08d}")


@contextlib.asynccontextmanager
async def cco(
    toml: str,
    *,
    transport: str = "tcp",
    options: str = "",
    archive: bool = True,
    scale: float = 0.01,
) -> AsyncIterator[Cco]:
    fleet = parse_fleet(toml)
    events = Events()
    nodes = [
        ArchivedNode.of(str(e["address"]), str(e["protocol"]), str(e["meter"]))
        for e in fleet.archive()
    ]
    async with serve_fleet(fleet, transport=transport, time_scale=scale) as serving:
        ep = serving.endpoint("plc")
        if ep.kind == "tcp":
            assert ep.address is not None
            base = f"carrier+tcp://{ep.address[0]}:{ep.address[1]}?parity=N"
        else:
            base = f"carrier://{ep.path}?parity=N"  # ptys do no even parity
        client = CarrierClient(
            f"{base}&{options}" if options else base,
            name="plc",
            events=events,
            archive=(lambda: nodes) if archive else None,
        )
        try:
            yield Cco(fleet, serving.module("plc"), client, events)
        finally:
            await client.close()


def value_of(fleet: Fleet, address: dlt645.Address, name: str) -> float:
    return float(fleet.meter(address.digits).values()[name])  # type: ignore[arg-type]


# --- start-up -------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_start_up_syncs_missing_and_extra_nodes(transport: str) -> None:
    toml = fleet_toml(40, extra="missing = 0.2\n    extra = 3")
    async with cco(toml, transport=transport) as c:
        network = c.fleet.bus("plc").network
        assert network.missing
        assert len(network.extra) == 3
        info = await c.client.module_info()
        archived = {str(e["address"]) for e in c.fleet.archive()}
        assert {a.digits for a in c.module.archive} == archived
        (sync,) = [d for n, _m, d in c.events if n == "carrier_sync"]
        assert (sync["added"], sync["deleted"]) == (len(network.missing), 3)
        assert info.max_frame_len == 2048
        assert info.comm_type == 2
        # and then it reads (after the network formed again)
        result = await c.client.read(c.meter(1), ENERGY)
    assert result.measurements[0].value == pytest.approx(
        value_of(c.fleet, c.meter(1), "energy_import_total_kwh")
    )


# --- concurrency ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_concurrent_reads_replies_out_of_order_window_learnt(transport: str) -> None:
    toml = fleet_toml(30, extra="concurrency = 5")
    async with cco(toml, transport=transport, options="in_flight=16") as c:
        results = await asyncio.gather(
            *(c.client.read_many(c.meter(n), [FREEZE_TIME, ENERGY]) for n in range(1, 31))
        )
        # learnt down from 16 by the 109s; each deny sets the limit to what was unanswered when
        # its request was sent, which counts replies already on their way on a loaded machine
        # (seen: 6, 7), so it comes down to the module's 5 over more denies; the exact learning
        # is `test_carrier_client.py::test_the_window_is_learnt_down_from_deny_109_…` (held)
        assert 5 <= c.client.window.limit < 16
    for n, (stamp, energy) in enumerate(results, start=1):
        assert not isinstance(stamp, Exception), stamp
        assert not isinstance(energy, Exception), energy
        expected = value_of(c.fleet, c.meter(n), "energy_import_total_kwh")
        assert energy.measurements[0].value == pytest.approx(expected)
    accepted = [r for r in c.reads() if r.in_flight is not None]
    assert max(r.in_flight or 0 for r in accepted) == 5  # the module's limit, never above
    by_request = sorted(accepted, key=lambda r: r.t_request or 0)
    by_reply = sorted(accepted, key=lambda r: r.t_reply or 0)
    assert [r.seq for r in by_request] != [r.seq for r in by_reply]  # out of order
    assert all(r.frames == 2 for r in accepted)  # two items, one request
    denied = Counter(r.deny for r in c.reads() if r.outcome == "denied")
    assert set(denied) == {109}
    assert c.client.stats["deny_109"] == denied[109]


async def test_deny_110_packs_fewer_frames() -> None:
    async with cco(fleet_toml(2, extra="max_frames = 2")) as c:
        items = await c.client.read_many(c.meter(1), [FREEZE_TIME, FREEZE_ENERGY, ENERGY, VOLTAGE])
    assert all(not isinstance(i, Exception) for i in items), items
    assert c.client.frames_per_request == 2
    assert Counter(r.deny for r in c.reads())[110] == 2  # 4 refused, 3 refused, then 2 + 2


async def test_deny_111_from_another_master_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another master (a second connection to the module) reads the same meter: our read is
    denied 111 and goes again once the other one is answered. The module holds the reads it
    accepted until ours was denied (at the tests' time scale a read takes ~10 ms: on a loaded
    machine the other read was answered before ours arrived, and nothing was denied)."""
    async with cco(fleet_toml(2)) as c:
        await c.client.module_info()
        await c.module.wait_formed()
        released = asyncio.Event()
        finish_read = c.module._finish_read  # an accepted read's one way on to its reply

        async def held(*args: Any) -> None:
            await released.wait()
            await finish_read(*args)

        monkeypatch.setattr(c.module, "_finish_read", held)
        other = CarrierClient(c.client.url, name="other")
        try:
            first = asyncio.create_task(other.read(c.meter(1), ENERGY))
            await eventually(lambda: q.NodeAddress.of(c.meter(1)) in c.module.in_flight)
            mine = asyncio.create_task(c.client.read(c.meter(1), VOLTAGE))
            await eventually(lambda: c.client.stats["deny_111"] >= 1)
            released.set()
            theirs, ours = await first, await mine
        finally:
            released.set()
            await other.close()
    assert theirs.measurements
    assert ours.measurements
    assert c.client.stats["deny_111"] >= 1


async def test_forming_is_waited_for_and_a_read_that_waits_too_long_is_module_busy() -> None:
    async with cco(fleet_toml(2, forming=120), options="busy_wait_s=0") as c:
        with pytest.raises(ModuleStillBusy) as err:
            await c.client.read(c.meter(1), ENERGY)
        assert reason_of(err.value)[0] is FailureReason.MODULE_BUSY
    async with cco(fleet_toml(2, forming=120)) as c:
        result = await c.client.read(c.meter(1), ENERGY)  # 120 s of field time, × 0.01
        assert result.measurements
        assert c.client.stats["deny_9"] >= 1
        assert c.events.names().count("carrier_module_busy") == 1
        assert c.module.formed


async def test_deny_7_resyncs_and_reads() -> None:
    toml = fleet_toml(6, extra="unknown_node_deny = 7")
    async with cco(toml) as c:
        await c.client.module_info()
        del c.module.archive[q.NodeAddress.of(c.meter(3))]  # the module loses a node
        result = await c.client.read(c.meter(3), ENERGY)
    assert result.measurements
    assert c.client.stats["deny_7"] == 1
    assert [d["added"] for n, _m, d in c.events if n == "carrier_sync"] == [1]


async def test_route_failures_and_not_supported() -> None:
    toml = fleet_toml(8, extra="route_failure = 1.0\n    route_failure_deny = 1.0")
    async with cco(toml) as c:
        outcomes = await asyncio.gather(
            *(c.client.read(c.meter(n), ENERGY) for n in range(1, 9)), return_exceptions=True
        )
    failed = {
        c.meter(n).digits: reason_of(o)
        for n, o in enumerate(outcomes, start=1)
        if isinstance(o, BaseException)
    }
    routes = {r.meter for r in c.reads() if r.outcome == "route_failure" and r.deny == 11}
    assert routes  # the weak links failed (the strong ones may pass)
    assert set(failed) == routes
    for reason, detail in failed.values():
        assert reason is FailureReason.ROUTE_FAILURE
        assert "deny 11" in detail
    # a narrowband module denies AFN F1 F1 (10): the client reads it point by point instead
    async with cco(fleet_toml(2, profile="narrowband"), options="mode=hplc") as c:
        result = await c.client.read(c.meter(1), ENERGY)
        assert result.measurements
        assert c.client.mode == "point"
        assert {r.afn for r in c.reads()} == {"13"}


# --- resets, dropouts, bad frames -------------------------------------------------------------
async def test_a_module_reset_mid_round_and_every_read_still_completes() -> None:
    async with cco(fleet_toml(20), options="in_flight=16") as c:
        await c.client.module_info()
        await c.module.wait_formed()
        reads = [asyncio.create_task(c.client.read(c.meter(n), ENERGY)) for n in range(1, 21)]
        await eventually(lambda: len(c.module.in_flight) >= 5)
        c.module.reset()
        results = await asyncio.gather(*reads)
    assert all(r.measurements for r in results)
    assert "carrier_module_reset" in c.events.names()
    assert c.client.stats["resets"] == 1
    assert any(r.outcome == "reset" for r in c.reads())  # the module lost reads in flight


async def test_a_meter_that_drops_out_and_comes_back() -> None:
    async with cco(fleet_toml(3)) as c:
        await c.client.module_info()
        c.module.drop(c.meter(2).digits)
        with pytest.raises(RouteFailure) as err:
            await c.client.read(c.meter(2), ENERGY)
        reason, detail = reason_of(err.value)
        assert reason is FailureReason.ROUTE_FAILURE
        assert "not in its network (deny 12)" in detail
        assert (await c.client.read(c.meter(1), ENERGY)).measurements  # the others read on
        c.module.restore(c.meter(2).digits)
        assert (await c.client.read(c.meter(2), ENERGY)).measurements


async def test_a_bad_inner_checksum_fails_that_meter_only() -> None:
    async with cco(fleet_toml(4)) as c:
        broken = c.fleet.meter(c.meter(2).digits)
        broken.faults = dataclasses.replace(broken.faults, corrupt=1.0)
        outcomes = await asyncio.gather(
            *(c.client.read(c.meter(n), ENERGY) for n in range(1, 5)), return_exceptions=True
        )
    reasons = [reason_of(o)[0] if isinstance(o, BaseException) else None for o in outcomes]
    assert reasons == [None, FailureReason.CHECKSUM, None, None]


# --- plans over a carrier bus ------------------------------------------------------------------
async def test_the_daily_plan_reads_every_live_meter_in_one_exchange_each(tmp_path: Path) -> None:
    toml = fleet_toml(24, meter_faults="dead = 0.1")
    async with sim_agent(toml, tmp_path, time_scale=0.01, carrier_options="in_flight=16") as sa:
        client = sa.pollers["plc"].client
        await client.module_info()
        await sa.serving.module("plc").wait_formed()
        report = await DailyPlanner(DailyPlan(backfill_days=0), sa.ctx).run_round(DAY, final=False)
        dead = {m.identity.meter_id for m in sa.fleet.meters() if m.faults.dead}
        assert dead
        readings = {r["meter"]: r for r in sa.sink.of("readings")}
        assert set(readings) == {m.identity.meter_id for m in sa.fleet.meters()} - dead
        for meter_id, r in readings.items():
            (record,) = [
                f for f in sa.fleet.meter(meter_id).freeze_history() if f.time.date() == DAY
            ]
            assert r["values"]["energy_import_total_kwh"]["value"] == pytest.approx(
                record.values()["energy_import_total_kwh"]
            )
        assert {f["meter"]: f["reason"] for f in report["failed"]} == dict.fromkeys(
            dead, "no_reply"
        )
        reads = [r for r in sa.fleet.recorder.carrier if r.dir == "down" and r.afn == "F1"]
        live = [r for r in reads if r.meter not in dead and r.outcome == "answered"]
        assert len(live) == len(readings)  # one exchange per meter: stamp and energy together


async def test_router_led_daily_round(tmp_path: Path) -> None:
    # the module's patience scales with its timers: its field 10 s for an answer to an ask
    # would be 20 ms here, less than a loaded machine may take to schedule the agent (campaign
    # run 2: the module skipped a node the agent was answering). 1000 s scale to 2 s.
    patience = "ask_repeat_s = 1000\n    report_repeat_s = 1000"
    toml = fleet_toml(12, profile="narrowband", extra=patience)
    async with sim_agent(toml, tmp_path, time_scale=0.002, carrier_options="mode=router") as sa:
        report = await DailyPlanner(DailyPlan(backfill_days=0), sa.ctx).run_round(DAY, final=False)
        assert report["read"] == 12, report["failed"]

        def reports() -> list[CarrierRecord]:
            return [r for r in sa.fleet.recorder.carrier if (r.afn, r.fn) == ("06", 2)]

        # the module records a report once it is confirmed: the last one just after the round
        await eventually(lambda: len(reports()) == 24)  # stamp and energy of each meter
        assert all(r.confirmed for r in reports())  # every 06F2 confirmed
        assert {r.outcome for r in reports()} == {"answered"}


async def test_interval_plan_and_centre_commands_over_a_carrier_bus(tmp_path: Path) -> None:
    toml = fleet_toml(6)
    async with sim_agent(toml, tmp_path, time_scale=0.01, carrier_options="in_flight=8") as sa:
        await sa.pollers["plc"].client.module_info()
        await sa.serving.module("plc").wait_formed()
        slot = dt.datetime(2026, 3, 11, 10, 0, tzinfo=sa.ctx.clock.tz)
        items = ["00010000", "0201FF00", "0202FF00", "02030000"]
        read = await IntervalPlanner(IntervalPlan(enabled=True, items=items), sa.ctx).run_slot(slot)
        assert read == 6 * 4
        reads = [r for r in sa.fleet.recorder.carrier if r.dir == "down" and r.afn == "F1"]
        assert len(reads) == 6  # four items of a meter in one AFN F1 F1
        assert {r.frames for r in reads} == {4}

        cfg = tmp_path / "agent.toml"
        cfg.write_text(
            f'[agent]\nconcentrator = "c-test"\nstate_dir = "{tmp_path}"\n'
            '[[buses]]\nname = "plc"\nurl = "carrier+tcp://127.0.0.1:1"\n'
            + "".join(
                f'[[archive.meters]]\naddress = "{m.identity.meter_id}"\nbus = "plc"\n'
                for m in sa.fleet.meters()
            )
        )
        run = CommandExecutor(sa.ctx, ArchiveStore(load_config(cfg)), _nothing)
        meter = sa.fleet.meters()[2]
        reply = await run(
            {
                "command": "read",
                "meter": meter.identity.meter_id,
                "args": {"items": ["00010000", "voltage_a_v", "EEEEEEEE"]},
            }
        )
        assert reply["ok"] is True
        got = reply["result"]["items"]
        assert got["00010000"]["values"]["energy_import_total_kwh"]["value"] == pytest.approx(
            meter.values()["energy_import_total_kwh"]
        )
        assert got["EEEEEEEE"]["error"]["reason"] == "abnormal_reply"
        raw = dlt645.to_frame(
            dlt645.Address.parse(meter.identity.address), dlt645.ReadRequest(0x00010000)
        ).to_bytes(wakeup=0)
        answer = await run({"command": "raw", "args": {"bus": "plc", "hex": raw.hex()}})
        assert answer["ok"] is True, answer
        assert answer["result"]["replies"][0]["di"] == "00010000"


async def _nothing() -> None:
    pass
