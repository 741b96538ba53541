"""Transport discipline and the DL/T 645 master against a scripted far end on a pty / TCP."""

from __future__ import annotations

import asyncio

import pytest

from agent.dlt645 import Dlt645Client, reason_of
from agent.transports import (
    BusError,
    BusUrl,
    BusUrlError,
    NoReply,
    TruncatedReply,
    open_byte_transport,
)
from protocols.dlt645 import (
    Address,
    Edition,
    ErrorFlags,
    ErrorReply,
    Frame,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    from_frame,
    to_frame,
)
from protocols.dlt645.messages import FollowUpReply, MeterError
from protocols.errors import ChecksumError
from protocols.payloads import FailureReason
from tests.agent.linefake import pty_far_end

METER = Address.parse("123456789012")
ENERGY = 0x00010000
# windows wide enough for a loaded machine; the late replies below come well after them
FAST = "?parity=N&reply_timeout_ms=500&byte_gap_ms=200&frame_gap_ms=0"


def reply_to(
    req: Frame, value: bytes = bytes.fromhex("26802211"), *, addr: Address = METER
) -> bytes:
    msg = from_frame(req)
    assert isinstance(msg, ReadRequest)
    return to_frame(addr, ReadReply(msg.di, value), req.edition).to_bytes(wakeup=2)


async def test_read_over_pty_with_trace() -> None:
    trace: list[tuple[str, bytes]] = []
    with pty_far_end(lambda req: [(0.02, reply_to(req))]) as far:
        async with open_byte_transport(
            f"serial://{far.path}{FAST}", trace=lambda d, b: trace.append((d, b))
        ) as bus:
            result = await Dlt645Client(bus).read(METER, ENERGY)
    assert result.measurements[0].name == "energy_import_total_kwh"
    assert result.measurements[0].value == 112280.26
    assert [d for d, _ in trace] == ["->", "<-"]
    assert trace[0][1].startswith(b"\xfe\xfe\xfe\xfe\x68")
    assert [d for d, _ in result.frames] == ["tx", "rx"]
    assert bus.exchanges == 1
    assert bus.busy_seconds > 0


async def test_silence_is_no_reply_and_noise_is_still_no_reply() -> None:
    with pty_far_end(lambda req: [(0.0, b"\x00\xff\x13")] if len(far_requests) % 2 else []) as far:
        far_requests = far.requests
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            client = Dlt645Client(bus)
            for _ in range(2):
                with pytest.raises(NoReply) as err:
                    await client.read(METER, ENERGY)
                assert reason_of(err.value)[0] is FailureReason.NO_REPLY


async def test_torn_reply_is_a_timeout() -> None:
    with pty_far_end(lambda req: [(0.0, reply_to(req)[:9])]) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            with pytest.raises(TruncatedReply) as err:
                await Dlt645Client(bus).read(METER, ENERGY)
    assert reason_of(err.value)[0] is FailureReason.TIMEOUT
    assert err.value.received.startswith(b"\xfe\xfe\x68")


async def test_corrupted_reply_is_a_checksum_failure() -> None:
    def corrupt(req: Frame) -> list[tuple[float, bytes]]:
        raw = bytearray(reply_to(req))
        raw[-2] ^= 0x01
        return [(0.0, bytes(raw))]

    with pty_far_end(corrupt) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            with pytest.raises(ChecksumError) as err:
                await Dlt645Client(bus).read(METER, ENERGY)
    assert reason_of(err.value)[0] is FailureReason.CHECKSUM


async def test_echo_of_our_own_request_is_suppressed() -> None:
    def echo_then_reply(req: Frame) -> list[tuple[float, bytes]]:
        return [(0.0, req.to_bytes(wakeup=4)), (0.01, reply_to(req))]

    with pty_far_end(echo_then_reply) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}&echo=1") as bus:
            result = await Dlt645Client(bus).read(METER, ENERGY)
    assert result.value == bytes.fromhex("26802211")


