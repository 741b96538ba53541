"""The ideal time of what a client asked a CCO, from the simulator's own record.

Benches compare a measured round against it. Two ideals, both from the accepted reads of the
record (1376.2 records with `in_flight` set: F1 F1, 13F1, 02F1 the module took, whatever their
end — answered, silent, failed route), in `applied_s` (the seconds the module really waited):

* `bound`: Σ applied latency / window + wire time — the issue's formula; no client can beat it,
  but none reaches it either when the round is short next to its slowest reads (one read that
  runs into the 60 s monitor timeout near the end of a 125 s round holds the round open);
* `schedule`: the same reads replayed in the order they were asked, each started as soon as
  one of `window` slots is free (list scheduling) + wire time — what a perfect client with that
  window and that order takes; the fair yardstick for a concentrator's pipelining.

Wire time: every byte of the requests and replies at 11 bits per byte (8E1) at `baud`, both
directions added (a conservative sum; 0 when `baud` is None — ptys and TCP without line timing).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from simulators.line import BITS_PER_BYTE
from simulators.record import CarrierRecord

__all__ = ["Ideal", "ideal_time"]


@dataclass(frozen=True, slots=True)
class Ideal:
    reads: int
    latency_s: float
    """Σ applied latency of the accepted reads"""
    wire_s: float
    bound_s: float
    """Σ latency / window + wire"""
    schedule_s: float
    """list-scheduling replay in request order with `window` slots + wire"""


def ideal_time(
    records: Iterable[object], window: int, *, baud: int | None = None, bus: str | None = None
) -> Ideal:
    """The ideal times of the accepted reads in `records` (any records: only the carrier reads
    of `bus`, or of every bus, are used) for a client keeping `window` reads in flight."""
    if window < 1:
        raise ValueError("window must be at least 1")
    reads = sorted(
        (
            r
            for r in records
            if isinstance(r, CarrierRecord)
            and r.dir == "down"
            and r.in_flight is not None
            and r.applied_s is not None
            and (bus is None or r.bus == bus)
        ),
        key=lambda r: (r.t_request or 0.0, r.seq or 0),
    )
    total = sum(r.applied_s or 0.0 for r in reads)
    wire = 0.0
    if baud:
        wire = sum(r.request_bytes + r.reply_bytes for r in reads) * BITS_PER_BYTE / baud
    slots = [0.0] * window
    for r in reads:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + (r.applied_s or 0.0))
    return Ideal(len(reads), total, wire, total / window + wire, max(slots) + wire)
