"""The tariff plan: read each DL/T 645-2007 meter's tariff set-up and publish it (``tariff``).

A meter is read when it never was (``first``), every `every_days` (``weekly``), after the daily
read saw one of its programming-event counters move (``counter_change``, see `TariffWatch`), and
the day after a switch time the meter held at its last read (``after_switch``). Reads run
between `start` and `deadline` (meter local time) at the lowest bus priority, one meter stage
per bus job, so the daily and interval plans and commands pass between them.

One meter's read, in stages (each stage one `read_many`: a carrier module packs the items):

1. the clock 0400010C alone (its agent time is the read's `read_at`), then status word 3, the
   switch times of zones and tables, the counts p q m k n, the weekend rule, both zone tables;
2. the daily tables both sets use (1..q and every table the zones or the weekend rule name),
   holidays 1..n (at most `max_holidays`), the programming-event counters and, for a local-prepaid
   meter (status word 3 bit 8 or 9), the price blocks, the 2013 ladder blocks, ladder zones,
   current prices, ladder count and the price / ladder switch times;
3. a local meter that denied the 2013 ladder blocks: the later two-table form, else 2009's.

An item the meter denies ("no such data" or another refusal) is recorded in the plan state and
not asked for again until `reprobe_days` have passed; every payload lists what the meter denied.
A read that fails on the line (no reply, checksum …) publishes nothing and is tried again later
that day (at most `[plans.tariff] attempts_per_day` times, `retry_spacing_minutes` apart),
then on the next.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.config import MeterConfig, parse_hhmm
from agent.config import TariffPlan as TariffConfig
from agent.dlt645 import Dlt645Client, ReadResult, reason_of
from agent.plans.context import PlanContext
from agent.poller import PRIORITY_TARIFF, BusClosed
from agent.storage import StorageFull
from protocols.dlt645 import Address, MeterError, lookup
from protocols.dlt645.tariff import (
    DI_CLOCK,
    DI_COUNTS,
    DI_CURRENT_PRICES,
    DI_EVENT_COUNTERS,
    DI_LADDER_2009,
    DI_LADDER_BLOCKS,
    DI_LADDER_TABLES,
    DI_LADDER_ZONES,
    DI_PRICE_BLOCKS,
    DI_STATUS3,
    DI_SWITCH,
    DI_WEEKEND_TABLE,
    DI_WEEKEND_WORKDAYS,
    decode_counter,
    decode_zone_table,
    di_daily_table,
    di_holiday,
    di_zone_table,
    setup_from_replies,
)
from protocols.errors import ValueFormatError
from protocols.payloads import FailureReason
from protocols.tariff import MAX_DAILY_TABLES

__all__ = ["TariffPlanner", "TariffWatch", "local_mode"]

log = logging.getLogger(__name__)

_LOCAL_EVENTS = ("03300F00", "03301000")  # 费率参数表 / 阶梯表编程: local-prepaid meters only
_MARK = "tariff:"
DI_DATE, DI_TIME = 0x04000101, 0x04000102


def local_mode(status_word3: int | None) -> bool:
    """A local-prepaid (本地费控) meter by status word 3 bits 9-8 (energy / money prepaid)."""
    return status_word3 is not None and bool(status_word3 >> 8 & 0b11)


def _hex(di: int) -> str:
    return f"{di:08X}"


@dataclass
class MeterTariffState:
    """What the plan remembers of one meter (kept in the plan state, survives restarts)."""

    last_read: str | None = None
    """ISO date of the last published read"""
    counters: dict[str, int] = field(default_factory=dict)
    """the programming-event counters last seen (daily watch or tariff read)"""
    changed: list[str] = field(default_factory=list)
    """counters that moved since the last tariff read: a read is due"""
    unsupported: dict[str, str] = field(default_factory=dict)
    """DI → ISO date it was denied"""
    switches: list[str] = field(default_factory=list)
    """ISO dates of the switch times the meter held at its last read"""
    attempt_day: str | None = None
    attempts: int = 0
    last_attempt: str | None = None
    """ISO time of the last attempt (retry spacing)"""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> MeterTariffState:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            log.warning("tariff plan state %r unreadable: starting afresh", text[:80])
            return cls()


class _Store:
    def __init__(self, ctx: PlanContext) -> None:
        self.ctx = ctx

    def get(self, meter: str) -> MeterTariffState:
        return MeterTariffState.from_json(self.ctx.state.mark(_MARK + meter))

    def put(self, meter: str, state: MeterTariffState) -> None:
        self.ctx.state.set_mark(_MARK + meter, state.to_json())


def _is_denial(exc: Exception) -> bool:
    """The meter refused the item (an abnormal reply): it will refuse it again."""
    return isinstance(exc, MeterError)


class TariffWatch:
    """The programming-event counters the daily read also reads: a counter that moved makes a
    tariff read due. Runs inside the daily plan's bus job; its failures never fail the daily
    reading (a denied counter is recorded and not asked again)."""

    def __init__(self, cfg: TariffConfig, ctx: PlanContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.store = _Store(ctx)

    def dis(self, meter: MeterConfig, state: MeterTariffState) -> list[int]:
        watch = list(self.cfg.watch)
        if meter.prepaid and "03300F00" not in watch:
            watch.append("03300F00")
        return [int(d, 16) for d in watch if d not in state.unsupported]

    def dis_now(self, meter: MeterConfig) -> list[int]:
        """The counters to read with this meter's freeze today (none for other editions)."""
        if meter.protocol != "dlt645-2007" or meter.address is None:
            return []
        return self.dis(meter, self.store.get(meter.meter_id))

    async def check(self, client: Dlt645Client, meter: MeterConfig) -> list[str]:
        """Read the watched counters; returns the ones that moved (and marks the read due)."""
        dis = self.dis_now(meter)
        if not dis:
            return []
        assert meter.address is not None
        try:
            results = await client.read_many(Address.parse(meter.address), dis)
        except Exception as exc:  # the freeze was read: the counters wait for tomorrow
            log.info("tariff watch %s: %s", meter.meter_id, str(exc) or type(exc).__name__)
            return []
        return self.absorb(meter, dis, results)

    def absorb(
        self, meter: MeterConfig, dis: Sequence[int], results: Sequence[ReadResult | Exception]
    ) -> list[str]:
        """Take the counters read (alone, or riding with the freeze in one carrier exchange);
        returns the ones that moved."""
        state = self.store.get(meter.meter_id)
        today = self.ctx.clock.now().date().isoformat()
        moved = []
        for di, result in zip(dis, results, strict=True):
            key = _hex(di)
            if isinstance(result, Exception):
                if _is_denial(result):
                    state.unsupported[key] = today
                continue
            try:
                count = decode_counter(result.value)
            except ValueFormatError:
                continue
            seen = state.counters.get(key)
            if seen is not None and seen != count and key not in state.changed:
                moved.append(key)
            if state.last_read is not None:
                state.counters[key] = count
        if moved:
            state.changed += moved
            log.info("tariff watch %s: %s moved: tariff read due", meter.meter_id, moved)
        self.store.put(meter.meter_id, state)
        return moved


