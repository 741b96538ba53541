"""`meterlink agent run`: the concentrator daemon.

One `asyncio.TaskGroup` of named long-lived tasks: a poller per bus, one task per enabled plan,
the MQTT link (publishing the outbox, carrying commands), the metrics endpoint. SIGHUP reloads
the archive and plans; SIGTERM/SIGINT stop in stages, each with its own time limit, whose sum
(`stop_timeout_s`) stays below the systemd unit's TimeoutStopSec:

    1. pollers stop taking work and finish the exchange on the wire     (40 %)
    2. plans record what they got (outcomes, reports) and stop           (10 %)
    3. the MQTT link publishes what the outbox still holds               (40 %)
    4. the outbox and the state are closed                               (the rest)

Nothing committed to the outbox is lost at any stage: what is not published stays on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.archive import ArchiveStore
from agent.budget import daily_budget
from agent.commands import CommandExecutor
from agent.config import AgentConfig, load_config
from agent.health import HealthTracker
from agent.metrics import AgentMetrics, serve_metrics
from agent.mqtt import MqttLink
from agent.nonces import PersistentNonces
from agent.outbox import Outbox, OutboxError
from agent.plans.clock import ClockPlanner
from agent.plans.context import Clock, PlanContext
from agent.plans.daily import DailyPlanner
from agent.plans.interval import IntervalPlanner
from agent.plans.tariff import TariffPlanner, TariffWatch
from agent.poller import BusPoller, dlt645_poller
from agent.state import PlanState
from agent.storage import HINT, WATCH, StorageFull, free_space, storage_problem
from common.config import ConfigError
from protocols.commands import key_bytes

if TYPE_CHECKING:
    from agent.carrier.client import ArchivedNode

EventHook = Callable[[str, str | None, dict[str, Any]], None]

__all__ = ["STAGES", "Agent", "run_agent"]

CLOCK_CHECK_S = 30.0
"""how often (clock seconds) the wall clock is compared with the monotonic one"""
CLOCK_STEP_S = 60.0
"""a difference this large between the two is a step of the clock, not drift or slewing"""

log = logging.getLogger(__name__)

#: share of stop_timeout_s each shutdown stage may take
STAGES = {"pollers": 0.4, "plans": 0.1, "publish": 0.4, "close": 0.1}
VERSION = "0.1.0"


def _pollers(
    cfg: AgentConfig, archive: ArchiveStore, events: EventHook
) -> dict[str, BusPoller[Any]]:
    out: dict[str, BusPoller[Any]] = {}
    for bus in cfg.buses:
        url = bus.bus_url
        if url.is_modbus:
            from agent.modbus import modbus_poller

            out[bus.name] = modbus_poller(bus.name, url)
        elif url.is_carrier:
            from agent.carrier.client import carrier_poller

            out[bus.name] = carrier_poller(
                bus.name, url, events=events, archive=_carrier_archive(archive, bus.name)
            )
        else:
            out[bus.name] = dlt645_poller(bus.name, url)
    return out


def _carrier_archive(archive: ArchiveStore, bus: str) -> Callable[[], list[ArchivedNode]]:
    """The meters a carrier module on `bus` must know: the archive's DL/T 645 meters there."""
    from agent.carrier.client import ArchivedNode

    def nodes() -> list[ArchivedNode]:
        return [
            ArchivedNode.of(m.address, m.protocol, m.meter_id)
            for m in archive.current.meters
            if m.bus == bus and m.address is not None and m.protocol != "modbus"
        ]

    return nodes


def _command_key(cfg: AgentConfig) -> bytes | None:
    secret = cfg.mqtt.command_key
    if not secret:
        return None
    return key_bytes(secret.reveal())


