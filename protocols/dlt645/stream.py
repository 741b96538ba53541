"""Sans-I/O stream decoder: bytes in as they arrive, frames and typed errors out.

It hunts past line garbage and wake-up bytes, delimits a frame by its L field (a checksum may
itself be 68H or 16H, so the end byte is never searched for), and reports a bad frame as an
error event without losing the good frames before, after or *inside* it:

* a candidate that is complete but wrong (end byte, checksum) is reported once, and hunting
  resumes one byte after its 68H — its L may be what was corrupted, and a real frame may begin
  inside it. Further failed candidates that start inside a reported one are not reported again.
* a candidate that cannot complete yet is abandoned (reported as `TruncatedFrame`) as soon as a
  complete, valid frame is found inside it, so a false 68H in line noise cannot swallow the
  reply behind it.

Memory is bounded: at most one incomplete frame (12 + `max_length` bytes) is ever held.
"""

from __future__ import annotations

from protocols.dlt645 import _wire
from protocols.dlt645.frame import MAX_DATA_LEN, Frame, parse_validated
from protocols.dlt645.functions import Edition
from protocols.errors import FrameError, FramingError, TruncatedFrame

__all__ = ["FrameDecoder", "StreamEvent"]

StreamEvent = Frame | FrameError

_START = _wire.START
_END = _wire.END
_HEADER_LEN = _wire.HEADER_LEN
_MIN_FRAME = _wire.MIN_FRAME


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
        # errors of candidates starting before this offset are inside a frame already reported
        self._quiet_until = 0
        self.skipped_bytes = 0
        """bytes that ended up in no decoded frame: wake-up bytes, line garbage, bad frames"""

    @property
    def pending(self) -> int:
        """Bytes held for a frame that has not completed yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._buf += data
        events: list[StreamEvent] = []
        pos = self._drain(events, final=False)
        del self._buf[:pos]
        self._quiet_until = max(0, self._quiet_until - pos)
        return events

    def flush(self) -> list[StreamEvent]:
        """The line went quiet: report what is pending and forget it."""
        events: list[StreamEvent] = []
        self._drain(events, final=True)
        self._buf.clear()
        self._quiet_until = 0
        return events

    def reset(self) -> None:
        """Drop pending bytes silently (e.g. before a new request on a half-duplex bus)."""
        self.skipped_bytes += len(self._buf)
        self._buf.clear()
        self._quiet_until = 0

    # -- internals -------------------------------------------------------------------------

    def _drain(self, events: list[StreamEvent], *, final: bool) -> int:
        """Consume as many complete frames as the buffer holds; return the consumed offset.

        Every consumed byte that is not part of a returned frame is counted in `skipped_bytes`.
        """
        buf = self._buf
        pos = 0
        end = len(buf)
        in_frames = 0
        while True:
            pos = buf.find(_START, pos)
            if pos < 0:
                pos = end
                break
            if end - pos < _HEADER_LEN:
                if final:
                    self._report(events, pos, _truncated(buf[pos:end]))
                    pos = end
                break
            if buf[pos + 7] != _START:
                pos += 1
                continue
            length = buf[pos + 9]
            if length > self._max_length:
                error = FramingError(
                    f"L={length} exceeds the limit {self._max_length}",
                    bytes(buf[pos : pos + _HEADER_LEN]),
                )
                self._report(events, pos, error)
                pos += 1
                continue
            total = _MIN_FRAME + length
            if end - pos < total:
                hidden = self._complete_frame_inside(pos + 1, end)
                if hidden is None:
                    if final:
                        self._report(events, pos, _truncated(buf[pos:end]))
                        pos = end
                    break
                self._report(events, pos, _truncated(buf[pos:hidden]))
                pos = hidden
                continue
            try:
                frame = parse_validated(bytes(buf[pos : pos + total]), self._edition)
            except FrameError as exc:
                # the end byte or checksum is wrong, so L cannot be trusted either: report the
                # candidate once and hunt again from the next byte
                self._report(events, pos, exc)
                self._quiet_until = max(self._quiet_until, pos + total)
                pos += 1
                continue
            events.append(frame)
            in_frames += total
            pos += total
        self.skipped_bytes += pos - in_frames
        return pos

    def _report(self, events: list[StreamEvent], pos: int, error: FrameError) -> None:
        if pos >= self._quiet_until:
            events.append(error)

    def _complete_frame_inside(self, begin: int, end: int) -> int | None:
        """Offset of the first complete, valid frame that starts in buf[begin:end], if any."""
        buf = self._buf
        j = buf.find(_START, begin, end)
        while j >= 0 and end - j >= _MIN_FRAME:
            if buf[j + 7] == _START and buf[j + 9] <= self._max_length:
                total = _MIN_FRAME + buf[j + 9]
                if (
                    end - j >= total
                    and buf[j + total - 1] == _END
                    and sum(buf[j : j + total - 2]) & 0xFF == buf[j + total - 2]
                ):
                    return j
            j = buf.find(_START, j + 1, end)
        return None


def _truncated(raw: bytearray) -> TruncatedFrame:
    have = len(raw)
    if have >= _HEADER_LEN:
        need = _MIN_FRAME + raw[9]
        return TruncatedFrame(f"frame cut off after {have} of {need} bytes", bytes(raw))
    return TruncatedFrame(f"frame cut off after {have} bytes, inside the header", bytes(raw))
