"""Time for simulated meters: one world clock, and each meter's own clock on top of it.

The world clock is the local time of the fleet's time zone (default Asia/Shanghai: real meters
keep Beijing time whatever the concentrator's or the simulator's machine says). It runs from an
anchor on the run's time source (`common.clock`: real time, or the accelerated clock that all
processes of a soak share, so freezes fall on the agent's midnights), or stands still
(`freeze()`), and can be set or advanced by tests without sleeping. A meter's clock is the
world's time seen through the meter's offset and drift (ppm):
``meter = anchor_meter + (world - anchor_world) * (1 + ppm/1e6)``.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import common.clock

__all__ = ["DEFAULT_TIMEZONE", "MeterClock", "WorldClock", "local_now"]

DEFAULT_TIMEZONE = "Asia/Shanghai"


def local_now(tz: dt.tzinfo, source: common.clock.Clock | None = None) -> dt.datetime:
    """Now in `tz` on the run's time source, as the naive local time a meter's clock shows."""
    clock = source if source is not None else common.clock.current()
    return clock.now(tz).replace(tzinfo=None, microsecond=0)


class WorldClock:
    """The simulation's "true" local time: naive datetimes in the fleet's time zone `tz`."""

    def __init__(
        self,
        start: dt.datetime | None = None,
        *,
        frozen: bool = False,
        tz: dt.tzinfo | None = None,
        source: common.clock.Clock | None = None,
    ) -> None:
        self.tz = tz if tz is not None else zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)
        self.source = source if source is not None else common.clock.current()
        self._anchor = start if start is not None else local_now(self.tz, self.source)
        self._since = self.source.time()
        self._frozen = frozen

    def now(self) -> dt.datetime:
        if self._frozen:
            return self._anchor
        return self._anchor + dt.timedelta(seconds=self.source.time() - self._since)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def set(self, when: dt.datetime) -> None:
        """Jump to `when` (keeps running if it was running)."""
        self._anchor = when
        self._since = self.source.time()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + dt.timedelta(seconds=seconds))

    def freeze(self, when: dt.datetime | None = None) -> None:
        """Stop the clock (at `when`, or where it is)."""
        self._anchor = when if when is not None else self.now()
        self._frozen = True

    def run(self) -> None:
        """Let the clock run in real time from where it stands."""
        self._anchor = self.now()
        self._since = self.source.time()
        self._frozen = False


class MeterClock:
    """A meter's clock: the world's time with an offset and a drift in ppm."""

    def __init__(self, world: WorldClock, *, offset_s: float = 0.0, drift_ppm: float = 0.0) -> None:
        self.world = world
        self.drift_ppm = drift_ppm
        self._anchor_world = world.now()
        self._anchor_meter = self._anchor_world + dt.timedelta(seconds=offset_s)

    def now(self) -> dt.datetime:
        elapsed = (self.world.now() - self._anchor_world).total_seconds()
        return self._anchor_meter + dt.timedelta(seconds=elapsed * (1 + self.drift_ppm * 1e-6))

    def set_now(self, when: dt.datetime) -> None:
        """Set the meter's notion of now (what a time write or time sync does)."""
        self._anchor_world = self.world.now()
        self._anchor_meter = when

    @property
    def error_s(self) -> float:
        """How far the meter is ahead of the world (negative: behind)."""
        return (self.now() - self.world.now()).total_seconds()
