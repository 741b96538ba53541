"""The agent's plans wired to a simulated fleet, in the test's event loop.

The agent's clock follows the simulator's world clock, so tests move time (midnight, 31
minutes later) without sleeping. Plan output goes to a sink that validates every payload
against the MQTT schemas and keeps it for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.archive import Archive
from agent.carrier.client import ArchivedNode, carrier_poller
from agent.config import HealthConfig, MeterConfig
from agent.health import HealthTracker
from agent.modbus import modbus_poller
from agent.plans.context import Clock, PlanContext
from agent.poller import BusPoller, dlt645_poller
from agent.state import PlanState
from agent.transports import BusUrl
from common.config import build
from protocols.payloads import validate
from simulators import Fleet, Serving, parse_fleet, serve_fleet

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")


class WorldClock(Clock):
    def __init__(self, fleet: Fleet) -> None:
        super().__init__(TZ)
        self.fleet = fleet

    def now(self) -> dt.datetime:
        return self.fleet.world.now().replace(tzinfo=TZ)

    def monotonic(self) -> float:
        return self.fleet.world.now().timestamp()


@dataclass
class MemorySink:
    concentrator: str = "c-test"
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    async def put(self, kind: str, payload: dict[str, Any]) -> int:
        return (await self.put_many(kind, [payload]))[0]

    async def put_many(self, kind: str, payloads: list[dict[str, Any]]) -> list[int]:
        for p in payloads:
            if kind == "readings":
                message = {"batch_id": "b", "sent_at": "2026-01-01T00:00:00+08:00", "readings": [p]}
            else:
                message = dict(p)
            validate(
                kind,
                {"schema": f"meterlink.{kind}/1", "concentrator": self.concentrator, **message},
            )
        rows = self.rows.setdefault(kind, [])
        rows.extend(payloads)
        return list(range(len(rows) - len(payloads), len(rows)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.rows.get(kind, [])


@dataclass
class SimAgent:
    fleet: Fleet
    serving: Serving
    ctx: PlanContext
    sink: MemorySink
    events: list[tuple[str, str | None, dict[str, Any]]]
    pollers: dict[str, BusPoller[Any]]


@contextlib.asynccontextmanager
async def sim_agent(
    fleet_toml: str,
    state_dir: Any,
    *,
    transport: str = "tcp",
    url_options: str = "reply_timeout_ms=3000&byte_gap_ms=300&frame_gap_ms=0",
    health: HealthConfig | None = None,
    timing: bool = False,
    time_scale: float | None = None,
    carrier_options: str = "",
) -> AsyncIterator[SimAgent]:
    """`time_scale` and `carrier_options` (URL query) concern carrier buses: the CCO's latencies
    and timers × time_scale; the agent reaches it with a carrier:// URL, its archive and the
    events list wired as the daemon does."""
    fleet = parse_fleet(fleet_toml)
    events: list[tuple[str, str | None, dict[str, Any]]] = []
    meters = tuple(build(MeterConfig, dict(e), "archive") for e in fleet.archive())
    async with serve_fleet(
        fleet, transport=transport, timing=timing, time_scale=time_scale
    ) as serving:
        pollers: dict[str, BusPoller[Any]] = {}
        for bus in fleet.buses:
            ep = serving.endpoint(bus.name)
            if ep.kind == "tcp":
                assert ep.address is not None
                base = f"tcp://{ep.address[0]}:{ep.address[1]}"
            else:
                base = f"serial://{ep.path}"
            if bus.protocol == "carrier":
                scheme = "carrier+tcp" if ep.kind == "tcp" else "carrier"
                query = "&".join(o for o in (carrier_options, "parity=N") if o)
                url = BusUrl.parse(f"{scheme}{base[base.index(':') :]}?{query}")
                pollers[bus.name] = carrier_poller(
                    bus.name,
                    url,
                    events=lambda e, m, d: events.append((e, m, d)),
                    archive=_nodes(meters, bus.name),
                )
            elif bus.protocol == "modbus":
                scheme = "modbus+tcp" if ep.kind == "tcp" else "modbus+rtu"
                url = BusUrl.parse(
                    f"{base.replace(base.split(':')[0], scheme, 1)}?timeout_ms=300&parity=N"
                )
                pollers[bus.name] = modbus_poller(bus.name, url)
            else:
                url = BusUrl.parse(f"{base}?{url_options}&parity=N")
                pollers[bus.name] = dlt645_poller(bus.name, url)
        archive = Archive(1, dt.datetime.now(dt.UTC), meters)
        state = PlanState(state_dir / "state.sqlite")
        sink = MemorySink()
        ctx = PlanContext(
            concentrator=sink.concentrator,
            archive=lambda: archive,
            pollers=pollers,
            health=HealthTracker(
                health or HealthConfig(), lambda e, m, d: events.append((e, m, d))
            ),
            state=state,
            sink=sink,
            clock=WorldClock(fleet),
            events=lambda e, m, d: events.append((e, m, d)),
        )
        tasks = [asyncio.create_task(p.run(), name=f"bus:{n}") for n, p in pollers.items()]
        try:
            yield SimAgent(fleet, serving, ctx, sink, events, pollers)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            state.close()


def _nodes(meters: tuple[MeterConfig, ...], bus: str) -> Callable[[], list[ArchivedNode]]:
    nodes = [
        ArchivedNode.of(m.address, m.protocol, m.meter_id)
        for m in meters
        if m.bus == bus and m.address is not None and m.protocol != "modbus"
    ]
    return lambda: nodes