async def test_a_late_reply_does_not_poison_the_next_exchange() -> None:
    calls = []

    late: list[bytes] = []

    def late_then_prompt(req: Frame) -> list[tuple[float, bytes]]:
        calls.append(req)
        if len(calls) == 1:
            late.append(reply_to(req, bytes.fromhex("00000000")))
            return [(1.0, late[0])]  # after our 500 ms window
        return [(0.0, reply_to(req))]

    with pty_far_end(late_then_prompt) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            client = Dlt645Client(bus)
            with pytest.raises(NoReply):
                await client.read(METER, ENERGY)
            # the late reply lands between exchanges: the loop stands still until it waits on
            # our side of the line, so the transport finds it as stale input before the next
            # request (a reply still in the kernel's hands then would be the next one's, on a
            # real bus too: DL/T 645 replies carry no sequence number)
            far.wait_sent(1)
            far.wait_delivered(len(late[0]))
            result = await client.read(METER, ENERGY)
    assert result.value == bytes.fromhex("26802211")


async def test_follow_up_frames_are_joined() -> None:
    def split(req: Frame) -> list[tuple[float, bytes]]:
        msg = from_frame(req)
        if isinstance(msg, ReadRequest):
            frame = to_frame(METER, ReadReply(msg.di, bytes.fromhex("26802211")), follow_up=True)
        else:
            assert isinstance(msg, ReadFollowUpRequest)
            assert msg.seq == 1
            frame = to_frame(METER, FollowUpReply(msg.di, bytes.fromhex("01000000"), 1))
        return [(0.0, frame.to_bytes())]

    with pty_far_end(split) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            result = await Dlt645Client(bus).read(METER, 0x0001FF00)
    assert [m.value for m in result.measurements] == [112280.26, 0.01]
    assert len(result.frames) == 4


async def test_a_reply_from_another_meter_is_ignored_not_taken() -> None:
    other = Address.parse("000000000001")

    def script(req: Frame) -> list[tuple[float, bytes]]:
        msg = from_frame(req)
        assert isinstance(msg, ReadRequest)
        if msg.di == ENERGY:  # only another meter answers (a duplicated or late reply)
            return [(0.0, reply_to(req, addr=other))]
        return [(0.0, to_frame(METER, ErrorReply(0x11, ErrorFlags.NO_DATA)).to_bytes())]

    with pty_far_end(script) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            client = Dlt645Client(bus)
            with pytest.raises(NoReply, match="ignored a reply that answers something") as silent:
                await client.read(METER, ENERGY)
            with pytest.raises(MeterError) as rejected:
                await client.read(METER, 0x04000101)
    assert reason_of(silent.value)[0] is FailureReason.NO_REPLY
    assert reason_of(rejected.value) == (FailureReason.ABNORMAL_REPLY, "02 no_data")
    assert rejected.value.retryable is False


async def test_a_slow_meters_late_reply_does_not_become_the_next_meters_answer() -> None:
    first = Address.parse("000000000001")
    pending: list[bytes] = []

    def script(req: Frame) -> list[tuple[float, bytes]]:
        if req.address == first:  # answers after our window: its reply lands in the next one
            pending.append(reply_to(req, bytes.fromhex("00000000"), addr=first))
            return []
        late = pending.pop() if pending else b""
        return [(0.0, late), (0.03, reply_to(req))]

    with pty_far_end(script) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            client = Dlt645Client(bus)
            with pytest.raises(NoReply):
                await client.read(first, ENERGY)
            result = await client.read(METER, ENERGY)
    assert result.value == bytes.fromhex("26802211")  # the meter asked, not the late one


async def test_1997_meter() -> None:
    def script(req: Frame) -> list[tuple[float, bytes]]:
        assert req.edition is Edition.V1997
        return [
            (
                0.0,
                to_frame(METER, ReadReply(0xB611, bytes.fromhex("2002")), Edition.V1997).to_bytes(),
            )
        ]

    with pty_far_end(script) as far:
        async with open_byte_transport(f"serial://{far.path}{FAST}") as bus:
            result = await Dlt645Client(bus).read(METER, 0xB611, Edition.V1997)
    assert result.measurements[0].name == "voltage_a_v"
    assert result.measurements[0].value == 220