class Agent:
    def __init__(
        self, cfg: AgentConfig, config_path: Path | None = None, *, clock: Clock | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        state_dir = cfg.agent.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            probe = state_dir / ".writable"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"agent.state_dir = {str(state_dir)!r} cannot be used: {exc.strerror}"
                " (create it, writable by the agent's user, or point state_dir elsewhere)"
            ) from None
        WATCH.state_dir = state_dir
        self.archive = ArchiveStore(cfg)
        self.state = PlanState(state_dir / "state.sqlite")
        self.nonces = PersistentNonces(state_dir / "nonces.sqlite")
        self.metrics = AgentMetrics()
        self.pollers = _pollers(cfg, self.archive, self._event)
        self.outbox: Outbox | None = None
        self.link: MqttLink | None = None
        self._pending_events: list[dict[str, Any]] = []
        self.health = HealthTracker(cfg.health, self._event)
        self.clock = clock or Clock(cfg.agent.tz)
        self.ctx = PlanContext(
            concentrator=cfg.agent.concentrator,
            archive=lambda: self.archive.current,
            pollers=self.pollers,
            health=self.health,
            state=self.state,
            sink=self,
            clock=self.clock,
            events=self._event,
            clock_offsets=self.state.clock_offsets(),
            max_clock_offset_s=cfg.plans.clock.max_offset_s,
            on_outcome=self.metrics.outcome,
        )
        self.planners: dict[str, Any] = {}
        self._plan_tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.clock_steps = 0
        """steps of the concentrator's clock seen since start (`_watch_clock`)"""

    # --- Sink: what plans produce goes to the outbox ---------------------------------------------
    async def put(self, kind: str, payload: dict[str, Any]) -> int:
        assert self.outbox is not None
        return await self.outbox.put(kind, payload)

    async def put_many(self, kind: str, payloads: list[dict[str, Any]]) -> list[int]:
        assert self.outbox is not None
        return await self.outbox.put_many(kind, payloads)

    def was_evicted(self, kind: str, row_id: int) -> bool:
        return self.outbox is not None and self.outbox.was_evicted(kind, row_id)

    def _event(self, name: str, meter: str | None, detail: dict[str, Any]) -> None:
        event: dict[str, Any] = {
            "at": self.clock.now().isoformat(timespec="seconds"),
            "event": name,
            "detail": detail,
        }
        if meter is not None:
            event["meter"] = meter
        log.info("event %s", name, extra={"meter": meter, "detail": detail})
        self._pending_events.append(event)

    async def _flush_events(self) -> None:
        while True:
            if self._pending_events and self.outbox is not None:
                batch, self._pending_events = self._pending_events, []
                try:
                    await self.outbox.put_many("events", batch)
                except StorageFull:  # said by the watch; kept in memory until there is room
                    self._pending_events[:0] = batch[-MAX_PENDING_EVENTS:]
                    del self._pending_events[MAX_PENDING_EVENTS:]
                    await asyncio.sleep(STORAGE_RETRY_S)
            await asyncio.sleep(0.2)

    def _evicted(self, kind: str, payloads: list[dict[str, Any]]) -> None:
        """Daily readings the disk budget dropped before delivery: read them again (backfill)."""
        if kind != "readings":
            return
        again: dict[str, list[str]] = {}
        for reading in payloads:
            if reading.get("item") == "daily_freeze":
                day = (
                    dt.datetime.fromisoformat(reading["data_time"]).astimezone(self.clock.tz).date()
                )
                self.state.forget_read(day, reading["meter"])
                again.setdefault(day.isoformat(), []).append(reading["meter"])
        if again:
            log.info(
                "evicted daily readings to be read again by backfill: %s",
                "; ".join(f"{day} {' '.join(meters)}" for day, meters in sorted(again.items())),
                extra={"evicted_reads": again},
            )

    # --- providers for the MQTT link -------------------------------------------------------------
    def archive_payload(self) -> dict[str, Any]:
        return self.archive.current.payload()

    def status_payload(self) -> dict[str, Any]:
        depth = self.outbox.depth_now() if self.outbox is not None else {}
        return {
            "state": "online",
            "at": self.clock.now().isoformat(timespec="seconds"),
            "version": VERSION,
            "archive_version": self.archive.current.version,
            "outbox_depth": sum(depth.values()),
        }

    async def _archive_changed(self) -> None:
        for poller in self.pollers.values():
            changed = getattr(poller.client, "archive_changed", None)
            if changed is not None:  # a carrier module re-syncs its node list
                changed()
        if self.link is not None:
            await self.link.publish_archive()

    # --- plans -----------------------------------------------------------------------------------
    def _make_planners(self) -> dict[str, Any]:
        plans = self.cfg.plans
        out: dict[str, Any] = {}
        watch = TariffWatch(plans.tariff, self.ctx) if plans.tariff.enabled else None
        if plans.daily.enabled:
            out["daily"] = DailyPlanner(plans.daily, self.ctx, watch=watch)
        if plans.interval.enabled:
            out["interval"] = IntervalPlanner(plans.interval, self.ctx)
        if plans.clock.enabled:
            out["clock"] = ClockPlanner(plans.clock, self.ctx)
        if plans.tariff.enabled:
            out["tariff"] = TariffPlanner(plans.tariff, self.ctx)
        for budget in daily_budget(self.cfg, list(self.archive.current.meters)):
            if budget.ok:
                log.info("%s", budget.describe())
            else:
                log.warning("%s", budget.describe())
                self._event(
                    "plan_budget",
                    None,
                    {
                        "bus": budget.bus,
                        "meters": budget.meters,
                        "round_s": round(budget.round_s),
                        "window_s": round(budget.window_s),
                        "rounds_possible": round(budget.rounds_possible, 2),
                    },
                )
        return out

    def _start_plans(self, group: asyncio.TaskGroup) -> None:
        self.planners = self._make_planners()
        for name, planner in self.planners.items():
            self._plan_tasks[name] = group.create_task(
                _through_full_disks(planner.run), name=f"plan:{name}"
            )

    async def _stop_plans(self) -> None:
        tasks = list(self._plan_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._plan_tasks.clear()

    async def _watch_reload(self, group: asyncio.TaskGroup) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            if self.config_path is None:
                continue
            try:
                cfg = load_config(self.config_path)
            except Exception as exc:
                log.error("reload refused, keeping the running configuration: %s", exc)
                continue
            if [(b.name, b.url) for b in cfg.buses] != [(b.name, b.url) for b in self.cfg.buses]:
                log.warning("bus changes need a restart; reloading archive and plans only")
            self.cfg = cfg
            self.archive.reload(cfg)
            await self._stop_plans()
            self._start_plans(group)
            await self._archive_changed()
            log.info(
                "reloaded: archive version %d, plans %s",
                self.archive.current.version,
                ", ".join(self.planners) or "none",
            )

    # --- run and stop ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.outbox = await Outbox.open(
            cfg.agent.state_dir / "outbox.sqlite",
            max_bytes=int(cfg.outbox.max_mb * 1024 * 1024),
            eviction=cfg.outbox.eviction,
            on_evicted=self._evicted,
        )
        executor = CommandExecutor(
            self.ctx, self.archive, self._archive_changed, tariff=cfg.plans.tariff
        )
        self.link = MqttLink(
            cfg.mqtt,
            self.outbox,
            cfg.agent.concentrator,
            archive_provider=self.archive_payload,
            status_provider=self.status_payload,
            command_handler=executor,
            command_key=_command_key(cfg),
            nonces=self.nonces,
        )
        self._wire_metrics()
        log.info(
            "agent %s starting: %d buses, %d archived meters",
            cfg.agent.concentrator,
            len(self.pollers),
            len(self.archive.current.meters),
        )
        try:
            async with asyncio.TaskGroup() as group:
                others = [
                    group.create_task(p.run(), name=f"bus:{name}")
                    for name, p in self.pollers.items()
                ]
                others.append(group.create_task(self.link.run(), name="mqtt"))
                others.append(group.create_task(self._flush_events(), name="events"))
                others.append(group.create_task(self._watch_reload(group), name="reload"))
                others.append(group.create_task(self._watch_clock(), name="clock"))
                if cfg.metrics.listen:
                    others.append(
                        group.create_task(
                            serve_metrics(self.metrics, cfg.metrics.listen), name="metrics"
                        )
                    )
                self._start_plans(group)
                await self._stop.wait()
                await self._shutdown(others)
        finally:
            await self._close()

    async def _shutdown(self, others: list[asyncio.Task[Any]]) -> None:
        budget = self.cfg.stop_timeout_s
        log.info("stopping (budget %.0f s)", budget)
        drained = await asyncio.gather(
            *(p.drain(budget * STAGES["pollers"]) for p in self.pollers.values())
        )
        if not all(drained):
            log.warning("some bus exchanges were still running at the stop deadline")
        try:
            async with asyncio.timeout(budget * STAGES["plans"]):
                await self._stop_plans()
        except TimeoutError:
            log.warning("plans did not stop in time")
        if self._pending_events and self.outbox is not None:
            with contextlib.suppress(StorageFull):  # no room: said by the watch; events only
                await self.outbox.put_many("events", self._pending_events)
            self._pending_events = []
        if self.link is not None:
            await self.link.drain(budget * STAGES["publish"])
        for task in others:
            task.cancel()

    async def _close(self) -> None:
        if self.outbox is not None:
            await self.outbox.close()
        self.state.close()
        self.nonces.close()
        log.info("agent stopped")

    async def _watch_clock(self) -> None:
        """The concentrator's clock stepping (an RTC reset after a power cut, NTP correcting a
        drifted clock) moves the plans' days: one warning and one event per step, counted."""
        source = self.clock.source
        wall, mono = source.time(), source.monotonic()
        while True:
            await source.sleep(CLOCK_CHECK_S)
            now_wall, now_mono = source.time(), source.monotonic()
            step = (now_wall - wall) - (now_mono - mono)
            if abs(step) >= CLOCK_STEP_S:
                self.clock_steps += 1
                log.warning("system clock stepped by %+.0f s", step, extra={"step_s": step})
                self._event("clock_stepped", None, {"step_s": round(step)})
            wall, mono = now_wall, now_mono

    def _wire_metrics(self) -> None:
        src = self.metrics.sources
        assert self.outbox is not None
        assert self.link is not None
        outbox, link = self.outbox, self.link
        src["outbox_depth"] = outbox.depth_now
        src["outbox_evicted"] = lambda: dict(outbox.evicted)
        src["publish_latency"] = lambda: link.publish_latency_s
        src["connected"] = lambda: 1.0 if link.connected else 0.0
        src["bus_busy"] = lambda: {n: p.busy_seconds for n, p in self.pollers.items()}
        src["offline"] = lambda: len(self.health.offline)
        src["bus_queue"] = lambda: {n: p.queued for n, p in self.pollers.items()}
        src["dead_letters"] = lambda: outbox.dead_letter_rows
        src["link_stats"] = lambda: link.stats
        src["clock_steps"] = lambda: self.clock_steps
        src["storage"] = lambda: WATCH


