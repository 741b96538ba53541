"""Sans-I/O stream decoder for the module's serial line: bytes in as they arrive, 1376.2 frames
and typed errors out.

Same rules as the DL/T 645 stream decoder (see `_hunt`): hunts past garbage and FE bytes,
delimits a frame by its L field (never by searching for 16H), checks end byte, checksum and
structure, reports a bad candidate once without losing the good frames before, after or inside
it, and holds at most one incomplete frame (`pending` < `max_length`).

A 1376.2 start has no second marker byte (645 has a second 68H at offset 7), so a 68H is taken
as a start only when its header is plausible: 15 + address field ≤ L ≤ `max_length`. An L
outside that range is "not a frame here" (the byte is skipped and counted), not an error:
otherwise every 68H in line noise would be reported. Set `max_length` from the module's AFN03
F10 "max frame length" when it is larger than the default (2048).
"""

from __future__ import annotations

from protocols.errors import FrameError
from protocols.q13762 import _wire
from protocols.q13762._hunt import Hunter
from protocols.q13762.frame import (
    DEFAULT_MAX_FRAME,
    MAX_FRAME,
    Frame,
    address_field_len,
    dt_to_fn,
    parse_validated,
)

__all__ = ["FrameDecoder", "StreamEvent"]

StreamEvent = Frame | FrameError


class Q13762Framer:
    """Where a 1376.2 frame may start and how long it is (the engine's framer interface)."""

    name = "1376.2"
    carries = frozenset({"645"})

    def __init__(self, max_length: int = DEFAULT_MAX_FRAME) -> None:
        if not _wire.MIN_FRAME <= max_length <= MAX_FRAME:
            raise ValueError(f"max_length must be {_wire.MIN_FRAME}..{MAX_FRAME}")
        self.max_length = max_length

    def span(self, buf: bytearray, pos: int) -> int | None:
        length = buf[pos + 1] | buf[pos + 2] << 8
        shortest = _wire.MIN_FRAME + address_field_len(buf[pos + 3], buf[pos + 4])
        return length if shortest <= length <= self.max_length else None

    def valid(self, buf: bytearray, pos: int, total: int) -> bool:
        last = pos + total
        if buf[last - 1] != _wire.END or sum(buf[pos + 3 : last - 2]) & 0xFF != buf[last - 2]:
            return False
        afn_at = pos + _wire.HEADER_LEN + address_field_len(buf[pos + 3], buf[pos + 4])
        return dt_to_fn(buf[afn_at + 1], buf[afn_at + 2]) is not None

    def parse(self, raw: bytes) -> Frame:
        return parse_validated(raw)


class FrameDecoder:
    """Feed bytes with `feed()`; each call returns the frames and errors completed so far.

    Call `flush()` when the line has gone quiet (a pending partial frame is reported as
    `TruncatedFrame`, complete frames hidden behind a false start are still returned) and
    `reset()` to drop a partial frame silently. `skipped_bytes` counts every byte fed that ended
    in no decoded frame, so `skipped_bytes + Σ frame.length == bytes fed` after `flush()`.
    """

    def __init__(self, *, max_length: int = DEFAULT_MAX_FRAME) -> None:
        self._framer = Q13762Framer(max_length)
        self._hunter: Hunter[Frame] = Hunter([self._framer])

    @property
    def max_length(self) -> int:
        """The longest frame accepted (L); raise it to the module's AFN03 F10 value if larger."""
        return self._framer.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self._framer = Q13762Framer(value)
        self._hunter.set_framers([self._framer])

    @property
    def pending(self) -> int:
        """Bytes held for a frame that has not completed yet."""
        return self._hunter.pending

    @property
    def skipped_bytes(self) -> int:
        return self._hunter.skipped_bytes

    def feed(self, data: bytes) -> list[StreamEvent]:
        return self._hunter.feed(data)

    def flush(self) -> list[StreamEvent]:
        """The line went quiet: report what is pending and forget it."""
        return self._hunter.flush()

    def reset(self) -> None:
        """Drop pending bytes silently."""
        self._hunter.reset()
