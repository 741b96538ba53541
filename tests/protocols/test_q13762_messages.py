"""1376.2 data units: round trips of every registered class (Hypothesis), the registry, the
C and R bit tables, DT ⇄ Fn, the deny classification, builders and their refusals, payload
errors, and the 645 frames inside built and split by the 645 codec."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocols.q13762 as q
from protocols import dlt645
from protocols.errors import (
    AddressError,
    ChecksumError,
    ConcurrencyExceeded,
    DuplicateNode,
    FramingError,
    LocalProtocolError,
    MeterInFlight,
    ModuleBusy,
    ModuleRejection,
    NodeNoAnswer,
    NodeNotFound,
    NotSupported,
    PayloadError,
    RemoteProtocolError,
    RequestCorrupted,
    RequestRejected,
    TooManyMeterFrames,
)
from protocols.q13762 import (
    MESSAGES,
    Control,
    Direction,
    DownInfo,
    Frame,
    NodeAddress,
    RawMessage,
    UpInfo,
    decode_frame,
    from_frame,
    reply_to,
    to_frame,
)
from protocols.q13762.describe import describe
from tests.protocols.q13762_data import BY_ID, raw
from tests.protocols.q13762_strategies import (
    STRATEGIES,
    any_registered,
    frames_of,
    unregistered_units,
)

PROPS = settings(max_examples=300, deadline=None)
MAIN = NodeAddress.parse("049999888888")
METER = dlt645.Address.parse("000000003304")


# --- the registry ---------------------------------------------------------------------------
ISSUE_LIST = [
    ("00", 1, "down"), ("00", 1, "up"), ("00", 2, "down"), ("00", 2, "up"),
    ("01", 1, "down"), ("01", 2, "down"), ("01", 3, "down"),
    ("02", 1, "down"), ("02", 1, "up"),
    ("03", 1, "down"), ("03", 1, "up"), ("03", 4, "down"), ("03", 4, "up"),
    ("03", 10, "down"), ("03", 10, "up"),
    ("05", 1, "down"), ("05", 2, "down"),
    ("06", 1, "up"), ("06", 2, "up"), ("06", 3, "up"), ("06", 4, "up"), ("06", 5, "up"),
    ("10", 1, "down"), ("10", 1, "up"), ("10", 2, "down"), ("10", 2, "up"),
    ("10", 4, "down"), ("10", 4, "up"),
    ("11", 1, "down"), ("11", 2, "down"), ("11", 5, "down"), ("11", 6, "down"),
    ("12", 1, "down"), ("12", 2, "down"), ("12", 3, "down"),
    ("13", 1, "down"), ("13", 1, "up"),
    ("14", 1, "up"), ("14", 1, "down"), ("14", 2, "up"), ("14", 2, "down"),
    ("14", 3, "up"), ("14", 3, "down"),
    ("F1", 1, "down"), ("F1", 1, "up"),
]  # fmt: skip


@pytest.mark.parametrize(("afn", "fn", "direction"), ISSUE_LIST)
def test_every_data_unit_of_the_issue_is_registered(afn: str, fn: int, direction: str) -> None:
    assert (Direction(direction), int(afn, 16), fn) in MESSAGES


def test_every_registered_class_has_a_strategy_and_is_exported() -> None:
    assert set(MESSAGES.values()) <= set(STRATEGIES)
    assert all(cls.__name__ in q.__all__ for cls in MESSAGES.values())


# --- round trips ----------------------------------------------------------------------------
@PROPS
@given(data=st.data(), pair=any_registered)
def test_every_message_round_trips_through_bytes(
    data: st.DataObject, pair: tuple[Direction, q.Message]
) -> None:
    direction, message = pair
    frame = data.draw(frames_of(direction, message))
    wire = frame.to_bytes()
    decoded = decode_frame(wire)
    assert decoded == frame
    assert from_frame(decoded) == message
    assert len(wire) == frame.length
    json.dumps(describe(decoded))


@PROPS
@given(data=st.data(), unit=unregistered_units, payload=st.binary(max_size=100))
def test_unknown_data_units_decode_raw(
    data: st.DataObject, unit: tuple[Direction, int, int], payload: bytes
) -> None:
    direction, afn, fn = unit
    frame = data.draw(frames_of(direction, RawMessage(afn, fn, payload)))
    decoded = decode_frame(frame.to_bytes())
    assert from_frame(decoded) == RawMessage(afn, fn, payload)
    shown = describe(decoded)
    assert (shown["message"], shown["fields"], shown["afn"]) == (None, {}, f"{afn:02X}")


# --- C, R, DT -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("byte", "direction", "prm", "mode"),
    [
        (0x43, Direction.DOWN, True, 3),
        (0x83, Direction.UP, False, 3),
        (0xC3, Direction.UP, True, 3),
        (0x03, Direction.DOWN, False, 3),
        (0x41, Direction.DOWN, True, 1),
        (0x4A, Direction.DOWN, True, 10),
        (0x54, Direction.DOWN, True, 20),
    ],
)
def test_control_byte(byte: int, direction: Direction, prm: bool, mode: int) -> None:
    control = Control.from_byte(byte)
    assert (control.direction, control.prm, control.comm_mode) == (direction, prm, mode)
    assert control.byte == byte


@pytest.mark.parametrize(
    ("fn", "dt"),
    [(1, "01 00"), (2, "02 00"), (3, "04 00"), (4, "08 00"), (5, "10 00"), (9, "01 01"),
     (10, "02 01"), (16, "80 01"), (21, "10 02"), (111, "40 0D"), (2048, "80 FF")],
)  # fmt: skip
def test_fn_and_dt(fn: int, dt: str) -> None:
    assert q.fn_to_dt(fn) == bytes.fromhex(dt)
    assert q.dt_to_fn(*bytes.fromhex(dt)) == fn


@pytest.mark.parametrize("dt1", [0x00, 0x03, 0x81, 0xFF])
def test_dt1_without_exactly_one_bit_is_rejected(dt1: int) -> None:
    assert q.dt_to_fn(dt1, 0) is None
    good = bytearray(raw(BY_ID["QP04"]))  # AFN10 F1, no data
    good[11] = dt1
    good[-2] = sum(good[3:-2]) & 0xFF
    with pytest.raises(FramingError, match="exactly one bit"):
        decode_frame(bytes(good))
    with pytest.raises(LocalProtocolError):
        q.fn_to_dt(0)


def test_down_info_fields() -> None:
    info = DownInfo.from_bytes(bytes.fromhex("05 00 C8 00 00 0E"))  # QP19 narrowband point read
    assert (info.route_flag, info.module_flag, info.reply_bytes, info.seq) == (True, True, 200, 14)
    rate = DownInfo.from_bytes(bytes.fromhex("04 00 00 B0 04 00"))  # LOG: rate 04B0 = 1200
    assert (rate.rate, rate.rate_unit) == (1200, False)
    assert DownInfo(seq=5, rate=100, rate_unit=True).to_bytes() == bytes.fromhex(
        "00 00 00 64 80 05"
    )


@pytest.mark.parametrize("r", ["04 01 11 FF FC 01", "0C F1 11 FF 00 0F", "F8 10 00 00 04 00"])
def test_up_info_keeps_reserved_bits(r: str) -> None:
    info = UpInfo.from_bytes(bytes.fromhex(r))
    assert info.to_bytes() == bytes.fromhex(r)


def test_up_info_fields() -> None:
    info = UpInfo.from_bytes(bytes.fromhex("04 01 11 FF FC 01"))
    assert info.module_flag
    assert not info.event_flag
    assert (info.channel, info.phase, info.channel_characteristic) == (1, 1, 1)
    assert (info.command_quality, info.reply_quality, info.seq) == (15, 15, 1)
    assert UpInfo.from_bytes(bytes.fromhex("F8 10 00 00 04 00")).relay_level == 15


def test_info_fields_must_fit() -> None:
    with pytest.raises(LocalProtocolError):
        DownInfo(seq=256)
    with pytest.raises(LocalProtocolError):
        UpInfo(phase=16)
    with pytest.raises(LocalProtocolError):
        UpInfo(reserved=1)  # bit 0 is the route flag, not reserved


# --- node addresses -------------------------------------------------------------------------
def test_node_addresses_print_like_meter_addresses_and_accept_any_byte() -> None:
    assert NodeAddress.of(METER).digits == "000000003304" == METER.digits
    assert NodeAddress.parse("3304") == NodeAddress.of(METER)
    main = NodeAddress.parse("BEBEBEBEBE01")  # a real CCO's main node: not BCD
    assert main.wire == bytes.fromhex("01 BE BE BE BE BE")
    assert NodeAddress.parse("beBEbebebe01") == main
    with pytest.raises(AddressError):
        main.meter  # noqa: B018 - the property raises
    assert NodeAddress.of(METER).meter == METER
    with pytest.raises(LocalProtocolError):
        NodeAddress(b"\x01")


# --- deny codes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        (0, NodeNoAnswer, True),
        (1, RequestRejected, False),
        (2, RequestCorrupted, True),
        (3, RequestCorrupted, True),
        (4, NotSupported, False),
        (5, RequestRejected, False),
        (6, DuplicateNode, False),
        (7, NodeNotFound, False),
        (8, NodeNoAnswer, True),
        (9, ModuleBusy, True),
        (10, NotSupported, False),
        (11, NodeNoAnswer, True),
        (12, NodeNotFound, False),
        (109, ConcurrencyExceeded, True),
        (110, TooManyMeterFrames, False),
        (111, MeterInFlight, True),
        (0x13, ModuleRejection, False),
        (0x1C, ModuleRejection, False),
        (0x1D, ModuleRejection, False),
        (0x21, ModuleRejection, False),
        (200, ModuleRejection, False),
    ],
)
def test_deny_classification(code: int, error: type[ModuleRejection], retryable: bool) -> None:
    frame = to_frame(q.Deny(code), UpInfo(seq=2))
    deny = from_frame(decode_frame(frame.to_bytes()))
    assert isinstance(deny, q.Deny)
    exc = deny.error()
    assert type(exc) is error
    assert isinstance(exc, RemoteProtocolError)
    assert (exc.code, exc.retryable, deny.retryable) == (code, retryable, retryable)
    assert exc.kind == deny.kind == error.kind
    assert str(code) in str(exc)
    shown = describe(frame)
    assert shown["deny"] == code
    assert shown["fields"]["kind"] == error.kind


def test_every_deny_code_of_the_reference_is_in_the_table() -> None:
    assert set(q.DENY_CODES) == {*range(13), 109, 110, 111, 0x13, 0x1C, 0x1D, 0x21}
    assert q.deny_info(77).kind == "vendor"


# --- builders -------------------------------------------------------------------------------
def test_a_concurrent_read_is_built_like_the_captures() -> None:
    read = dlt645.to_frame(METER, dlt645.ReadRequest(0x00010000))
    frame = to_frame(q.ConcurrentRead.of_645([read]), DownInfo(seq=0x6B), src=MAIN, dst=METER)
    assert frame.to_bytes() == raw(BY_ID["QP22"])


def test_a_point_read_with_preamble_is_built_like_the_capture() -> None:
    read = dlt645.to_frame(METER, dlt645.ReadRequest(0x12010101))
    message = q.MonitorRequest.of_645(read, wakeup=4)
    assert message == from_frame(decode_frame(raw(BY_ID["QP20"])))


def test_one_request_carries_one_edition() -> None:
    frames = [
        dlt645.to_frame(METER, dlt645.ReadRequest(0x00010000)),
        dlt645.to_frame(METER, dlt645.ReadRequest(0x9010), dlt645.Edition.V1997),
    ]
    with pytest.raises(LocalProtocolError):
        q.ConcurrentRead.of_645(frames)
    with pytest.raises(LocalProtocolError):
        q.ConcurrentRead.of_645([])


def test_reply_to_a_down_request() -> None:
    request = to_frame(
        q.ConcurrentRead(2, b"\x68"), DownInfo(seq=9), src=MAIN, dst=METER, comm_mode=3
    )
    reply = reply_to(request, q.ConcurrentReply(2, b""), UpInfo(phase=2, seq=200))
    assert (reply.direction, reply.prm, reply.seq, reply.comm_mode) == (Direction.UP, False, 9, 3)
    assert (reply.src, reply.dst) == (NodeAddress.of(METER), MAIN)
    assert isinstance(reply.info, UpInfo)
    assert reply.info.phase == 2
    assert reply.to_bytes().hex()[6:8] == "83"
    deny = reply_to(request, q.Deny(111))
    assert (deny.seq, deny.afn, deny.fn) == (9, 0, 2)


def test_is_answer_pairs_replies_by_seq_unit_and_meter() -> None:
    other = NodeAddress.parse("000000003305")
    request = to_frame(q.ConcurrentRead(2, b"\x68"), DownInfo(seq=9), src=MAIN, dst=METER)
    assert q.is_answer(reply_to(request, q.ConcurrentReply(2)), request)
    assert q.is_answer(reply_to(request, q.Deny(111)), request)
    assert q.is_answer(to_frame(q.Deny(9), UpInfo(seq=9)), request)  # a deny without address
    assert not q.is_answer(to_frame(q.ConcurrentReply(2), UpInfo(seq=8), src=METER, dst=MAIN),
                           request)  # fmt: skip
    assert not q.is_answer(to_frame(q.ConcurrentReply(2), UpInfo(seq=9), src=other, dst=MAIN),
                           request)  # fmt: skip
    assert not q.is_answer(to_frame(q.MonitorReply(2, b""), UpInfo(seq=9), src=METER, dst=MAIN),
                           request)  # fmt: skip
    assert not q.is_answer(request, request)


def test_reply_to_a_module_request() -> None:
    ask = to_frame(q.RouterReadRequest(1, NodeAddress.of(METER), 3), UpInfo(seq=0x11), comm_mode=3)
    assert ask.control.byte == 0xC3
    answer = reply_to(ask, q.RouterReadAnswer(q.ReadFlag.DONE))
    assert (answer.direction, answer.prm, answer.seq, answer.addressed) == (
        Direction.DOWN,
        False,
        0x11,
        False,
    )
    assert answer.control.byte == 0x03
    confirm = reply_to(ask, q.Confirm(), prm=True)  # as real concentrators send it (C = 43)
    assert confirm.control.byte == 0x43
    with pytest.raises(LocalProtocolError, match="other way"):
        reply_to(ask, q.Confirm(), UpInfo())


def test_with_seq_renumbers_a_frame() -> None:
    frame = to_frame(q.RouterPause(), DownInfo(seq=1))
    assert frame.with_seq(2).seq == 2
    assert frame.with_seq(2).to_bytes()[9] == 2


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: to_frame(q.ConcurrentReply(2), DownInfo()), "not sent down"),
        (lambda: to_frame(q.RouterPause(), DownInfo(), src=MAIN), "both A1"),
        (lambda: to_frame(q.Confirm(), UpInfo(), src=MAIN, dst=MAIN, relays=(MAIN,)), "relay"),
        (lambda: to_frame(q.NodeCount(70000, 0), UpInfo()), "NodeCount"),
        (lambda: to_frame(q.Deny(256), UpInfo()), "Deny"),
        (lambda: to_frame(q.MonitorRequest(2, bytes(256)), DownInfo()), "MonitorRequest"),
        (lambda: to_frame(q.Confirm(None, 5), UpInfo()), "short confirm"),
        (lambda: to_frame(RawMessage(0xF1, 1, bytes(65535 - 14)), DownInfo()), "exceeds L"),
        (lambda: q.VendorInfo("ABC", "XY"), "2 characters"),
        (lambda: q.VendorInfo("AB", "XY", version="12"), "4 hex digits"),
        (lambda: q.Rate(0x8000), "15 bits"),
        (lambda: q.NodeInfo(MAIN, protocol=8), "3 bits"),
    ],
)
def test_builders_refuse_what_does_not_fit(build: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        build()  # type: ignore[operator]


def test_the_module_maximum_frame_length_is_enforced_when_encoding() -> None:
    read = q.ConcurrentRead(2, bytes(1100))
    frame = to_frame(read, DownInfo(), src=MAIN, dst=METER)
    assert frame.length == 1100 + 15 + 12 + 4
    frame.to_bytes(max_length=2048)
    with pytest.raises(LocalProtocolError, match="maximum frame length 1103"):
        frame.to_bytes(max_length=1103)


def test_frame_refuses_inconsistent_fields() -> None:
    with pytest.raises(LocalProtocolError, match="control byte"):
        Frame(Control(Direction.UP, False), DownInfo(), 0, 1)
    with pytest.raises(LocalProtocolError, match="module flag"):
        Frame(Control(Direction.DOWN, True), DownInfo(module_flag=True), 0, 1)
    with pytest.raises(LocalProtocolError, match="relay level"):
        Frame(Control(Direction.DOWN, True), DownInfo(module_flag=True, relay_level=1), 0, 1,
              src=MAIN, dst=MAIN)  # fmt: skip


# --- payload errors -------------------------------------------------------------------------
def _frame(direction: Direction, afn: int, fn: int, data: str) -> Frame:
    info = DownInfo() if direction is Direction.DOWN else UpInfo()
    return to_frame(RawMessage(afn, fn, bytes.fromhex(data)), info)


@pytest.mark.parametrize(
    ("direction", "afn", "fn", "data", "match"),
    [
        (Direction.UP, 0x10, 1, "01 00 02 00 03", "left over"),
        (Direction.UP, 0x10, 1, "01", "ends early"),
        (Direction.DOWN, 0x05, 2, "02", "neither 00"),
        (Direction.DOWN, 0x11, 5, "00 12 12 10 1A 12 02 00 03 04", "StartSearch"),
        (Direction.DOWN, 0x12, 2, "00", "left over"),
        (Direction.DOWN, 0xF1, 1, "02 00 10 00 68", "ends early"),
        (Direction.UP, 0x03, 10, "F2 37", "ModuleInfo"),
        (Direction.DOWN, 0x00, 1, "FF FF", "Confirm"),
    ],
)
def test_a_data_unit_that_does_not_fit_is_a_payload_error(
    direction: Direction, afn: int, fn: int, data: str, match: str
) -> None:
    frame = decode_frame(_frame(direction, afn, fn, data).to_bytes())
    with pytest.raises(PayloadError, match=match):
        from_frame(frame)
    shown = describe(frame)
    assert match in shown["payload_error"] or "AFN" in shown["payload_error"]


def test_length_zero_means_no_answer() -> None:
    assert not from_frame(_frame(Direction.UP, 0xF1, 1, "02 00 00")).answered  # type: ignore[attr-defined]
    assert not from_frame(_frame(Direction.UP, 0x13, 1, "01 00 02 00")).answered  # type: ignore[attr-defined]
    reply = from_frame(_frame(Direction.UP, 0xF1, 1, "02 02 00 AB CD"))
    assert isinstance(reply, q.ConcurrentReply)
    assert reply.answered
    assert reply.frame == b"\xab\xcd"


# --- the 645 frames inside ------------------------------------------------------------------
def test_inner_frames_come_from_the_645_codec() -> None:
    good = dlt645.to_frame(METER, dlt645.ReadReply(0x00010000, b"\x01\x02\x03\x04"))
    bad = bytearray(dlt645.encode_frame(good, wakeup=0))
    bad[-2] ^= 0xFF
    payload = dlt645.encode_frame(good, wakeup=4) + bytes(bad) + dlt645.encode_frame(good)
    events = q.inner_frames(q.ConcurrentReply(2, payload))
    assert [type(e).__name__ for e in events] == ["Frame", "ChecksumError", "Frame"]
    assert events[0] == good
    assert isinstance(events[1], ChecksumError)
    shown = describe(to_frame(q.ConcurrentReply(2, payload), UpInfo(), src=METER, dst=MAIN))
    assert [i["error"] is None for i in shown["inner"]] == [True, False, True]
    assert shown["inner"][1]["di"] == "00010000"  # what the frame says, its checksum aside


def test_inner_frames_of_other_protocols() -> None:
    v1997 = dlt645.to_frame(METER, dlt645.ReadRequest(0x9010), dlt645.Edition.V1997)
    raw1997 = dlt645.encode_frame(v1997)
    assert q.inner_frames(q.ConcurrentRead(1, raw1997)) == [v1997]
    assert q.inner_frames(q.ConcurrentRead(3, raw1997)) == []  # 698.45: not 645
    assert q.inner_frames(q.ConcurrentRead(0, b"\x68\x01\x02\x03")) == []  # not 645 at all
    assert q.inner_frames(q.RouterReadAnswer(2, dlt645.encode_frame(v1997, wakeup=0)))[0] == v1997
    assert q.inner_frames(q.RouterPause()) == []


def test_module_info_helpers() -> None:
    info = from_frame(decode_frame(raw(BY_ID["QP44"])))
    assert isinstance(info, q.ModuleInfo)
    assert info.comm == q.CommMode.HPLC
    assert q.ReadingMode(info.reading_mode) == (
        q.ReadingMode.CONCENTRATOR_LED | q.ReadingMode.ROUTER_LED
    )
    assert q.bcd_date(info.protocol_release_date) is not None
    assert str(q.bcd_date(info.protocol_release_date)) == "2013-10-10"
    assert info.vendor.date is not None
    assert str(info.vendor.date) == "2024-11-22"
    assert q.bcd_date(b"\x00\x00\x00") is None
    spontaneous = to_frame(info, UpInfo(seq=1, channel_characteristic=4), prm=True)
    assert spontaneous.to_bytes() == raw(BY_ID["QP44"])
