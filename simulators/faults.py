"""Faults of meters and lines, drawn from seeded random generators so a run can be repeated.

Per meter: dead, loss per attempt (intermittent meters), corrupted replies (a flipped byte:
the checksum fails), slow replies (past the 500 ms window), line garbage around a reply, and
how many FEH wake-up bytes precede a reply. Per bus: noise windows (hours of the day when an
exchange is hit with a given probability), and line-wide loss / corruption.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

__all__ = ["BusFaults", "MeterFaults", "NoiseWindow", "rng_for"]

#: standard reply window (DL/T 645-2007 5.3.3): 20 ms <= Td <= 500 ms
REPLY_DELAY_S = (0.020, 0.500)
#: how late a "slow" meter answers
SLOW_DELAY_S = (0.600, 1.500)


def rng_for(seed: int | str, *parts: object) -> random.Random:
    """A generator that depends only on the fleet seed and the given names."""
    text = "/".join(str(p) for p in (seed, *parts))
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


@dataclass
class MeterFaults:
    dead: bool = False
    loss: float = 0.0
    """probability that the meter does not answer an attempt (intermittent meter)"""
    corrupt: float = 0.0
    """probability that a reply has a flipped byte (checksum error)"""
    slow: float = 0.0
    """probability that a reply comes after the 500 ms window"""
    garbage: float = 0.0
    """probability of line garbage before and after a reply"""
    wakeup: tuple[int, int] = (0, 4)
    """FEH bytes before a reply: drawn from this range (inclusive)"""

    def as_dict(self) -> dict[str, object]:
        return {
            "dead": self.dead,
            "loss": self.loss,
            "corrupt": self.corrupt,
            "slow": self.slow,
            "garbage": self.garbage,
            "wakeup": list(self.wakeup),
        }


@dataclass(frozen=True, slots=True)
class NoiseWindow:
    """Between `start_hour` and `end_hour` (bus local time, end exclusive, may wrap midnight)
    an exchange is hit by noise with probability `rate`."""

    start_hour: int
    end_hour: int
    rate: float

    def covers(self, hour: int) -> bool:
        if self.start_hour <= self.end_hour:
            return self.start_hour <= hour < self.end_hour
        return hour >= self.start_hour or hour < self.end_hour


@dataclass
class BusFaults:
    noise: tuple[NoiseWindow, ...] = ()
    loss: float = 0.0
    corrupt: float = 0.0

    def noise_rate(self, hour: int) -> float:
        return max((w.rate for w in self.noise if w.covers(hour)), default=0.0)
