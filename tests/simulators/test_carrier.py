"""A CCO served on a pty and on TCP, driven with the 1376.2 codec as the concentrator: queries,
the archive, reads (AFN F1 F1, AFN13 F1, AFN02 F1) with their replies out of order, every
deny path, forming, resets, node dropout, events, the record and the trace."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest

from protocols import dlt645
from protocols import q13762 as q
from protocols.dlt645.describe import hex_spaced
from protocols.errors import ChecksumError, ConcurrencyExceeded, FrameError, ModuleBusy
from simulators import CarrierRecord, Fleet, serve_fleet
from simulators.record import AnswerRecord
from tests.simulators.carrier_client import (
    MAIN,
    WAIT,
    Concentrator,
    carrier_fleet,
    connected,
    open_concentrator,
    read_645,
)

M1, M2, M3 = "000000000001", "000000000002", "000000000003"
ENERGY, VOLTAGE = 0x00010000, 0x0201FF00


@pytest.fixture(params=["pty", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _records(fleet: Fleet, **match: object) -> list[CarrierRecord]:
    return [r for r in fleet.recorder.carrier if all(getattr(r, k) == v for k, v in match.items())]


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition of the module (polled, with a generous bound)."""
    async with asyncio.timeout(WAIT):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.002)


async def read(client: Concentrator, meter: str, *dis: int) -> tuple[q.Frame, q.Frame, q.Message]:
    request = await client.send(client.frame(q.ConcurrentRead.of_645(read_645(meter, *dis)), meter))
    reply, message = await client.answer(request)
    return request, reply, message


def _values(message: q.Message) -> list[dlt645.Message]:
    out = []
    for inner in q.inner_frames(message):
        assert isinstance(inner, dlt645.Frame), inner
        out.append(dlt645.from_frame(inner))
    return out


