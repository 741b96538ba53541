"""Named cases of the stream decoder's hunting: where a false start ends, what is reported once,
and that no good frame behind or inside a bad candidate is lost."""

from __future__ import annotations

import pytest

from protocols.dlt645 import Address, Edition, Frame, FrameDecoder, ReadReply, to_frame
from protocols.errors import AddressError, ChecksumError, FramingError, TruncatedFrame

METER = Address.parse("000000000001")
GOOD = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 59 B3 55 44 DC 16")  # V14


def _feed_bytewise(decoder: FrameDecoder, raw: bytes) -> list[list[object]]:
    """The events of every single-byte feed."""
    return [list(decoder.feed(bytes((b,)))) for b in raw]


def _kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_a_false_start_ending_on_the_good_frames_end_byte_does_not_swallow_it() -> None:
    # a noise header whose L makes the candidate end exactly on GOOD's 16H: the end byte is
    # right, the checksum is not. Before the fix the whole span was consumed and GOOD lost.
    noise = bytes.fromhex("68 00 00 00 00 00 00 68 91") + bytes((len(GOOD) - 2,))
    decoder = FrameDecoder()
    events = decoder.feed(noise + GOOD)
    assert _kinds(events) == ["ChecksumError", "Frame"]
    assert isinstance(events[1], Frame)
    assert events[1].address == METER


def test_a_noise_68_seven_bytes_before_a_frame() -> None:
    # 68 + six bytes, then a 21-byte frame: the frame's own first 68 is the candidate's second
    # start and its address byte A1 = 10H the candidate's L, so the candidate (7 + 21 bytes)
    # ends exactly on the frame's 16H — with a wrong checksum
    address = Address(bytes.fromhex("01 10 00 00 00 00"))
    frame = to_frame(address, ReadReply(0x00010000, b"\x01\x02\x03\x04\x05"))
    raw = frame.to_bytes(wakeup=0)
    assert len(raw) == 21
    decoder = FrameDecoder()
    events = decoder.feed(b"\x68\x00\x00\x00\x00\x00\x00" + raw) + decoder.flush()
    assert [e for e in events if isinstance(e, Frame)] == [frame]


def test_a_frame_hidden_in_an_incomplete_false_start_is_released_on_its_last_byte() -> None:
    false_start = bytes.fromhex("68 01 02 03 04 05 06 68 11 C8")  # promises 200 data bytes
    decoder = FrameDecoder()
    per_byte = _feed_bytewise(decoder, false_start + GOOD)
    assert all(not events for events in per_byte[:-1])
    assert _kinds(per_byte[-1]) == ["TruncatedFrame", "Frame"]
    truncated = per_byte[-1][0]
    assert isinstance(truncated, TruncatedFrame)
    assert truncated.raw == false_start
    assert decoder.pending == 0
    assert decoder.skipped_bytes == len(false_start)


def test_a_corrupt_frame_is_reported_once_even_with_start_bytes_inside() -> None:
    # value bytes 35 .. 35 are sent as 68 .. 68: false starts inside the frame's data
    inner = bytes.fromhex("35 00 00 00 00 00 00 35 5E 01")
    raw = bytearray(to_frame(METER, ReadReply(0x00010000, inner)).to_bytes(wakeup=0))
    raw[-2] ^= 0xFF  # break the checksum
    decoder = FrameDecoder()
    events = decoder.feed(bytes(raw) + GOOD) + decoder.flush()
    assert _kinds(events) == ["ChecksumError", "Frame"]
    assert isinstance(events[0], ChecksumError)
    assert events[0].raw == bytes(raw)
    assert decoder.skipped_bytes == len(raw)


def test_a_length_over_the_limit_is_reported_and_hunting_goes_on() -> None:
    decoder = FrameDecoder(max_length=8)
    header = bytes.fromhex("68 01 02 03 04 05 06 68 91 20")
    events = decoder.feed(header + GOOD)
    assert _kinds(events) == ["FramingError", "Frame"]
    assert isinstance(events[0], FramingError)
    assert "L=32 exceeds the limit 8" in str(events[0])


def test_a_bad_address_is_reported_with_the_whole_frame() -> None:
    frame = bytearray(GOOD)
    frame[3] = 0x1A  # not BCD, not AAH
    frame[-2] = sum(frame[:-2]) & 0xFF
    decoder = FrameDecoder()
    events = decoder.feed(bytes(frame) + GOOD)
    assert _kinds(events) == ["AddressError", "Frame"]
    assert isinstance(events[0], AddressError)
    assert events[0].raw == bytes(frame)
    assert "address byte 1A" in str(events[0])


def test_pending_never_exceeds_one_frame() -> None:
    decoder = FrameDecoder()
    # a chain of false starts, each promising the maximum length
    chain = bytes.fromhex("68 01 02 03 04 05 06 68 11 FF") * 40
    for b in chain:
        decoder.feed(bytes((b,)))
        assert decoder.pending <= 12 + 255
    assert all(isinstance(e, TruncatedFrame | FramingError) for e in decoder.flush())


def test_every_fed_byte_is_a_frame_byte_or_skipped() -> None:
    stream = b"\xfe\xfe" + GOOD + b"\x00\x68\x16" + GOOD[:-1] + b"\x00" + GOOD + b"\x68\x01"
    decoder = FrameDecoder()
    frames = [e for e in decoder.feed(stream) + decoder.flush() if isinstance(e, Frame)]
    assert len(frames) == 2
    assert decoder.skipped_bytes == len(stream) - 2 * len(GOOD)


def test_reset_drops_a_partial_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(GOOD[:9])
    decoder.reset()
    assert decoder.pending == 0
    assert decoder.feed(GOOD)[0] == decoder_frame()


def decoder_frame() -> Frame:
    (frame,) = FrameDecoder().feed(GOOD)
    assert isinstance(frame, Frame)
    return frame


def test_forced_edition_is_applied() -> None:
    (frame,) = FrameDecoder(edition=Edition.V1997).feed(GOOD)
    assert isinstance(frame, Frame)
    assert frame.edition is Edition.V1997


def test_max_length_must_fit_the_length_field() -> None:
    with pytest.raises(ValueError, match=r"0\.\.255"):
        FrameDecoder(max_length=256)
