"""Prometheus metrics of a consumer (`meterlink central run`), read live at each scrape and
served on ``[metrics] listen`` (``GET /metrics``, the text exposition format).

meterlink_central_messages_total                 MQTT messages taken
meterlink_central_readings_total                 readings in the valid messages taken
meterlink_central_acked_messages_total           messages acknowledged (their data durable)
meterlink_central_acked_readings_total           readings in those messages
meterlink_central_batches_total                  batches made durable (one write each)
meterlink_central_dead_letters_total{kind}       this process: schema (payloads refused), influx
                                                 (lines the database refused)
meterlink_central_spool_dead_letters{kind}       rows in the spool's dead-letter table
meterlink_central_lines_total{result}            written, spooled, replayed
meterlink_central_write_errors_total             writes the database did not take (5xx, ...)
meterlink_central_write_seconds                  histogram: one HTTP write to the database
meterlink_central_spool_batches / _spool_lines   what waits in the spool for the database
meterlink_central_held_messages                  taken, not yet acknowledged
meterlink_central_oldest_held_seconds            age of the oldest message not acknowledged yet
meterlink_central_lag_seconds                    the last acknowledged readings message: its
                                                 `sent_at` (the agent's clock) to its ack
meterlink_central_last_ack_timestamp_seconds     unix time of the last acknowledgement
meterlink_central_mqtt_connected                 1 while connected to the broker
meterlink_central_coverage_days_total            days of coverage recomputed and written
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from central.sink import WRITE_BUCKETS
from common.config import parse_listen

if TYPE_CHECKING:
    from central.consumer import Consumer

__all__ = ["ConsumerMetrics", "serve_metrics"]

log = logging.getLogger(__name__)

#: the spool's tables are counted at most this often (a count may wait for a spool write)
SPOOL_COUNT_EVERY_S = 1.0


class _Live(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class ConsumerMetrics:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Live(self._live))
        self._spool_at = -SPOOL_COUNT_EVERY_S
        self._pending = (0, 0)
        self._dead: dict[str, int] = {}

    def _spool_counts(self) -> None:
        now = time.monotonic()
        if now - self._spool_at >= SPOOL_COUNT_EVERY_S:
            spool = self.consumer.spool
            self._pending, self._dead = spool.pending(), spool.dead_counts()
            self._spool_at = now

    def _live(self) -> Iterable[Metric]:
        c = self.consumer
        s, k = c.stats, c.sink.stats
        p = "meterlink_central_"
        yield CounterMetricFamily(p + "messages", "MQTT messages taken", value=s.messages)
        yield CounterMetricFamily(p + "readings", "Readings in valid messages", value=s.readings)
        yield CounterMetricFamily(
            p + "acked_messages", "Messages acknowledged, their data durable", value=s.acked
        )
        yield CounterMetricFamily(
            p + "acked_readings", "Readings in acknowledged messages", value=s.acked_readings
        )
        yield CounterMetricFamily(p + "batches", "Batches made durable", value=s.batches)
        dead = CounterMetricFamily(
            p + "dead_letters", "Dead letters recorded by this process", labels=["kind"]
        )
        dead.add_metric(["schema"], s.invalid)
        dead.add_metric(["influx"], k.dead_lines)
        yield dead
        lines = CounterMetricFamily(p + "lines", "Line-protocol lines", labels=["result"])
        lines.add_metric(["written"], k.written_lines)
        lines.add_metric(["spooled"], k.spooled_lines)
        lines.add_metric(["replayed"], k.replayed_lines)
        yield lines
        yield CounterMetricFamily(
            p + "write_errors", "Writes the database did not take", value=k.write_errors
        )
        yield HistogramMetricFamily(
            p + "write_seconds",
            "One HTTP write to the database",
            buckets=[
                *((str(b), n) for b, n in zip(WRITE_BUCKETS, k.write_buckets, strict=True)),
                ("+Inf", k.writes),
            ],
            sum_value=k.write_seconds,
        )
        self._spool_counts()
        yield GaugeMetricFamily(p + "spool_batches", "Batches waiting", value=self._pending[0])
        yield GaugeMetricFamily(p + "spool_lines", "Lines waiting", value=self._pending[1])
        kept = GaugeMetricFamily(
            p + "spool_dead_letters", "Rows in the spool's dead letters", labels=["kind"]
        )
        for kind, n in sorted(self._dead.items()):
            kept.add_metric([kind], n)
        yield kept
        yield GaugeMetricFamily(
            p + "held_messages", "Taken, not yet acknowledged", value=c.held_messages()
        )
        yield GaugeMetricFamily(
            p + "oldest_held_seconds",
            "Age of the oldest message not acknowledged yet",
            value=c.oldest_held_s(),
        )
        yield GaugeMetricFamily(
            p + "lag_seconds",
            "The last acknowledged readings message: sent_at to acknowledgement",
            value=s.lag_s,
        )
        yield GaugeMetricFamily(
            p + "last_ack_timestamp_seconds",
            "Unix time of the last acknowledgement",
            value=s.last_ack_at,
        )
        yield GaugeMetricFamily(
            p + "mqtt_connected", "Connected to the broker", value=int(c.connected.is_set())
        )
        yield CounterMetricFamily(
            p + "coverage_days", "Days of coverage written", value=s.coverage_days
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: ConsumerMetrics, listen: str, ready: asyncio.Event) -> None:
    """Serve GET /metrics on `listen` (host:port) until cancelled; `ready` is set once bound."""
    host, port = parse_listen(listen)

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("metrics on http://%s/metrics", listen)
        ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
