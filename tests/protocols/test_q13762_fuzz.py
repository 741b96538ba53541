"""No input crashes the 1376.2 decoders: random bytes and mutated valid frames, fed in random
pieces, to the 1376.2 stream decoder and to the mixed 645/1376.2 decoder.

For every input: each event is a frame or a `FrameError`; nothing else is raised; the decoder
never holds more than one frame (`pending` below the longest accepted frame); every decoded
frame goes through `describe()` (and JSON) without raising; `from_frame` raises nothing but
`RemoteProtocolError`; every byte fed ends up in a decoded frame or in `skipped_bytes`. Good
frames wrapped in garbage are never lost.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import dlt645
from protocols.errors import FrameError, RemoteProtocolError
from protocols.q13762 import DEFAULT_MAX_FRAME, Frame, FrameDecoder, decode_frame, from_frame
from protocols.q13762.describe import describe, describe_645_event
from protocols.q13762.mixed import Dlt645Framer, MixedFrameDecoder
from protocols.q13762.stream import Q13762Framer
from tests.protocols.q13762_strategies import encoded_frames
from tests.protocols.strategies import split_at
from tests.protocols.test_fuzz import encoded_frames as encoded_645_frames

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cuts = st.lists(st.integers(0, 3000), max_size=12)
#: bytes that make 1376.2 candidates likely: 68H, 16H, FEH, small L bytes, module flags
marker_bytes = st.lists(
    st.one_of(
        st.sampled_from([0x68, 0x16, 0xFE, 0x00, 0x0F, 0x04, 0x43, 0x83]), st.integers(0, 255)
    ),
    max_size=900,
).map(bytes)


def _check(event: Any) -> int:
    """Describe a decoded frame (must not raise); its length on the wire."""
    if isinstance(event, Frame):
        json.dumps(describe(event), ensure_ascii=False)
        with contextlib.suppress(RemoteProtocolError):  # the only error a peer's bytes may cause
            from_frame(event)
        return event.length
    assert isinstance(event, dlt645.Frame), event
    json.dumps(describe_645_event(event), ensure_ascii=False)
    return 12 + len(event.data)


def run_decoder(pieces: list[bytes], mixed: bool = False) -> list[Any]:
    """Feed the pieces, checking the invariants after every call; the frames decoded."""
    decoder: FrameDecoder | MixedFrameDecoder = MixedFrameDecoder() if mixed else FrameDecoder()
    events: list[Any] = []
    for piece in pieces:
        events += decoder.feed(piece)
        assert decoder.pending < DEFAULT_MAX_FRAME
    events += decoder.flush()
    assert decoder.pending == 0
    frames = [e for e in events if not isinstance(e, FrameError)]
    in_frames = sum(_check(f) for f in frames)
    assert decoder.skipped_bytes + in_frames == sum(len(p) for p in pieces)
    return frames


@FUZZ
@given(raw=st.binary(max_size=900), at=cuts, mixed=st.booleans())
def test_random_bytes(raw: bytes, at: list[int], mixed: bool) -> None:
    run_decoder(split_at(raw, at), mixed)


@FUZZ
@given(raw=marker_bytes, at=cuts, mixed=st.booleans())
def test_random_bytes_full_of_start_bytes_and_short_lengths(
    raw: bytes, at: list[int], mixed: bool
) -> None:
    run_decoder(split_at(raw, at), mixed)


some_frames = st.one_of(encoded_frames, encoded_645_frames())


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(b"".join(draw(st.lists(some_frames, min_size=1, max_size=3))))
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
@given(raw=mutated(), at=cuts, mixed=st.booleans())
def test_mutated_frames(raw: bytes, at: list[int], mixed: bool) -> None:
    run_decoder(split_at(raw, at), mixed)


@FUZZ
@given(raw=st.one_of(mutated(), st.binary(max_size=300)))
def test_decode_frame_raises_only_frame_errors(raw: bytes) -> None:
    try:
        frame = decode_frame(raw)
    except FrameError:
        return
    _check(frame)


def _false_header(length: int, filler: bytes) -> bytes:
    """68 L L C R0..R5: a 1376.2 header promising `length` bytes it does not have."""
    return b"\x68" + length.to_bytes(2, "little") + filler[:7].ljust(7, b"\x00")


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Line noise with structure: random bytes, false headers, pieces of real frames."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=60),
                marker_bytes.map(lambda b: b[:60]),
                st.builds(_false_header, st.integers(15, 2048), st.binary(max_size=7)),
                st.tuples(some_frames, st.integers(1, 40), st.booleans()).map(
                    lambda t: t[0][: t[1]] if t[2] else t[0][-t[1] :]
                ),
            ),
            max_size=4,
        )
    )
    return b"".join(pieces)


def _valid_frame_overlapping(stream: bytes, start: int, mixed: bool) -> bool:
    """Whether a complete, valid frame (of a kind the decoder looks for) begins before `start`
    and reaches past it: such bytes are a frame in their own right and hide what follows from
    any decoder."""
    buf = bytearray(stream)
    framers: list[Dlt645Framer | Q13762Framer] = [Q13762Framer()]
    if mixed:
        framers.append(Dlt645Framer())
    for p in range(start):
        if buf[p] != 0x68 or p + 10 > len(buf):
            continue
        for framer in framers:
            total = framer.span(buf, p)
            if total and start < p + total <= len(buf) and framer.valid(buf, p, total):
                return True
    return False


def _muted_by_a_bad_carrier(stream: bytes, start: int, length: int) -> bool:
    """Whether a 1376.2 candidate before `start` covers the 645 frame at `start` and fails only
    its checksum: the mixed decoder takes the 645 frame as part of that bad frame (documented;
    random noise does this for about 1 in 10**4 68H bytes)."""
    buf = bytearray(stream)
    framer = Q13762Framer()
    for p in range(start):
        if buf[p] != 0x68 or p + 10 > len(buf):
            continue
        total = framer.span(buf, p)
        if total and start + length <= p + total <= len(buf) and buf[p + total - 1] == 0x16:
            return True
    return False


@FUZZ
@given(data=st.data(), at=cuts, mixed=st.booleans())
def test_good_frames_wrapped_in_garbage_are_never_lost(
    data: st.DataObject, at: list[int], mixed: bool
) -> None:
    kinds = some_frames if mixed else encoded_frames
    good = data.draw(st.lists(kinds, min_size=1, max_size=3), label="good")
    stream = b""
    starts = []
    for raw in good:
        stream += data.draw(garbage(), label="garbage")
        starts.append(len(stream) + len(raw) - len(raw.lstrip(b"\xfe")))
        stream += raw
    stream += data.draw(garbage(), label="garbage after")
    frames = run_decoder(split_at(stream, at), mixed)
    found = iter(frames)
    for raw, start in zip(good, starts, strict=True):
        if _valid_frame_overlapping(stream, start, mixed):
            continue  # not a decoder failure: the garbage before it is itself a valid frame
        if mixed and _muted_by_a_bad_carrier(stream, start, len(raw.lstrip(b"\xfe"))):
            continue
        wanted = (
            decode_frame(raw)
            if raw.lstrip(b"\xfe")[7:8] != b"\x68" or not mixed
            else _one_of_both(raw)
        )
        # in order, possibly with frames made of garbage (or carried inside) in between
        assert any(f == wanted for f in found), (wanted, frames)


def _one_of_both(raw: bytes) -> Any:
    """The frame the mixed decoder returns for `raw` (a 645 frame, or a 1376.2 frame whose
    R3 is 68H): whichever codec accepts it, 645 first (the decoder's tie rule)."""
    try:
        return dlt645.decode_frame(raw)
    except FrameError:
        return decode_frame(raw)
