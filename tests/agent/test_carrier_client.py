"""The carrier client against a scripted module (tests/agent/fake_cco.py): start-up and sync,
the concurrency window, replies in any order, every deny path, resets, router-led reading.
End-to-end tests against the CCO simulator are in test_carrier_sim.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.carrier.client import ArchivedNode, CarrierClient, match_replies
from agent.carrier.errors import ModuleDown, ModuleStillBusy, ModuleTimeout, RouteFailure
from agent.dlt645 import reason_of
from protocols import dlt645
from protocols import q13762 as q
from protocols.errors import ChecksumError, NotSupported
from protocols.payloads import FailureReason
from tests.agent.fake_cco import FakeCco, meters
from tests.agent.helpers_mqtt import eventually

ENERGY = 0x00010000
FREEZE_TIME = 0x05060001
FREEZE_ENERGY = 0x05060101
VOLTAGE = 0x02010100


def addr(n: int) -> dlt645.Address:
    return dlt645.Address.parse(f"{n:012d}")


class Events(list[tuple[str, str | None, dict[str, Any]]]):
    def __call__(self, name: str, meter: str | None, detail: dict[str, Any]) -> None:
        self.append((name, meter, detail))

    def names(self) -> list[str]:
        return [e[0] for e in self]


@contextlib.asynccontextmanager
async def module(
    cco: FakeCco, options: str = "", *, archive: list[str] | None = None
) -> AsyncIterator[tuple[CarrierClient, Events]]:
    events = Events()
    nodes = None if archive is None else [ArchivedNode(a) for a in archive]
    async with cco.serving() as base:
        client = CarrierClient(
            f"{base}?{options}" if options else base,
            name="plc",
            events=events,
            archive=(lambda: nodes) if nodes is not None else None,
        )
        try:
            yield client, events
        finally:
            await client.close()


def archived(cco: FakeCco) -> None:
    cco.archive.update(dict.fromkeys(cco.meters, 2))


async def test_start_up_reads_module_info_sets_the_main_node_and_syncs_the_archive() -> None:
    fleet = meters(6)
    cco = FakeCco(fleet, max_frame_len=64)  # tiny frames: adds and deletes go in batches
    wanted = list(fleet)[:5]
    extra = ["000000009991", "000000009992", "000000009993", "000000009994"]
    cco.archive.update(dict.fromkeys([*extra, wanted[0]], 2))
    async with module(cco, "main_node=112233445566", archive=wanted) as (client, events):
        info = await client.module_info()
    assert info.max_frame_len == 64
    assert cco.main_node == q.NodeAddress.parse("112233445566")
    assert set(cco.archive) == set(wanted)
    # (64 - 16) // 7 = 6 nodes per add, (64 - 16) // 6 = 8 per delete: one of each here; the
    # pages of the node list were read within the frame length
    assert cco.counts["AddNodes"] == 1
    assert cco.counts["DeleteNodes"] == 1
    assert cco.counts["RouterPause"] == 1  # routing paused around the archive change
    sync = [d for n, _m, d in events if n == "carrier_sync"]
    assert sync == [{"bus": "plc", "archived": 5, "module_before": 5, "added": 4, "deleted": 4}]
    assert "carrier_module_ready" in events.names()


async def test_an_archive_in_batches_the_frame_length_allows() -> None:
    fleet = meters(40)
    cco = FakeCco(fleet, max_frame_len=128)  # (128 - 16) // 7 = 16 adds per frame
    async with module(cco, archive=list(fleet)) as (client, _events):
        result = await client.sync()
        assert (result.added, result.deleted) == ([], [])  # the start-up sync did it
    assert set(cco.archive) == set(fleet)
    assert cco.counts["AddNodes"] == 3  # 16 + 16 + 8
    adds = [q.from_frame(f) for f in cco.received if f.afn == 0x11]
    assert [len(m.nodes) for m in adds] == [16, 16, 8]  # type: ignore[attr-defined]
    assert all(f.length <= 128 for f in cco.received)


async def test_a_read_through_the_module_gives_the_meters_value_like_rs485() -> None:
    fleet = meters(2)
    cco = FakeCco(fleet)
    archived(cco)
    async with module(cco) as (client, _):
        result = await client.read(addr(1), ENERGY)
    meter = fleet["000000000001"]
    assert result.measurements[0].name == "energy_import_total_kwh"
    assert result.measurements[0].value == pytest.approx(meter.values()["energy_import_total_kwh"])
    (read,) = [f for f in cco.received if f.afn == 0xF1]
    assert read.src == q.NodeAddress.parse("BEBEBEBEBE01")
    assert read.dst == q.NodeAddress.parse("000000000001")


async def test_several_items_of_one_meter_go_in_one_request() -> None:
    cco = FakeCco(meters(1))
    archived(cco)
    async with module(cco) as (client, _):
        results = await client.read_many(addr(1), [FREEZE_TIME, FREEZE_ENERGY, ENERGY, VOLTAGE])
    assert all(not isinstance(r, Exception) for r in results), results
    assert cco.counts["ConcurrentRead"] == 1
    assert [r.di for r in results if not isinstance(r, Exception)] == [
        FREEZE_TIME, FREEZE_ENERGY, ENERGY, VOLTAGE,
    ]  # fmt: skip


async def test_deny_110_splits_requests_and_remembers_it() -> None:
    cco = FakeCco(meters(1), max_frames=2)
    archived(cco)
    async with module(cco) as (client, events):
        results = await client.read_many(addr(1), [FREEZE_TIME, FREEZE_ENERGY, ENERGY, VOLTAGE])
        assert all(not isinstance(r, Exception) for r in results), results
        assert client.frames_per_request == 2
        assert client.stats["deny_110"] == 2  # 4 items: 4 denied, 3 denied, then 2 + 2
    assert ("carrier_frames_per_request", None, {"bus": "plc", "frames": 2}) in events


async def test_the_window_is_learnt_down_from_deny_109_and_never_exceeds_the_module() -> None:
    fleet = meters(24)
    cco = FakeCco(fleet, concurrency=5, hold=True)
    archived(cco)
    async with module(cco, "in_flight=16") as (client, events):
        reads = [asyncio.create_task(client.read(addr(n), ENERGY)) for n in range(1, 25)]
        await cco.wait_for(lambda: len(cco.held) == 5)
        await eventually(lambda: client.window.limit == 5)
        # every request of the first burst beyond the 5 held has had its deny: a loaded machine
        # can hand them to the client after the limit already went down
        await eventually(lambda: client.window.in_use == 5)
        learnt = client.stats["deny_109"]
        assert 1 <= learnt <= 11  # the first burst: what went beyond 5 before the first deny
        cco.hold = False
        await cco.release()
        results = await asyncio.gather(*reads)
    assert len(results) == 24
    assert client.window.limit == 5
    assert cco.max_seen_in_flight == 5
    assert client.stats["deny_109"] == learnt  # learnt once: never above the module again
    assert ("carrier_window", None, {"bus": "plc", "window": 5}) in events


async def test_replies_in_any_order_reach_their_own_requests() -> None:
    fleet = meters(4)
    cco = FakeCco(fleet, hold=True)
    archived(cco)
    async with module(cco, "in_flight=8") as (client, _):
        reads = [asyncio.create_task(client.read(addr(n), ENERGY)) for n in range(1, 5)]
        await cco.wait_for(lambda: len(cco.held) == 4)
        await cco.release([3, 1, 0, 2])
        results = await asyncio.gather(*reads)
    for n, result in enumerate(results, start=1):
        expected = fleet[f"{n:012d}"].values()["energy_import_total_kwh"]
        assert result.measurements[0].value == pytest.approx(expected)
    seqs = [f.seq for f in cco.received if f.afn == 0xF1]
    assert len(set(seqs)) == 4  # four distinct SEQs in flight


async def test_never_two_frames_to_one_meter_at_once() -> None:
    cco = FakeCco(meters(1), hold=True)
    archived(cco)
    async with module(cco, "in_flight=8") as (client, _):
        reads = [asyncio.create_task(client.read(addr(1), di)) for di in (ENERGY, VOLTAGE)]
        await cco.wait_for(lambda: len(cco.held) == 1)
        assert cco.counts["ConcurrentRead"] == 1  # the second waits for the first
        await cco.release()
        await cco.wait_for(lambda: len(cco.held) == 1)
        await cco.release()
        await asyncio.gather(*reads)
    assert cco.meter_overlaps == 0


async def test_deny_111_is_counted_and_retried() -> None:
    cco = FakeCco(meters(1), deny_script={"000000000001": [111]})
    archived(cco)
    async with module(cco) as (client, _):
        result = await client.read(addr(1), ENERGY)
    assert result.measurements
    assert client.stats["deny_111"] == 1
    assert cco.counts["ConcurrentRead"] == 2


async def test_a_forming_network_is_waited_for_with_backoff() -> None:
    cco = FakeCco(meters(2), forming=True)
    archived(cco)
    async with module(cco) as (client, events):
        read = asyncio.create_task(client.read(addr(1), ENERGY))
        await cco.wait_for(lambda: cco.counts["ConcurrentRead"] >= 2)  # denied 9, asked again
        await cco.form()
        result = await read
    assert result.measurements
    assert client.stats["deny_9"] >= 2
    assert events.names().count("carrier_module_busy") == 1


async def test_a_network_that_does_not_form_in_time_is_module_busy() -> None:
    cco = FakeCco(meters(1), forming=True)
    archived(cco)
    async with module(cco, "busy_wait_s=0") as (client, _):
        with pytest.raises(ModuleStillBusy) as err:
            await client.read(addr(1), ENERGY)
    assert reason_of(err.value)[0] is FailureReason.MODULE_BUSY


async def test_a_meter_the_module_lost_is_synced_back_and_read() -> None:
    fleet = meters(3)
    cco = FakeCco(fleet)
    async with module(cco, archive=list(fleet)) as (client, events):
        await client.module_info()
        assert set(cco.archive) == set(fleet)
        del cco.archive["000000000002"]  # the module forgot it (deny 7 on the next read)
        result = await client.read(addr(2), ENERGY)
    assert result.measurements
    assert client.stats["deny_7"] == 1
    assert "000000000002" in cco.archive
    assert [d["added"] for n, _m, d in events if n == "carrier_sync"] == [3, 1]


async def test_technician_reads_add_an_unknown_meter_first() -> None:
    cco = FakeCco(meters(2))
    async with module(cco) as (client, _):  # no archive: the module's is left alone
        result = await client.read(addr(2), ENERGY)
    assert result.measurements
    assert list(cco.archive) == ["000000000002"]


async def test_a_meter_not_in_the_network_is_a_route_failure() -> None:
    fleet = meters(2)
    cco = FakeCco(fleet, joined={"000000000001"})
    async with module(cco, archive=list(fleet)) as (client, _):
        with pytest.raises(RouteFailure) as err:
            await client.read(addr(2), ENERGY)
        assert (await client.read(addr(1), ENERGY)).measurements
    reason, detail = reason_of(err.value)
    assert reason is FailureReason.ROUTE_FAILURE
    assert "deny 12" in detail
    assert cco.counts["QueryNodeCount"] == 1  # known to be archived: no second sync for it


async def test_a_silent_meter_is_no_reply_and_a_bad_inner_checksum_only_its_own() -> None:
    fleet = meters(3)
    cco = FakeCco(fleet, silent={"000000000001"}, bad_inner={"000000000002"})
    archived(cco)
    async with module(cco) as (client, _):
        outcomes = await asyncio.gather(
            *(client.read(addr(n), ENERGY) for n in (1, 2, 3)), return_exceptions=True
        )
    silent, bad, good = outcomes
    # an empty reply: the module asked, the meter said nothing (as silence on RS-485)
    assert reason_of(silent)[0] is FailureReason.NO_REPLY  # type: ignore[arg-type]
    assert isinstance(bad, ChecksumError)
    assert reason_of(bad)[0] is FailureReason.CHECKSUM
    assert not isinstance(good, BaseException)
    assert good.measurements


async def test_other_denies_are_module_denies_with_their_code() -> None:
    cco = FakeCco(meters(1), deny_script={"000000000001": [10]})
    archived(cco)
    async with module(cco) as (client, _):
        with pytest.raises(NotSupported) as err:
            await client.read(addr(1), ENERGY)
    assert reason_of(err.value) == (
        FailureReason.MODULE_DENY,
        "deny 10: main node does not support this command",
    )


async def test_a_module_reset_mid_round_resyncs_and_sends_again() -> None:
    fleet = meters(4)
    cco = FakeCco(fleet, hold=True)
    async with module(cco, "in_flight=8", archive=list(fleet)) as (client, events):
        reads = [asyncio.create_task(client.read(addr(n), ENERGY)) for n in range(1, 5)]
        await cco.wait_for(lambda: len(cco.held) == 4)
        cco.archive.clear()  # a parameter-area init: the module forgot its archive too
        cco.hold = False
        await cco.reset()
        results = await asyncio.gather(*reads)
    assert all(r.measurements for r in results)
    assert set(cco.archive) == set(fleet)
    assert "carrier_module_reset" in events.names()
    assert [d["added"] for n, _m, d in events if n == "carrier_sync"] == [4, 4]
    assert client.stats["resets"] == 1


async def test_a_module_that_answers_nothing_is_down_for_every_meter() -> None:
    cco = FakeCco(meters(2), vanish=True)
    async with module(cco, "command_timeout_ms=100") as (client, events):
        with pytest.raises(ModuleDown) as first:
            await client.read(addr(1), ENERGY)
        asked = cco.counts["QueryModuleInfo"]
        with pytest.raises(ModuleDown):
            await client.read(addr(2), ENERGY)
        assert cco.counts["QueryModuleInfo"] == asked == 3  # down: the next read fails at once
    reason, detail = reason_of(first.value)
    assert reason is FailureReason.BUS_ERROR
    assert "carrier module not answering" in detail
    assert events.names() == ["carrier_module_down"]


async def test_a_module_that_takes_a_read_and_never_answers_is_a_module_timeout() -> None:
    cco = FakeCco(meters(2), hold=True)
    archived(cco)
    async with module(cco, "read_timeout_ms=200") as (client, _):
        with pytest.raises(ModuleTimeout) as err:
            await client.read(addr(1), ENERGY)
        assert reason_of(err.value)[0] is FailureReason.MODULE_TIMEOUT
        # its slot and its meter stay taken until the late reply comes
        assert client.window.in_use == 1
        await cco.release()
        await eventually(lambda: client.window.in_use == 0)
    assert client.link.stats["late_replies"] == 1
    assert client.window.in_use == 0


async def test_meter_events_are_confirmed_and_become_agent_events() -> None:
    fleet = meters(2)
    cco = FakeCco(fleet)
    async with module(cco, archive=list(fleet)) as (client, events):
        await client.module_info()
        await cco.report_event("000000000002")
        await cco.wait_for(lambda: len(cco.confirms) == 1)
        await eventually(lambda: "carrier_meter_event" in events.names())
    ((meter, detail),) = [(m, d) for n, m, d in events if n == "carrier_meter_event"]
    assert meter == "000000000002"
    assert detail["decoded"]["di"] == "04000503"


async def test_point_mode_reads_one_meter_at_a_time() -> None:
    fleet = meters(3)
    cco = FakeCco(fleet, comm_type=1)
    archived(cco)
    async with module(cco, "mode=point") as (client, _):
        results = await asyncio.gather(*(client.read(addr(n), ENERGY) for n in (1, 2, 3)))
    assert all(r.measurements for r in results)
    assert cco.counts["MonitorRequest"] == 3
    assert cco.max_seen_in_flight == 1
    assert client.stats["deny_109"] == 0


async def test_router_led_reading_answers_the_modules_asks_from_the_queue() -> None:
    fleet = meters(4)
    cco = FakeCco(fleet, comm_type=1, router_led=True)
    async with module(cco, "mode=router", archive=list(fleet)) as (client, _):
        results = await asyncio.gather(
            *(client.read_many(addr(n), [FREEZE_TIME, ENERGY]) for n in (1, 2, 3, 4))
        )
        await cco.wait_for(lambda: cco.counts["passes"] == 1 and len(cco.confirms) == 9)
    for per_meter in results:
        assert all(not isinstance(r, Exception) for r in per_meter), per_meter
    assert cco.counts["router_reads"] == 8  # every item read in one visit of its meter
    assert cco.counts["passes"] == 1
    # 8 × 06F2 and the 06F3 at the end of the pass: every report confirmed


async def test_router_led_an_ask_repeated_before_the_answer_left_is_answered_once() -> None:
    # the module repeats an ask it believes unanswered; both arrive while the agent still
    # chooses the answer: a second answer would take the meter's next item, which the module
    # (waiting for this SEQ no longer) never reads
    fleet = meters(2)
    cco = FakeCco(fleet, comm_type=1, router_led=True, ask_twice=True)
    options = "mode=router&router_wait_s=20"  # a lost item fails in 20 s, not the field's 2 h
    async with module(cco, options, archive=list(fleet)) as (client, _):
        results = await asyncio.gather(
            *(client.read_many(addr(n), [FREEZE_TIME, ENERGY]) for n in (1, 2))
        )
        await cco.wait_for(lambda: cco.counts["passes"] == 1)
    for per_meter in results:
        assert all(not isinstance(r, Exception) for r in per_meter), per_meter
    assert cco.counts["router_reads"] == 4
    assert cco.counts["stale_router_answers"] == 0


async def test_router_led_a_meter_the_module_never_visits_is_a_route_failure() -> None:
    fleet = meters(3)
    cco = FakeCco(fleet, comm_type=1, router_led=True, joined={"000000000001"})
    async with module(cco, "mode=router", archive=list(fleet)) as (client, _):
        ok, missing = await asyncio.gather(
            client.read(addr(1), ENERGY), client.read(addr(3), ENERGY), return_exceptions=True
        )
    assert not isinstance(ok, BaseException)
    reason, detail = reason_of(missing)  # type: ignore[arg-type]
    assert reason is FailureReason.ROUTE_FAILURE
    assert "without asking" in detail


def test_replies_are_matched_by_function_and_di_and_errors_keep_their_place() -> None:
    a = addr(7)
    requests = [dlt645.to_frame(a, dlt645.ReadRequest(di)) for di in (ENERGY, VOLTAGE, FREEZE_TIME)]
    replies = [
        dlt645.to_frame(a, dlt645.ReadReply(VOLTAGE, bytes.fromhex("2022"))),
        dlt645.to_frame(a, dlt645.ReadReply(ENERGY, bytes.fromhex("00000000"))),
    ]
    matched = match_replies(requests, [*replies, ChecksumError(1, 2)])
    assert matched[0] is replies[1]
    assert matched[1] is replies[0]
    assert isinstance(matched[2], ChecksumError)
    other = dlt645.to_frame(addr(8), dlt645.ReadReply(ENERGY, bytes(4)))
    assert type(match_replies(requests[:1], [other])[0]).__name__ == "AddressMismatch"
    assert reason_of(match_replies(requests[:1], [])[0])[0] is FailureReason.NO_REPLY


async def test_a_time_sync_is_broadcast_corrected_by_the_modules_delay() -> None:
    import datetime as dt

    cco = FakeCco(meters(1), broadcast_delay_s=3)
    sent = dt.datetime(2026, 3, 11, 10, 0, 0)
    async with module(cco) as (client, _):
        assert await client.call(dlt645.BROADCAST, dlt645.BroadcastTimeRequest(sent)) is None
    (frame,) = cco.broadcasts
    message = dlt645.from_frame(dlt645.decode_frame(frame))
    assert message == dlt645.BroadcastTimeRequest(sent + dt.timedelta(seconds=3))


async def test_a_line_that_breaks_takes_the_module_down_for_every_meter() -> None:
    cco = FakeCco(meters(2))
    archived(cco)
    async with module(cco) as (client, events):
        assert (await client.read(addr(1), ENERGY)).measurements
        cco.unplug()  # the serial server goes away: connection closed, no reconnect
        with pytest.raises(ModuleDown) as first:
            await client.read(addr(1), ENERGY)
        with pytest.raises(ModuleDown) as second:
            await client.read(addr(2), ENERGY)  # at once: no reconnect per meter
    assert second.value is first.value
    assert reason_of(first.value)[0] is FailureReason.BUS_ERROR
    assert events.names().count("carrier_module_down") == 1


async def test_the_agent_syncs_the_module_at_start_and_on_archive_updates(tmp_path: Path) -> None:
    """The daemon's wiring: a carrier bus's upkeep task syncs the module when the agent starts
    (before any read) and again when the centre changes the archive."""
    from agent.config import load_config
    from agent.daemon import Agent

    fleet = meters(3)
    cco = FakeCco(fleet)
    cco.archive["000000009999"] = 2  # stale
    async with cco.serving() as url:
        cfg_file = tmp_path / "agent.toml"
        cfg_file.write_text(
            f'[agent]\nconcentrator = "c-1"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[metrics]\nlisten = ""\n[[buses]]\nname = "plc"\nurl = "{url}"\n'
            '[[archive.meters]]\naddress = "000000000001"\nbus = "plc"\n'
            '[[archive.meters]]\naddress = "000000000002"\nbus = "plc"\n',
            encoding="utf-8",
        )
        agent = Agent(load_config(cfg_file))
        poller = agent.pollers["plc"]
        task = asyncio.create_task(poller.run())
        try:
            await cco.wait_for(lambda: set(cco.archive) == {"000000000001", "000000000002"})
            assert cco.counts["ConcurrentRead"] == 0  # synced before anything was read
            agent.archive.apply_update(
                {"mode": "upsert", "meters": [{"address": "000000000003", "bus": "plc"}]}
            )
            await agent._archive_changed()
            await cco.wait_for(lambda: "000000000003" in cco.archive)

            def syncs() -> list[tuple[int, int]]:
                return [
                    (e["detail"]["added"], e["detail"]["deleted"])
                    for e in agent._pending_events
                    if e["event"] == "carrier_sync"
                ]

            await eventually(lambda: len(syncs()) == 2)  # the confirm reached the client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            agent.state.close()
    assert syncs() == [(2, 1), (1, 0)]
