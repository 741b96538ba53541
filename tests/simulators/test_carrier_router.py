"""Router-led reading (AFN14): the module asks the concentrator what to read at each node,
reports each reading (AFN06 F2) and repeats what is not answered or confirmed."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest

from protocols import dlt645
from protocols import q13762 as q
from simulators import CarrierRecord, Fleet
from tests.simulators.carrier_client import MAIN, WAIT, carrier_fleet, connected, read_645

M1, M2, M3 = "000000000001", "000000000002", "000000000003"
ENERGY = 0x00010000
ROUTER = {"reading": "router", "ask_repeat_s": 20, "report_repeat_s": 30}


def _ask_for(node: str) -> Callable[[q.Frame], bool]:
    address = q.NodeAddress.parse(node)

    def match(frame: q.Frame) -> bool:
        if (frame.afn, frame.fn) != (0x14, 1):
            return False
        message = q.from_frame(frame)
        return isinstance(message, q.RouterReadRequest) and message.node_addr == address

    return match


def _is(afn: int, fn: int) -> Callable[[q.Frame], bool]:
    return lambda frame: (frame.afn, frame.fn) == (afn, fn)


def _records(fleet: Fleet, **match: object) -> list[CarrierRecord]:
    return [r for r in fleet.recorder.carrier if all(getattr(r, k) == v for k, v in match.items())]


async def _until_recorded(fleet: Fleet, **match: object) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if _records(fleet, **match):
                return
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("profile", ["narrowband", "hplc"])
async def test_the_router_led_loop(profile: str) -> None:
    fleet = carrier_fleet(count=3, profile=profile, extra=1, **ROUTER)
    control = 0xC1 if profile == "narrowband" else 0xC3
    async with connected(fleet) as (_, client):
        # the round starts with the concentrator's clock; unanswered, the ask is repeated
        clock_ask, _ = await client.expect(_is(0x14, 2))
        assert clock_ask.control.byte == control
        again, _ = await client.expect(_is(0x14, 2))
        assert again.seq == clock_ask.seq
        await client.send(q.reply_to(again, q.ClockAnswer(dt.datetime(2026, 3, 10, 10, 0, 5))))

        # node 1: read this frame (the answer with an address field, as the test suites send)
        ask, message = await client.expect(_ask_for(M1))
        assert message == q.RouterReadRequest(message.phase, q.NodeAddress.parse(M1), 1)  # type: ignore[attr-defined]
        frame = read_645(M1, ENERGY)[0].to_bytes(wakeup=0)
        answer = q.to_frame(
            q.RouterReadAnswer(q.ReadFlag.READ, frame), q.DownInfo(seq=ask.seq),
            src=MAIN, dst=q.NodeAddress.parse(M1), comm_mode=ask.comm_mode,
        )  # fmt: skip
        await client.send(answer)
        report, data = await client.expect(_is(0x06, 2))
        assert isinstance(data, q.ReportReadData)
        assert (data.node_seq, data.protocol) == (1, q.Protocol.DLT645_2007)
        (inner,) = q.inner_frames(data)
        assert isinstance(inner, dlt645.Frame)
        assert dlt645.from_frame(inner).value == fleet.meter(M1).read(ENERGY)  # type: ignore[attr-defined]
        repeated, _ = await client.expect(_is(0x06, 2))
        assert repeated.seq == report.seq  # not confirmed: the same report again
        await client.send(q.reply_to(repeated, q.Confirm(), prm=True))  # C = 43 is accepted too

        # node 1 again: done
        ask, _ = await client.expect(_ask_for(M1))
        await client.send(q.reply_to(ask, q.RouterReadAnswer(q.ReadFlag.DONE)))

        # node 2: no answer at all → asked again with the same SEQ, 3 times, then skipped
        ask2, _ = await client.expect(_ask_for(M2))
        for _ in range(3):
            repeat, _ = await client.expect(_ask_for(M2))
            assert repeat.seq == ask2.seq

        # node 3: failed; the stale node (no meter) is never asked about
        ask3, _ = await client.expect(_ask_for(M3))
        await client.send(q.reply_to(ask3, q.RouterReadAnswer(q.ReadFlag.FAILED)))

        done, change = await client.expect(_is(0x06, 3))
        assert change == q.ReportRouteChange(1)
        await client.send(q.reply_to(done, q.Confirm()))
        await _until_recorded(fleet, afn="06", fn=3)
        _, status = await client.ask(q.QueryRouterStatus())
        assert isinstance(status, q.RouterStatus)
        assert (status.route_done, status.working, status.nodes_read) == (True, False, 1)
        assert status.work_switch == 1
        leftovers = [f for f in client.pending() if isinstance(f, q.Frame) and f.afn == 0x14]
        assert all(f.seq in (ask2.seq,) for f in leftovers)

    # (attempts: at least the ones the test saw; a slow machine may see one more repetition)
    (clock,) = _records(fleet, afn="14", fn=2)
    assert clock.outcome == "answered"
    assert clock.attempts is not None
    assert clock.attempts >= 2
    asks = [(r.node, r.outcome) for r in _records(fleet, afn="14", fn=1)]
    assert asks == [(M1, "read"), (M1, "done"), (M2, "unanswered"), (M3, "failed")]
    assert _records(fleet, afn="14", fn=1, node=M2)[0].attempts == 4  # 1 + 3 repetitions
    (read,) = _records(fleet, afn="06", fn=2)
    assert (read.dir, read.meter, read.outcome) == ("up", M1, "answered")
    assert (read.confirmed, read.dis) == (True, ["00010000"])
    assert read.attempts is not None
    assert read.attempts >= 2
    assert read.latency_s is not None
    assert read.applied_s == pytest.approx(read.latency_s * 0.01, abs=1e-5)
    (route,) = _records(fleet, afn="06", fn=3)
    assert (route.outcome, route.confirmed) == ("sent", True)


async def test_pause_resume_and_restart() -> None:
    fleet = carrier_fleet(count=2, profile="narrowband", **ROUTER)
    async with connected(fleet) as (serving, client):
        module = serving.module("plc")
        clock, _ = await client.expect(_is(0x14, 2))
        await client.send(q.reply_to(clock, q.ClockAnswer(dt.datetime(2026, 3, 10, 10, 0, 5))))
        ask, _ = await client.expect(_ask_for(M1))
        pause = client.frame(q.RouterPause(), comm_mode=1)
        await client.write(pause.to_bytes())  # pause first, then finish node 1
        await client.send(q.reply_to(ask, q.RouterReadAnswer(q.ReadFlag.DONE)))
        _, confirm = await client.answer(pause)
        assert isinstance(confirm, q.Confirm)
        _, status = await client.ask(q.QueryRouterStatus())
        assert isinstance(status, q.RouterStatus)
        assert not status.working
        assert module.router.paused
        assert module.router.nodes_read == 1
        # paused: no ask for node 2 came while the module answered the status query
        asked = [f for f in client.pending() if isinstance(f, q.Frame) and f.afn == 0x14]
        assert asked == []
        _, resumed = await client.ask(q.RouterResume())
        assert isinstance(resumed, q.Confirm)
        ask, _ = await client.expect(_ask_for(M2))
        await client.send(q.reply_to(ask, q.RouterReadAnswer(q.ReadFlag.DONE)))
        done, _ = await client.expect(_is(0x06, 3))
        await client.send(q.reply_to(done, q.Confirm()))
        # a new round from the first node
        _, restarted = await client.ask(q.RouterRestart())
        assert isinstance(restarted, q.Confirm)
        clock, _ = await client.expect(_is(0x14, 2))
        await client.send(q.reply_to(clock, q.ClockAnswer(dt.datetime(2026, 3, 10, 10, 1, 0))))
        ask, message = await client.expect(_ask_for(M1))
        assert isinstance(message, q.RouterReadRequest)
        assert message.node_seq == 1


async def test_the_routers_read_holds_the_narrowband_modules_one_slot() -> None:
    fleet = carrier_fleet(count=2, profile="narrowband", time_scale=0.1, **ROUTER)
    async with connected(fleet, time_scale=0.1) as (serving, client):
        module = serving.module("plc")
        clock, _ = await client.expect(_is(0x14, 2))
        await client.send(q.reply_to(clock, q.ClockAnswer(dt.datetime(2026, 3, 10, 10, 0, 5))))
        ask, _ = await client.expect(_ask_for(M1))
        frame = read_645(M1, ENERGY)[0].to_bytes()
        await client.send(q.reply_to(ask, q.RouterReadAnswer(q.ReadFlag.READ, frame)))
        async with asyncio.timeout(WAIT):
            while True:
                if module.in_flight:  # the router's read is under way
                    break
                await asyncio.sleep(0.002)
        point = q.MonitorRequest.of_645(read_645(M2, ENERGY)[0])
        _, busy = await client.ask(point, M2)
        assert busy == q.Deny(109)
        report, _ = await client.expect(_is(0x06, 2))
        await client.send(q.reply_to(report, q.Confirm()))
