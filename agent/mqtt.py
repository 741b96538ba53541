"""The agent's one MQTT v5 connection: publishes the outbox, keeps the retained status and archive
up to date, and carries signed commands (request/response with correlation data).

Delivery is at-least-once: a row leaves the outbox only after the broker's PUBACK for the
message that carried it. ``aiomqtt.Client.publish(qos=1)`` returns when paho's ``on_publish``
fires, which for QoS 1 happens in ``_handle_pubackcomp`` on receipt of the PUBACK (aiomqtt
2.5.1, paho-mqtt 2.2) -- but aiomqtt drops the PUBACK's MQTT v5 reason code, so a broker that
refuses a message (Mosquitto answers ``0x87 Not authorized`` when an ACL denies the topic) looks
like a success. `_Client` keeps that reason code, and a refused message keeps its rows. To tie a
PUBACK to its publish without aiomqtt's internals, QoS 1 publishes on one connection go one at a
time (a lock): the reason recorded is the one for the only publish in flight. Batches of up to
`MqttSettings.batch_size` readings keep that cheap.

aiomqtt does not fail pending publishes when the connection drops; the command listener sees the
disconnect, which ends the connection's task group, and every publish also has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiomqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.outbox import Outbox, OutboxRow
from protocols.commands import CommandRejected, NonceCache, verify_command
from protocols.payloads import TOPIC_ROOT, PayloadInvalid, topic, validate

__all__ = ["LinkStats", "MqttLink", "MqttSettings", "PublishRefused", "backoff_delay"]

log = logging.getLogger(__name__)

PASSWORD_ENV: Final = "METERLINK_MQTT_PASSWORD"  # noqa: S105 - a variable name, not a secret
MAX_COMMANDS_IN_FLIGHT: Final = 4
MAX_QUEUED_COMMANDS: Final = 100


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [b/2, b], b = min(max_s, min_s * 2**attempt).
    Half the spread keeps retries from synchronising across a fleet after a broker restart,
    the floor keeps one agent from retrying in a tight loop."""
    base = min(max_s, min_s * 2 ** min(attempt, 32))
    return rng.uniform(base / 2, base)


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    """stable across restarts so the broker keeps the session; "" = meterlink-agent-<c>"""
    username: str | None = None
    password: str | None = None
    """None: taken from the environment variable named by `password_env`, if set"""
    password_env: str = PASSWORD_ENV
    tls: bool = False
    ca_file: str | Path | None = None
    """None: the system trust store"""
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    tls_insecure: bool = False
    """skip the host name check (the chain is still verified); for brokers addressed by IP"""
    keepalive: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    stable_after_s: float = 60.0
    """a connection that lasted this long resets the backoff to `reconnect_min_s`"""
    batch_size: int = 500
    """readings per `readings` message"""
    session_expiry_s: int = 86400
    """the broker keeps our subscription and queued commands this long while we are away"""
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 30.0
    """a publish without PUBACK in this time drops the connection (its rows are sent again)"""
    idle_poll_s: float = 5.0
    """re-check the outbox this often even without a put (rows written by another process)"""
    response_wait_s: float = 60.0
    """how long a command's reply waits for a connection before it is dropped (and counted)"""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_min_s must be > 0 and <= reconnect_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password
        return os.environ.get(self.password_env) or None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (None without TLS). Reads the files: call it off the event loop."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        context.check_hostname = not self.tls_insecure
        return context


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code (v5 PUBACK >= 0x80)."""

    def __init__(self, topic_name: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish to {topic_name}: {reason}")
        self.reason = reason


class _Stopping(Exception):
    """raised inside a connection's task group when `drain` asks the link to stop"""


