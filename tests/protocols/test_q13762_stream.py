"""Named cases of the 1376.2 stream decoder's hunting, and of telling 645 and 1376.2 frames apart
in one byte stream (the mixed decoder behind `meterlink frame decode`), ambiguous cases
included."""

from __future__ import annotations

from typing import Any

import pytest

import protocols.q13762 as q
from protocols import dlt645
from protocols.errors import ChecksumError, TruncatedFrame
from protocols.q13762 import DownInfo, Frame, FrameDecoder, NodeAddress, UpInfo, to_frame
from protocols.q13762._hunt import Hunter
from protocols.q13762.mixed import Dlt645Framer, MixedFrameDecoder
from protocols.q13762.stream import Q13762Framer
from tests.protocols.q13762_data import BY_ID, raw

GOOD = raw(BY_ID["QP22"])  # an addressed AFN F1 F1 read, 47 bytes
MAIN = NodeAddress.parse("049999888888")


def _kinds(events: list[Any]) -> list[str]:
    return [f"{type(e).__module__.split('.')[1]}.{type(e).__name__}" for e in events]


def _feed_bytewise(decoder: FrameDecoder | MixedFrameDecoder, data: bytes) -> list[list[Any]]:
    return [list(decoder.feed(bytes((b,)))) for b in data]


def _false_header(length: int) -> bytes:
    """68 L L C R0..R5: a down HPLC header without address field promising `length` bytes."""
    return b"\x68" + length.to_bytes(2, "little") + bytes.fromhex("43 00 00 00 00 00 00")


# --- the 1376.2 decoder -----------------------------------------------------------------------
def test_a_false_start_ending_on_the_good_frames_end_byte_does_not_swallow_it() -> None:
    noise = _false_header(10 + len(GOOD))  # ends exactly on GOOD's 16H
    decoder = FrameDecoder()
    events = decoder.feed(noise + GOOD)
    assert [type(e).__name__ for e in events] == ["ChecksumError", "Frame"]
    assert isinstance(events[1], Frame)
    assert events[1].to_bytes() == GOOD


def test_a_frame_hidden_in_an_incomplete_false_start_is_released_on_its_last_byte() -> None:
    false_start = _false_header(2000)
    decoder = FrameDecoder()
    per_byte = _feed_bytewise(decoder, false_start + GOOD)
    assert all(not events for events in per_byte[:-1])
    assert [type(e).__name__ for e in per_byte[-1]] == ["TruncatedFrame", "Frame"]
    truncated = per_byte[-1][0]
    assert isinstance(truncated, TruncatedFrame)
    assert truncated.raw == false_start
    assert "after 10 of 2000 bytes" in str(truncated)
    assert (decoder.pending, decoder.skipped_bytes) == (0, len(false_start))


def test_a_corrupt_frame_with_start_bytes_inside_is_reported_once() -> None:
    bad = bytearray(raw(BY_ID["QP26"]))  # 14 inner 645 frames: 28 inner 68H
    bad[-2] ^= 0xFF
    decoder = FrameDecoder()
    events = decoder.feed(bytes(bad) + GOOD) + decoder.flush()
    assert [type(e).__name__ for e in events] == ["ChecksumError", "Frame"]
    assert isinstance(events[0], ChecksumError)
    assert events[0].raw == bytes(bad)
    assert decoder.skipped_bytes == len(bad)


def test_an_impossible_length_is_not_a_start() -> None:
    # L over max_length, under 15, or too short for the announced address field: 68H is noise
    noise = _false_header(2049) + _false_header(14) + b"\x68\x10\x00\x43\x04\x00\x00\x00\x00\x00"
    decoder = FrameDecoder()
    events = decoder.feed(noise + GOOD) + decoder.flush()
    assert [type(e).__name__ for e in events] == ["Frame"]
    assert decoder.skipped_bytes == len(noise)


def test_max_length_follows_the_module() -> None:
    big = to_frame(q.ConcurrentReply(2, bytes(3000)), UpInfo(seq=1), src=MAIN, dst=MAIN)
    wire = big.to_bytes()
    decoder = FrameDecoder()
    assert [type(e).__name__ for e in decoder.feed(wire) + decoder.flush()] == []
    decoder.max_length = 4096  # e.g. the module's AFN03 F10 says so
    assert decoder.feed(wire) == [big]
    with pytest.raises(ValueError, match="max_length"):
        FrameDecoder(max_length=14)
    with pytest.raises(ValueError, match="max_length"):
        FrameDecoder(max_length=65536)


def test_pending_never_exceeds_one_frame() -> None:
    decoder = FrameDecoder()
    chain = _false_header(2048) * 300
    for b in chain:
        decoder.feed(bytes((b,)))
        assert decoder.pending < 2048
    assert all(isinstance(e, TruncatedFrame) for e in decoder.flush())


