"""The rules `to_frame` / `from_frame` enforce, one named case each (regressions of fixed bugs
included): SEQ of follow-up replies, length limits, edition-only fields, abnormal layouts."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols.dlt645 import (
    WILDCARD,
    Address,
    ClearDemandRequest,
    Control,
    Done,
    Edition,
    ErrorFlags,
    ErrorFlags1997,
    ErrorReply,
    FollowUpReply,
    Frame,
    Message,
    ReadFollowUpRequest,
    ReadReply,
    SecurityErrorFlags,
    SecurityErrorReply,
    SecurityRequest,
    WriteRequest,
    decode_frame,
    describe,
    from_frame,
    to_frame,
)
from protocols.dlt645.formats import Bcd, ClockField, Digits
from protocols.errors import LocalProtocolError, PayloadError, ValueFormatError

V07, V97 = Edition.V2007, Edition.V1997
METER = Address.parse("123456789012")
ENERGY = 0x00010000


def _back(frame: Frame) -> object:
    return from_frame(decode_frame(frame.to_bytes(), edition=frame.edition))


# --- 12H follow-up replies and SEQ ------------------------------------------------------------
def test_a_follow_up_reply_ends_with_seq() -> None:
    frame = to_frame(METER, FollowUpReply(ENERGY, b"\x01\x02", 7), V07)
    assert frame.data == b"\x00\x00\x01\x00\x01\x02\x07"
    assert _back(frame) == FollowUpReply(ENERGY, b"\x01\x02", 7)


@pytest.mark.parametrize("seq", [None, -1, 256])
def test_a_2007_follow_up_reply_needs_a_one_byte_seq(seq: int | None) -> None:
    with pytest.raises(LocalProtocolError, match="SEQ"):
        to_frame(METER, FollowUpReply(ENERGY, b"\x01", seq), V07)


def test_a_read_reply_has_no_seq() -> None:
    # before: the SEQ byte was appended and came back as part of the value
    with pytest.raises(LocalProtocolError, match="no SEQ"):
        to_frame(METER, ReadReply(ENERGY, b"\x01", 3), V07)


def test_the_follow_up_bit_is_a_frame_property() -> None:
    frame = to_frame(METER, ReadReply(ENERGY, b"\x01"), V07, follow_up=True)
    assert frame.control.byte == 0xB1
    assert _back(frame) == ReadReply(ENERGY, b"\x01")


# --- fields 1997 does not carry: not sent, decoded as the default ----------------------------
@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (ReadFollowUpRequest(0xB611, 5), ReadFollowUpRequest(0xB611)),
        (FollowUpReply(0xB611, b"\x20\x02", 5), FollowUpReply(0xB611, b"\x20\x02", None)),
        (
            WriteRequest(0xC032, b"\x02\x00\x00\x00", b"\x01", b"\x11\x22\x33\x44"),
            WriteRequest(0xC032, b"\x02\x00\x00\x00", b"\x01"),
        ),
        (
            ClearDemandRequest(b"\x02\x00\x00\x00", b"\x11\x22\x33\x44"),
            ClearDemandRequest(b"\x02\x00\x00\x00"),
        ),
    ],
    ids=["follow-up request seq", "follow-up reply seq", "write operator", "clear operator"],
)
def test_1997_drops_fields_it_does_not_have(sent: Message, received: Message) -> None:
    frame = to_frame(METER, sent, V97)
    assert _back(frame) == received


def test_1997_follow_up_request_is_the_di_only() -> None:
    # before: it decoded as seq=0, so ReadFollowUpRequest(di) did not survive a round trip
    frame = to_frame(METER, ReadFollowUpRequest(0xB611), V97)
    assert frame.data == b"\x11\xb6"
    assert _back(frame) == ReadFollowUpRequest(0xB611)


# --- length limits: read replies <= 200, write requests <= 50, everything <= 255 --------------
def test_read_replies_are_limited_to_200_bytes() -> None:
    to_frame(METER, ReadReply(ENERGY, bytes(196)), V07)
    to_frame(METER, FollowUpReply(ENERGY, bytes(195), 1), V07)
    to_frame(METER, ReadReply(0x9010, bytes(198)), V97)
    for message, edition in [
        (ReadReply(ENERGY, bytes(197)), V07),
        (FollowUpReply(ENERGY, bytes(196), 1), V07),
        (ReadReply(0x9010, bytes(199)), V97),
    ]:
        with pytest.raises(LocalProtocolError, match="limit 200"):
            to_frame(METER, message, edition)


def test_longer_vendor_replies_still_decode() -> None:
    data = ENERGY.to_bytes(4, "little") + bytes(251)
    frame = Frame(METER, Control(0x11, reply=True), data)
    assert from_frame(decode_frame(frame.to_bytes())) == ReadReply(ENERGY, bytes(251))


def test_write_requests_are_limited_to_50_bytes() -> None:
    password = b"\x02\x00\x00\x00"
    to_frame(METER, WriteRequest(0x04000401, password, bytes(38)), V07)
    to_frame(METER, WriteRequest(0xC032, password, bytes(44)), V97)
    with pytest.raises(LocalProtocolError, match="limit 50"):
        to_frame(METER, WriteRequest(0x04000401, password, bytes(39)), V07)
    with pytest.raises(LocalProtocolError, match="limit 50"):
        to_frame(METER, WriteRequest(0xC032, password, bytes(45)), V97)


def test_other_requests_may_use_the_whole_length_field() -> None:
    # before: every request was held to 200 bytes, which the standard does not say
    message = SecurityRequest(0x070301FF, bytes(4), bytes(247))
    assert len(to_frame(METER, message, V07).data) == 255
    with pytest.raises(LocalProtocolError, match="255"):
        to_frame(METER, SecurityRequest(0x070301FF, bytes(4), bytes(248)), V07)


# --- abnormal replies and acknowledgements -----------------------------------------------------
def test_03h_abnormal_replies_carry_serr() -> None:
    with pytest.raises(LocalProtocolError, match="SecurityErrorReply"):
        to_frame(METER, ErrorReply(0x03, ErrorFlags.OTHER), V07)
    reply = SecurityErrorReply(SecurityErrorFlags.PURCHASE_COUNT_ERROR)
    assert to_frame(METER, reply, V07).data == b"\x20\x00"
    # in 1997 03H is the re-read, whose abnormal reply has the usual ERR byte
    frame = to_frame(METER, ErrorReply(0x03, ErrorFlags1997.BAD_DI), V97)
    assert frame.control.byte == 0xC3
    assert from_frame(decode_frame(frame.to_bytes())) == ErrorReply(0x03, ErrorFlags1997.BAD_DI)


def test_done_only_for_functions_whose_reply_is_empty() -> None:
    assert to_frame(METER, Done(0x14), V07).control.byte == 0x94
    for function, edition in [(0x11, V07), (0x13, V07), (0x1C, V97), (0x01, V97)]:
        with pytest.raises(LocalProtocolError, match="cannot be sent"):
            to_frame(METER, Done(function), edition)


def test_error_word_must_fit_its_field() -> None:
    with pytest.raises(LocalProtocolError, match="one byte"):
        to_frame(METER, ErrorReply(0x11, ErrorFlags(0x100)), V07)
    with pytest.raises(LocalProtocolError, match="two bytes"):
        to_frame(METER, SecurityErrorReply(SecurityErrorFlags(0x10000)), V07)


def test_abnormal_flag_on_a_request_is_a_payload_error() -> None:
    frame = Frame(METER, Control(0x11, reply=False, abnormal=True), b"\x02")
    with pytest.raises(PayloadError, match="D6"):
        from_frame(decode_frame(frame.to_bytes()))


def test_security_messages_check_their_di_and_operator() -> None:
    with pytest.raises(LocalProtocolError, match="operator"):
        to_frame(METER, SecurityRequest(0x070301FF, b"\x01", b""), V07)
    with pytest.raises(LocalProtocolError, match="DI"):
        to_frame(METER, SecurityRequest(1 << 32, bytes(4), b""), V07)


def test_a_03h_request_with_data_is_2007_whatever_its_di() -> None:
    raw = to_frame(METER, SecurityRequest(0x04000101, bytes(4), b"\x01"), V07).to_bytes()
    assert decode_frame(raw).edition is V07


# --- describe ----------------------------------------------------------------------------------
def test_describe_shows_the_di_of_a_1997_re_read_reply() -> None:
    frame = Frame(METER, Control(0x03, reply=True), b"\x11\xb6\x20\x02", V97)
    info = describe(frame)
    assert info["di"] == "B611"
    assert info["values"] == {"voltage_a_v": {"value": 220, "unit": "V"}}


def test_describe_does_not_decode_a_follow_up_part_as_a_whole_value() -> None:
    frame = to_frame(METER, FollowUpReply(0x0201FF00, b"\x00\x22", 1), V07)
    info = describe(frame)
    assert info["values"] == {}
    assert "value_error" not in info
    assert info["message"]["seq"] == 1


# --- formats and addresses ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**400])
def test_bcd_refuses_values_that_are_not_finite(value: float) -> None:
    with pytest.raises(LocalProtocolError, match="finite"):
        Bcd("XXXXXX.XX").encode(value)


def test_bcd_checks_the_byte_count_when_decoding() -> None:
    with pytest.raises(ValueFormatError, match="expected 4 bytes"):
        Bcd("XXXXXX.XX").decode(b"\x01")
    with pytest.raises(ValueFormatError, match="byte 1A is not BCD"):
        Bcd("XXXXXX.XX").decode(b"\x00\x1a\x00\x00")


def test_signed_bcd_keeps_the_sign_in_the_top_bit() -> None:
    current = Bcd("XXX.XXX", signed=True)
    assert current.encode(-1.234) == b"\x34\x12\x80"
    assert current.decode(b"\x34\x12\x80") == -1.234
    with pytest.raises(LocalProtocolError, match="sign"):
        current.encode(800.0)


def test_digits_are_ascii_digits() -> None:
    with pytest.raises(LocalProtocolError):
        Digits(6).encode("١٢٣")  # Arabic-Indic digits pass str.isdigit()


@pytest.mark.parametrize("layout", ["YYMMDDhhmmX", "MMDDhhmm", "YYYY", "hhhh", "ssmm"])
def test_clock_layouts_are_checked(layout: str) -> None:
    with pytest.raises(LocalProtocolError, match="not supported"):
        ClockField(layout)


def test_clock_weekday_zero_is_sunday() -> None:
    fmt = ClockField("YYMMDDWW")
    assert fmt.encode("2024-05-05") == bytes.fromhex("00 05 05 24")  # a Sunday
    assert fmt.encode("2024-05-06") == bytes.fromhex("01 06 05 24")  # a Monday
    assert fmt.decode(bytes.fromhex("06 04 05 24")) == "2024-05-04"
    with pytest.raises(ValueFormatError, match="weekday 7"):
        fmt.decode(bytes.fromhex("07 04 05 24"))


def test_clock_without_seconds_drops_them() -> None:
    fmt = ClockField("YYMMDDhhmm")
    assert fmt.decode(fmt.encode("2024-05-06T07:08:59")) == "2024-05-06T07:08:00"
    assert fmt.decode(fmt.encode(dt.datetime(2024, 5, 6, 7, 8).isoformat())) == (
        "2024-05-06T07:08:00"
    )


@pytest.mark.parametrize("text", ["AA", "12AA56789012", "AA34AA789012"])
def test_address_wildcards_fill_the_high_bytes(text: str) -> None:
    with pytest.raises(LocalProtocolError, match="high bytes"):
        Address.parse(text)


def test_address_forms() -> None:
    assert Address.parse("AAAA56789012").wire == bytes.fromhex("12 90 78 56 AA AA")
    assert Address.parse("AAAA56789012").is_shortened
    assert Address.parse("AAAAAAAAAAAA") == WILDCARD
    assert Address.parse("161").wire == bytes.fromhex("61 01 00 00 00 00")