async def test_tcp_serial_server_and_connection_loss() -> None:
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        from protocols.dlt645 import FrameDecoder

        decoder = FrameDecoder()
        while data := await reader.read(1024):
            for ev in decoder.feed(data):
                assert isinstance(ev, Frame)
                served += 1
                writer.write(reply_to(ev))
                if served == 1:
                    await writer.drain()
                    writer.close()  # the serial server drops the connection after one reply
                    return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with open_byte_transport(
            f"tcp://127.0.0.1:{port}?reply_timeout_ms=1000&frame_gap_ms=0"
        ) as bus:
            client = Dlt645Client(bus)
            assert (await client.read(METER, ENERGY)).value == bytes.fromhex("26802211")
            with pytest.raises(BusError) as err:
                await client.read(METER, ENERGY)
            assert reason_of(err.value)[0] is FailureReason.BUS_ERROR
            assert (await client.read(METER, ENERGY)).value == bytes.fromhex(
                "26802211"
            )  # reconnected
    finally:
        server.close()
        await server.wait_closed()


async def test_missing_serial_port_is_a_bus_error() -> None:
    with pytest.raises(BusError, match="cannot open"):
        async with open_byte_transport("serial:///dev/does-not-exist?parity=N"):
            pass


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "scheme must be one of"),
        ("serial://dev/ttyS1", "three slashes"),
        ("serial:///dev/ttyS1?baud=2401", "not a standard rate"),
        ("serial:///dev/ttyS1?in_flight=2", "half-duplex"),
        ("tcp://h:1?in_flight=3", "only carrier:// buses take in_flight > 1"),
        ("modbus+tcp://h:502?in_flight=2", "only carrier:// buses take in_flight > 1"),
        ("carrier+tcp://h:1?mode=router&in_flight=2", "mode=router reads one meter at a time"),
        ("carrier+tcp://h:1?mode=fast", "mode must be one of hplc, point, router"),
        ("carrier:///dev/ttyS4?main_node=XYZ", "up to 12 hex digits"),
        ("tcp://h:1?mode=hplc", "mode only for carrier:// buses"),
        ("carrier://dev/ttyS4", "write carrier:///dev/ttyS2"),
        ("serial:///dev/ttyS1?bogus=1", "unknown option 'bogus'"),
        ("tcp://host", "needs host:port"),
    ],
)
def test_bad_bus_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(BusUrlError, match=message):
        BusUrl.parse(url)


def test_bus_url_defaults_and_wire_time() -> None:
    url = BusUrl.parse("serial:///dev/ttyS2")
    assert (url.baud, url.parity, url.bits_per_byte, url.wakeup) == (2400, "E", 11, 4)
    assert url.wire_time(20) == pytest.approx(20 * 11 / 2400)
    assert BusUrl.parse("serial:///dev/ttyS2?parity=N").bits_per_byte == 10
    assert BusUrl.parse("modbus+rtu:///dev/ttyUSB0").baud == 9600


def test_carrier_urls_default_to_a_ccos_line() -> None:
    url = BusUrl.parse("carrier:///dev/ttyS4")
    # 9600 8E1, no FE before the 645 frames carried inside, HPLC with a window of 5
    assert (url.baud, url.parity, url.wakeup, url.mode, url.in_flight) == (9600, "E", 0, "hplc", 5)
    assert url.is_carrier
    assert url.path == "/dev/ttyS4"
    point = BusUrl.parse("carrier+tcp://10.0.0.9:4002?mode=point&main_node=bebebebebe01")
    assert (point.host, point.port, point.in_flight, point.main_node) == (
        "10.0.0.9", 4002, 1, "BEBEBEBEBE01",
    )  # fmt: skip
    assert BusUrl.parse("carrier+tcp://h:1?in_flight=16").in_flight == 16
