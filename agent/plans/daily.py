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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from agent.config import DailyPlan as DailyPlanConfig
from agent.config import MeterConfig, parse_hhmm
from agent.dlt645 import Dlt645Client, ReadResult, reason_of
from agent.health import CONTACT_FAILURES
from agent.plans.context import PlanContext, edition_of, make_reading
from agent.plans.tariff import TariffWatch
from agent.poller import PRIORITY_BACKFILL, PRIORITY_DAILY, BusClosed
from agent.storage import StorageFull
from protocols.dlt645 import Address, ErrorFlags, MeterError
from protocols.errors import ProtocolError, ValueFormatError
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
DAILY_RECORDS = 62  # a meter keeps its last 62 daily freezes
KEEP_DAYS = 70  # plan state kept beyond the meters' own history
ENERGY_SLACK_KWH = 0.005  # BCD rounding: totals never move back by more than this


class NotFrozenYet(ValueFormatError):
    """The meter has no freeze for the day asked: its newest is older (clock behind, or it was
    off at midnight). Reported as an implausible value with this detail. Retryable: a clock
    behind midnight reaches it later."""

    retryable = True


@dataclass(frozen=True)
class Outcome:
    meter: str
    ok: bool
    reason: FailureReason | None = None
    detail: str = ""
    attempted: bool = True
    settled: bool = False
    """the rejection can never pass (the error tree's `retryable` is false): no retry today"""
    row_id: int | None = None
    """the reading's outbox row"""


def _freeze_time(measurements: list[Measurement]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(measurements[0].value))