class TariffPlanner:
    name = "tariff"

    def __init__(self, cfg: TariffConfig, ctx: PlanContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.start = parse_hhmm(cfg.start, "start")
        self.deadline = parse_hhmm(cfg.deadline, "deadline")
        self.retry_spacing = dt.timedelta(minutes=cfg.retry_spacing_minutes)
        self.store = _Store(ctx)
        self.published = 0

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
                await clock.sleep_until(begin + dt.timedelta(days=1))
                continue
            await self.run_once(day, end)
            await clock.sleep_until(min(clock.now() + self.retry_spacing, end))

    async def run_once(self, day: dt.date, end: dt.datetime | None = None) -> int:
        """Read every meter due on `day`; returns how many set-ups were published."""
        due = self.due(day, self.ctx.clock.now())
        if not due:
            return 0
        results = await asyncio.gather(*(self._attempt(m, why, day, end) for m, why in due))
        return sum(results)

    # --- who is due ---------------------------------------------------------------------------
    def due(self, day: dt.date, now: dt.datetime) -> list[tuple[MeterConfig, str]]:
        out = []
        for m in self.ctx.archive().meters:
            if m.protocol != "dlt645-2007" or m.address is None:
                continue
            reason = self.reason(self.store.get(m.meter_id), day, now)
            if reason is not None:
                out.append((m, reason))
        return out

    def reason(self, state: MeterTariffState, day: dt.date, now: dt.datetime) -> str | None:
        today = day.isoformat()
        if state.attempt_day == today:
            if state.attempts >= self.cfg.attempts_per_day:
                return None
            last = dt.datetime.fromisoformat(state.last_attempt) if state.last_attempt else None
            if last is not None and now - last < self.retry_spacing:
                return None
        if state.last_read is None:
            return "first"
        last_read = dt.date.fromisoformat(state.last_read)
        if state.changed:
            return "counter_change"
        for switch in state.switches:
            after = dt.date.fromisoformat(switch) + dt.timedelta(days=1)
            if day >= after > last_read:
                return "after_switch"
        if (day - last_read).days >= self.cfg.every_days:
            return "weekly"
        reprobe = dt.timedelta(days=self.cfg.reprobe_days)
        if any(day - dt.date.fromisoformat(d) >= reprobe for d in state.unsupported.values()):
            return "reprobe"
        return None

    # --- one meter ------------------------------------------------------------------------------
    async def _attempt(
        self, meter: MeterConfig, why: str, day: dt.date, end: dt.datetime | None
    ) -> int:
        ctx = self.ctx
        mid = meter.meter_id
        if end is not None and ctx.clock.now() >= end:
            return 0
        if not ctx.health.may_attempt(mid, ctx.clock.monotonic()):
            return 0
        state = self.store.get(mid)
        if state.attempt_day != day.isoformat():
            state.attempt_day, state.attempts = day.isoformat(), 0
        state.attempts += 1
        state.last_attempt = ctx.clock.now().isoformat()
        self.store.put(mid, state)
        try:
            await self.read_now(meter, why)
        except BusClosed:
            return 0
        except StorageFull:  # read but not stored (said by the storage watch): due again
            ctx.on_outcome("tariff", FailureReason.STORAGE_FULL.value)
            return 0
        except Exception as exc:  # reason_of re-raises what is not a meter's or line's failure
            reason, detail = reason_of(exc)
            ctx.health.failure(mid, reason, ctx.clock.monotonic())
            ctx.on_outcome("tariff", reason.value)
            log.info("tariff read of %s failed (%s): %s", mid, reason.value, detail)
            return 0
        ctx.health.success(mid, ctx.clock.monotonic())
        ctx.on_outcome("tariff", None)
        return 1

    async def read_now(
        self, meter: MeterConfig, why: str, *, priority: int = PRIORITY_TARIFF
    ) -> dict[str, Any]:
        """Read one meter's set-up now, publish it (``tariff``) and return the payload; the
        plan state learns what was read (denied items, counters, switch times). Raises the
        read's failure."""
        if meter.protocol != "dlt645-2007" or meter.address is None:
            raise ValueError(f"meter {meter.meter_id}: only DL/T 645-2007 meters keep a set-up")
        ctx = self.ctx
        mid = meter.meter_id
        state = self.store.get(mid)
        if why == "reprobe":
            state.unsupported = {}
        reader = _MeterRead(self, meter, state, priority)
        payload = await reader.read()
        payload["reason"] = why
        if why == "counter_change" and state.changed:
            payload["changed_counters"] = sorted(state.changed)
        await ctx.sink.put("tariff", payload)
        self.published += 1
        setup = payload["setup"]
        state = self.store.get(mid)  # the daily watch may have written meanwhile
        state.last_read = ctx.clock.now().date().isoformat()
        state.changed = []
        state.unsupported = reader.unsupported
        state.counters = dict(setup["event_counters"])
        state.switches = sorted({str(t)[:10] for t in setup["switch"].values() if t is not None})
        self.store.put(mid, state)
        return payload


class _MeterRead:
    """One meter's read in stages; each stage is one job on the bus."""

    def __init__(
        self, plan: TariffPlanner, meter: MeterConfig, state: MeterTariffState, priority: int
    ) -> None:
        self.plan = plan
        self.priority = priority
        self.meter = meter
        assert meter.address is not None
        self.address = Address.parse(meter.address)
        self.unsupported = dict(state.unsupported)
        self.raw: dict[int, bytes] = {}
        self.today = plan.ctx.clock.now().date().isoformat()
        self.read_at: dt.datetime | None = None

    async def _stage(self, dis: Sequence[int]) -> None:
        wanted = [di for di in dis if _hex(di) not in self.unsupported and di not in self.raw]
        if not wanted:
            return
        poller = self.plan.ctx.poller_for(self.meter.bus)

        async def job(client: Dlt645Client) -> list[ReadResult | Exception]:
            return await client.read_many(self.address, wanted)

        results = await poller.submit(job, priority=self.priority)
        for di, result in zip(wanted, results, strict=True):
            if isinstance(result, Exception):
                if _is_denial(result):
                    self.unsupported[_hex(di)] = self.today
                    continue
                raise result  # the line failed: the whole read is retried later
            self.raw[di] = result.value

    async def _clock(self) -> None:
        """The meter's clock and the agent time around its read: 0400010C, or date 04000101 and
        time 04000102 on a meter without it (the time read is the one timed)."""
        dis = [DI_CLOCK] if _hex(DI_CLOCK) not in self.unsupported else [DI_DATE, DI_TIME]
        dis = [di for di in dis if _hex(di) not in self.unsupported]
        if not dis:
            return
        clock = self.plan.ctx.clock
        poller = self.plan.ctx.poller_for(self.meter.bus)

        async def job(client: Dlt645Client) -> tuple[dt.datetime, list[ReadResult | Exception]]:
            results: list[ReadResult | Exception] = []
            before = after = clock.now()
            for di in dis:
                before = clock.now()
                results += await client.read_many(self.address, [di])
                after = clock.now()
            return before + (after - before) / 2, results

        at, results = await poller.submit(job, priority=self.priority)
        self.read_at = at
        for di, result in zip(dis, results, strict=True):
            if isinstance(result, Exception):
                if not _is_denial(result):
                    raise result
                self.unsupported[_hex(di)] = self.today
            else:
                self.raw[di] = result.value
        if DI_CLOCK in dis and DI_CLOCK not in self.raw:
            await self._clock()  # denied just now: the date and time items instead

    def _split_clock(self) -> dt.datetime | None:
        """The meter time from 04000101 + 04000102, when that is what the meter answered."""
        date_bytes, time_bytes = self.raw.get(DI_DATE), self.raw.get(DI_TIME)
        if date_bytes is None or time_bytes is None:
            return None
        date_item, time_item = lookup(DI_DATE), lookup(DI_TIME)
        assert date_item is not None
        assert time_item is not None
        try:
            day = dt.date.fromisoformat(str(date_item.decode(date_bytes)[0].value))
            time = dt.time.fromisoformat(str(time_item.decode(time_bytes)[0].value))
        except (ValueFormatError, ValueError):
            return None
        return dt.datetime.combine(day, time)

    async def read(self) -> dict[str, Any]:
        await self._clock()
        counts = [DI_COUNTS[k] for k in ("zones", "tables", "periods", "tariffs", "holidays")]
        await self._stage(
            [
                DI_STATUS3,
                DI_SWITCH["zones"],
                DI_SWITCH["tables"],
                *counts,
                DI_WEEKEND_WORKDAYS,
                DI_WEEKEND_TABLE,
                di_zone_table(1),
                di_zone_table(2),
            ]
        )
        status3 = self._word(DI_STATUS3)
        local = local_mode(status3)
        stage2 = [di_daily_table(s, n) for s in (1, 2) for n in self._tables()]
        holidays = self._count(DI_COUNTS["holidays"], 2)
        n = min(holidays if holidays is not None else 1, self.plan.cfg.max_holidays)
        stage2 += [di_holiday(i) for i in range(1, n + 1)]
        events = [e for e in map(_hex, DI_EVENT_COUNTERS) if local or e not in _LOCAL_EVENTS]
        stage2 += [int(e, 16) for e in events]
        if local:
            stage2 += [
                *DI_PRICE_BLOCKS,
                *DI_LADDER_BLOCKS,
                *DI_LADDER_ZONES,
                *DI_CURRENT_PRICES.values(),
                DI_COUNTS["ladders"],
                DI_SWITCH["prices"],
                DI_SWITCH["ladders"],
                DI_SWITCH["ladder_zones"],
            ]
        await self._stage(stage2)
        if local and not any(di in self.raw for di in DI_LADDER_BLOCKS):
            await self._stage([di for pair in DI_LADDER_TABLES for di in pair])
            if not any(di in self.raw for pair in DI_LADDER_TABLES for di in pair):
                await self._stage([di for pair in DI_LADDER_2009 for di in pair])
        return self._payload()

    def _word(self, di: int) -> int | None:
        data = self.raw.get(di)
        return int.from_bytes(data, "little") if data is not None and len(data) == 2 else None

    def _count(self, di: int, size: int) -> int | None:
        data = self.raw.get(di)
        if data is None or len(data) != size:
            return None
        text = data[::-1].hex()
        return int(text) if text.isdigit() else None

    def _tables(self) -> list[int]:
        """1..q, and every table a zone (of either set) or the weekend rule names."""
        q = self._count(DI_COUNTS["tables"], 1)
        wanted = set(range(1, min(q, MAX_DAILY_TABLES) + 1)) if q else {1}
        for s in (1, 2):
            data = self.raw.get(di_zone_table(s))
            if data is None:
                continue
            try:
                wanted |= {z.table for z in decode_zone_table(data)}
            except ValueFormatError:
                continue
        weekend = self._count(DI_WEEKEND_TABLE, 1)
        if weekend is not None:
            wanted.add(weekend)
        return sorted(t for t in wanted if 1 <= t <= MAX_DAILY_TABLES)

    def _payload(self) -> dict[str, Any]:
        ctx = self.plan.ctx
        read_at = self.read_at or ctx.clock.now()
        denied = [int(d, 16) for d in self.unsupported]
        setup, errors = setup_from_replies(self.raw, read_at=read_at, denied=denied)
        if setup.meter_time is None:
            setup = replace(setup, meter_time=self._split_clock())
        payload: dict[str, Any] = {
            "meter": self.meter.meter_id,
            "bus": self.meter.bus,
            "read_at": read_at.isoformat(timespec="seconds"),
            "setup": setup.to_payload(),
            "raw": {_hex(di): value.hex().upper() for di, value in sorted(self.raw.items())},
        }
        if setup.meter_time is not None:
            offset = setup.meter_time - read_at.replace(tzinfo=None)
            payload["clock_offset_s"] = round(offset.total_seconds(), 3)
        if errors:
            payload["decode_errors"] = errors
            ctx.events("tariff_decode_error", self.meter.meter_id, {"items": errors})
        return payload
