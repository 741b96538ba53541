"""Prometheus metrics of the agent, read live at each scrape, served over HTTP (aiohttp).

meterlink_reads_total{plan,result}        result = ok or a failure reason
meterlink_outbox_depth{kind}              rows waiting for the broker's PUBACK
meterlink_outbox_evicted_total{kind}      rows dropped by the disk budget (never silently)
meterlink_publish_latency_seconds         outbox put -> PUBACK, last batch
meterlink_bus_busy_ratio{bus}             share of wall time the bus spent in exchanges
meterlink_meters_offline                  meters currently marked offline
meterlink_mqtt_connected                  1 while connected to the broker
meterlink_bus_queue{bus}                  jobs waiting for their bus
meterlink_outbox_dead_letters             rows set aside (never publishable), still kept
meterlink_clock_steps_total               steps of the concentrator's own clock (RTC reset, NTP)
meterlink_storage_write_errors_total      writes the state directory's disk had no room for
meterlink_storage_full                    1 from such a failed write until a write succeeds
meterlink_mqtt_<counter>_total[{key}]     every MQTT link counter: published, refused, probes,
                                          dead_lettered, commands_received, commands_refused,
                                          responses_sent, responses_dropped, ...
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["AgentMetrics", "serve_metrics"]

log = logging.getLogger(__name__)


class _Live(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reads = Counter(
            "meterlink_reads",
            "Meter read attempts by plan and result",
            ["plan", "result"],
            registry=self.registry,
        )
        self.started = time.monotonic()
        self.sources: dict[str, Callable[[], Any]] = {}
        self.registry.register(_Live(self._live))

    def outcome(self, plan: str, reason: str | None) -> None:
        self.reads.labels(plan, reason or "ok").inc()

    def _live(self) -> Iterable[Metric]:
        uptime = max(time.monotonic() - self.started, 1e-9)
        src = self.sources
        if "outbox_depth" in src:
            g = GaugeMetricFamily(
                "meterlink_outbox_depth", "Rows waiting for PUBACK", labels=["kind"]
            )
            for kind, n in src["outbox_depth"]().items():
                g.add_metric([kind], n)
            yield g
        if "outbox_evicted" in src:
            g = GaugeMetricFamily(
                "meterlink_outbox_evicted_total", "Rows evicted by the disk budget", labels=["kind"]
            )
            for kind, n in src["outbox_evicted"]().items():
                g.add_metric([kind], n)
            yield g
        if "publish_latency" in src:
            yield GaugeMetricFamily(
                "meterlink_publish_latency_seconds",
                "Outbox put to PUBACK",
                value=src["publish_latency"](),
            )
        if "bus_busy" in src:
            g = GaugeMetricFamily(
                "meterlink_bus_busy_ratio", "Share of time in exchanges", labels=["bus"]
            )
            for bus, seconds in src["bus_busy"]().items():
                g.add_metric([bus], seconds / uptime)
            yield g
        if "offline" in src:
            yield GaugeMetricFamily(
                "meterlink_meters_offline", "Meters marked offline", value=src["offline"]()
            )
        if "connected" in src:
            yield GaugeMetricFamily(
                "meterlink_mqtt_connected", "Connected to the broker", value=src["connected"]()
            )
        if "bus_queue" in src:
            g = GaugeMetricFamily(
                "meterlink_bus_queue", "Jobs waiting for their bus", labels=["bus"]
            )
            for bus, n in src["bus_queue"]().items():
                g.add_metric([bus], n)
            yield g
        if "dead_letters" in src:
            yield GaugeMetricFamily(
                "meterlink_outbox_dead_letters", "Rows set aside, kept", value=src["dead_letters"]()
            )
        if "clock_steps" in src:
            yield CounterMetricFamily(
                "meterlink_clock_steps",
                "Steps of the concentrator's clock",
                value=src["clock_steps"](),
            )
        if "storage" in src:
            watch = src["storage"]()
            yield CounterMetricFamily(
                "meterlink_storage_write_errors",
                "Writes the state directory had no room for",
                value=watch.write_errors,
            )
            yield GaugeMetricFamily(
                "meterlink_storage_full", "1 while writes find no room", value=int(watch.full)
            )
        if "link_stats" in src:
            yield from _counters(src["link_stats"]())

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _counters(stats: Any) -> Iterable[Metric]:
    """Every field of the MQTT link's counters: a number, or a number per key (kind, reason)."""
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        name, help_text = f"meterlink_mqtt_{f.name}", f.name.replace("_", " ")
        if isinstance(value, dict):
            family = CounterMetricFamily(name, help_text, labels=["key"])
            for key, n in value.items():
                family.add_metric([key], n)
            yield family
        else:
            yield CounterMetricFamily(name, help_text, value=value)


#: the waits between tries to listen when the address is taken (real seconds)
LISTEN_RETRY_S = (1.0, 30.0)


async def serve_metrics(metrics: AgentMetrics, listen: str) -> None:
    """Serve /metrics until cancelled. An address that cannot be listened on (another process
    holds the port, the host is not this machine's) does not stop the agent: meters are read
    and readings kept as before; it says so once and tries again, with backoff, until it can."""
    host, _, port = listen.rpartition(":")

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        delay, failed = LISTEN_RETRY_S[0], False
        while True:
            site = web.TCPSite(runner, host or "127.0.0.1", int(port))
            try:
                await site.start()
                break
            except OSError as exc:
                await site.stop()  # the runner let go of the site that did not start
                if not failed:
                    log.error(
                        "metrics: cannot listen on %s (%s); meters are read as before, trying"
                        " again every %g s at most",
                        listen, exc.strerror or exc, LISTEN_RETRY_S[1],
                    )  # fmt: skip
                failed = True
                await asyncio.sleep(delay)  # real time: the port's holder is another process
                delay = min(delay * 2, LISTEN_RETRY_S[1])
        log.info("metrics on http://%s/metrics", listen)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
