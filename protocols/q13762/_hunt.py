"""The hunting engine behind the 1376.2 stream decoder and the mixed 645/1376.2 decoder.

It applies the rules of the DL/T 645 stream decoder (`protocols.dlt645.stream`) to one or more
*framers*: each framer says whether a 68H may start one of its frames and how long that frame
would be, and validates a delimited candidate. At every 68H the engine asks every framer:

* candidates are tried shortest first; the first valid one is returned (a valid frame can only
  overlap a longer candidate, never contain a shorter valid one without being it);
* when every complete candidate fails and none is pending, ONE error is reported (a
  `ChecksumError` — the end byte was right — before any other; on a tie the first framer's),
  later failed candidates starting inside it are not reported again, and hunting resumes one
  byte after the 68H (its length may be what was corrupted, a real frame may start inside);
* but when the reported candidate is a carrier (1376.2) that failed only its checksum, its L
  and end byte were right: the frames it carries (645) found inside it are part of that bad
  frame, not frames of their own, and are skipped with it (frames of its own kind inside are
  still returned: a real frame after a false start);
* while a candidate cannot complete yet, a complete valid frame starting inside it releases it
  at once (reported as `TruncatedFrame`, or as the failure of a shorter candidate) — unless it
  is a frame the pending candidate may be carrying (a 645 frame inside a 1376.2 frame that has
  not fully arrived): that one waits for the candidate to complete or fail, or for `flush()`;
* at most one incomplete candidate is held: `pending` stays below the longest span a framer
  accepts.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from protocols.errors import ChecksumError, FrameError, TruncatedFrame

START = 0x68
#: bytes every framer needs after a 68H to decide (645: 68 A0..A5 68 C L; 1376.2: 68 L L C R)
HEADER_LEN = 10

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Framer(Protocol[T_co]):
    #: what this framer's frames are called, and the names of the framers whose frames they
    #: may carry inside (a 1376.2 frame carries 645 frames)
    name: str
    carries: frozenset[str]

    def span(self, buf: bytearray, pos: int) -> int | None:
        """Length of the frame a 68H at `pos` would start (HEADER_LEN bytes are available), or
        None when the header rules out a frame of this kind there."""

    def valid(self, buf: bytearray, pos: int, total: int) -> bool:
        """Whether buf[pos:pos+total] parses (cheap: end byte, checksum, structure)."""

    def parse(self, raw: bytes) -> T_co:
        """The frame of a delimited candidate; a `FrameError` when it is not valid."""


class Hunter(Generic[T]):
    def __init__(self, framers: Sequence[Framer[T]]) -> None:
        self.framers = tuple(framers)
        self._buf = bytearray()
        # What is known about the 68Hs inside pending candidates, in absolute stream offsets
        # (`_base` is the offset of buf[0]), so each feed looks only at new bytes for a frame
        # hidden inside the candidate it waits on: every 68H before `_scanned` has been looked
        # at; `_waiting` holds the frame headers among them whose end has not arrived (a heap
        # by end offset), `_valid` the complete valid frames among them.
        self._base = 0
        self._scanned = 0
        self._waiting: list[tuple[int, int, int, int]] = []  # (end, start, length, framer)
        self._valid: list[tuple[int, int]] = []  # (start, framer)
        # errors of candidates starting before this offset are inside a candidate already reported
        self._quiet_until = 0
        # frames of these kinds ending before this offset are carried by a frame reported bad
        self._muted_until = 0
        self._muted: frozenset[str] = frozenset()
        self.skipped_bytes = 0
        """bytes that ended up in no decoded frame: wake-up bytes, line garbage, bad frames"""

    @property
    def pending(self) -> int:
        return len(self._buf)

    def set_framers(self, framers: Sequence[Framer[T]]) -> None:
        self.framers = tuple(framers)
        self._forget()

    def _forget(self) -> None:
        self._scanned = self._base
        self._waiting.clear()
        self._valid.clear()

    def feed(self, data: bytes) -> list[T | FrameError]:
        self._buf += data
        events: list[T | FrameError] = []
        pos = self._drain(events, final=False)
        del self._buf[:pos]
        self._base += pos
        self._quiet_until = max(0, self._quiet_until - pos)
        self._muted_until = max(0, self._muted_until - pos)
        return events

    def flush(self) -> list[T | FrameError]:
        events: list[T | FrameError] = []
        self._drain(events, final=True)
        self._base += len(self._buf)
        self._buf.clear()
        self._quiet_until = self._muted_until = 0
        self._forget()
        return events

    def reset(self) -> None:
        self.skipped_bytes += len(self._buf)
        self._base += len(self._buf)
        self._buf.clear()
        self._quiet_until = self._muted_until = 0
        self._forget()

    def _drain(self, events: list[T | FrameError], *, final: bool) -> int:
        buf = self._buf
        pos = 0
        end = len(buf)
        in_frames = 0
        while True:
            pos = buf.find(START, pos)
            if pos < 0:
                pos = end
                break
            if end - pos < HEADER_LEN:
                if final:
                    self._report(events, pos, _truncated(bytes(buf[pos:end]), None))
                    pos = end
                break
            spans = sorted(
                (total, i)
                for i, framer in enumerate(self.framers)
                if (total := framer.span(buf, pos)) is not None
            )
            if not spans:
                pos += 1
                continue
            failures: list[tuple[int, FrameError, frozenset[str]]] = []
            longest_pending = 0
            carried: frozenset[str] = frozenset()
            for total, i in spans:
                if end - pos < total:
                    longest_pending = max(longest_pending, total)
                    carried |= self.framers[i].carries
                    continue
                framer = self.framers[i]
                try:
                    frame = framer.parse(bytes(buf[pos : pos + total]))
                except FrameError as exc:
                    failures.append((total, exc, framer.carries))
                    continue
                if framer.name not in self._muted or pos + total > self._muted_until:
                    events.append(frame)
                    in_frames += total
                pos += total
                break
            else:
                if longest_pending:
                    hidden = self._hidden(pos, end, frozenset() if final else carried)
                    if hidden is None and not final:
                        break  # wait for more bytes
                    if hidden is not None and carried:
                        # released: now the frames it might have carried are frames of their own
                        hidden = self._hidden(pos, end, frozenset())
                    stop = end if hidden is None else hidden
                    best = _best(failures)
                    error = best[1] if best else _truncated(bytes(buf[pos:stop]), longest_pending)
                    self._report(events, pos, error)
                    pos = stop
                    if hidden is None:
                        break
                    continue
                reported = _best(failures)
                assert reported is not None  # every span was complete and failed
                total, error, carries = reported
                self._report(events, pos, error)
                self._quiet_until = max(self._quiet_until, pos + total)
                if carries and isinstance(error, ChecksumError):
                    self._muted_until = pos + total
                    self._muted = carries
                pos += 1
        self.skipped_bytes += pos - in_frames
        return pos

    def _report(self, events: list[T | FrameError], pos: int, error: FrameError) -> None:
        if pos >= self._quiet_until:
            events.append(error)

    def _hidden(self, pos: int, end: int, carried: frozenset[str]) -> int | None:
        """Offset of the first complete, valid frame starting in buf[pos+1:end], if any,
        leaving out frames of the kinds in `carried`. Looks only at bytes not seen before."""
        buf, base = self._buf, self._base
        j = buf.find(START, max(self._scanned - base, pos + 1), end)
        while j >= 0:
            if end - j < HEADER_LEN:
                break  # its header is not complete: look at it again next time
            for i, framer in enumerate(self.framers):
                length = framer.span(buf, j)
                if length is None:
                    continue
                if end - j < length:
                    heapq.heappush(self._waiting, (base + j + length, base + j, length, i))
                elif framer.valid(buf, j, length):
                    self._valid.append((base + j, i))
            j = buf.find(START, j + 1, end)
        self._scanned = base + (end if j < 0 else j)
        waiting = self._waiting
        while waiting and waiting[0][0] <= base + end:
            _, start, length, i = heapq.heappop(waiting)
            if start > base + pos and self.framers[i].valid(buf, start - base, length):
                self._valid.append((start, i))
        self._valid = [(start, i) for start, i in self._valid if start > base + pos]
        hits = [start for start, i in self._valid if self.framers[i].name not in carried]
        return min(hits) - base if hits else None


def _best(
    failures: list[tuple[int, FrameError, frozenset[str]]],
) -> tuple[int, FrameError, frozenset[str]] | None:
    """The failure to report: one whose end byte was right (checksum) first, else the first."""
    for failure in failures:
        if isinstance(failure[1], ChecksumError):
            return failure
    return failures[0] if failures else None


def _truncated(raw: bytes, need: int | None) -> TruncatedFrame:
    if need is None:
        return TruncatedFrame(f"frame cut off after {len(raw)} bytes, inside the header", raw)
    return TruncatedFrame(f"frame cut off after {len(raw)} of {need} bytes", raw)