class _Client(aiomqtt.Client):
    """aiomqtt's client, plus the v5 reason code of the PUBACK for the publish in flight."""

    def __init__(self, hostname: str, port: int, **kwargs: Any) -> None:
        super().__init__(hostname, port, **kwargs)
        self.publish_lock = asyncio.Lock()
        self.puback_reason: ReasonCode | None = None

    def _on_publish(
        self,
        client: PahoClient,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # Only a publish still awaited counts: a PUBACK arriving after its publish timed out
        # (the connection is then being torn down) must not be taken for the next one's.
        if mid in self._pending_publishes:
            self.puback_reason = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _last_reason(self) -> ReasonCode | None:
        return self.puback_reason

    async def publish_acked(
        self,
        topic_name: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        within_s: float,
    ) -> None:
        """QoS 1 publish that returns after a successful PUBACK and raises `PublishRefused`
        on a refusing one (or `aiomqtt.MqttError` on timeout / disconnection)."""
        async with self.publish_lock:
            self.puback_reason = None
            await self.publish(
                topic_name, payload, qos=1, retain=retain, properties=properties, timeout=within_s
            )
            reason = self._last_reason()
        if reason is not None and reason.is_failure:
            raise PublishRefused(topic_name, reason)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _publish_properties(correlation: bytes | None = None) -> Properties:
    props = _properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    if correlation is not None:
        props.CorrelationData = correlation
    return props


@dataclass
class _Incoming:
    payload: Any
    response_topic: str | None
    correlation: bytes | None


@dataclass
class LinkStats:
    """Counters a metrics endpoint can read. Plain numbers, reset only by a restart."""

    published: dict[str, int] = field(default_factory=dict)
    """messages acknowledged by the broker, by kind"""
    published_rows: dict[str, int] = field(default_factory=dict)
    """outbox rows acknowledged (a readings message carries many), by kind"""
    publishes_refused: int = 0
    """PUBACKs with a failure reason code (rows kept)"""
    dead_lettered: int = 0
    connect_failures: int = 0
    commands_received: int = 0
    commands_refused: dict[str, int] = field(default_factory=dict)
    """by reason: invalid, unauthorized, internal_error"""
    responses_sent: int = 0
    responses_dropped: int = 0
    """replies that could not be delivered (no connection in time, refused, unusable topic)"""
    payloads_invalid: dict[str, int] = field(default_factory=dict)
    """status / archive / response payloads our own providers built wrongly"""

    def bump(self, counter: dict[str, int], key: str, n: int = 1) -> None:
        counter[key] = counter.get(key, 0) + n


class MqttLink:
    """See the module docstring. Run `run` as a task; stop it with `drain` (or cancel it)."""

    def __init__(
        self,
        settings: MqttSettings,
        outbox: Outbox,
        concentrator: str,
        *,
        archive_provider: Callable[[], dict[str, Any]],
        status_provider: Callable[[], dict[str, Any]],
        command_handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        command_key: bytes | None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.concentrator = concentrator
        self.client_id = settings.client_id or f"meterlink-agent-{concentrator}"
        self.topics = {k: topic(concentrator, k) for k in ("readings", "rounds", "events")}
        self.status_topic = topic(concentrator, "status")
        self.archive_topic = topic(concentrator, "archive")
        self.cmd_topic = topic(concentrator, "cmd")
        self._archive_provider = archive_provider
        self._status_provider = status_provider
        self._command_handler = command_handler
        self._command_key = command_key or None
        self._rng = rng or random.Random()
        self._nonces = NonceCache()

        self.connected = False
        self.reconnects = 0
        """successful connections after the first one"""
        self.publish_latency_s = 0.0
        """put-to-PUBACK age of the oldest row in the last acknowledged message"""
        self.publish_latency_avg_s = 0.0
        """mean put-to-PUBACK over every acknowledged row"""
        self.stats = LinkStats()

        self._latency_rows = 0
        self._up_since = 0.0
        self._client: _Client | None = None
        self._connections = 0
        self._state = "starting"
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._progress = asyncio.Event()
        self._changed = asyncio.Event()
        """replaced (after being set) whenever the connection comes or goes, or the link stops"""
        self._archive_dirty = False
        self._running = False
        self._tasks: asyncio.TaskGroup | None = None
        self._command_slots = asyncio.Semaphore(MAX_COMMANDS_IN_FLIGHT)

    @property
    def published(self) -> dict[str, int]:
        """Messages acknowledged by the broker, by kind (also in `stats`)."""
        return self.stats.published

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect with jittered backoff; until cancelled or drained."""
        if self._running:
            raise RuntimeError("MqttLink.run is already running")
        self._running = True
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            # Command executions live here, not in a connection: a reconnect must not cancel a
            # relay operation half way; its reply waits for the next connection instead.
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                while not self._stop.is_set():
                    began = self._connections
                    try:
                        await self._connect_once()
                        reason = "closed"
                    except (aiomqtt.MqttError, OSError) as exc:
                        reason = str(exc) or type(exc).__name__
                    if self._stop.is_set():
                        break
                    if self._connections > began:
                        if loop.time() - self._up_since >= self.settings.stable_after_s:
                            attempt = 0
                    else:
                        self.stats.connect_failures += 1
                    delay = backoff_delay(
                        attempt,
                        self.settings.reconnect_min_s,
                        self.settings.reconnect_max_s,
                        self._rng,
                    )
                    attempt += 1
                    self._went_down(reason, delay)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
        finally:
            self._tasks = None
            self._running = False
            self._stopped.set()
            log.info("MQTT link stopped")

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - the stage's budget
        """Staged shutdown: keep publishing until the outbox is empty or most of `timeout` is
        spent, then publish the retained ``offline`` status, disconnect cleanly and make `run`
        return. Returns within `timeout`; whatever is still queued stays on disk."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        reserve = min(2.0, timeout * 0.2)  # for the offline status and the DISCONNECT
        if not self._running:
            self._stop.set()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline - reserve):
                while sum(self.outbox.depth_now().values()) > 0 and self._running:
                    self._progress.clear()
                    await self._progress.wait()
        left = sum(self.outbox.depth_now().values())
        if left:
            log.warning("stopping with %d row(s) still in the outbox (kept on disk)", left)
        self._stop.set()
        self._signal_change()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(max(deadline, loop.time())):
                await self._stopped.wait()

    async def publish_archive(self) -> None:
        """Publish the archive again (it changed). Without a connection this happens on the
        next connect anyway; a failed attempt is retried by the publisher."""
        self._archive_dirty = True
        client = self._client
        if client is not None:
            try:
                await self._publish_archive(client)
            except aiomqtt.MqttError as exc:
                log.warning("archive publish failed (%s); the publisher retries it", exc)

    # --- one connection -----------------------------------------------------------------------
    def _new_client(self, tls: ssl.SSLContext | None) -> _Client:
        s = self.settings
        connect = _properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = s.session_expiry_s
        will_props = _properties(PacketTypes.WILLMESSAGE)
        will_props.PayloadFormatIndicator = 1
        will_props.ContentType = "application/json"
        will = aiomqtt.Will(
            self.status_topic,
            _json_bytes(self._status("offline", will=True)),
            qos=1,
            retain=True,
            properties=will_props,
        )
        return _Client(
            s.host,
            s.port,
            identifier=self.client_id,
            username=s.username,
            password=s.resolved_password(),
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect,
            will=will,
            keepalive=s.keepalive,
            timeout=s.connect_timeout_s,
            tls_context=tls,
            max_queued_incoming_messages=MAX_QUEUED_COMMANDS,
            logger=logging.getLogger(f"{__name__}.paho"),
        )

    async def _connect_once(self) -> None:
        tls = await asyncio.to_thread(self.settings.ssl_context) if self.settings.tls else None
        client = self._new_client(tls)
        async with client:
            self._went_up(client)
            try:
                await self._announce(client)
                stopping = await self._serve(client)
                if stopping:
                    await self._say_goodbye(client)
            finally:
                self._client = None
                self.connected = False
                self._signal_change()
                self._progress.set()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _went_up(self, client: _Client) -> None:
        self._connections += 1
        if self._connections > 1:
            self.reconnects += 1
        self._client = client
        self.connected = True
        self._up_since = asyncio.get_running_loop().time()
        self._signal_change()
        self._state = "up"
        log.info(
            "MQTT connected to %s:%d as %s",
            self.settings.host,
            self.settings.port,
            self.client_id,
            extra={"broker": f"{self.settings.host}:{self.settings.port}"},
        )

    def _went_down(self, reason: str, delay: float) -> None:
        """Log state changes once: losing the connection, or the first failed attempt."""
        if self._state == "up":
            log.warning(
                "MQTT connection lost (%s); reconnecting with backoff up to %g s",
                reason,
                self.settings.reconnect_max_s,
            )
        elif self._state == "starting":
            log.warning(
                "cannot connect to MQTT broker %s:%d (%s); retrying with backoff up to %g s",
                self.settings.host,
                self.settings.port,
                reason,
                self.settings.reconnect_max_s,
            )
        else:
            log.debug("MQTT connect attempt failed (%s); next in %.1f s", reason, delay)
        self._state = "down"

    async def _announce(self, client: _Client) -> None:
        # Subscribe first: "online" must mean "commands are heard". (With the persistent session
        # the subscription usually exists already; not on a first connect or after it expired.)
        granted = await client.subscribe(
            self.cmd_topic, qos=1, timeout=self.settings.connect_timeout_s
        )
        for code in granted:
            if isinstance(code, ReasonCode) and code.is_failure:
                log.error("broker refused our subscription to %s: %s", self.cmd_topic, code)
        try:
            await self._publish_status(client, "online")
        except PublishRefused as exc:
            log.error("%s", exc)
        with contextlib.suppress(PublishRefused):
            await self._publish_archive(client)

    async def _serve(self, client: _Client) -> bool:
        """Run the command listener and the publisher until one fails (the connection is gone:
        re-raised) or `drain` stops the link (returns True)."""
        lost: BaseException | None = None
        stopping = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._listen(client), name="mqtt-commands")
                tg.create_task(self._pump(client), name="mqtt-publisher")
                tg.create_task(self._until_stopped(), name="mqtt-stop")
        except* _Stopping:
            stopping = True
        except* (aiomqtt.MqttError, OSError) as group:
            lost = group.exceptions[0]
        if lost is not None:
            raise lost
        return stopping

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise _Stopping

    async def _say_goodbye(self, client: _Client) -> None:
        """A clean DISCONNECT suppresses the last will, so say offline ourselves first."""
        try:
            async with asyncio.timeout(2.0):
                await self._publish_status(client, "offline")
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish the offline status: %s", exc)

    # --- retained status and archive ----------------------------------------------------------
    def _status(self, state: str, *, will: bool = False) -> dict[str, Any]:
        """The status message; the will's leaves out the depth (it would be from connect time)."""
        base = {
            "schema": "meterlink.status/1",
            "concentrator": self.concentrator,
            "state": state,
            "at": _now_iso(),
        }
        message: dict[str, Any] = {}
        if state == "online":
            try:
                message.update(self._status_provider())
            except Exception:
                log.exception("status provider failed; publishing the bare status")
        message.update(base)
        if not will:
            message.setdefault("outbox_depth", sum(self.outbox.depth_now().values()))
        try:
            validate("status", message)
        except PayloadInvalid as exc:
            self.stats.bump(self.stats.payloads_invalid, "status")
            log.error("status provider gave an invalid status (%s); publishing the bare one", exc)
            return base
        return message

    async def _publish_status(self, client: _Client, state: str) -> None:
        await self._send(client, "status", self.status_topic, self._status(state), retain=True)

    async def _publish_archive(self, client: _Client) -> None:
        try:
            message = {
                **self._archive_provider(),
                "schema": "meterlink.archive/1",
                "concentrator": self.concentrator,
            }
            validate("archive", message)
        except Exception as exc:
            self.stats.bump(self.stats.payloads_invalid, "archive")
            log.error("archive not published: %s", exc)
            self._archive_dirty = False  # republished when it changes or on the next connect
            return
        self._archive_dirty = False
        try:
            await self._send(client, "archive", self.archive_topic, message, retain=True)
        except aiomqtt.MqttError:
            self._archive_dirty = True
            raise
        log.info("archive version %s published (retained)", message.get("version"))

    async def _send(
        self,
        client: _Client,
        kind: str,
        topic_name: str,
        message: dict[str, Any],
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        try:
            await client.publish_acked(
                topic_name,
                _json_bytes(message),
                retain=retain,
                properties=properties or _publish_properties(),
                within_s=self.settings.publish_timeout_s,
            )
        except PublishRefused:
            self.stats.publishes_refused += 1
            raise
        self.stats.bump(self.stats.published, kind)

    # --- publishing the outbox ----------------------------------------------------------------
    async def _pump(self, client: _Client) -> None:
        refusals = 0
        while True:
            mark = self.outbox.put_count
            try:
                sent = await self._publish_rows(client, "events")
                sent += await self._publish_rows(client, "rounds")
                sent += await self._publish_readings(client)
                if self._archive_dirty:
                    await self._publish_archive(client)
                refusals = 0
            except PublishRefused as exc:
                # The broker is up but will not take it (ACL, quota): keep the rows, say so,
                # and try again later rather than in a tight loop.
                if refusals == 0:
                    log.error("%s; rows stay in the outbox", exc)
                delay = backoff_delay(
                    refusals,
                    self.settings.reconnect_min_s,
                    self.settings.reconnect_max_s,
                    self._rng,
                )
                refusals += 1
                await asyncio.sleep(delay)
                continue
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.idle_poll_s):
                        await self.outbox.wait_for_put(mark)

    def _header(self, kind: str) -> dict[str, Any]:
        return {"schema": f"meterlink.{kind}/1", "concentrator": self.concentrator}

    def _readings_message(self, rows: list[OutboxRow]) -> dict[str, Any]:
        # Same rows -> same id, so a batch re-sent after a lost PUBACK can be recognised. The
        # rows of one batch are all the readings left in [first, last] (peek takes the oldest,
        # dead letters are removed first, ids are never reused), so (first, last, count)
        # names the set; the epoch separates a rebuilt outbox file.
        ids = [r.id for r in rows]
        return {
            **self._header("readings"),
            "batch_id": f"{self.outbox.epoch}:{ids[0]}-{ids[-1]}:{len(ids)}",
            "sent_at": _now_iso(),
            "readings": [r.payload for r in rows],
        }

    async def _publish_readings(self, client: _Client) -> int:
        rows = await self.outbox.peek_rows("readings", self.settings.batch_size)
        if not rows:
            return 0
        message = self._readings_message(rows)
        try:
            validate("readings", message)
        except PayloadInvalid:
            bad: dict[int, str] = {}
            for row in rows:
                try:
                    validate("readings", {**message, "readings": [row.payload]})
                except PayloadInvalid as exc:
                    bad[row.id] = str(exc)
            await self._dead_letter(bad)
            rows = [r for r in rows if r.id not in bad]
            if not rows:
                return len(bad)
            message = self._readings_message(rows)
            validate("readings", message)  # each reading passed alone: cannot fail together
        await self._send(client, "readings", self.topics["readings"], message)
        await self._acked("readings", rows)
        return len(rows)

    async def _publish_rows(self, client: _Client, kind: str) -> int:
        """rounds and events: one message per row, each acknowledged on its own PUBACK."""
        rows = await self.outbox.peek_rows(kind, self.settings.batch_size)
        for row in rows:
            message = {**row.payload, **self._header(kind)}
            try:
                validate(kind, message)
            except PayloadInvalid as exc:
                await self._dead_letter({row.id: str(exc)})
                continue
            await self._send(client, kind, self.topics[kind], message)
            await self._acked(kind, [row])
        return len(rows)

    async def _dead_letter(self, bad: dict[int, str]) -> None:
        for row_id, reason in bad.items():
            await self.outbox.dead_letter([row_id], reason)
        self.stats.dead_lettered += len(bad)
        self._progress.set()

    async def _acked(self, kind: str, rows: list[OutboxRow]) -> None:
        now = time.time()
        await self.outbox.ack([r.id for r in rows])
        ages = [max(0.0, now - r.created_at) for r in rows]
        self.publish_latency_s = max(ages)
        total = self.publish_latency_avg_s * self._latency_rows + sum(ages)
        self._latency_rows += len(rows)
        self.publish_latency_avg_s = total / self._latency_rows
        self.stats.bump(self.stats.published_rows, kind, len(rows))
        self._progress.set()

    # --- commands -----------------------------------------------------------------------------
    async def _listen(self, client: _Client) -> None:
        async for message in client.messages:
            if message.topic.value != self.cmd_topic:
                continue
            props = message.properties
            incoming = _Incoming(
                message.payload,
                getattr(props, "ResponseTopic", None) if props is not None else None,
                getattr(props, "CorrelationData", None) if props is not None else None,
            )
            await self._command_slots.acquire()
            if self._tasks is None:  # run() owns both; it is exiting
                self._command_slots.release()
                return
            self._tasks.create_task(self._handle_command(incoming), name="mqtt-command")

    async def _handle_command(self, incoming: _Incoming) -> None:
        try:
            reply = await self.answer(incoming.payload)
            target = incoming.response_topic
            if not isinstance(target, str) or not target:
                log.info("command without a response topic; reply not sent: %s", reply)
                return
            if not self._usable_response_topic(target):
                self.stats.responses_dropped += 1
                log.warning("refusing to reply on topic %r", target)
                return
            correlation = incoming.correlation if isinstance(incoming.correlation, bytes) else None
            await self._reply(target, reply, correlation)
        except Exception:  # the link never dies from a command
            log.exception("unexpected error while handling a command")
        finally:
            self._command_slots.release()

    def _usable_response_topic(self, target: str) -> bool:
        # No wildcards (paho would refuse to publish), and nothing inside the data tree:
        # a forged request must not make us write onto readings, status or another agent's cmd.
        if "+" in target or "#" in target or "\0" in target or len(target.encode()) > 65535:
            return False
        return not target.startswith(f"{TOPIC_ROOT}/")

    def _refusal(self, reason: str, detail: str, command: Any) -> dict[str, Any]:
        self.stats.bump(self.stats.commands_refused, reason)
        name = command.get("command") if isinstance(command, dict) else None
        return {
            **self._header("response"),
            "ok": False,
            "command": name if isinstance(name, str) else "unknown",
            "reason": reason,
            "detail": detail,
        }

    async def answer(self, raw: Any) -> dict[str, Any]:
        """The reply to one command payload (bytes or text as received); never raises."""
        self.stats.commands_received += 1
        try:
            command = json.loads(raw) if isinstance(raw, str | bytes | bytearray) else raw
        except ValueError as exc:
            log.warning("command is not JSON: %s", exc)
            return self._refusal("invalid", f"payload is not JSON: {exc}", None)
        try:
            validate("cmd", command)
        except PayloadInvalid as exc:
            log.warning("invalid command: %s", exc)
            return self._refusal("invalid", str(exc), command)
        if command["concentrator"] != self.concentrator:
            detail = f"addressed to {command['concentrator']!r}, this is {self.concentrator!r}"
            log.warning("command refused: %s", detail)
            return self._refusal("unauthorized", detail, command)
        try:
            if self._command_key is None:
                raise CommandRejected("no command key configured: every command is refused")
            verify_command(command, self._command_key, now=datetime.now(UTC))
            self._nonces.check_and_remember(command["nonce"], now=time.monotonic())
        except CommandRejected as exc:
            log.warning("command %s refused: %s", command["command"], exc)
            return self._refusal("unauthorized", str(exc), command)
        log.info("command %s accepted", command["command"], extra={"meter": command.get("meter")})
        try:
            result = await self._command_handler(command)
            reply: dict[str, Any] = {"command": command["command"]}
            if "meter" in command:
                reply["meter"] = command["meter"]
            reply.update(result)
            reply.update(self._header("response"))
            validate("response", reply)
        except Exception as exc:
            log.exception("command %s failed in its handler", command["command"])
            return self._refusal("internal_error", f"{type(exc).__name__}: {exc}", command)
        return reply

    async def _reply(self, target: str, reply: dict[str, Any], correlation: bytes | None) -> None:
        """Publish a reply on the current connection, waiting for one (or the next one after a
        failure) until `MqttSettings.response_wait_s` has passed or the link stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.response_wait_s
        props = _publish_properties(correlation)
        while loop.time() < deadline:
            client, changed = self._client, self._changed
            if client is None and self._stop.is_set():
                break
            if client is not None:
                try:
                    await self._send(client, "response", target, reply, properties=props)
                except PublishRefused as exc:
                    log.error("reply not delivered: %s", exc)
                    break
                except aiomqtt.MqttError as exc:
                    log.info("reply publish failed (%s); waiting for the next connection", exc)
                else:
                    self.stats.responses_sent += 1
                    return
            if self._changed is changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()
        self.stats.responses_dropped += 1
        log.warning(
            "reply to %s dropped: not delivered within %.0f s",
            target,
            self.settings.response_wait_s,
        )