# --- module queries ------------------------------------------------------------------------
async def test_module_info_vendor_and_main_node(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        _, info = await client.ask(q.QueryModuleInfo())
        assert isinstance(info, q.ModuleInfo)
        assert (info.comm_type, info.max_frame_len, info.monitor_max_timeout_s) == (2, 2048, 60)
        assert (info.max_nodes, info.node_count) == (2040, 6)
        assert info.reading_mode == q.ReadingMode.CONCENTRATOR_LED
        assert info.main_node_addr == q.NodeAddress.parse("000000000000")
        assert info.rates == (q.Rate(100, kbps=True),)
        _, vendor = await client.ask(q.QueryVendor())
        assert isinstance(vendor, q.VendorReply)
        assert (vendor.vendor.vendor_code, vendor.vendor.version) == ("ML", "0100")
        frame, confirm = await client.ask(q.SetMainNode(MAIN))
        assert isinstance(confirm, q.Confirm)
        assert frame.control.byte == 0x83
        _, main = await client.ask(q.QueryMainNode())
        assert main == q.MainNode(MAIN)
        _, info = await client.ask(q.QueryModuleInfo())
        assert isinstance(info, q.ModuleInfo)
        assert info.main_node_addr == MAIN


async def test_archive_queries_pages_adds_and_deletes(transport: str) -> None:
    fleet = carrier_fleet(node_page_max=4, max_nodes=7)
    network = fleet.bus("plc").network
    assert network is not None
    async with connected(fleet, transport) as (_, client):
        _, count = await client.ask(q.QueryNodeCount())
        assert count == q.NodeCount(6, 7)
        _, page = await client.ask(q.QueryNodes(1, 25))
        assert isinstance(page, q.NodeList)
        assert page.total == 6
        assert [n.addr.digits for n in page.nodes] == [M1, M2, M3, "000000000004"]
        for info in page.nodes:
            node = network.nodes[info.addr]
            assert (info.protocol, info.phase) == (2, node.phase)
            assert (info.relay_level, info.signal_quality) == (node.hops - 1, node.quality)
        _, page = await client.ask(q.QueryNodes(5, 25))
        assert isinstance(page, q.NodeList)
        assert [n.addr.digits for n in page.nodes] == ["000000000005", "000000000006"]
        new = q.NodeEntry(q.NodeAddress.parse("000000000099"))
        _, added = await client.ask(q.AddNodes((new,)))
        assert isinstance(added, q.Confirm)
        _, again = await client.ask(q.AddNodes((new,)))
        assert again == q.Deny(6)
        full = q.NodeEntry(q.NodeAddress.parse("000000000098"))
        _, refused = await client.ask(q.AddNodes((full,)))
        assert refused == q.Deny(1)  # capacity 7
        _, deleted = await client.ask(q.DeleteNodes((new.addr, full.addr)))
        assert isinstance(deleted, q.Confirm)
        _, count = await client.ask(q.QueryNodeCount())
        assert count == q.NodeCount(6, 7)


async def test_afn10_and_afn11_with_an_address_field_are_ignored(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        ignored = await client.send(client.frame(q.QueryNodeCount(), M1))
        plain = await client.send(client.frame(q.QueryNodeCount()))
        first = await client.next()
        assert isinstance(first, q.Frame)
        assert first.seq == plain.seq  # nothing came for the addressed one
        assert _records(fleet, seq=ignored.seq, outcome="ignored")


async def test_router_status_in_concentrator_mode(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        _, status = await client.ask(q.QueryRouterStatus())
        assert isinstance(status, q.RouterStatus)
        assert status.route_done  # formed; no router-led reading here
        assert not status.working
        assert status.node_total == 6
        assert status.work_steps == (8, 8, 8)


# --- reads ---------------------------------------------------------------------------------
async def test_f1f1_read_carries_the_meters_own_answers(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        request, reply, message = await read(client, M2, ENERGY, VOLTAGE)
        assert isinstance(message, q.ConcurrentReply)
        assert message.answered
        assert reply.control.byte == 0x83
        assert reply.seq == request.seq
        assert (reply.src, reply.dst) == (q.NodeAddress.parse(M2), MAIN)
        meter = fleet.meter(M2)
        answers = _values(message)
        assert [(a.di, a.value) for a in answers] == [  # type: ignore[attr-defined]
            (ENERGY, meter.read(ENERGY)),
            (VOLTAGE, meter.read(VOLTAGE)),
        ]
        node = fleet.bus("plc").network.nodes[q.NodeAddress.parse(M2)]  # type: ignore[union-attr]
        assert isinstance(reply.info, q.UpInfo)
        assert (reply.info.relay_level, reply.info.phase) == (node.hops - 1, node.phase)
        assert reply.info.reply_quality == node.quality


async def test_point_read_and_forward(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        (energy,) = read_645(M3, ENERGY)
        _, point = await client.ask(q.MonitorRequest.of_645(energy), M3)
        assert isinstance(point, q.MonitorReply)
        assert _values(point)[0].value == fleet.meter(M3).read(ENERGY)  # type: ignore[attr-defined]
        (record,) = _records(fleet, afn="13")
        assert record.latency_s is not None
        assert point.duration_s == round(record.latency_s)
        _, forwarded = await client.ask(q.Forward(2, energy.to_bytes(wakeup=2)), M3)
        assert isinstance(forwarded, q.Forward)
        assert _values(forwarded)[0].value == fleet.meter(M3).read(ENERGY)  # type: ignore[attr-defined]
        # without an address field, the inner frame names the meter
        _, bare = await client.ask(q.Forward(2, energy.to_bytes()))
        assert isinstance(bare, q.Forward)
        assert bare.frame


async def test_a_1997_meter_behind_the_module() -> None:
    fleet = carrier_fleet(
        meters='  [[district.bus.meters]]\n  first_address = "000000000097"\n'
        "  models = { DDS1997 = 1 }"
    )
    async with connected(fleet) as (_, client):
        frames = read_645("000000000097", 0x9010, edition=dlt645.Edition.V1997)
        request = await client.send(client.frame(q.ConcurrentRead.of_645(frames), "000000000097"))
        _, message = await client.answer(request)
        assert isinstance(message, q.ConcurrentReply)
        assert message.protocol == q.Protocol.DLT645_1997
        assert _values(message)[0].value == fleet.meter("000000000097").read(0x9010)  # type: ignore[attr-defined]


async def test_concurrent_replies_come_out_of_order_and_pair_by_seq(transport: str) -> None:
    fleet = carrier_fleet(count=12)
    async with connected(fleet, transport) as (_, client):
        meters = [f"{i:012d}" for i in range(1, 13)]
        requests = {}
        for meter in meters:
            frame = client.frame(q.ConcurrentRead.of_645(read_645(meter, ENERGY)), meter)
            requests[frame.seq] = frame
        await client.write(b"".join(f.to_bytes() for f in requests.values()))
        arrived = []
        for _ in meters:
            event = await client.next()
            assert isinstance(event, q.Frame)
            request = requests[event.seq]
            assert q.is_answer(event, request)
            message = q.from_frame(event)
            assert isinstance(message, q.ConcurrentReply)
            (answer,) = _values(message)
            assert answer.value == fleet.meter(request.dst.digits).read(ENERGY)  # type: ignore[union-attr, attr-defined]
            arrived.append(event.seq)
    assert sorted(arrived) == sorted(requests)
    assert arrived != sorted(arrived)  # out of order
    records = _records(fleet, afn="F1")
    assert max(r.in_flight or 0 for r in records) == 12
    by_reply = [r.seq for r in sorted(records, key=lambda r: r.t_reply or 0)]
    assert by_reply == arrived  # they left as their drawn latencies ended


async def test_a_silent_meter_gives_a_length_0_reply() -> None:
    fleet = carrier_fleet(
        meters='  [[district.bus.meters]]\n  first_address = "000000000050"\n'
        "  models = { DDZY666 = 1 }\n  dead = 1.0"
    )
    async with connected(fleet) as (_, client):
        _, _, message = await read(client, "000000000050", ENERGY)
        assert isinstance(message, q.ConcurrentReply)
        assert not message.answered
    (record,) = _records(fleet, afn="F1")
    assert record.outcome == "no_answer"
    assert record.latency_s is not None
    assert record.latency_s > 1.8
    assert [r.outcome for r in fleet.recorder.meters] == ["dead"]


async def test_a_bad_inner_checksum_is_passed_through() -> None:
    fleet = carrier_fleet(
        meters='  [[district.bus.meters]]\n  first_address = "000000000060"\n'
        "  models = { DDZY666 = 1 }\n  corrupt = 1.0"
    )
    errors = []
    async with connected(fleet) as (_, client):
        for _ in range(8):  # one flipped bit per reply, anywhere in the meter's frame
            _, reply, message = await read(client, "000000000060", ENERGY)
            assert isinstance(message, q.ConcurrentReply)
            assert message.answered  # the outer frame is good …
            assert q.decode_frame(reply.to_bytes()) == reply
            (inner,) = q.inner_frames(message)
            assert isinstance(inner, FrameError)  # … the meter's is not: the 645 layer says so
            errors.append(type(inner))
    assert ChecksumError in errors
    assert {r.outcome for r in _records(fleet, afn="F1")} == {"answered"}
    assert {r.outcome for r in fleet.recorder.meters} == {"corrupted"}


async def test_the_monitor_timeout_ends_slow_reads_with_no_answer() -> None:
    fleet = carrier_fleet(count=20)
    async with connected(fleet) as (_, client):
        _, confirm = await client.ask(q.SetMonitorTimeout(1))
        assert isinstance(confirm, q.Confirm)
        for i in range(1, 21):
            await read(client, f"{i:012d}", ENERGY)
        _, info = await client.ask(q.QueryModuleInfo())
        assert isinstance(info, q.ModuleInfo)
        assert info.monitor_max_timeout_s == 1
    records = _records(fleet, afn="F1")
    assert all(r.latency_s is not None and r.latency_s <= 1.0 for r in records)
    timed_out = [r for r in records if "module timeout" in r.detail]
    assert timed_out  # the median read takes 1.4 s
    assert all(r.outcome == "no_answer" and r.latency_s == 1.0 for r in timed_out)


# --- denies --------------------------------------------------------------------------------
async def test_deny_109_beyond_the_concurrency_cap(transport: str) -> None:
    fleet = carrier_fleet(concurrency=2)
    async with connected(fleet, transport) as (_, client):
        frames = [
            client.frame(q.ConcurrentRead.of_645(read_645(m, ENERGY)), m) for m in (M1, M2, M3)
        ]
        await client.write(b"".join(f.to_bytes() for f in frames))
        _, third = await client.answer(frames[2])
        assert third == q.Deny(109)
        assert isinstance(third, q.Deny)
        assert isinstance(third.error(), ConcurrencyExceeded)
        for frame in frames[:2]:
            _, message = await client.answer(frame)
            assert isinstance(message, q.ConcurrentReply)
        _, _retry, message = await read(client, M3, ENERGY)  # a slot is free again
        assert isinstance(message, q.ConcurrentReply)
    (denied,) = _records(fleet, deny=109)
    assert denied.meter == M3
    assert denied.detail == "2 in flight, 2 allowed"


async def test_deny_111_for_a_second_frame_to_a_meter_in_flight(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        first = client.frame(q.ConcurrentRead.of_645(read_645(M1, ENERGY)), M1)
        second = client.frame(q.ConcurrentRead.of_645(read_645(M1, VOLTAGE)), M1)
        await client.write(first.to_bytes() + second.to_bytes())
        _, refused = await client.answer(second)
        assert refused == q.Deny(111)
        _, answered = await client.answer(first)
        assert isinstance(answered, q.ConcurrentReply)
        assert answered.answered


async def test_deny_110_for_too_many_meter_frames(transport: str) -> None:
    fleet = carrier_fleet(max_frames=3)
    async with connected(fleet, transport) as (_, client):
        _, _, refused = await read(client, M1, *(ENERGY + i for i in range(4)))
        assert refused == q.Deny(110)
        _, _, message = await read(client, M1, *(ENERGY + i for i in range(3)))
        assert isinstance(message, q.ConcurrentReply)
        assert len(_values(message)) == 3
    assert _records(fleet, deny=110)[0].frames == 4


async def test_deny_9_while_the_network_forms_again_after_an_archive_change(
    transport: str,
) -> None:
    fleet = carrier_fleet(reforming_s=150)
    async with connected(fleet, transport) as (serving, client):
        module = serving.module("plc")
        entry = q.NodeEntry(q.NodeAddress.parse("000000000099"))
        _, added = await client.ask(q.AddNodes((entry,)))
        assert isinstance(added, q.Confirm)
        assert not module.formed  # for 1.5 s (150 s at time scale 0.01)
        _, _, busy = await read(client, M1, ENERGY)
        assert busy == q.Deny(9)
        assert isinstance(busy, q.Deny)
        assert isinstance(busy.error(), ModuleBusy)
        await module.wait_formed()
        _, _, message = await read(client, M1, ENERGY)
        assert isinstance(message, q.ConcurrentReply)
    assert _records(fleet, deny=9)[0].detail == "network forming"


async def test_deny_9_right_after_power_up(transport: str) -> None:
    fleet = carrier_fleet(forming_s=150)
    async with serve_fleet(fleet, transport=transport) as serving:
        client = await open_concentrator(serving)
        try:
            module = serving.module("plc")
            await module.wait_awake()
            assert not module.formed
            _, _, busy = await read(client, M1, ENERGY)
            assert busy == q.Deny(9)
            await module.wait_formed()
            _, _, message = await read(client, M1, ENERGY)
            assert isinstance(message, q.ConcurrentReply)
        finally:
            await client.close()


@pytest.mark.parametrize("code", [12, 7])
async def test_a_node_missing_from_the_list_is_denied_until_added(code: int) -> None:
    fleet = carrier_fleet(missing=0.5, unknown_node_deny=code)
    network = fleet.bus("plc").network
    assert network is not None
    assert len(network.missing) == 3
    missing = network.missing[0]
    async with connected(fleet) as (serving, client):
        _, _, refused = await read(client, missing, ENERGY)
        assert refused == q.Deny(code)
        _, nobody, _ = await read(client, "000000000077", ENERGY)  # no such meter at all
        assert q.from_frame(nobody) == q.Deny(code)
        _, added = await client.ask(q.AddNodes((q.NodeEntry(q.NodeAddress.parse(missing)),)))
        assert isinstance(added, q.Confirm)
        await serving.module("plc").wait_formed()
        _, _, message = await read(client, missing, ENERGY)
        assert isinstance(message, q.ConcurrentReply)
        assert message.answered


async def test_a_stale_node_with_no_meter_is_not_in_the_network() -> None:
    fleet = carrier_fleet(extra=1)
    network = fleet.bus("plc").network
    assert network is not None
    (stale,) = network.extra
    async with connected(fleet) as (_, client):
        _, _, refused = await read(client, stale, ENERGY)
        assert refused == q.Deny(12)
    (record,) = _records(fleet, deny=12)
    assert record.latency_s is not None
    assert 10.0 <= record.latency_s <= 12.0


@pytest.mark.parametrize(("share", "deny"), [(1.0, 11), (0.0, None)])
async def test_route_failures(share: float, deny: int | None) -> None:
    fleet = carrier_fleet(route_failure=1.0, route_failure_deny=share)
    async with connected(fleet) as (_, client):
        _, _, message = await read(client, M1, ENERGY)
        if deny is None:
            assert isinstance(message, q.ConcurrentReply)
            assert not message.answered
        else:
            assert message == q.Deny(deny)
    (record,) = _records(fleet, afn="F1")
    assert (record.outcome, record.deny) == ("route_failure", deny)
    assert record.latency_s is not None
    assert 10.0 <= record.latency_s <= 12.0
    assert fleet.recorder.meters == []  # the meter never heard it


async def test_f1f1_on_narrowband_is_not_supported_and_one_read_at_a_time() -> None:
    fleet = carrier_fleet(profile="narrowband", reading="concentrator")
    async with connected(fleet) as (_, client):
        _, _, refused = await read(client, M1, ENERGY)
        assert refused == q.Deny(10)
        first = client.frame(q.MonitorRequest.of_645(read_645(M1, ENERGY)[0]), M1, comm_mode=1)
        second = client.frame(q.MonitorRequest.of_645(read_645(M2, ENERGY)[0]), M2, comm_mode=1)
        await client.write(first.to_bytes() + second.to_bytes())
        _, busy = await client.answer(second)
        assert busy == q.Deny(109)
        reply, point = await client.answer(first)
        assert isinstance(point, q.MonitorReply)
        assert reply.comm_mode == 1
    (record,) = _records(fleet, afn="13", outcome="answered")
    assert record.latency_s is not None
    assert record.latency_s > 0.3


# --- frames it cannot take -----------------------------------------------------------------
def _with_checksum(body: bytearray) -> bytes:
    body[-2] = sum(body[3:-2]) & 0xFF
    return bytes(body)


async def test_bad_frames_are_denied_with_the_references_codes(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        good = client.frame(q.QueryNodeCount(), seq=0x21).to_bytes()
        bad_sum = bytearray(good)
        bad_sum[-2] ^= 0xFF
        await client.write(bytes(bad_sum))
        _, deny = await client.expect(lambda f: f.seq == 0x21)
        assert deny == q.Deny(3)

        bad_end = bytearray(client.frame(q.QueryNodeCount(), seq=0x22).to_bytes())
        bad_end[-1] = 0x17
        await client.write(bytes(bad_end))
        _, deny = await client.expect(lambda f: f.seq == 0x22)
        assert deny == q.Deny(2)

        two_bits = bytearray(client.frame(q.QueryNodeCount(), seq=0x23).to_bytes())
        two_bits[11] = 0x03  # DT1 with two bits: no single Fn
        await client.write(_with_checksum(two_bits))
        _, deny = await client.expect(lambda f: f.seq == 0x23)
        assert deny == q.Deny(5)

        request = client.frame(q.ConcurrentRead.of_645(read_645(M1, ENERGY)), M1, seq=0x24)
        misfit = bytearray(request.to_bytes())
        misfit[27] += 1  # the F1 F1 length says one byte more than there is
        await client.write(_with_checksum(misfit))
        _, deny = await client.expect(lambda f: f.seq == 0x24)
        assert deny == q.Deny(5)

        unknown = client.frame(q.RawMessage(0x03, 99), seq=0x25)
        await client.write(unknown.to_bytes())
        _, deny = await client.expect(lambda f: f.seq == 0x25)
        assert deny == q.Deny(4)

        topology = client.frame(q.QueryTopology(1, 10), seq=0x26)
        await client.write(topology.to_bytes())
        _, deny = await client.expect(lambda f: f.seq == 0x26)
        assert deny == q.Deny(10)

        # cut short: L promises more than comes, then the line goes quiet
        short = bytearray(client.frame(q.QueryNodeCount(), seq=0x27).to_bytes())
        short[1] += 4
        await client.write(bytes(short))
        _, deny = await client.expect(lambda f: f.seq == 0x27)
        assert deny == q.Deny(2)
    assert {r.deny for r in _records(fleet, outcome="denied")} == {2, 3, 4, 5, 10}


async def test_noise_and_up_frames_get_no_answer(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (_, client):
        up = q.to_frame(q.NodeCount(1, 2), q.UpInfo(seq=0x31)).to_bytes()
        noise = bytes([0x11, 0x22, 0xFE, 0xFE, 0x33]) * 20
        after = client.frame(q.QueryNodeCount(), seq=0x32)
        await client.write(noise + up + b"\xfe\xfe" + after.to_bytes())
        first = await client.next()
        assert isinstance(first, q.Frame)
        assert first.seq == 0x32  # the noise and the up frame got nothing
    assert _records(fleet, seq=0x31, outcome="ignored")


# --- resets, forming, dropouts, events -----------------------------------------------------
async def test_a_reset_answers_then_reports_its_running_mode_spontaneously(
    transport: str,
) -> None:
    fleet = carrier_fleet(boot_report_s=[150, 150], boot_report=True)
    async with connected(fleet, transport, time_scale=0.01) as (serving, client):
        module = serving.module("plc")
        assert module.resets == 1
        (power_up,) = _records(fleet, dir="up", afn="03")  # sent before the client connected
        _request, confirm = await client.ask(q.HardwareInit())
        assert isinstance(confirm, q.Confirm)
        assert not module.awake  # rebooting now, for 1.5 s (150 s at time scale 0.01)
        deaf = await client.send(client.frame(q.QueryNodeCount()))
        report, info = await client.expect(lambda f: f.afn == 0x03 and f.seq != power_up.seq)
        assert (report.control.byte, report.prm, report.fn) == (0xC3, True, 10)
        assert isinstance(info, q.ModuleInfo)
        assert info.node_count == 6
        assert module.resets == 2
        assert _records(fleet, seq=deaf.seq, outcome="ignored", detail="rebooting")
        (sent,) = _records(fleet, dir="up", afn="03")[-1:]
        assert sent.outcome == "sent"
        _, count = await client.ask(q.QueryNodeCount())
        assert count == q.NodeCount(6, 2040)  # 01F1 keeps the list


async def test_parameter_init_clears_the_list() -> None:
    fleet = carrier_fleet(boot_report=True)
    async with connected(fleet) as (_serving, client):
        (power_up,) = _records(fleet, dir="up", afn="03")
        _, confirm = await client.ask(q.ParameterInit())
        assert isinstance(confirm, q.Confirm)
        _, info = await client.expect(lambda f: f.prm and f.seq != power_up.seq)
        assert isinstance(info, q.ModuleInfo)
        assert info.node_count == 0
        _, _, refused = await read(client, M1, ENERGY)
        assert refused == q.Deny(12)
    init = _records(fleet, afn="01")[0]
    assert init.latency_s is not None
    assert 0.8 <= init.latency_s <= 1.1


async def test_a_reset_mid_read_drops_the_reads_in_flight() -> None:
    fleet = carrier_fleet(boot_report=True)
    async with connected(fleet, time_scale=1.0) as (serving, client):
        (power_up,) = _records(fleet, dir="up", afn="03")
        module = serving.module("plc")
        request = await client.send(client.frame(q.ConcurrentRead.of_645(read_645(M1, ENERGY)), M1))
        await until(lambda: bool(module.in_flight))
        module.reset()
        _, info = await client.expect(lambda f: f.prm and f.seq != power_up.seq)
        assert isinstance(info, q.ModuleInfo)
        assert module.in_flight == {}
        (record,) = _records(fleet, seq=request.seq, afn="F1")
        assert record.outcome == "reset"
        assert [f for f in client.pending() if isinstance(f, q.Frame) and f.afn == 0xF1] == []


async def test_a_node_that_drops_out_and_comes_back(transport: str) -> None:
    fleet = carrier_fleet()
    async with connected(fleet, transport) as (serving, client):
        module = serving.module("plc")
        module.drop(M3)
        assert module.absent(M3)
        _, _, gone = await read(client, M3, ENERGY)
        assert gone == q.Deny(12)
        module.restore(M3)
        _, _, back = await read(client, M3, ENERGY)
        assert isinstance(back, q.ConcurrentReply)
        assert back.answered
    (denied,) = _records(fleet, deny=12)
    assert denied.detail == "the node is not in the network"


async def test_events_are_reported_and_repeated_until_confirmed(transport: str) -> None:
    fleet = carrier_fleet(report_repeat_s=20)
    async with connected(fleet, transport) as (serving, client):
        module = serving.module("plc")
        _, confirm = await client.ask(q.SetEventReporting(True))
        assert isinstance(confirm, q.Confirm)
        module.drop(M2)
        module.restore(M2)  # back in the network: it reports
        first, event = await client.expect(lambda f: f.afn == 0x06)
        assert (first.control.byte, first.fn) == (0xC3, 5)
        assert isinstance(event, q.ReportEvent)
        (status,) = _values(event)
        assert isinstance(status, dlt645.ReadReply)
        assert status.di == 0x04001501
        again, _ = await client.expect(lambda f: f.afn == 0x06)
        assert again.seq == first.seq  # not confirmed: the same report again
        flagged, _ = await client.ask(q.QueryNodeCount())
        assert isinstance(flagged.info, q.UpInfo)
        assert flagged.info.event_flag  # R4.D0 while a report waits for its confirm
        await client.send(q.reply_to(again, q.Confirm()))
        await until(lambda: bool(_records(fleet, afn="06", fn=5)))
        quiet, _ = await client.ask(q.QueryNodeCount())
        assert isinstance(quiet.info, q.UpInfo)
        assert not quiet.info.event_flag
    (record,) = _records(fleet, afn="06", fn=5)
    assert (record.confirmed, record.meter) == (True, M2)
    assert record.attempts is not None
    assert record.attempts >= 2


async def test_broadcast_time_sync_reaches_every_meter() -> None:
    fleet = carrier_fleet()
    new_time = dt.datetime(2026, 3, 10, 10, 2, 0)
    sync = dlt645.to_frame(
        dlt645.Address.parse("999999999999"), dlt645.BroadcastTimeRequest(new_time),
        dlt645.Edition.V2007,
    )  # fmt: skip
    async with connected(fleet) as (_, client):
        _, confirm = await client.ask(q.StartBroadcast(2, sync.to_bytes()))
        assert isinstance(confirm, q.Confirm)
    assert {m.now() for m in fleet.meters()} == {new_time}


# --- record and trace ----------------------------------------------------------------------
async def test_the_record_of_a_read() -> None:
    fleet = carrier_fleet(time_scale=0.02)
    network = fleet.bus("plc").network
    assert network is not None
    async with connected(fleet) as (_, client):
        request, reply, _ = await read(client, M2, ENERGY, VOLTAGE)
    (record,) = _records(fleet, afn="F1")
    node = network.nodes[q.NodeAddress.parse(M2)]
    assert record.layer == "1376.2"
    assert (record.dir, record.seq, record.fn, record.outcome) == (
        "down",
        request.seq,
        1,
        "answered",
    )
    assert (record.meter, record.node, record.deny) == (M2, M2, None)
    assert (record.dis, record.frames) == (["00010000", "0201FF00"], 2)
    assert (record.hops, record.quality, record.in_flight) == (node.hops, node.quality, 1)
    assert (record.request_bytes, record.reply_bytes) == (request.length, reply.length)
    assert record.latency_s is not None
    assert record.applied_s is not None
    assert record.time_scale == 0.02
    assert record.applied_s == pytest.approx(record.latency_s * 0.02, abs=1e-5)
    assert record.t_request is not None
    assert record.t_reply is not None
    assert record.t_reply - record.t_request >= record.applied_s - 1e-3
    assert record.as_json()["layer"] == "1376.2"
    meter_records = [r for r in fleet.recorder.meters if isinstance(r, AnswerRecord)]
    assert [(r.meter, r.di, r.outcome) for r in meter_records] == [
        (M2, "00010000", "answered"),
        (M2, "0201FF00", "answered"),
    ]


async def test_the_trace_shows_both_layers(transport: str) -> None:
    fleet = carrier_fleet()
    lines: list[str] = []
    async with connected(fleet, transport, trace=lines.append) as (_, client):
        request, reply, _message = await read(client, M1, ENERGY)
    (inner_request,) = read_645(M1, ENERGY)
    hex_of = hex_spaced
    assert f"-> {hex_of(request.to_bytes())}" in lines
    at = lines.index(f"-> {hex_of(request.to_bytes())}")
    assert lines[at + 1] == f"  -> {hex_of(inner_request.to_bytes(wakeup=0))}"
    answer = lines.index(f"<- {hex_of(reply.to_bytes())}")
    assert lines[answer + 1].startswith("  <- 68 01 00 00 00 00 00 68 91")


async def test_scheduled_dropouts_follow_the_seeded_plan() -> None:
    # every node leaves after 1 module second and stays away (for a long time)
    fleet = carrier_fleet(dropout=1.0, dropout_on_s=[1, 1], dropout_off_s=[10**6, 10**6])
    network = fleet.bus("plc").network
    assert network is not None
    assert len(network.dropping()) == 6
    async with connected(fleet) as (serving, client):
        module = serving.module("plc")
        await until(lambda: module.absent(M1))  # 1 module second = 10 ms here
        _, _, gone = await read(client, M1, ENERGY)
        assert gone == q.Deny(12)


async def test_a_node_back_from_a_scheduled_outage_reports_an_event() -> None:
    # M1..M3 away from module second 100 to 150 (1.0 to 1.5 s here), then back: an event each
    fleet = carrier_fleet(count=3, dropout=1.0, dropout_on_s=[100, 100], dropout_off_s=[50, 50])
    async with connected(fleet) as (_, client):
        _, confirm = await client.ask(q.SetEventReporting(True))
        assert isinstance(confirm, q.Confirm)
        for _ in range(3):
            report, event = await client.expect(lambda f: (f.afn, f.fn) == (0x06, 5))
            assert isinstance(event, q.ReportEvent)
            await client.send(q.reply_to(report, q.Confirm()))
        await until(lambda: len(_records(fleet, afn="06", fn=5, confirmed=True)) == 3)
    records = _records(fleet, afn="06", fn=5)
    assert {r.meter for r in records} == {M1, M2, M3}
    assert {r.detail for r in records} == {"back in the network after an outage"}


async def test_random_meter_events_once_allowed() -> None:
    fleet = carrier_fleet(events_per_hour=3600)  # one per module second: 10 ms here
    async with connected(fleet) as (_, client):
        assert not client.pending()  # none before 05F2 allows them
        _, confirm = await client.ask(q.SetEventReporting(True))
        assert isinstance(confirm, q.Confirm)
        report, event = await client.expect(lambda f: (f.afn, f.fn) == (0x06, 5))
        assert isinstance(event, q.ReportEvent)
        assert event.device_type == 1
        await client.send(q.reply_to(report, q.Confirm()))
        _, off = await client.ask(q.SetEventReporting(False))
        assert isinstance(off, q.Confirm)
        await until(lambda: bool(_records(fleet, afn="06", fn=5, confirmed=True)))
    assert _records(fleet, afn="06", fn=5)[0].detail == "meter event"


async def test_line_timing_paces_the_module_at_its_baud() -> None:
    fleet = carrier_fleet()
    async with connected(fleet, "pty", timing=True) as (_, client):
        _, _, message = await read(client, M1, ENERGY, VOLTAGE)
        assert isinstance(message, q.ConcurrentReply)
        assert message.answered
    (record,) = _records(fleet, afn="F1")
    assert record.t_request is not None
    assert record.t_reply is not None
    assert record.applied_s is not None
    # the request's last byte is taken where 9600 baud would put it, the reply after its latency
    assert record.t_reply - record.t_request >= record.applied_s - 1e-3
    assert fleet.bus("plc").baud == 9600
