"""Every public vector decoded whole, one byte at a time, and wrapped in wake-up bytes and
garbage; encoding the decoded frame reproduces the bytes."""

from __future__ import annotations

from typing import Any

import pytest

from protocols.dlt645 import Frame, FrameDecoder, decode_frame, encode_frame
from protocols.errors import ChecksumError, FrameError
from tests.conftest import load_vectors

VECTORS = load_vectors()
GOOD = [v for v in VECTORS if v["check"]["cs_ok"]]
BAD = [v for v in VECTORS if not v["check"]["cs_ok"]]


def _raw(v: dict[str, Any]) -> bytes:
    return bytes.fromhex(v["hex"])


def _check(frame: Frame, v: dict[str, Any]) -> None:
    c = v["check"]
    assert frame.address.wire.hex(" ").upper() == c["addr_wire"]
    assert frame.address.digits == c["meter_addr"]
    assert f"{frame.control.byte:02X}" == c["C"]
    assert len(frame.data) == c["L"]
    assert frame.data.hex(" ").upper() == c["data_minus33"]


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_whole(v: dict[str, Any]) -> None:
    _check(decode_frame(_raw(v)), v)


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_byte_at_a_time(v: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    events = []
    for b in _raw(v):
        events += decoder.feed(bytes((b,)))
    assert len(events) == 1
    assert isinstance(events[0], Frame)
    _check(events[0], v)
    assert decoder.pending == 0
    assert decoder.skipped_bytes == v["check"]["preamble_fe"]


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"\xfe" * 11, b""),
        (b"\x00\x68\x16\xff\x68", b"\x16\x16"),  # a false start right before the frame
        (b"\x68\x01\x02\x03\x04\x05\x06\x68\x11\xc8", b""),  # a header promising 200 bytes
        (b"\xfe\xfe", b"\x68\x68\x68"),
    ],
)
def test_wrapped_in_garbage(v: dict[str, Any], before: bytes, after: bytes) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(before + _raw(v) + after) + decoder.flush()
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) == 1, events
    _check(frames[0], v)
    assert all(isinstance(e, FrameError) for e in events if not isinstance(e, Frame))


def test_all_vectors_back_to_back_one_byte_at_a_time() -> None:
    stream = b"".join(b"\xfe\x00" + _raw(v) for v in VECTORS)
    decoder = FrameDecoder()
    events = []
    for b in stream:
        events += decoder.feed(bytes((b,)))
    events += decoder.flush()
    assert [isinstance(e, Frame) for e in events] == [v["check"]["cs_ok"] for v in VECTORS]


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_encoding_reproduces_bytes(v: dict[str, Any]) -> None:
    frame = decode_frame(_raw(v))
    assert encode_frame(frame, wakeup=v["check"]["preamble_fe"]) == _raw(v)


@pytest.mark.parametrize("v", BAD, ids=[v["id"] for v in BAD])
def test_negative_vectors_are_rejected_by_name(v: dict[str, Any]) -> None:
    with pytest.raises(ChecksumError) as err:
        decode_frame(_raw(v))
    c = v["check"]
    assert str(err.value) == f"checksum found {c['cs_in_frame']}, computed {c['cs_computed']}"


@pytest.mark.parametrize("v", BAD, ids=[v["id"] for v in BAD])
def test_bad_frame_does_not_hide_its_neighbours(v: dict[str, Any]) -> None:
    good = _raw(GOOD[0])
    decoder = FrameDecoder()
    events = decoder.feed(good + _raw(v) + good)
    assert [type(e).__name__ for e in events] == ["Frame", "ChecksumError", "Frame"]