STORAGE_RETRY_S = 5.0
"""how long a plan or the events flush waits after a write found no room"""
MAX_PENDING_EVENTS = 1000


async def _through_full_disks(run: Callable[[], Awaitable[None]]) -> None:
    """A plan's loop, started again after a write found no room (a round's report, say). The
    plans keep their own progress (what is read is recorded), so starting over redoes nothing
    that was stored; what was not stored is read again."""
    while True:
        try:
            await run()
            return
        except StorageFull:  # said once by the watch, counted there
            await asyncio.sleep(STORAGE_RETRY_S)


def run_agent(config_path: Path) -> int:
    from common.logs import setup_logging

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"meterlink agent: configuration error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    setup_logging(cfg.agent.log_level, cfg.agent.log_format)
    try:
        agent = Agent(cfg, config_path)
        asyncio.run(agent.run())
    except ConfigError as exc:
        print(f"meterlink agent: configuration error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except (OSError, sqlite3.Error, OutboxError, StorageFull) as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        # the state directory cannot hold the agent's files (full, read-only, failing): say so
        # in one line; systemd's Restart= tries again, and nothing committed was touched
        state_dir = cfg.agent.state_dir
        print(
            f"meterlink agent: state directory {state_dir}: {problem} ({free_space(state_dir)});"
            f" {HINT}",
            file=sys.stderr,
            flush=True,
        )
        return EX_IOERR
    return 0


EX_IOERR = 74  # sysexits: an input/output error