def test_every_fed_byte_is_a_frame_byte_or_skipped() -> None:
    stream = b"\xfe\xfe" + GOOD + b"\x00\x68\x16" + GOOD[:-1] + b"\x00" + GOOD + b"\x68\x01"
    decoder = FrameDecoder()
    frames = [e for e in decoder.feed(stream) + decoder.flush() if isinstance(e, Frame)]
    assert len(frames) == 2
    assert decoder.skipped_bytes == len(stream) - 2 * len(GOOD)


def test_reset_drops_a_partial_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(GOOD[:20])
    decoder.reset()
    assert decoder.pending == 0
    assert decoder.skipped_bytes == 20
    assert [f.to_bytes() for f in decoder.feed(GOOD)] == [GOOD]  # type: ignore[union-attr]


def test_replies_in_any_order_keep_their_seq() -> None:
    meter = NodeAddress.parse("000000003304")
    replies = [
        to_frame(q.ConcurrentReply(2, b""), UpInfo(seq=s), src=meter, dst=MAIN) for s in (3, 1, 2)
    ]
    decoder = FrameDecoder()
    got = decoder.feed(b"".join(r.to_bytes() for r in replies))
    assert [f.seq for f in got if isinstance(f, Frame)] == [3, 1, 2]


# --- 645 and 1376.2 in one stream ------------------------------------------------------------
def _mixed(data: bytes, bytewise: bool = False, **kwargs: Any) -> list[Any]:
    decoder = MixedFrameDecoder(**kwargs)
    if bytewise:
        events = [e for chunk in _feed_bytewise(decoder, data) for e in chunk]
    else:
        events = decoder.feed(data)
    events += decoder.flush()
    assert decoder.pending == 0
    return events


V14 = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 59 B3 55 44 DC 16")


@pytest.mark.parametrize("bytewise", [False, True])
def test_645_and_1376_frames_in_one_stream(bytewise: bool) -> None:
    stream = b"\xfe\xfe" + V14 + b"\x00\x16" + GOOD + b"\xfe\xfe\xfe\xfe" + V14 + GOOD
    events = _mixed(stream, bytewise)
    assert _kinds(events) == [
        "dlt645.Frame",
        "q13762.Frame",
        "dlt645.Frame",
        "q13762.Frame",
    ]


@pytest.mark.parametrize("meter", ["000000000010", "000000000020", "000000000705"])
def test_a_645_frame_whose_address_reads_as_a_1376_length(meter: str) -> None:
    # A0 A1 = 10 00 / 20 00 / 05 07: a plausible 1376.2 L (16, 32, 1797) at the 645 frame's 68H
    address = dlt645.Address.parse(meter)
    for message in (
        dlt645.ReadRequest(0x00010000),
        dlt645.ReadReply(0x00010000, bytes(range(30))),
    ):
        frame = dlt645.to_frame(address, message)
        events = _mixed(dlt645.encode_frame(frame, wakeup=0) + GOOD)
        assert events[0] == frame
        assert _kinds(events) == ["dlt645.Frame", "q13762.Frame"]


@pytest.mark.parametrize("seq", [0, 4, 16, 200])
def test_a_1376_frame_with_68h_at_offset_7(seq: int) -> None:
    # R3 (a rate byte, or a signal-quality byte up) = 68H looks like 645's second start; the
    # 645 candidate (12 + SEQ bytes) fails its checksum and the 1376.2 frame wins
    frame = to_frame(q.ConcurrentRead(2, V14), DownInfo(seq=seq, rate=0x68), src=MAIN, dst=MAIN)
    wire = frame.to_bytes()
    assert wire[7] == 0x68
    assert [e for e in _mixed(wire + V14) if not isinstance(e, ChecksumError)] == [
        frame,
        dlt645.decode_frame(V14),
    ]


def test_the_one_true_ambiguity_is_read_as_645() -> None:
    # a 645 frame with A0 A1 = 98 00 and L = 8CH is byte for byte a valid 152-byte 1376.2 frame
    # (68 + 98 + 00 = 100H: both checksums are the same sum); the decoder prefers 645
    # (meter …0098: C = 00, R0 = 00, no address field; DI 0000CE00 puts AFN 33H, DT 01 33H
    # where 1376.2 reads them, the rest is the value)
    meter = dlt645.Address.parse("000000000098")
    reply = dlt645.to_frame(meter, dlt645.ReadReply(0x0000CE00, bytes(136)))
    wire = dlt645.encode_frame(reply, wakeup=0)
    assert len(wire) == 152
    assert wire[1:3] == b"\x98\x00"
    as_1376 = q.decode_frame(wire)  # it IS a valid 1376.2 frame too
    assert as_1376.length == 152
    assert _mixed(wire) == [reply]
    assert _mixed(wire, q13762_frames=False) == [reply]
    assert _mixed(wire, dlt645_frames=False) == [as_1376]


