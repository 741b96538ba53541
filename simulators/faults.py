"""Faults of meters and lines.

Drawn from seeded random generators so a run can be repeated — per meter: dead, loss per attempt
(intermittent meters), corrupted replies (a flipped byte: the checksum fails), slow replies
(past the 500 ms window), line garbage around a reply, and how many FEH wake-up bytes precede a
reply; per bus: noise windows (hours of the day when an exchange is hit with a given
probability), and line-wide loss / corruption.

Injected on purpose (chaos tests): `InjectedFault` rules in a `FaultBook`, each hitting the next
`times` requests of one kind (`on`) to one meter — drop the request, drop the reply after the
meter acted, deliver the request late (past its session), answer with an error after the meter
acted, or leave the relay contact where it is. Set from a test (`Fleet.inject`), from the fleet
file (``[[inject]]``) or over the control channel (`simulators.control`).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INJECTED_ACTIONS",
    "INJECTED_TARGETS",
    "BusFaults",
    "FaultBook",
    "InjectedFault",
    "MeterFaults",
    "NoiseWindow",
    "rng_for",
]

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


#: what an injected fault does to a request it hits
INJECTED_ACTIONS = (
    "drop_request",  # the meter never hears it: no state change, no reply (outcome "lost")
    "drop_reply",  # the meter acts on it (credits, trips …) but its reply never reaches the line
    "late",  # it reaches the meter `late_s` seconds late: the meter judges it at now + late_s
    "error_after",  # the meter acts on it, then answers abnormally (SERR `serr` / ERR `err`)
    "relay_stuck",  # 1CH: accepted (9C), the command bits change, the contact does not move
)
#: which requests a fault hits (`on`): a 03H step, 1CH, plain reads, any 03H, or anything
INJECTED_TARGETS = (
    "any",
    "security",
    "auth",
    "auth_validity",
    "auth_end",
    "open",
    "topup",
    "wallet_init",
    "status",
    "readback",
    "relay",
    "read",
)


@dataclass
class InjectedFault:
    """One rule: hit the requests of kind `on` to `meter`, after letting `skip` of them pass,
    `times` times (None: until removed)."""

    meter: str
    action: str
    on: str = "any"
    times: int | None = 1
    skip: int = 0
    late_s: float = 0.0
    """late: how late the request reaches the meter"""
    serr: int = 0x0001
    """error_after on 03H: the SERR word of the abnormal reply (default 其它错误)"""
    err: int = 0x01
    """error_after on other functions: the ERR byte (default other error)"""
    id: int = 0
    seen: int = 0
    """matching requests so far (skipped ones included)"""
    hits: int = 0
    """requests this rule acted on"""

    def __post_init__(self) -> None:
        if self.action not in INJECTED_ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(INJECTED_ACTIONS)}")
        if self.on not in INJECTED_TARGETS:
            raise ValueError(f"on {self.on!r} is not one of {', '.join(INJECTED_TARGETS)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times: at least 1 (or none: until removed)")
        if self.skip < 0 or self.late_s < 0:
            raise ValueError("skip and late_s are not negative")
        if not 0 <= self.serr <= 0xFFFF or not 0 <= self.err <= 0xFF:
            raise ValueError("serr is a 16-bit word, err one byte")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> InjectedFault:
        """From a fleet file's ``[[inject]]`` table or a control-channel request body."""
        known = {"meter", "action", "on", "times", "skip", "late_s", "serr", "err"}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(sorted(unknown))} (known: {sorted(known)})"
            )
        if not isinstance(doc.get("meter"), str) or not isinstance(doc.get("action"), str):
            raise ValueError("meter and action are required (strings)")
        times = doc.get("times", 1)
        return cls(
            meter=doc["meter"],
            action=doc["action"],
            on=str(doc.get("on", "any")),
            times=None if times in (None, "forever") else int(times),
            skip=int(doc.get("skip", 0)),
            late_s=float(doc.get("late_s", 0.0)),
            serr=_int(doc.get("serr", 0x0001)),
            err=_int(doc.get("err", 0x01)),
        )

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "meter": self.meter,
            "action": self.action,
            "on": self.on,
            "times": self.times,
            "skip": self.skip,
            "late_s": self.late_s,
            "serr": f"{self.serr:04X}",
            "err": f"{self.err:02X}",
            "seen": self.seen,
            "hits": self.hits,
        }


def _int(value: Any) -> int:
    """A number, or hex text ("0002")."""
    return int(value, 16) if isinstance(value, str) else int(value)


@dataclass
class FaultBook:
    """The injected faults of a fleet, consulted by the bus for every request to a meter."""

    rules: list[InjectedFault] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def add(self, rule: InjectedFault) -> InjectedFault:
        rule.id = next(self._ids)
        self.rules.append(rule)
        return rule

    def clear(self, meter: str | None = None) -> int:
        """Remove the rules (of one meter); returns how many."""
        keep = [r for r in self.rules if meter is not None and r.meter != meter]
        removed = len(self.rules) - len(keep)
        self.rules = keep
        return removed

    def take(self, meter: str, target: str) -> InjectedFault | None:
        """The rule that hits this request (counted), or None. `target` is the request's kind
        (`INJECTED_TARGETS`); a 03H step also matches ``security``; everything matches ``any``.
        The first live rule in order of addition wins."""
        for rule in self.rules:
            if rule.meter != meter or rule.spent:
                continue
            if rule.on not in ("any", target) and not (
                rule.on == "security" and target in _SECURITY_TARGETS
            ):
                continue
            rule.seen += 1
            if rule.seen <= rule.skip:
                continue
            rule.hits += 1
            return rule
        return None

    def as_list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.rules]


_SECURITY_TARGETS = frozenset(
    {"security", "auth", "auth_validity", "auth_end", "open", "topup", "wallet_init", "status",
     "readback"}
)  # fmt: skip
