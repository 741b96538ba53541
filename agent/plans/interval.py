"""The interval plan: selected items of selected meters every N minutes (load curves, power).

Readings are stamped with the slot they belong to (the start of the N-minute interval, local
time), so a retried read within the same slot replaces rather than duplicates its point.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from agent.config import IntervalPlan as IntervalConfig
from agent.config import MeterConfig
from agent.dlt645 import Dlt645Client, ReadResult, reason_of
from agent.plans.context import PlanContext, edition_of, make_reading
from agent.poller import PRIORITY_INTERVAL, BusClosed
from agent.storage import StorageFull
from protocols.dlt645 import Address, Edition, format_di, parse_item
from protocols.errors import LocalProtocolError
from protocols.payloads import FailureReason

__all__ = ["IntervalPlanner"]

log = logging.getLogger(__name__)


class IntervalPlanner:
    name = "interval"

    def __init__(self, cfg: IntervalConfig, ctx: PlanContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._items: dict[Edition, list[int] | None] = {}

    def _dis(self, edition: Edition) -> list[int] | None:
        """The configured items as DIs of an edition, resolved once (None: not readable)."""
        if edition not in self._items:
            try:
                self._items[edition] = [parse_item(i, edition) for i in self.cfg.items]
            except LocalProtocolError as exc:
                log.error("interval plan: %s; DL/T 645-%s meters are skipped", exc, edition)
                self._items[edition] = None
        return self._items[edition]

    def _slot(self, now: dt.datetime) -> dt.datetime:
        minutes = (now.hour * 60 + now.minute) // self.cfg.every_minutes * self.cfg.every_minutes
        return now.replace(hour=minutes // 60, minute=minutes % 60, second=0, microsecond=0)

    def _meters(self) -> list[MeterConfig]:
        wanted = set(self.cfg.meters)
        return [
            m
            for m in self.ctx.archive().meters
            if m.protocol != "modbus" and ("*" in wanted or m.meter_id in wanted)
        ]

    async def run(self) -> None:
        while True:
            now = self.ctx.clock.now()
            slot = self._slot(now)
            await self.run_slot(slot)
            await self.ctx.clock.sleep_until(slot + dt.timedelta(minutes=self.cfg.every_minutes))

    async def run_slot(self, slot: dt.datetime) -> int:
        results = await asyncio.gather(*(self._read(m, slot) for m in self._meters()))
        return sum(results)

    async def _read(self, meter: MeterConfig, slot: dt.datetime) -> int:
        ctx = self.ctx
        mid = meter.meter_id
        if not ctx.health.may_attempt(mid, ctx.clock.monotonic()):
            return 0
        assert meter.address is not None
        edition = edition_of(meter.protocol)
        address = Address.parse(meter.address)
        dis = self._dis(edition)
        if dis is None:
            return 0

        def reading(di: int, result: ReadResult) -> dict[str, Any]:
            return make_reading(
                ctx,
                meter=mid,
                item=format_di(di, edition),
                plan="interval",
                data_time=slot,
                read_at=ctx.clock.now(),
                values=result.measurements,
                bus=meter.bus,
            )

        async def job(client: Dlt645Client) -> list[dict[str, Any]]:
            if client.packs_reads:  # a carrier module: the items in one exchange
                out = []
                for di, result in zip(
                    dis, await client.read_many(address, dis, edition), strict=True
                ):
                    if isinstance(result, Exception):
                        raise result
                    out.append(reading(di, result))
                return out
            return [reading(di, await client.read(address, di, edition)) for di in dis]

        try:
            readings = await ctx.poller_for(meter.bus).submit(job, priority=PRIORITY_INTERVAL)
        except BusClosed:
            return 0
        except Exception as exc:
            reason, detail = reason_of(exc)
            ctx.health.failure(mid, reason, ctx.clock.monotonic())
            ctx.on_outcome("interval", reason.value)
            log.info("interval read of %s failed: %s (%s)", mid, reason.value, detail)
            return 0
        ctx.health.success(mid, ctx.clock.monotonic())
        ctx.on_outcome("interval", None)
        try:
            await ctx.sink.put_many("readings", readings)
        except StorageFull:  # not stored (said by the storage watch): the slot is missed
            ctx.on_outcome("interval", FailureReason.STORAGE_FULL.value)
            return 0
        return len(readings)
