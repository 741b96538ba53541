"""`meterlink central run`: MQTT → InfluxDB, and the coverage job.

One `asyncio.TaskGroup` of named tasks:

- ``mqtt``: an MQTT v5 session that survives restarts (fixed client id, ``clean_start`` off,
  a session expiry), subscribed to ``$share/<group>/meterlink/v1/+/{readings,rounds,events,
  status}`` — instances of one group split the load — and, unshared, to the retained archives
  (a shared subscription gets no retained messages, and every instance needs the archive only
  to record it idempotently). Messages are decoded, checked against the payload schema (in
  one pass for readings: msgspec structs) and converted as they arrive; acknowledgement is
  manual.
- ``flush``: every `batch_readings` lines or `flush_interval_s`, writes the batch's coverage
  facts to the ledger (in the store: SQLite or PostgreSQL; while the store is unreachable the
  batch waits, unacknowledged) and, at the same time, its points to InfluxDB or the spool, and
  only then sends the PUBACKs, in arrival order. Up to IN_FLIGHT batches are on their way at
  once. A message the broker redelivers after a crash or reconnect is written again and lands
  on the same points.
- ``metrics``: GET /metrics on ``[metrics] listen`` (central/metrics.py); ``reload``: SIGHUP.
- ``drain``: replays the spool once InfluxDB is back.
- ``coverage``: recomputes the days whose facts changed, under a lease in the store so one
  instance at a time (of every host) does it, and writes the results to InfluxDB.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import random
import re
import signal
import socket
import time
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
from paho.mqtt.subscribeoptions import SubscribeOptions

import common.clock
from central.config import CentralConfig, load, reloaded
from central.coverage import affected_days, compute_day, day_lines
from central.ledger import Ledger
from central.metrics import ConsumerMetrics, serve_metrics
from central.points import Converted, NotConvertible, convert, convert_readings, epoch
from central.sink import Sink
from central.spool import Spool
from central.store import StoreUnavailable, open_store
from central.tariff.store import TariffStore
from central.writers import WriteUnavailable, make_writer
from common.aio import raise_if_cancelled
from common.config import ConfigError
from common.logs import setup_logging
from common.mqtt import Client, client_arguments
from protocols.payloads import (
    KINDS,
    TOPIC_ROOT,
    PayloadInvalid,
    decode_readings,
    kind_of_topic,
    validate,
)

__all__ = ["STAGES", "Consumer", "ConsumerStats", "configure_logging", "install_signal_handlers"]

log = logging.getLogger(__name__)

SHARED_KINDS = ("readings", "rounds", "events", "status") + (
    ("tariff",) if "tariff" in KINDS else ()  # the agent's tariff set-ups (docs/tariff.md)
)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
COVERAGE_LEASE = "coverage"
TARIFF_LEASE = "tariff-check"
#: batches on their way to the database at once (the next one's write overlaps the last one's
#: ledger commit and acknowledgements; acknowledgements still go out in arrival order)
IN_FLIGHT = 2
#: share of `[consumer] stop_timeout_s` the stop's stages may take (the rest: closing)
STAGES = {"write": 0.8, "close": 0.2}
#: longest wait between two tries of a batch while the store is unreachable
STORE_RETRY_MAX_S = 10.0


@dataclass
class ConsumerStats:
    messages: int = 0
    readings: int = 0
    invalid: int = 0
    acked: int = 0
    acked_readings: int = 0
    batches: int = 0
    coverage_days: int = 0
    tariff_days: int = 0
    #: the last acknowledged readings message: its sent_at (the agent's clock) to its ack
    lag_s: float = 0.0
    #: unix time of the last acknowledgement
    last_ack_at: float = 0.0


@dataclass(eq=False)  # a batch is itself: compared by identity
class _Batch:
    converted: Converted = field(default_factory=Converted)
    #: (client, connection generation, mid, qos) in arrival order
    acks: list[tuple[Client, int, int, int]] = field(default_factory=list)
    rejects: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: when its first message arrived (monotonic), and the newest readings message's sent_at
    started: float = 0.0
    sent_at: str | None = None

    def __len__(self) -> int:
        return len(self.acks)


class Consumer:
    def __init__(self, cfg: CentralConfig, config_path: Path | None = None) -> None:
        self.cfg = cfg
        #: read again on SIGHUP (`request_reload`)
        self.config_path = config_path
        self.instance = f"{cfg.mqtt.client_id}@{socket.gethostname()}"
        self.stats = ConsumerStats()
        self.spool = Spool(cfg.consumer.spool)
        self.store = open_store(
            cfg.store.url,
            password=cfg.store.password,
            connect_timeout_s=cfg.store.connect_timeout_s,
            name=self.instance,
        )
        self.ledger = Ledger(self.store)
        self.tariffs = TariffStore(self.store)
        #: per day, what its last check here depended on (`TariffStore.marker`)
        self._tariff_marks: dict[str, tuple[object, ...]] = {}
        self.writer = make_writer(cfg.influx)
        self.sink = Sink(self.writer, self.spool, cfg.influx)
        self.connected = asyncio.Event()
        self.metrics_ready = asyncio.Event()
        self._batch = _Batch()
        #: batches on their way (written, then acknowledged), oldest first
        self._writing: list[_Batch] = []
        self._in_flight: collections.deque[asyncio.Future[None]] = collections.deque()
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._generation = 0
        self._client: Client | None = None
        self._stopping = False
        self._reload = asyncio.Event()

    # --- life cycle ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set, then stop in stages (`shutdown`); cancelled, close at once
        (what is held stays unacknowledged, and the broker sends it again)."""
        await self._start_writer()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._mqtt(), name="mqtt"),
                    tg.create_task(self._flush_forever(), name="flush"),
                    tg.create_task(self.sink.drain(), name="drain"),
                    tg.create_task(self._coverage_forever(), name="coverage"),
                    tg.create_task(self._tariff_forever(), name="tariff"),
                    tg.create_task(self._log_forever(), name="stats"),
                    tg.create_task(self._reload_forever(), name="reload"),
                ]
                if self.cfg.metrics.listen:
                    metrics = ConsumerMetrics(self)
                    tasks.append(
                        tg.create_task(
                            serve_metrics(metrics, self.cfg.metrics.listen, self.metrics_ready),
                            name="metrics",
                        )
                    )
                if stop is not None:
                    await stop.wait()
                    await self.shutdown()
                    for task in tasks:
                        task.cancel()
        finally:
            self.log_stats()  # the counters once more at stop (a soak reads them from the log)
            await self._close()

    async def shutdown(self) -> None:
        """The staged stop, within `[consumer] stop_timeout_s`:

        1. stop taking messages (what the broker sends from now on stays unacknowledged: it
           is sent again, to this instance's session or the group's others);
        2. write what is held — to InfluxDB, else the spool; its facts to the ledger — and
           acknowledge it (STAGES["write"] of the budget);
        3. close: the tasks, the MQTT session (kept by the broker), the writer, the spool and
           the store (the rest).
        """
        budget = self.cfg.consumer.stop_timeout_s
        self._stopping = True
        self._room.clear()  # `_take` waits here from now on
        held = self.held_messages()
        log.info("stopping (budget %.0f s): taking no more messages, %d held", budget, held)
        try:
            async with asyncio.timeout(budget * STAGES["write"]):
                await self.flush()  # after the flush in progress, if any
        except TimeoutError:
            log.warning(
                "stop: %d messages not written and acknowledged in time; the broker sends"
                " them again",
                self.held_messages(),
            )
        else:
            log.info("stop: everything held is written and acknowledged")

    def request_reload(self) -> None:
        self._reload.set()

    async def _reload_forever(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            if self.config_path is None:
                log.warning("reload: started without a configuration file; nothing to read")
                continue
            try:
                new = load(self.config_path)
            except ConfigError as exc:
                log.error("reload refused, keeping the running configuration: %s", exc)
                continue
            self.cfg, kept = reloaded(self.cfg, new)
            self.sink.cfg = self.cfg.influx
            configure_logging(self.cfg.log.level, self.cfg.log.format)
            for what in kept:
                log.warning("reload: %s changed; that takes a restart (kept as it was)", what)
            log.info(
                "reloaded: log %s, batches of %d lines or %.2f s, coverage every %.0f s",
                self.cfg.log.level,
                self.cfg.consumer.batch_readings,
                self.cfg.consumer.flush_interval_s,
                self.cfg.coverage.interval_s,
            )

    async def _start_writer(self) -> None:
        delay = self.cfg.influx.retry_initial_s
        for _ in range(5):  # a database that is down at start is the spool's business
            try:
                await self.writer.start()
                return
            except WriteUnavailable as exc:
                log.warning("InfluxDB not reachable at start (%s)", exc)
                await asyncio.sleep(delay)
                delay *= 2

    async def _close(self) -> None:
        # batches on their way are stopped (what a stop in stages leaves: none); the batch in
        # hand is made durable; their messages stay unacknowledged and will be redelivered by
        # the broker, landing on the same points
        for future in self._in_flight:
            future.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        batch, self._batch = self._batch, _Batch()
        with contextlib.suppress(Exception):
            await self._make_durable(batch, patient=False)
        await self.writer.close()
        self.spool.close()
        self.store.close()

    # --- MQTT ----------------------------------------------------------------------------------
    async def _client_for(self) -> Client:
        # the same connection as the agent's (common.mqtt): v5, persistent session, TLS
        m = self.cfg.mqtt
        arguments = await client_arguments(m, m.client_id, ReceiveMaximum=m.receive_maximum)
        client = Client(**arguments)
        # aiomqtt has no switch for it; paho's own: PUBACK only when we say the data is safe
        client._client.manual_ack_set(True)
        return client

    async def _mqtt(self) -> None:
        m = self.cfg.mqtt
        delay = m.reconnect_min_s
        shared = [
            (f"$share/{m.group}/{TOPIC_ROOT}/+/{kind}", SubscribeOptions(qos=1))
            for kind in SHARED_KINDS
        ]
        archive = (f"{TOPIC_ROOT}/+/archive", SubscribeOptions(qos=1))
        while True:
            try:
                async with await self._client_for() as client:
                    self._generation += 1
                    generation = self._generation
                    self._client = client
                    await client.subscribe([*shared, archive])
                    self.connected.set()
                    log.info("connected to %s:%d as %s", m.host, m.port, m.client_id)
                    delay = m.reconnect_min_s
                    async for message in client.messages:
                        await self._take(client, generation, message)
            except (aiomqtt.MqttError, OSError) as exc:  # OSError: TLS files, refused TLS
                raise_if_cancelled(exc)
                self.connected.clear()
                self._client = None
                log.warning("MQTT: %s; reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, m.reconnect_max_s)

    async def _take(self, client: Client, generation: int, message: aiomqtt.Message) -> None:
        await self._room.wait()
        self.stats.messages += 1
        batch = self._batch
        if not batch.acks and not batch.rejects:
            batch.started = time.monotonic()
        name = message.topic.value
        body = (
            message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        )
        if message.qos > 0:
            batch.acks.append((client, generation, message.mid, message.qos))
        where = kind_of_topic(name)
        if where is None:
            batch.rejects.append((name, "not a meterlink topic", body))
            return
        kind = where[1]
        before = batch.converted.readings
        try:
            if kind == "readings":
                sent_at = self._readings(where[0], body, batch.converted)
            else:
                self._other(kind, where[0], body, batch.converted)
        except Exception as exc:  # one message must never stop the consumer
            # refused, kept as a dead letter, acknowledged: whatever it is (the schema's
            # verdict, an impossible date, a lone surrogate, a RecursionError from absurd
            # nesting), redelivering it would only fail again
            batch.rejects.append((name, _rejection(kind, exc), body))
            return
        self.stats.readings += batch.converted.readings - before
        if kind == "readings":
            batch.sent_at = sent_at
        # bounded by lines: a reading is one, and so is every other point (a round report's
        # failures may be thousands of lines without a reading)
        lines = len(batch.converted.lines)
        if lines >= self.cfg.consumer.batch_readings:
            self._full.set()
            if lines >= 2 * self.cfg.consumer.batch_readings:
                self._room.clear()  # backpressure until the flusher takes this batch

    @staticmethod
    def _readings(concentrator: str, body: bytes, out: Converted) -> str:
        """Decode and check in one pass (msgspec structs), then lines and facts; returns the
        payload's sent_at."""
        payload = decode_readings(body)
        if payload.concentrator != concentrator:
            raise PayloadInvalid(
                "readings", "concentrator differs from the topic's", "$.concentrator"
            )
        if b"\\u0000" in body and _has_nul(msgspec.to_builtins(payload)):
            raise NotConvertible("a string holds U+0000 (NUL), which no database text holds")
        convert_readings(payload, out)  # all of the message's facts, or none
        return payload.sent_at

    @staticmethod
    def _other(kind: str, concentrator: str, body: bytes, out: Converted) -> None:
        """The other payloads (a few per concentrator and day): JSON, then the schema."""
        payload = json.loads(body)
        validate(kind, payload)
        if payload["concentrator"] != concentrator:
            raise PayloadInvalid(kind, "concentrator differs from the topic's", "/concentrator")
        if _SURROGATE_ESCAPE.search(body):
            # a lone surrogate ("\ud800") is valid JSON but no UTF-8: neither InfluxDB's body
            # nor SQLite could take it
            json.dumps(payload, ensure_ascii=False).encode()
        if b"\\u0000" in body and _has_nul(payload):
            raise NotConvertible("a string holds U+0000 (NUL), which no database text holds")
        convert(kind, payload, out)  # all of the message's facts, or none

    # --- durability, then acknowledgement ------------------------------------------------------
    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.consumer.flush_interval_s):
                    await self._full.wait()
            await self._submit()
            # a batch that failed in an unforeseen way stops the consumer, as it did in-line
            while self._in_flight and self._in_flight[0].done():
                self._in_flight.popleft().result()

    async def flush(self) -> None:
        """Make everything taken so far durable, and acknowledge it."""
        await self._submit()
        if self._in_flight:
            await self._in_flight[-1]

    async def _submit(self) -> None:
        """Start making the batch in hand durable, once fewer than IN_FLIGHT batches are on
        their way: the next batch's write goes out while the last one's ledger transaction
        commits, so the database is not left idle between two batches."""
        await self._slots.acquire()
        self._full.clear()
        batch, self._batch = self._batch, _Batch()
        if not self._stopping:
            self._room.set()
        if not len(batch) and not batch.rejects:
            self._slots.release()
            return
        previous = self._in_flight[-1] if self._in_flight else None
        self._writing.append(batch)
        self._in_flight.append(asyncio.ensure_future(self._durable_then_ack(batch, previous)))

    async def _durable_then_ack(self, batch: _Batch, previous: asyncio.Future[None] | None) -> None:
        try:
            await self._make_durable(batch)
            if previous is not None:
                await previous  # acknowledgements go out in arrival order
        finally:
            self._writing.remove(batch)
            self._slots.release()
        for client, generation, mid, qos in batch.acks:
            # an ack belongs to the connection the message came on; after a reconnect the
            # broker redelivers those messages itself
            if generation == self._generation and client is self._client:
                client._client.ack(mid, qos)
                self.stats.acked += 1
        self.stats.acked_readings += batch.converted.readings
        self.stats.batches += 1
        self.stats.last_ack_at = now = time.time()
        if batch.sent_at is not None:
            with contextlib.suppress(ValueError):
                self.stats.lag_s = now - epoch(batch.sent_at)

    def held_messages(self) -> int:
        """Messages taken and not acknowledged yet (the batch filling, and those on their way)."""
        return len(self._batch) + sum(len(b) for b in self._writing)

    def oldest_held_s(self) -> float:
        oldest = next((b for b in (*self._writing, self._batch) if len(b)), None)
        return time.monotonic() - oldest.started if oldest is not None else 0.0

    async def _make_durable(self, batch: _Batch, *, patient: bool = True) -> None:
        for topic_name, error, body in batch.rejects:
            self.stats.invalid += 1
            log.warning("rejected payload on %s: %s", topic_name, error)
            await asyncio.to_thread(self.spool.dead, "schema", topic_name, error, body)
        facts = batch.converted
        # the ledger (a transaction in the store, in a thread) and the points (InfluxDB, or the
        # spool) at the same time: both are done before anything is acknowledged
        done = await asyncio.gather(
            self._apply(facts, patient=patient),
            self.sink.write(facts.lines),
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _apply(self, facts: Converted, *, patient: bool) -> None:
        """The batch's facts into the ledger. While the store is unreachable the batch waits
        (its messages unacknowledged; the broker's Receive Maximum bounds what piles up) and
        is tried again with backoff; one error is logged per episode."""
        delay, down = 0.2, False
        while True:
            try:
                await asyncio.to_thread(self.ledger.apply, facts, self.cfg.coverage.required_values)
                if facts.freezes or facts.tariffs:
                    await asyncio.to_thread(self.tariffs.apply_converted, facts)
            except StoreUnavailable as exc:
                if not patient:
                    raise
                if not down:
                    log.error("store unavailable, holding the batch unacknowledged: %s", exc)
                    down = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, STORE_RETRY_MAX_S)
                continue
            if down:
                log.warning("store %s takes the facts again", self.store)
            return

    # --- coverage ------------------------------------------------------------------------------
    async def _coverage_forever(self) -> None:
        interval = self.cfg.coverage.interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.0))
            try:
                await self.publish_coverage()
            except WriteUnavailable as exc:
                log.info("coverage not written, InfluxDB unavailable (%s); will retry", exc)
            except StoreUnavailable as exc:
                log.info("coverage not computed, store unavailable (%s); will retry", exc)
            except Exception:
                # derived data: the days stay dirty and are tried again; ingest goes on
                log.exception("coverage job failed; will retry")

    async def publish_coverage(self) -> int:
        """Recompute and write the days whose facts changed; returns how many days. Under the
        ledger's lease: another instance doing it now means there is nothing to do here."""
        lease_s = max(120.0, 4 * self.cfg.coverage.interval_s)
        if not await asyncio.to_thread(
            self.ledger.take_lease, COVERAGE_LEASE, self.instance, lease_s
        ):
            return 0
        try:
            return await self._publish_dirty(lease_s)
        finally:
            await asyncio.to_thread(self.ledger.release_lease, COVERAGE_LEASE, self.instance)

    async def _publish_dirty(self, lease_s: float) -> int:
        dirty = await asyncio.to_thread(self.ledger.dirty_days)
        if not dirty:
            return 0
        known = await asyncio.to_thread(self.ledger.known_days)
        # only days with data are published (a day before the first read is not a 0% day):
        # each dirty one, and the days after it whose consecutive-failure counts it can move
        days = affected_days(dirty, known)
        for day in days:
            # however long the pass (a concentrator's first archive redoes every day), hold on
            if not await asyncio.to_thread(
                self.ledger.take_lease, COVERAGE_LEASE, self.instance, lease_s
            ):
                return 0  # another instance took over; the marks are still there for it
            cov = await asyncio.to_thread(compute_day, self.ledger, day, self.cfg.coverage)
            published = {
                m: await asyncio.to_thread(self.ledger.published, day, m)
                for m in ("coverage_streak",)
            }
            lines, now = day_lines(cov, published)
            await self.sink.write_now(lines)
            for measurement, series in now.items():
                await asyncio.to_thread(self.ledger.set_published, day, measurement, series)
            self.stats.coverage_days += 1
        # only now that every consequence is written (a pass that fails midway is redone);
        # a mark whose day changed again meanwhile stays
        for day, gen in dirty.items():
            await asyncio.to_thread(self.ledger.clean, day, gen)
        return len(days)

    # --- the tariff check ------------------------------------------------------------------------
    async def _tariff_forever(self) -> None:
        interval = self.cfg.tariff.interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.0))
            try:
                await self.publish_tariff()
                await self.request_switch_reads()
            except WriteUnavailable as exc:
                log.info("tariff check not written, InfluxDB unavailable (%s); will retry", exc)
            except StoreUnavailable as exc:
                log.info("tariff check not done, store unavailable (%s); will retry", exc)
            except Exception:
                log.exception("tariff check failed; will retry")

    async def request_switch_reads(self, sender: Any = None, *, limit: int = 200) -> int:
        """The day a plan takes a new version and the day after, ask the agents to read the set-up
        of each meter on that plan read before the switch (the ``tariff`` command), at most
        `limit` per run and one at a time per concentrator; returns how many were asked. Needs
        the command key (``METERLINK_MQTT_COMMAND_KEY``); `sender` is a `CommandSender` (made
        here when not given)."""
        from central.commands import CommandSender, CommandTimeout
        from central.tariff.day import switch_read_candidates
        from protocols.commands import key_bytes

        t = self.cfg.tariff
        book = await asyncio.to_thread(self.tariffs.plans)
        if book is None:
            return 0
        today = common.clock.current().now(zoneinfo.ZoneInfo(t.timezone)).date()
        wanted = await asyncio.to_thread(
            switch_read_candidates, self.ledger, self.tariffs, book, today, t.timezone
        )
        wanted = wanted[:limit]
        if not wanted:
            return 0
        if sender is None:
            if self.cfg.mqtt.command_key is None:
                log.info(
                    "tariff: %d meters to read after a plan switch, but no command key"
                    " (METERLINK_MQTT_COMMAND_KEY): left to the agents",
                    len(wanted),
                )
                return 0
            key = key_bytes(self.cfg.mqtt.command_key.reveal())
            async with CommandSender(self.cfg.mqtt, key) as own:
                return await self.request_switch_reads(own, limit=limit)
        by_concentrator: dict[str, list[str]] = {}
        for c, m, _ in wanted:
            by_concentrator.setdefault(c, []).append(m)

        async def one_concentrator(c: str, meters: list[str]) -> int:
            asked = 0
            for m in meters:
                try:
                    reply = await sender.send(c, "tariff", meter=m, wait_s=120.0)
                    asked += 1
                    if not reply.ok:
                        log.info("tariff: read of %s on %s after the switch: %s", m, c,
                                 reply.reason)  # fmt: skip
                except CommandTimeout:
                    log.info("tariff: %s did not answer the read of %s in time", c, m)
                    return asked  # this concentrator is busy or away: next run
            return asked

        done = await asyncio.gather(*(one_concentrator(c, ms) for c, ms in by_concentrator.items()))
        return sum(done)

    async def publish_tariff(self, days: list[str] | None = None) -> int:
        """Check `days` (default: yesterday and today, the meters' time zone) against the plans
        in force, store the outcomes and write the KPI; under a lease, one instance at a time;
        a day whose inputs did not change since this instance checked it is skipped. Returns how
        many days were checked (0: no plans yet, nothing changed, or another instance is at
        it)."""
        from central.tariff.day import check_day, day_lines

        t = self.cfg.tariff
        book = await asyncio.to_thread(self.tariffs.plans)
        if book is None:
            return 0
        if days is None:
            today = common.clock.current().now(zoneinfo.ZoneInfo(t.timezone)).date()
            days = [(today - dt.timedelta(days=1)).isoformat(), today.isoformat()]
        lease_s = max(120.0, 4 * t.interval_s)
        if not await asyncio.to_thread(self.store.take_lease, TARIFF_LEASE, self.instance, lease_s):
            return 0
        checked = 0
        try:
            for day in days:
                # nothing it depends on changed since this instance checked it: skip
                marker = (book.digest, await asyncio.to_thread(self.tariffs.marker, day))
                if self._tariff_marks.get(day) == marker:
                    continue
                result = await asyncio.to_thread(
                    check_day, self.ledger, self.tariffs, book, day, t.settings(), t.timezone
                )
                await self.sink.write_now(day_lines(result))
                self._tariff_marks = {**{d: m for d, m in self._tariff_marks.items()
                                         if d in days}, day: marker}  # fmt: skip
                self.stats.tariff_days += 1
                checked += 1
        finally:
            await asyncio.to_thread(self.store.release_lease, TARIFF_LEASE, self.instance)
        return checked

    async def _log_forever(self) -> None:
        while True:
            await asyncio.sleep(30)
            self.log_stats()

    def log_stats(self) -> None:
        s, k = self.stats, self.sink.stats
        log.info(
            "messages %d readings %d invalid %d acked %d; written %d spooled %d replayed %d"
            " dead %d write errors %d",
            s.messages,
            s.readings,
            s.invalid,
            s.acked,
            k.written_lines,
            k.spooled_lines,
            k.replayed_lines,
            k.dead_lines,
            k.write_errors,
        )


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _rejection(kind: str, exc: Exception) -> str:
    if isinstance(exc, PayloadInvalid | NotConvertible):
        return str(exc)[:1000]
    if isinstance(exc, UnicodeDecodeError):
        return f"{kind} payload is not UTF-8 (byte {exc.start}: {exc.reason})"
    if isinstance(exc, json.JSONDecodeError):
        return f"{kind} payload is not JSON: {exc}"
    return f"{kind} payload not convertible: {type(exc).__name__}: {exc}"


def configure_logging(level: str, fmt: str) -> None:
    """`common.logs.setup_logging`, every logger at `level` (at debug, the MQTT client's
    packets too, as `logging.basicConfig` did here before)."""
    setup_logging(level, fmt)
    for name in ("aiomqtt", "asyncio"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def install_signal_handlers(stop: asyncio.Event, consumer: Consumer | None = None) -> None:
    """SIGTERM, SIGINT: the staged stop; SIGHUP: `consumer` reads its configuration again."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if consumer is not None:
        loop.add_signal_handler(signal.SIGHUP, consumer.request_reload)
