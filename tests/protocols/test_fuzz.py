"""No input crashes the decoder: random bytes and mutated valid frames, fed in random pieces.

For every input: each event is a `Frame` or a `FrameError`; nothing else is raised; the decoder
never holds more than one frame (12 + 255 bytes); every decoded frame goes through `describe()`
(and JSON) without raising; `from_frame` raises nothing but `RemoteProtocolError`; every byte
fed ends up in a decoded frame or in `skipped_bytes`. Good frames wrapped in garbage are never
lost.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.dlt645 import (
    Address,
    Control,
    Edition,
    Frame,
    FrameDecoder,
    decode_frame,
    describe,
    encode_frame,
    from_frame,
    to_frame,
)
from protocols.errors import FrameError, RemoteProtocolError
from tests.protocols.strategies import addresses, any_message, split_at

MAX_PENDING = 12 + 255
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cuts = st.lists(st.integers(0, 2000), max_size=12)
#: bytes that make frame candidates likely, mixed with anything
marker_bytes = st.lists(
    st.one_of(st.sampled_from([0x68, 0x16, 0xFE, 0x00, 0xFF]), st.integers(0, 255)),
    max_size=700,
).map(bytes)


def _check_frame(frame: Frame) -> None:
    info = describe(frame)
    json.dumps(info, ensure_ascii=False)
    with contextlib.suppress(RemoteProtocolError):  # the only error a peer's bytes may cause
        from_frame(frame)


def run_decoder(pieces: list[bytes]) -> tuple[list[Frame], list[FrameError], FrameDecoder]:
    """Feed the pieces, checking the invariants after every call."""
    decoder = FrameDecoder()
    events: list[Any] = []
    for piece in pieces:
        events += decoder.feed(piece)
        assert decoder.pending <= MAX_PENDING
    events += decoder.flush()
    assert decoder.pending == 0
    frames = [e for e in events if isinstance(e, Frame)]
    errors = [e for e in events if isinstance(e, FrameError)]
    assert len(frames) + len(errors) == len(events), events
    for frame in frames:
        _check_frame(frame)
    fed = sum(len(p) for p in pieces)
    assert decoder.skipped_bytes + sum(12 + len(f.data) for f in frames) == fed
    return frames, errors, decoder


@FUZZ
@given(raw=st.binary(max_size=700), at=cuts)
def test_random_bytes(raw: bytes, at: list[int]) -> None:
    run_decoder(split_at(raw, at))


@FUZZ
@given(raw=marker_bytes, at=cuts)
def test_random_bytes_full_of_start_and_end_bytes(raw: bytes, at: list[int]) -> None:
    run_decoder(split_at(raw, at))


@st.composite
def encoded_frames(draw: st.DrawFn) -> bytes:
    edition, message = draw(any_message)
    address = draw(addresses)
    frame = to_frame(address, message, edition)
    return encode_frame(frame, wakeup=draw(st.integers(0, 4)))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(b"".join(draw(st.lists(encoded_frames(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del raw[at : at + draw(st.integers(1, 12))]
        else:
            del raw[at:]
    return bytes(raw)


@FUZZ
@given(raw=mutated(), at=cuts)
def test_mutated_frames(raw: bytes, at: list[int]) -> None:
    run_decoder(split_at(raw, at))


@FUZZ
@given(raw=st.one_of(mutated(), st.binary(max_size=300)))
def test_decode_frame_raises_only_frame_errors(raw: bytes) -> None:
    try:
        frame = decode_frame(raw)
    except FrameError:
        return
    _check_frame(frame)


@FUZZ
@given(
    address=addresses,
    control=st.integers(0, 255),
    data=st.binary(max_size=255),
    edition=st.sampled_from(Edition),
)
def test_any_valid_frame_can_be_described(
    address: Address, control: int, data: bytes, edition: Edition
) -> None:
    # well-formed frames with arbitrary control bytes and data: the payload layer's fuzz
    frame = Frame(address, Control.from_byte(control), data, edition)
    _check_frame(frame)
    (decoded,) = run_decoder([encode_frame(frame, wakeup=0)])[0]
    _check_frame(decoded)


def _false_header(length: int, filler: bytes) -> bytes:
    """68 A0..A5 68 C L: a header that promises `length` data bytes it does not have."""
    address = filler[:6].ljust(6, b"\x00")
    control = filler[6:7] or b"\x91"
    return b"\x68" + address + b"\x68" + control + bytes((length,))


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Line noise with structure: random bytes, false headers, pieces of real frames."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=60),
                marker_bytes.map(lambda b: b[:60]),
                st.builds(_false_header, st.integers(0, 255), st.binary(max_size=7)),
                st.tuples(encoded_frames(), st.integers(1, 40), st.booleans()).map(
                    lambda t: t[0][: t[1]] if t[2] else t[0][-t[1] :]
                ),
            ),
            max_size=4,
        )
    )
    return b"".join(pieces)


@st.composite
def aimed_false_start(draw: st.DrawFn, frame: bytes) -> bytes:
    """A false header whose L makes it end on a 16H inside `frame` (its end byte, or a checksum
    or data byte that happens to be 16H): complete, right end byte, wrong checksum."""
    gap = draw(st.binary(max_size=8))
    end = draw(st.sampled_from([i for i, b in enumerate(frame) if b == 0x16]))
    # header (10) + gap + frame[:end + 1] is exactly the 12 + L bytes the header promises
    length = len(gap) + end - 1
    if not 0 <= length <= 255:
        return gap
    return _false_header(length, draw(st.binary(min_size=7, max_size=7))) + gap


def _valid_frame_overlapping(stream: bytes, start: int) -> bool:
    """Whether a complete, valid frame begins before `start` and reaches past it: such bytes
    are a frame in their own right and hide what follows from any decoder (the chance for line
    noise to form one is about 2**-24; an aimed false start only needs its checksum to match)."""
    for p in range(start):
        if stream[p] != 0x68 or p + 12 > len(stream) or stream[p + 7] != 0x68:
            continue
        total = 12 + stream[p + 9]
        if (
            start < p + total <= len(stream)
            and stream[p + total - 1] == 0x16
            and sum(stream[p : p + total - 2]) & 0xFF == stream[p + total - 2]
        ):
            return True
    return False


@FUZZ
@given(data=st.data(), at=cuts)
def test_good_frames_wrapped_in_garbage_are_never_lost(data: st.DataObject, at: list[int]) -> None:
    good = data.draw(st.lists(encoded_frames(), min_size=1, max_size=3), label="good")
    stream = b""
    starts = []
    for raw in good:
        stream += data.draw(garbage(), label="garbage")
        if data.draw(st.booleans(), label="aim a false start at it"):
            stream += data.draw(aimed_false_start(raw), label="false start")
        starts.append(len(stream) + len(raw) - len(raw.lstrip(b"\xfe")))
        stream += raw
    stream += data.draw(garbage(), label="garbage after")
    frames, _, _ = run_decoder(split_at(stream, at))
    found = iter(frames)
    for raw, start in zip(good, starts, strict=True):
        if _valid_frame_overlapping(stream, start):
            continue  # not a decoder failure: the garbage before it is itself a valid frame
        frame = decode_frame(raw)
        # in order, possibly with frames made of garbage in between
        assert any(f == frame for f in found), (frame, frames)
