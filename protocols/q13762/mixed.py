"""A stream decoder for bytes that may hold DL/T 645 AND Q/GDW 1376.2 frames (a technician's
paste, a sniffed line): both start with 68H, so every 68H is tried as both.

    645     68 A0 A1 A2 A3 A4 A5 68 C L …            total = 12 + L (one byte)
    1376.2  68 L  L  C  R0 R1 R2 R3 R4 R5 …          total = L (two bytes, whole frame)

How they are told apart:

* a 68H is a 645 candidate when the byte 7 after it is 68H again; it is a 1376.2 candidate when
  its L is plausible: 15 + the address field R0/C announce ≤ L ≤ `max_length` (2048 by
  default: with random bytes 97 % of 68Hs are ruled out);
* each candidate is validated by its own codec (end byte, its own checksum range, structure);
  the shortest valid one wins — a 645 frame whose first bytes happen to read as a plausible
  1376.2 L (meter addresses with A1 ≤ 08) is returned as 645 as soon as its 16H arrives;
* the one true ambiguity: a 645 frame with address bytes A0 A1 = 98 00 and L = 8CH is, byte for
  byte, also a valid 1376.2 frame of 152 bytes (68 + 98 + 00 = 100H, so both checksums are the
  same sum). Same length, both valid: 645 wins (its second 68H is structure, 1376.2's R3 = 68H
  would be coincidence). Tested in tests/protocols/test_q13762_stream.py;
* when every candidate at a 68H fails, one error is reported: the one whose end byte was right
  (`ChecksumError`) first, else the 645 candidate's. Hunting goes on one byte after that 68H;
  the 645 frames inside a 1376.2 frame that failed only its checksum (L and end byte right)
  are part of it and are skipped with it — a bad carrier frame is one error, nothing else.
  (The price: a noise 68H whose L happens to end on a 16H mutes the 645 frames inside it;
  about 1 noise 68H in 10⁴ in random bytes);
* a 1376.2 frame arriving byte by byte completes its inner 645 frames before itself: those do
  not release the pending 1376.2 candidate (a false start is released by a hidden 1376.2 frame,
  by its own completion, or by `flush()`), so a mixed line yields the carrier frame whole.

The 645 side is validated by `protocols.dlt645.decode_frame` (no second 645 parser here).
"""

from __future__ import annotations

from protocols import dlt645
from protocols.errors import FrameError
from protocols.q13762._hunt import Hunter
from protocols.q13762.frame import DEFAULT_MAX_FRAME, Frame
from protocols.q13762.stream import Q13762Framer

__all__ = ["MixedEvent", "MixedFrameDecoder"]

MixedEvent = dlt645.Frame | Frame | FrameError

_645_SECOND_START = 7  # 68 A0..A5 68
_645_LENGTH = 9  # … C L
_645_OVERHEAD = 12  # 68 A(6) 68 C L … CS 16


class Dlt645Framer:
    """Where a DL/T 645 frame may start (second 68H at offset 7) and how long it is (12 + L)."""

    name = "645"
    carries: frozenset[str] = frozenset()

    def __init__(self, edition: dlt645.Edition | None = None) -> None:
        self.edition = edition

    def span(self, buf: bytearray, pos: int) -> int | None:
        if buf[pos + _645_SECOND_START] != 0x68:
            return None
        return _645_OVERHEAD + buf[pos + _645_LENGTH]

    def valid(self, buf: bytearray, pos: int, total: int) -> bool:
        last = pos + total
        return buf[last - 1] == 0x16 and sum(buf[pos : last - 2]) & 0xFF == buf[last - 2]

    def parse(self, raw: bytes) -> dlt645.Frame:
        return dlt645.decode_frame(raw, edition=self.edition)


class MixedFrameDecoder:
    """Feed bytes; get `dlt645.Frame`s, `q13762.Frame`s and `FrameError`s in stream order.

    Same contract as the two single-protocol decoders: `flush()`, `reset()`, `pending` (below
    the longest frame either protocol accepts), `skipped_bytes` (bytes in no returned frame).
    `edition` forces the 645 edition (default: inferred per frame).
    """

    def __init__(
        self,
        *,
        edition: dlt645.Edition | None = None,
        max_length: int = DEFAULT_MAX_FRAME,
        dlt645_frames: bool = True,
        q13762_frames: bool = True,
    ) -> None:
        framers: list[Dlt645Framer | Q13762Framer] = []
        if dlt645_frames:
            framers.append(Dlt645Framer(edition))
        if q13762_frames:
            framers.append(Q13762Framer(max_length))
        if not framers:
            raise ValueError("a decoder for no protocol at all")
        self._hunter: Hunter[dlt645.Frame | Frame] = Hunter(framers)

    @property
    def pending(self) -> int:
        return self._hunter.pending

    @property
    def skipped_bytes(self) -> int:
        return self._hunter.skipped_bytes

    def feed(self, data: bytes) -> list[MixedEvent]:
        return self._hunter.feed(data)

    def flush(self) -> list[MixedEvent]:
        return self._hunter.flush()

    def reset(self) -> None:
        self._hunter.reset()