def test_a_bad_645_frame_before_a_1376_frame() -> None:
    bad = bytearray(V14)
    bad[-2] ^= 0x01
    events = _mixed(bytes(bad) + GOOD)
    assert _kinds(events) == ["errors.ChecksumError", "q13762.Frame"]
    assert isinstance(events[0], ChecksumError)
    assert events[0].raw == bytes(bad)


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_bad_1376_frame_before_a_645_frame(bytewise: bool) -> None:
    # only its checksum is wrong: the 645 frame it carries is part of it, not a frame of its own
    bad = bytearray(GOOD)
    bad[-2] ^= 0x01
    events = _mixed(bytes(bad) + V14, bytewise)
    assert _kinds(events) == ["errors.ChecksumError", "dlt645.Frame"]
    assert isinstance(events[0], ChecksumError)
    assert events[0].raw == bytes(bad)
    assert events[1] == dlt645.decode_frame(V14)


def test_a_cut_1376_frame_does_not_mute_what_it_carried() -> None:
    # its end byte is wrong, so its L may be: the 645 frame inside may be a frame of its own
    bad = GOOD[:-1] + b"\x00"
    events = _mixed(bad + V14)
    assert _kinds(events) == ["errors.FramingError", "dlt645.Frame", "dlt645.Frame"]
    assert events[1] == dlt645.decode_frame(GOOD[29:45])


def test_a_1376_frame_inside_a_bad_one_is_still_returned() -> None:
    inner = raw(BY_ID["QP01"])
    noise = _false_header(10 + len(inner))  # ends on the inner frame's 16H, wrong checksum
    events = _mixed(noise + inner)
    assert _kinds(events) == ["errors.ChecksumError", "q13762.Frame"]


@pytest.mark.parametrize("vid", ["QP17", "QP20", "QP22", "QP26", "QP28", "QP37"])
def test_carrier_frames_arriving_byte_by_byte_come_out_whole(vid: str) -> None:
    wire = raw(BY_ID[vid])
    events = _mixed(V14 + wire + V14, bytewise=True)
    assert _kinds(events) == ["dlt645.Frame", "q13762.Frame", "dlt645.Frame"]
    assert events[1] == q.decode_frame(wire)


def test_a_cut_carrier_frame_gives_its_645_frames_at_flush() -> None:
    wire = raw(BY_ID["QP22"])[:-2]  # CS and 16 missing; the inner 645 frame is whole
    events = _mixed(wire, bytewise=True)
    assert _kinds(events) == ["errors.TruncatedFrame", "dlt645.Frame"]


def test_one_protocol_only() -> None:
    stream = V14 + GOOD
    # 645 only: the 645 frame carried inside the 1376.2 frame is found by hunting
    assert _kinds(_mixed(stream, q13762_frames=False)) == ["dlt645.Frame", "dlt645.Frame"]
    assert _kinds(_mixed(stream, dlt645_frames=False)) == ["q13762.Frame"]
    with pytest.raises(ValueError, match="no protocol"):
        MixedFrameDecoder(dlt645_frames=False, q13762_frames=False)


def test_mixed_forced_edition() -> None:
    c04 = bytes.fromhex("FE FE FE FE 68 99 99 99 99 99 99 68 08 06 3C 3B 3A 39 38 57 ED 16")
    (frame,) = _mixed(c04, edition=dlt645.Edition.V1997)
    assert isinstance(frame, dlt645.Frame)
    assert frame.edition is dlt645.Edition.V1997


@pytest.mark.parametrize("pattern", ["68 00 08", "68", "68 00 08 00 00 00 00 68 00 00"])
def test_hunting_looks_at_each_start_byte_a_bounded_number_of_times(pattern: str) -> None:
    # a stream of false starts fed byte by byte: the search for a frame hidden inside the
    # pending candidate must not rescan the candidate on every byte (it was quadratic)
    calls = 0

    class Counting(Q13762Framer):
        def span(self, buf: bytearray, pos: int) -> int | None:
            nonlocal calls
            calls += 1
            return super().span(buf, pos)

    hunter: Hunter[Frame] = Hunter([Counting(), Dlt645Framer()])
    data = bytes.fromhex(pattern) * (6000 // len(bytes.fromhex(pattern)))
    for b in data:
        hunter.feed(bytes((b,)))
        assert hunter.pending < 2048
    hunter.flush()
    assert calls < 8 * len(data)
