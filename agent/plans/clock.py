"""Time discipline: read every meter's clock daily, report drift, sync within the meters' rules.

Meters accept a broadcast time sync (08H) at most once a day, not within 5 minutes of midnight,
and only for a correction of at most 5 minutes; they refuse silently otherwise. So the plan
broadcasts once per bus per day when some clock is off by more than `sync_threshold_s` but not
more than 5 minutes, checks the result by reading the clocks again, and reports clocks off by
more than 5 minutes as `clock_unfixable` (they need a secure 14H write from the centre).
Offsets are kept, and readings from meters off by more than `max_offset_s` are flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

from agent.config import ClockPlan as ClockConfig
from agent.config import MeterConfig, parse_hhmm
from agent.dlt645 import Dlt645Client, reason_of
from agent.plans.context import PlanContext, edition_of, make_reading
from agent.poller import PRIORITY_CLOCK, BusClosed
from agent.storage import StorageFull
from protocols.dlt645 import BROADCAST, Address, BroadcastTimeRequest, Edition, MeterError
from protocols.measurements import Measurement

__all__ = ["MAX_SYNC_S", "ClockPlanner", "read_meter_clock"]

log = logging.getLogger(__name__)

MAX_SYNC_S = 300.0  # meters refuse a broadcast correction over 5 minutes
MIDNIGHT_GUARD = dt.timedelta(minutes=5)


async def read_meter_clock(
    client: Dlt645Client, address: Address, edition: Edition, now: Any
) -> tuple[dt.datetime, float]:
    """(meter time, offset in seconds: meter minus true time). `now()` gives true local time.

    2007 meters: 04 00 01 0C (date, weekday and time) where supported, else 04000101 + 04000102.
    """
    if edition is Edition.V2007:
        try:
            before = now()
            result = await client.read(address, 0x0400010C, edition)
            after = now()
            meter_time = dt.datetime.fromisoformat(str(result.measurements[0].value))
            return meter_time, _offset(meter_time, before, after)
        except MeterError:
            pass  # no such item on this meter: read date and time separately
    di_date, di_time = (0x04000101, 0x04000102) if edition is Edition.V2007 else (0xC010, 0xC011)
    date = dt.date.fromisoformat(
        str((await client.read(address, di_date, edition)).measurements[0].value)
    )
    before = now()
    time = dt.time.fromisoformat(
        str((await client.read(address, di_time, edition)).measurements[0].value)
    )
    after = now()
    meter_time = dt.datetime.combine(date, time)
    return meter_time, _offset(meter_time, before, after)


def _offset(meter_time: dt.datetime, before: dt.datetime, after: dt.datetime) -> float:
    middle = before + (after - before) / 2
    return (meter_time - middle.replace(tzinfo=None)).total_seconds()


class ClockPlanner:
    name = "clock"

    def __init__(self, cfg: ClockConfig, ctx: PlanContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.at = parse_hhmm(cfg.at, "at")

    async def run(self) -> None:
        clock = self.ctx.clock
        while True:
            now = clock.now()
            today_at = dt.datetime.combine(now.date(), self.at, clock.tz)
            if now >= today_at and self.ctx.state.mark("clock_checked") != now.date().isoformat():
                await self.check_all()
                self.ctx.state.set_mark("clock_checked", now.date().isoformat())
            nxt = today_at if now < today_at else today_at + dt.timedelta(days=1)
            await clock.sleep_until(nxt)

    def _meters(self) -> list[MeterConfig]:
        return [m for m in self.ctx.archive().meters if m.protocol != "modbus"]

    async def check_all(self) -> dict[str, float]:
        """Read every clock, publish offsets, sync buses that need it; returns offsets."""
        results = await asyncio.gather(*(self._check(m) for m in self._meters()))
        offsets = {mid: off for mid, off in results if off is not None}
        if self.cfg.sync:
            await self._sync(offsets)
        return offsets

    async def _check(self, meter: MeterConfig) -> tuple[str, float | None]:
        ctx = self.ctx
        mid = meter.meter_id
        if not ctx.health.may_attempt(mid, ctx.clock.monotonic()):
            return mid, None
        assert meter.address is not None
        address = Address.parse(meter.address)

        async def job(client: Dlt645Client) -> tuple[dt.datetime, float]:
            return await read_meter_clock(
                client, address, edition_of(meter.protocol), ctx.clock.now
            )

        try:
            meter_time, offset = await ctx.poller_for(meter.bus).submit(
                job, priority=PRIORITY_CLOCK
            )
        except BusClosed:
            return mid, None
        except Exception as exc:
            reason, detail = reason_of(exc)
            ctx.health.failure(mid, reason, ctx.clock.monotonic())
            ctx.on_outcome("clock", reason.value)
            log.info("clock read of %s failed: %s (%s)", mid, reason.value, detail)
            return mid, None
        ctx.health.success(mid, ctx.clock.monotonic())
        ctx.on_outcome("clock", None)
        now = ctx.clock.now()
        ctx.clock_offsets[mid] = offset
        ctx.state.set_clock(mid, offset, now)
        values = [
            Measurement("clock_offset_s", round(offset, 3), "s"),
            Measurement("meter_datetime", meter_time.isoformat(), None),
        ]
        with contextlib.suppress(StorageFull):  # not stored (said by the storage watch)
            await ctx.sink.put(
                "readings",
                make_reading(
                    ctx,
                    meter=mid,
                    item="clock",
                    plan="clock",
                    data_time=now.replace(microsecond=0),
                    read_at=now,
                    values=values,
                    bus=meter.bus,
                ),
            )
        if abs(offset) > self.cfg.max_offset_s:
            ctx.events("clock_drift", mid, {"offset_s": round(offset, 3)})
        return mid, offset

    def _near_midnight(self, now: dt.datetime) -> bool:
        midnight = dt.datetime.combine(now.date(), dt.time(), now.tzinfo)
        return (
            now - midnight < MIDNIGHT_GUARD
            or midnight + dt.timedelta(days=1) - now < MIDNIGHT_GUARD
        )

    async def _sync(self, offsets: dict[str, float]) -> None:
        ctx = self.ctx
        now = ctx.clock.now()
        if self._near_midnight(now):
            log.info("time sync skipped: within 5 minutes of midnight")
            return
        by_bus: dict[str, list[MeterConfig]] = {}
        for m in self._meters():
            off = offsets.get(m.meter_id)
            if off is None or abs(off) <= self.cfg.sync_threshold_s:
                continue
            if abs(off) > MAX_SYNC_S:
                ctx.events(
                    "clock_unfixable",
                    m.meter_id,
                    {
                        "offset_s": round(off, 3),
                        "why": "over 5 min: meters refuse broadcast sync; needs a secure 14H write",
                    },
                )
                continue
            by_bus.setdefault(m.bus, []).append(m)
        for bus, meters in by_bus.items():
            mark = f"time_sync:{bus}"
            if ctx.state.mark(mark) == now.date().isoformat():
                continue  # meters accept one broadcast a day

            async def broadcast(client: Dlt645Client) -> None:
                # the frame takes its wire time to arrive: send the time it will be on arrival
                url = client.transport.url
                arrival = ctx.clock.now() + dt.timedelta(seconds=url.wire_time(22 + url.wakeup))
                sent = arrival.replace(tzinfo=None, microsecond=0)
                await client.call(BROADCAST, BroadcastTimeRequest(sent), Edition.V2007)

            try:
                await ctx.poller_for(bus).submit(broadcast, priority=PRIORITY_CLOCK)
            except BusClosed:
                return  # the agent is stopping
            except Exception as exc:
                reason, detail = reason_of(exc)
                ctx.events(
                    "time_sync_failed", None, {"bus": bus, "reason": reason.value, "detail": detail}
                )
                continue
            ctx.state.set_mark(mark, now.date().isoformat())
            after = dict(await asyncio.gather(*(self._check(m) for m in meters)))
            ctx.events(
                "time_sync",
                None,
                {
                    "bus": bus,
                    "meters": {
                        m.meter_id: {
                            "before_s": round(offsets[m.meter_id], 3),
                            "after_s": None
                            if after.get(m.meter_id) is None
                            else round(after[m.meter_id] or 0.0, 3),
                        }
                        for m in meters
                    },
                },
            )
