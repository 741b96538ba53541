"""What every plan needs: archive, pollers, health, state, the outbox, the clock, events."""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import common.clock
from agent.archive import Archive
from agent.health import HealthTracker
from agent.poller import BusPoller
from agent.state import PlanState
from common.clock import Clock as TimeSource
from protocols.dlt645 import Edition
from protocols.measurements import Measurement

__all__ = ["Clock", "PlanContext", "Sink", "edition_of", "make_reading"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where plan output goes: the outbox (readings, rounds, events)."""

    async def put(self, kind: str, payload: dict[str, Any]) -> int: ...

    async def put_many(self, kind: str, payloads: list[dict[str, Any]]) -> list[int]: ...


class Clock:
    """Local time of the meters' zone, and sleeping until a local time, on the process's
    time source (`common.clock`: the real clock, or a run's accelerated one)."""

    def __init__(self, tz: zoneinfo.ZoneInfo, source: TimeSource | None = None) -> None:
        self.tz = tz
        self.source = source if source is not None else common.clock.current()

    def now(self) -> dt.datetime:
        return self.source.now(self.tz)

    def monotonic(self) -> float:
        return self.source.monotonic()

    async def sleep_until(self, when: dt.datetime) -> None:
        while (left := (when - self.now()).total_seconds()) > 0:
            await self.source.sleep(min(left, 60.0))  # re-check: wall clock can be stepped


@dataclass
class PlanContext:
    concentrator: str
    archive: Callable[[], Archive]
    pollers: dict[str, BusPoller[Any]]
    health: HealthTracker
    state: PlanState
    sink: Sink
    clock: Clock
    events: Callable[[str, str | None, dict[str, Any]], None]
    """emit an event (name, meter or None, detail); the daemon queues it to the outbox"""
    clock_offsets: dict[str, float] = field(default_factory=dict)
    max_clock_offset_s: float = 60.0
    on_outcome: Callable[[str, str | None], None] = lambda plan, reason: None
    """(plan, failure reason or None for success) after every attempt: metrics"""

    def poller_for(self, bus: str) -> BusPoller[Any]:
        return self.pollers[bus]


def edition_of(protocol: str) -> Edition:
    return Edition.V1997 if protocol == "dlt645-1997" else Edition.V2007


def make_reading(
    ctx: PlanContext,
    *,
    meter: str,
    item: str,
    plan: str,
    data_time: dt.datetime,
    read_at: dt.datetime,
    values: list[Measurement],
    bus: str,
    quality: str | None = None,
) -> dict[str, Any]:
    """One reading in the `readings` schema; flags it when the meter's clock is known off."""
    out: dict[str, Any] = {
        "meter": meter,
        "item": item,
        "plan": plan,
        "data_time": data_time.isoformat(timespec="seconds"),
        "read_at": read_at.isoformat(timespec="seconds"),
        "values": {m.name: m.as_json() for m in values},
        "bus": bus,
    }
    offset = ctx.clock_offsets.get(meter)
    if offset is not None:
        out["clock_offset_s"] = round(offset, 3)
        if abs(offset) > ctx.max_clock_offset_s and quality is None:
            quality = "clock_suspect"
    if quality is not None:
        out["quality"] = quality
    return out
