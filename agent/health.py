"""Per-meter health: when a meter counts as offline, and when to probe it again.

A meter is marked offline only after BOTH `offline_after_failures` consecutive contact failures
AND `offline_after_minutes` since the first of them — one bad hour does not take a meter out.
An offline meter is re-probed with exponential backoff (reprobe_min → reprobe_max), so a dead
meter costs at most one timeout per backoff period and never stalls the rest of its bus.
Only failures that say "no contact" count; an abnormal reply proves the meter is alive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.config import HealthConfig
from protocols.payloads import FailureReason

__all__ = ["CONTACT_FAILURES", "HealthTracker", "MeterHealth"]

CONTACT_FAILURES = frozenset(
    {
        FailureReason.NO_REPLY,
        FailureReason.TIMEOUT,
        FailureReason.CHECKSUM,
        FailureReason.FRAME_ERROR,
        FailureReason.ROUTE_FAILURE,  # behind a working carrier module, the meter unreachable
    }
)

EventHook = Callable[[str, str, dict[str, object]], None]
"""(event name, meter id, detail)"""


@dataclass
class MeterHealth:
    failures: int = 0
    first_failure: float | None = None
    offline: bool = False
    next_probe: float = 0.0
    backoff_s: float = 0.0
    last_reason: FailureReason | None = None


class HealthTracker:
    def __init__(self, cfg: HealthConfig, on_event: EventHook | None = None) -> None:
        self.cfg = cfg
        self._meters: dict[str, MeterHealth] = {}
        self._on_event = on_event

    def state(self, meter: str) -> MeterHealth:
        return self._meters.setdefault(meter, MeterHealth())

    def may_attempt(self, meter: str, now: float) -> bool:
        """Whether a plan may talk to the meter now. A due re-probe of an offline meter is
        handed out once (the probe is reserved until its outcome is recorded), so the daily,
        interval and clock plans do not all probe the same dead meter at once."""
        h = self._meters.get(meter)
        if h is None or not h.offline:
            return True
        if now < h.next_probe:
            return False
        h.next_probe = now + h.backoff_s
        return True

    @property
    def offline(self) -> list[str]:
        return [m for m, h in self._meters.items() if h.offline]

    def success(self, meter: str, now: float) -> None:
        h = self.state(meter)
        if h.offline and self._on_event:
            self._on_event("meter_online", meter, {"after_failures": h.failures})
        self._meters[meter] = MeterHealth()

    def failure(self, meter: str, reason: FailureReason, now: float) -> None:
        if reason not in CONTACT_FAILURES:
            if reason is FailureReason.ABNORMAL_REPLY or reason is FailureReason.IMPLAUSIBLE_VALUE:
                self.success(meter, now)  # it answered: alive, whatever it said
            return
        h = self.state(meter)
        h.failures += 1
        h.last_reason = reason
        if h.first_failure is None:
            h.first_failure = now
        if h.offline:
            h.backoff_s = min(h.backoff_s * 2, self.cfg.reprobe_max_minutes * 60)
            h.next_probe = now + h.backoff_s
        elif (
            h.failures >= self.cfg.offline_after_failures
            and now - h.first_failure >= self.cfg.offline_after_minutes * 60
        ):
            h.offline = True
            h.backoff_s = self.cfg.reprobe_min_minutes * 60
            h.next_probe = now + h.backoff_s
            if self._on_event:
                self._on_event(
                    "meter_offline",
                    meter,
                    {"failures": h.failures, "reason": reason.value, "next_probe_s": h.backoff_s},
                )