class DailyPlanner:
    name = "daily"

    def __init__(
        self, cfg: DailyPlanConfig, ctx: PlanContext, *, watch: TariffWatch | None = None
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.watch = watch
        """the tariff plan's programming-event counters, read with today's freeze"""
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
                    self.ctx.state.prune(day - dt.timedelta(days=KEEP_DAYS))
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
            if s is not None and (s.status == "read" or s.settled):
                continue  # read, or refused for good today (reported with its reason)
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
        # each outcome is recorded as it completes: a round cut short (reload, stop) keeps them
        await asyncio.gather(*(self._attempt(m, day, deadline) for m in due))
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
                settled=o.settled,
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
            outcome = Outcome(
                meter.meter_id, False, FailureReason.NOT_ATTEMPTED, "plan deadline reached", False
            )
            self._record(day, [outcome])
            return outcome
        outcome = await self._on_bus(
            meter, day, lambda client: self._read_today(client, meter, day), PRIORITY_DAILY
        )
        if outcome.attempted:  # live metrics, as each meter completes
            self.ctx.on_outcome("daily", outcome.reason.value if outcome.reason else None)
        return outcome

    async def _on_bus(
        self,
        meter: MeterConfig,
        day: dt.date,
        job: Callable[[Any], Awaitable[dict[str, Any]]],
        priority: int,
    ) -> Outcome:
        """One meter's read of `day` on its bus: health gate, failure reason, plausibility,
        outbox on success; the outcome is recorded in the plan state before returning."""
        outcome = await self._run_job(meter, job, priority)
        self._record(day, [outcome])
        was_evicted = getattr(self.ctx.sink, "was_evicted", None)
        row = outcome.row_id
        if row is not None and was_evicted is not None and was_evicted("readings", row):
            # the disk budget took the reading before it was delivered, and the agent's "read it
            # again" may have run before the record above (it comes from the outbox's writer
            # thread): say it again after the record, or the record wins and it is never read
            self.ctx.state.forget_read(day, meter.meter_id)
        return outcome

    async def _run_job(
        self, meter: MeterConfig, job: Callable[[Any], Awaitable[dict[str, Any]]], priority: int
    ) -> Outcome:
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
            if isinstance(exc, ProtocolError) and not exc.retryable:
                # e.g. "no such data" from a meter without daily freezes: asking again today
                # costs bus time and cannot pass
                detail = f"{detail} (not retried today: this rejection cannot pass)"
                return Outcome(mid, False, reason, detail, settled=True)
            return Outcome(mid, False, reason, detail)
        ctx.health.success(mid, ctx.clock.monotonic())
        problem = self._implausible(mid, reading)
        if problem:
            return Outcome(mid, False, FailureReason.IMPLAUSIBLE_VALUE, problem)
        try:
            row_id = await ctx.sink.put("readings", reading)
        except StorageFull as exc:  # not stored, so not read: the next round asks again
            return Outcome(mid, False, FailureReason.STORAGE_FULL, str(exc))
        total = reading["values"].get("energy_import_total_kwh", {}).get("value")
        if isinstance(total, int | float):
            ctx.state.set_energy(mid, dt.datetime.fromisoformat(reading["data_time"]), float(total))
        return Outcome(mid, True, row_id=row_id)

    def _implausible(self, meter: str, reading: dict[str, Any]) -> str:
        """A forward energy total that runs backwards against the meter's own history."""
        total = reading["values"].get("energy_import_total_kwh", {}).get("value")
        known = self.ctx.state.energy(meter)
        if not isinstance(total, int | float) or known is None:
            return ""
        at = dt.datetime.fromisoformat(reading["data_time"])
        known_at, known_total = known
        if (at > known_at and total < known_total - ENERGY_SLACK_KWH) or (
            at < known_at and total > known_total + ENERGY_SLACK_KWH
        ):
            return (
                f"forward energy {total} kWh at {at:%Y-%m-%d %H:%M} against {known_total} kWh "
                f"at {known_at:%Y-%m-%d %H:%M}: energy never runs backwards"
            )
        return ""

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
        today = day == self.ctx.clock.now().date()
        balance = self.cfg.prepaid_balance and meter.prepaid and today
        watch = self.watch if today else None
        # on a medium that packs items the watched counters ride in the freeze's exchange
        riders = watch.dis_now(meter) if watch is not None and client.packs_reads else []
        taken: list[bool] = []

        def take(results: list[ReadResult | Exception]) -> None:
            assert watch is not None
            watch.absorb(meter, riders, results)
            taken.append(True)

        reading = await self._read_frozen(
            client, meter, day, balance=balance, riders=riders, on_riders=take
        )
        if watch is not None and not taken:
            await watch.check(client, meter)
        return reading

    async def _read_frozen(
        self,
        client: Dlt645Client,
        meter: MeterConfig,
        day: dt.date,
        quality: str | None = None,
        *,
        balance: bool = False,
        riders: Sequence[int] = (),
        on_riders: Callable[[list[ReadResult | Exception]], None] | None = None,
    ) -> dict[str, Any]:
        """The daily freeze of `day` from a 2007 meter: its record number, then its energy
        (and the remaining amount of a prepaid meter). On a medium that packs items (a carrier
        module) today's record is asked for in one exchange with everything else, its stamp
        checked after; on RS-485 one read at a time, the record found first."""
        assert meter.address is not None
        address = Address.parse(meter.address)
        packed = (
            await self._read_packed(client, address, day, balance, riders, on_riders)
            if client.packs_reads
            else None
        )
        if packed is not None:
            freeze, values = packed
        else:
            nn, freeze = await self._find_freeze(client, address, day)
            values = list((await client.read(address, DI_FREEZE_IMPORT | nn)).measurements)
            if self.cfg.reverse_energy:
                values += (await client.read(address, DI_FREEZE_EXPORT | nn)).measurements
            if balance:
                values += (await client.read(address, DI_BALANCE)).measurements
        return self._reading(meter, freeze.replace(tzinfo=self.ctx.clock.tz), values, quality)

    async def _read_packed(
        self,
        client: Dlt645Client,
        address: Address,
        day: dt.date,
        balance: bool,
        riders: Sequence[int] = (),
        on_riders: Callable[[list[ReadResult | Exception]], None] | None = None,
    ) -> tuple[dt.datetime, list[Measurement]] | None:
        """Record 1 (stamp, energy …) in one exchange; None when record 1 is not `day`'s (the
        meter's clock is off around midnight: the record search takes over). `riders` (the
        tariff plan's counters) go in the same exchange, their results to `on_riders`."""
        dis = [DI_FREEZE_TIME | 1, DI_FREEZE_IMPORT | 1]
        if self.cfg.reverse_energy:
            dis.append(DI_FREEZE_EXPORT | 1)
        if balance:
            dis.append(DI_BALANCE)
        results = await client.read_many(address, [*dis, *riders])
        if riders and on_riders is not None:
            on_riders(results[len(dis) :])
        results = results[: len(dis)]
        stamp = results[0]
        if isinstance(stamp, Exception):
            raise stamp
        newest = _freeze_time(stamp.measurements)
        if newest.date() < day:
            raise NotFrozenYet(f"newest daily freeze is {newest:%Y-%m-%d %H:%M}, wanted {day}")
        if newest.date() != day:
            return None
        values: list[Measurement] = []
        for result in results[1:]:
            if isinstance(result, Exception):
                raise result
            values += result.measurements
        return newest, values

    async def _find_freeze(
        self, client: Dlt645Client, address: Address, day: dt.date
    ) -> tuple[int, dt.datetime]:
        """The record number NN (1 = newest) of the daily freeze taken at 00:00 of `day`.

        Records are newest first, one per midnight the meter saw: NN = days back + 1, unless the
        meter missed a midnight (off: older days move to lower numbers) or froze twice (clock
        set back: higher numbers). So the guess is checked and, if needed, walked toward the
        day until the stamps pass it.
        """

        async def stamp(nn: int) -> dt.datetime:
            return _freeze_time((await client.read(address, DI_FREEZE_TIME | nn)).measurements)

        newest = await stamp(1)
        lag = (newest.date() - day).days
        if lag < 0:
            raise NotFrozenYet(f"newest daily freeze is {newest:%Y-%m-%d %H:%M}, wanted {day}")
        if lag == 0:
            return 1, newest
        nn = min(lag + 1, DAILY_RECORDS)
        while True:  # a meter that has fewer records than the guess says "no such data"
            try:
                current = await stamp(nn)
                break
            except MeterError as exc:
                if not exc.flags & ErrorFlags.NO_DATA or nn <= 2:
                    raise
                nn -= 1
        step = -1 if current.date() < day else 1
        while current.date() != day:
            nxt = nn + step
            if not 1 <= nxt <= DAILY_RECORDS:
                break
            candidate = await stamp(nxt)
            if (candidate.date() > day) if step == -1 else (candidate.date() < day):
                break  # walked past it: the meter has no record of that day
            nn, current = nxt, candidate
        if current.date() != day:
            raise NotFrozenYet(
                f"the meter has no daily freeze for {day} (record {nn} is {current:%Y-%m-%d})"
            )
        return nn, current

    # --- backfill ---------------------------------------------------------------------------------
    async def backfill(self, today: dt.date) -> int:
        """Read missed past days from frozen history; returns how many readings were recovered.

        Only meters that answered today are asked (a dead meter costs nothing more), each from
        its newest missing day back, stopping at its first failure to answer; a (meter, day)
        tried within `retry_spacing_minutes` waits. Each day that recovered something gets an
        updated (final) report.
        """
        ctx = self.ctx
        days = [today - dt.timedelta(days=n) for n in range(1, self.cfg.backfill_days + 1)]
        alive = {m for m, s in ctx.state.day(today).items() if s.status == "read"}
        statuses = {day: ctx.state.day(day) for day in days}
        now = ctx.clock.now()
        spacing = dt.timedelta(minutes=self.cfg.retry_spacing_minutes)

        def wanted(meter: str, day: dt.date) -> bool:
            s = statuses[day].get(meter)
            if s is None:
                return True
            return (
                s.status != "read"
                and not s.settled
                and (s.last_attempt is None or now - s.last_attempt >= spacing)
            )

        plan = {
            m: [d for d in days if wanted(m.meter_id, d)]
            for m in ctx.archive().meters
            if m.protocol == "dlt645-2007" and m.meter_id in alive
        }
        plan = {m: ds for m, ds in plan.items() if ds}
        if not plan:
            return 0
        started, busy_before = ctx.clock.now(), self._busy()
        results = await asyncio.gather(*(self._backfill_meter(m, ds) for m, ds in plan.items()))
        recovered_days = sorted({d for got in results for d in got}, reverse=True)
        for day in recovered_days:
            report = self._report(
                day, started, final=True, busy_before=busy_before, kind="backfill"
            )
            await ctx.sink.put("rounds", report)
        return sum(len(got) for got in results)

    async def _backfill_meter(self, meter: MeterConfig, days: list[dt.date]) -> list[dt.date]:
        recovered = []
        for day in days:  # newest first
            job = partial(self._read_frozen, meter=meter, day=day, quality="backfill")
            outcome = await self._on_bus(meter, day, job, PRIORITY_BACKFILL)
            if outcome.ok:
                recovered.append(day)
            elif outcome.reason in CONTACT_FAILURES or not outcome.attempted:
                break  # it stopped answering (or the agent is stopping): not now
        return recovered
