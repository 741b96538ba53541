"""What a simulated meter measures: a load profile, a time-of-use table, and the energy that
follows from them, as pure functions of the meter's own clock.

Power is piecewise constant per hour: ``base_kw * shape[hour] * day_factor(date)``, so the
energy registers are the exact integral of the power the meter reports, split over tariffs by
the time-of-use table. Pauses (relay open) and clock re-sets keep the registers continuous.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_TOU",
    "Accumulator",
    "LoadProfile",
    "TariffClock",
    "TouTable",
]

#: a residential day: low at night, peaks in the morning and evening (multiples of base load)
DEFAULT_SHAPE = (
    0.45, 0.4, 0.38, 0.36, 0.38, 0.5, 0.8, 1.1, 1.0, 0.9, 0.85, 0.9,
    1.0, 0.9, 0.85, 0.85, 0.95, 1.3, 1.7, 1.8, 1.6, 1.3, 0.9, 0.6,
)  # fmt: skip

#: tariff per hour of day, 1 = 尖 sharp, 2 = 峰 peak, 3 = 平 flat, 4 = 谷 valley (a common
#: provincial split; real tables change by province and season)
DEFAULT_TOU = (
    4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 2, 1,
    1, 3, 3, 3, 3, 2, 2, 1, 1, 2, 3, 4,
)  # fmt: skip


@functools.lru_cache(maxsize=64)
def _hourly_minutes(tariffs: int, hours: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(
        1 if tariffs <= 1 else min(hours[h], tariffs) for h in range(24) for _ in range(60)
    )


class TariffClock(Protocol):
    """Which energy register (1..`tariffs`) each minute of a day books into."""

    @property
    def tariffs(self) -> int: ...

    def minutes(self, day: dt.date) -> Sequence[int]:
        """1440 register numbers; the same object for days that book alike (it is a cache key)."""
        ...


@dataclass(frozen=True, slots=True)
class TouTable:
    """Which tariff applies in each hour, the same every day (meters without a tariff set-up).
    A meter with one tariff books everything on T1."""

    tariffs: int = 4
    hours: tuple[int, ...] = DEFAULT_TOU
    _minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_minutes", _hourly_minutes(self.tariffs, self.hours))

    def tariff_at(self, hour: int) -> int:
        if self.tariffs <= 1:
            return 1
        return min(self.hours[hour], self.tariffs)

    def minutes(self, day: dt.date) -> Sequence[int]:
        return self._minutes


@dataclass(frozen=True, slots=True)
class LoadProfile:
    base_kw: float
    salt: int
    """per-meter number that varies the day factors (from the fleet seed)"""
    shape: tuple[float, ...] = DEFAULT_SHAPE

    def day_factor(self, day: dt.date) -> float:
        """0.7..1.3, deterministic per (meter, date): weekends and weather in one number."""
        h = (day.toordinal() * 2654435761 + self.salt * 40503) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 1274126177) & 0xFFFFFFFF
        return 0.7 + 0.6 * (h / 0xFFFFFFFF)

    def power_kw(self, when: dt.datetime) -> float:
        return self.base_kw * self.shape[when.hour] * self.day_factor(when.date())


@dataclass(frozen=True, slots=True)
class _DayShape:
    """How one day's minutes book the load shape: `prefix[h]` = the shape booked per register
    by the full hours before hour h (`prefix[24]`: the whole day), `runs[h]` = the hour's minutes
    as (first, end, register) runs."""

    prefix: list[list[float]]
    runs: list[list[tuple[int, int, int]]]


@dataclass
class Accumulator:
    """Energy per tariff (index 1..n) as a function of meter time.

    ``value(t) = initial + integral of the profile from origin to t + offset``; `offset` absorbs
    pauses and clock re-sets so that what the meter shows never jumps.
    """

    profile: LoadProfile
    tou: TariffClock
    origin: dt.date
    initial: tuple[float, ...]
    ratio: float = 1.0
    """this register's share of the profile (0 for an export register of a pure consumer)"""
    offset: list[float] = field(default_factory=list)
    paused_at: dt.datetime | None = None
    _days: dict[dt.date, tuple[float, ...]] = field(default_factory=dict)
    _hour_shares: dict[int, tuple[Sequence[int], _DayShape]] = field(default_factory=dict)
    """id(minutes) → (minutes, how they book the shape)"""

    def __post_init__(self) -> None:
        if not self.offset:
            self.offset = [0.0] * self.tou.tariffs

    def reset_cache(self) -> None:
        """Forget what was computed with the previous tariff clock (`tou` was replaced)."""
        self._days.clear()
        self._hour_shares.clear()
        self.offset = [0.0] * self.tou.tariffs

    def _shares(self, day: dt.date) -> _DayShape:
        """How the day's minutes book the load shape (`_DayShape`), memoised per minutes tuple."""
        minutes = self.tou.minutes(day)
        cached = self._hour_shares.get(id(minutes))
        if cached is not None and cached[0] is minutes:
            return cached[1]
        n = self.tou.tariffs
        shape = self.profile.shape
        prefix = [[0.0] * n]
        runs: list[list[tuple[int, int, int]]] = []
        for hour in range(24):
            row = list(prefix[-1])
            hour_runs: list[tuple[int, int, int]] = []
            for m in range(60):
                register = minutes[hour * 60 + m]
                row[register - 1] += shape[hour] / 60
                if hour_runs and hour_runs[-1][2] == register:
                    hour_runs[-1] = (hour_runs[-1][0], m + 1, register)
                else:
                    hour_runs.append((m, m + 1, register))
            prefix.append(row)
            runs.append(hour_runs)
        result = _DayShape(prefix, runs)
        self._hour_shares[id(minutes)] = (minutes, result)
        return result

    def _day_energy(self, day: dt.date, until_hour: float = 24.0) -> list[float]:
        factor = self.profile.day_factor(day) * self.profile.base_kw * self.ratio
        booked = self._shares(day)
        if until_hour >= 24.0:
            return [w * factor for w in booked.prefix[24]]
        full = math.floor(until_hour)
        out = [w * factor for w in booked.prefix[full]]
        # the started hour, run by run (power is constant within the hour)
        elapsed = (until_hour - full) * 60
        weight = self.profile.shape[full] * factor / 60
        for start, end, register in booked.runs[full]:
            if start >= elapsed:
                break
            out[register - 1] += weight * (min(end, elapsed) - start)
        return out

    def _at_midnight(self, day: dt.date) -> tuple[float, ...]:
        """Cumulative profile energy at 00:00 of `day` (memoised)."""
        if day <= self.origin:
            return tuple(0.0 for _ in range(self.tou.tariffs))
        cached = self._days.get(day)
        if cached is not None:
            return cached
        # walk back to the nearest known day, then forward
        start = day
        while start > self.origin and start not in self._days:
            start -= dt.timedelta(days=1)
        acc = list(self._at_midnight(start)) if start > self.origin else [0.0] * self.tou.tariffs
        # `_day_energy(d)` for whole days, inlined (the same arithmetic): a meter installed
        # years ago walks a thousand days here when its fleet is built
        d, one, profile, shares = start, dt.timedelta(days=1), self.profile, self._shares
        while d < day:
            factor = profile.day_factor(d) * profile.base_kw * self.ratio
            for i, w in enumerate(shares(d).prefix[24]):
                acc[i] += w * factor
            d += one
            self._days[d] = tuple(acc)
        return self._days[day]

    def _profile_at(self, when: dt.datetime) -> list[float]:
        if self.ratio == 0.0:  # the export register of a pure consumer: nothing ever books
            return [0.0] * self.tou.tariffs
        base = list(self._at_midnight(when.date()))
        hours = when.hour + when.minute / 60 + (when.second + when.microsecond / 1e6) / 3600
        for i, e in enumerate(self._day_energy(when.date(), hours)):
            base[i] += e
        return base

    def tariffs_at(self, when: dt.datetime) -> list[float]:
        """kWh per tariff (T1..Tn) at meter time `when`."""
        at = self.paused_at if self.paused_at is not None and self.paused_at < when else when
        prof = self._profile_at(at)
        return [self.initial[i] + prof[i] + self.offset[i] for i in range(self.tou.tariffs)]

    def pause(self, when: dt.datetime) -> None:
        if self.paused_at is None:
            self.paused_at = when

    def resume(self, when: dt.datetime) -> None:
        if self.paused_at is None:
            return
        if when > self.paused_at:
            before, after = self._profile_at(self.paused_at), self._profile_at(when)
            for i in range(self.tou.tariffs):
                self.offset[i] -= after[i] - before[i]
        self.paused_at = None

    def rebase(self, old: dt.datetime, new: dt.datetime) -> None:
        """The meter's clock jumped from `old` to `new`: keep the registers where they were."""
        if self.paused_at is not None:
            # a paused register holds the value of its pause: move the pause along
            old, self.paused_at = self.paused_at, new
        before, after = self._profile_at(old), self._profile_at(new)
        for i in range(self.tou.tariffs):
            self.offset[i] += before[i] - after[i]
