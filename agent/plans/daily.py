"""The daily plan: collect every archived meter's 00:00 daily freeze, explain every miss.

After the freeze (meter local time, `start`) the plan runs rounds until `deadline`: meters not
yet read today come first, failed meters are retried no sooner than `retry_spacing_minutes` so a
bad hour on the line can pass, offline meters are probed only when their backoff allows. Every
round ends with a report (expected, read, failed by reason, bus busy time); the round at the
deadline is marked final. Days missed within `backfill_days` are read afterwards from the
meters' frozen history (05 06 00/01 NN) and published with quality "backfill".

DL/T 645-2007 meters give the freeze record itself. Meters without frozen history (1997
edition, Modbus) give their energy totals read in the first successful attempt of the day;
`data_time` is then the time of that read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from agent.config import DailyPlan as DailyPlanConfig
from agent.config import MeterConfig, parse_hhmm
from agent.dlt645 import Dlt645Client, reason_of
from agent.plans.context import PlanContext, edition_of, make_reading
from agent.poller import PRIORITY_BACKFILL, PRIORITY_DAILY, BusClosed
from protocols.dlt645 import Address
from protocols.errors import ValueFormatError
from protocols.measurements import Measurement
from protocols.payloads import FailureReason

__all__ = ["DailyPlanner", "NotFrozenYet", "Outcome"]

log = logging.getLogger(__name__)

DI_FREEZE_TIME = 0x05060000
DI_FREEZE_IMPORT = 0x05060100
DI_FREEZE_EXPORT = 0x05060200
DI_BALANCE = 0x00900200
DI_IMPORT_1997 = 0x901F
ITEM = "daily_freeze"


class NotFrozenYet(ValueFormatError):
    """The meter has no freeze for the day asked: its newest is older (clock behind, or it was
    off at midnight). Reported as an implausible value with this detail."""


@dataclass(frozen=True)
class Outcome:
    meter: str
    ok: bool
    reason: FailureReason | None = None
    detail: str = ""
    attempted: bool = True


def _freeze_time(measurements: list[Measurement]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(measurements[0].value))


class DailyPlanner:
    name = "daily"

    def __init__(self, cfg: DailyPlanConfig, ctx: PlanContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.start = parse_hhmm(cfg.start, "start")
        self.deadline = parse_hhmm(cfg.deadline, "deadline")
        self.rounds = 0

    # --- the long-lived task ------------------------------------------------------------------
    async def run(self) -> None:
        clock = self.ctx.clock
        while True:
            now = clock.now()
            day = now.date()
            begin = dt.datetime.combine(day, self.start, clock.tz)
            end = dt.datetime.combine(day, self.deadline, clock.tz)
            if now < begin:
                await clock.sleep_until(begin)
                continue
            if now >= end:
                if self.ctx.state.mark("daily_final") != day.isoformat():
                    await self.run_round(day, final=True)
                    self.ctx.state.set_mark("daily_final", day.isoformat())
                await clock.sleep_until(begin + dt.timedelta(days=1))
                continue
            report = await self.run_round(day, final=False)
            if self.cfg.backfill_days:
                await self.backfill(day)
            spacing = dt.timedelta(minutes=self.cfg.retry_spacing_minutes)
            if report["read"] >= report["expected"]:
                await clock.sleep_until(end)  # everyone read: only the final report is left
            else:
                await clock.sleep_until(min(clock.now() + spacing, end))

    # --- one round ------------------------------------------------------------------------------
    def _due(self, day: dt.date, now: dt.datetime) -> list[MeterConfig]:
        status = self.ctx.state.day(day)
        spacing = dt.timedelta(minutes=self.cfg.retry_spacing_minutes)
        due = []
        for m in self.ctx.archive().meters:
            s = status.get(m.meter_id)
            if s is not None and s.status == "read":
                continue
            if s is not None and s.last_attempt is not None and now - s.last_attempt < spacing:
                continue
            due.append((0 if s is None or s.attempts == 0 else 1, s.attempts if s else 0, m))
        due.sort(key=lambda t: (t[0], t[1]))  # never tried first, then fewest attempts
        return [m for *_, m in due]

    async def run_round(self, day: dt.date, *, final: bool) -> dict[str, Any]:
        """One pass over the meters still unread for `day`; publishes and returns the report."""
        ctx = self.ctx
        started = ctx.clock.now()
        self.rounds += 1
        busy_before = self._busy()
        deadline = dt.datetime.combine(day, self.deadline, ctx.clock.tz)
        due = [] if final else self._due(day, started)
        self._record(day, await asyncio.gather(*(self._attempt(m, day, deadline) for m in due)))
        report = self._report(day, started, final=final, busy_before=busy_before, kind="round")
        await ctx.sink.put("rounds", report)
        log.info(
            "daily round %s for %s: %d/%d read",
            report["round_id"],
            day,
            report["read"],
            report["expected"],
            extra={"plan": "daily", "failed_by_reason": report["failed_by_reason"]},
        )
        return report

    def _busy(self) -> dict[str, float]:
        return {name: p.busy_seconds for name, p in self.ctx.pollers.items()}

    def _record(self, day: dt.date, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.ctx.state.record(
                day,
                o.meter,
                ok=o.ok,
                at=self.ctx.clock.now(),
                reason=o.reason.value if o.reason else None,
                detail=o.detail or None,
                attempted=o.attempted,
            )

    def _report(
        self,
        day: dt.date,
        started: dt.datetime,
        *,
        final: bool,
        busy_before: dict[str, float],
        kind: str,
    ) -> dict[str, Any]:
        ctx = self.ctx
        ended = ctx.clock.now()
        status = ctx.state.day(day)
        expected = [m.meter_id for m in ctx.archive().meters]
        failed = []
        for meter in expected:
            s = status.get(meter)
            if s is not None and s.status == "read":
                continue
            entry: dict[str, Any] = {"meter": meter}
            if s is None or s.reason is None:
                entry["reason"] = FailureReason.NOT_ATTEMPTED.value
                entry["attempts"] = 0 if s is None else s.attempts
            else:
                entry["reason"] = s.reason
                entry["attempts"] = s.attempts
                if s.detail:
                    entry["detail"] = s.detail[:200]
                if s.last_attempt is not None:
                    entry["last_attempt_at"] = s.last_attempt.isoformat(timespec="seconds")
            failed.append(entry)
        return {
            "plan": self.name,
            "round_id": f"{ctx.concentrator}:daily:{day.isoformat()}:{kind}{self.rounds}",
            "data_day": day.isoformat(),
            "final": final,
            "started_at": started.isoformat(timespec="seconds"),
            "ended_at": ended.isoformat(timespec="seconds"),
            "duration_s": round((ended - started).total_seconds(), 3),
            "expected": len(expected),
            "read": len(expected) - len(failed),
            "failed_by_reason": dict(Counter(f["reason"] for f in failed)),
            "failed": failed,
            "bus_busy_s": {
                name: round(p.busy_seconds - busy_before.get(name, 0.0), 3)
                for name, p in ctx.pollers.items()
            },
        }

    async def _attempt(self, meter: MeterConfig, day: dt.date, deadline: dt.datetime) -> Outcome:
        if self.ctx.clock.now() >= deadline:
            return Outcome(
                meter.meter_id, False, FailureReason.NOT_ATTEMPTED, "plan deadline reached", False
            )
        outcome = await self._on_bus(
            meter, lambda client: self._read_today(client, meter, day), PRIORITY_DAILY
        )
        if outcome.attempted:  # live metrics, as each meter completes
            self.ctx.on_outcome("daily", outcome.reason.value if outcome.reason else None)
        return outcome

    async def _on_bus(
        self, meter: MeterConfig, job: Callable[[Any], Awaitable[dict[str, Any]]], priority: int
    ) -> Outcome:
        """Run one meter's read on its bus: health gate, failure reason, outbox on success."""
        ctx = self.ctx
        mid = meter.meter_id
        if not ctx.health.may_attempt(mid, ctx.clock.monotonic()):
            return Outcome(
                mid, False, FailureReason.METER_OFFLINE, "offline, re-probe not due", False
            )
        try:
            reading = await ctx.poller_for(meter.bus).submit(job, priority=priority)
        except BusClosed:
            return Outcome(mid, False, FailureReason.NOT_ATTEMPTED, "agent shutting down", False)
        except Exception as exc:
            reason, detail = reason_of(exc)
            ctx.health.failure(mid, reason, ctx.clock.monotonic())
            return Outcome(mid, False, reason, detail)
        ctx.health.success(mid, ctx.clock.monotonic())
        await ctx.sink.put("readings", reading)
        return Outcome(mid, True)

    def _reading(
        self,
        meter: MeterConfig,
        data_time: dt.datetime,
        values: list[Measurement],
        quality: str | None = None,
    ) -> dict[str, Any]:
        return make_reading(
            self.ctx,
            meter=meter.meter_id,
            item=ITEM,
            plan="daily",
            data_time=data_time,
            read_at=self.ctx.clock.now(),
            values=values,
            bus=meter.bus,
            quality=quality,
        )

    async def _read_today(self, client: Any, meter: MeterConfig, day: dt.date) -> dict[str, Any]:
        if meter.protocol == "modbus":
            values = await client.read_energy(meter)
            return self._reading(meter, self.ctx.clock.now(), values)
        assert isinstance(client, Dlt645Client)
        assert meter.address is not None
        if meter.protocol == "dlt645-1997":
            address = Address.parse(meter.address)
            result = await client.read(address, DI_IMPORT_1997, edition_of(meter.protocol))
            return self._reading(meter, self.ctx.clock.now(), result.measurements)
        reading = await self._read_frozen(client, meter, day)
        if self.cfg.prepaid_balance and meter.prepaid and day == self.ctx.clock.now().date():
            balance = await client.read(Address.parse(meter.address), DI_BALANCE)
            reading["values"].update({m.name: m.as_json() for m in balance.measurements})
        return reading

    async def _read_frozen(
        self, client: Dlt645Client, meter: MeterConfig, day: dt.date, quality: str | None = None
    ) -> dict[str, Any]:
        """The daily freeze of `day` from a 2007 meter: its record number, then its energy."""
        assert meter.address is not None
        address = Address.parse(meter.address)
        nn, freeze = await self._find_freeze(client, address, day)
        values = list((await client.read(address, DI_FREEZE_IMPORT | nn)).measurements)
        if self.cfg.reverse_energy:
            values += (await client.read(address, DI_FREEZE_EXPORT | nn)).measurements
        return self._reading(meter, freeze.replace(tzinfo=self.ctx.clock.tz), values, quality)

    async def _find_freeze(
        self, client: Dlt645Client, address: Address, day: dt.date
    ) -> tuple[int, dt.datetime]:
        """The record number NN (1 = newest) of the daily freeze taken at 00:00 of `day`."""
        newest = _freeze_time((await client.read(address, DI_FREEZE_TIME | 1)).measurements)
        lag = (newest.date() - day).days
        if lag < 0:
            raise NotFrozenYet(f"newest daily freeze is {newest:%Y-%m-%d %H:%M}, wanted {day}")
        if lag == 0:
            return 1, newest
        if lag > 61:
            raise NotFrozenYet(f"{day} is older than the 62 daily records the meter keeps")
        nn = lag + 1
        stamp = _freeze_time((await client.read(address, DI_FREEZE_TIME | nn)).measurements)
        if stamp.date() != day:
            # a gap in the meter's history (it was off at midnight): no record for that day
            raise NotFrozenYet(
                f"record {nn} is {stamp:%Y-%m-%d}, the meter has no freeze for {day}"
            )
        return nn, stamp

    # --- backfill ---------------------------------------------------------------------------------
    async def backfill(self, today: dt.date) -> int:
        """Read missed past days from frozen history; returns how many readings were recovered.
        Each day that recovered something gets an updated (final) report."""
        ctx = self.ctx
        days = [today - dt.timedelta(days=n) for n in range(1, self.cfg.backfill_days + 1)]
        read = ctx.state.read_days(days)
        recovered = 0
        for day in days:
            missing = [
                m
                for m in ctx.archive().meters
                if m.meter_id not in read[day] and m.protocol == "dlt645-2007"
            ]
            if not missing:
                continue
            started, busy_before = ctx.clock.now(), self._busy()
            outcomes = await asyncio.gather(
                *(
                    self._on_bus(
                        m,
                        partial(self._read_frozen, meter=m, day=day, quality="backfill"),
                        PRIORITY_BACKFILL,
                    )
                    for m in missing
                )
            )
            self._record(day, outcomes)
            got = sum(o.ok for o in outcomes)
            recovered += got
            if got:
                report = self._report(
                    day, started, final=True, busy_before=busy_before, kind="backfill"
                )
                await ctx.sink.put("rounds", report)
        return recovered
