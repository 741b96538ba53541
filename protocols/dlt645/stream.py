"""Sans-I/O stream decoder: bytes in as they arrive, frames and typed errors out.

It hunts past line garbage and wake-up bytes, delimits a frame by its L field (a checksum may
itself be 68H or 16H, so the end byte is never searched for), and reports a bad frame as an
error event without losing the good frames before or after it. A start that cannot be a frame
(it never completes, or a complete valid frame begins inside it) is abandoned and hunting
resumes one byte later, so a false 68H in line noise cannot swallow the reply behind it.

Memory is bounded: at most one incomplete frame (12 + `max_length` bytes) is ever held.
"""

from __future__ import annotations

from protocols.dlt645 import _wire
from protocols.dlt645.frame import MAX_DATA_LEN, Frame, parse_validated
from protocols.dlt645.functions import Edition
from protocols.errors import FrameError, FramingError, TruncatedFrame

__all__ = ["FrameDecoder", "StreamEvent"]

StreamEvent = Frame | FrameError


class FrameDecoder:
    """Feed bytes with `feed()`; each call returns the frames and errors completed so far.

    Call `flush()` when the line has gone quiet (end of the reply window, inter-byte gap
    exceeded, connection closed): a pending partial frame is reported as `TruncatedFrame`
    and any complete frames hidden behind a false start are still returned.
    """

    def __init__(self, *, edition: Edition | None = None, max_length: int = MAX_DATA_LEN) -> None:
        if not 0 <= max_length <= MAX_DATA_LEN:
            raise ValueError("max_length must be 0..255")
        self._edition = edition
        self._max_length = max_length
        self._buf = bytearray()
        self.skipped_bytes = 0
        """wake-up bytes and line garbage discarded while hunting for a start"""

    @property
    def pending(self) -> int:
        """Bytes held for a frame that has not completed yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._buf += data
        events: list[StreamEvent] = []
        pos = self._drain(events, final=False)
        del self._buf[:pos]
        return events

    def flush(self) -> list[StreamEvent]:
        """The line went quiet: report what is pending and forget it."""
        events: list[StreamEvent] = []
        self._drain(events, final=True)
        self._buf.clear()
        return events

    def reset(self) -> None:
        """Drop pending bytes silently (e.g. before a new request on a half-duplex bus)."""
        self.skipped_bytes += len(self._buf)
        self._buf.clear()

    # -- internals -------------------------------------------------------------------------

    def _drain(self, events: list[StreamEvent], *, final: bool) -> int:
        """Consume as many complete frames as the buffer holds; return the consumed offset."""
        buf = self._buf
        pos = 0
        end = len(buf)
        while True:
            start = buf.find(_wire.START, pos)
            if start < 0:
                self.skipped_bytes += end - pos
                return end
            self.skipped_bytes += start - pos
            pos = start
            if end - pos < _wire.HEADER_LEN:
                if final:
                    events.append(_truncated(buf[pos:end]))
                    return end
                return pos
            if buf[pos + 7] != _wire.START:
                self.skipped_bytes += 1
                pos += 1
                continue
            length = buf[pos + 9]
            total = _wire.MIN_FRAME + length
            if length > self._max_length:
                events.append(
                    FramingError(
                        f"L={length} exceeds the limit {self._max_length}",
                        bytes(buf[pos : pos + _wire.HEADER_LEN]),
                    )
                )
                pos += 1
                continue
            if end - pos < total:
                hidden = self._complete_frame_inside(pos + 1, end)
                if hidden is None:
                    if final:
                        events.append(_truncated(buf[pos:end]))
                        return end
                    return pos
                events.append(_truncated(buf[pos:hidden]))
                pos = hidden
                continue
            raw = bytes(buf[pos : pos + total])
            try:
                events.append(parse_validated(raw, self._edition))
            except FramingError as exc:
                # end byte missing: the 68 was probably noise; resync one byte later
                events.append(exc)
                pos += 1
                continue
            except FrameError as exc:
                events.append(exc)
            pos += total

    def _complete_frame_inside(self, begin: int, end: int) -> int | None:
        """Offset of the first complete, valid frame in buf[begin:end], if any."""
        buf = self._buf
        j = buf.find(_wire.START, begin, end)
        while j >= 0 and end - j >= _wire.MIN_FRAME:
            if buf[j + 7] == _wire.START:
                total = _wire.MIN_FRAME + buf[j + 9]
                if (
                    end - j >= total
                    and buf[j + total - 1] == _wire.END
                    and sum(buf[j : j + total - 2]) & 0xFF == buf[j + total - 2]
                ):
                    return j
            j = buf.find(_wire.START, j + 1, end)
        return None


def _truncated(raw: bytearray) -> TruncatedFrame:
    have = len(raw)
    if have >= _wire.HEADER_LEN:
        need = _wire.MIN_FRAME + raw[9]
        return TruncatedFrame(f"frame cut off after {have} of {need} bytes", bytes(raw))
    return TruncatedFrame(f"frame cut off after {have} bytes, inside the header", bytes(raw))
