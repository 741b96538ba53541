"""The agent's one MQTT v5 connection: publishes the outbox, keeps the retained status and archive
up to date, and carries signed commands (request/response with correlation data).

Delivery is at-least-once: a row leaves the outbox only after the broker's PUBACK for the
message that carried it (or, for good, to the dead-letter table; see below).
``aiomqtt.Client.publish(qos=1)`` returns when paho's ``on_publish`` fires, which for QoS 1
happens in ``_handle_pubackcomp`` on receipt of the PUBACK (aiomqtt 2.5.1, paho-mqtt 2.2) --
but aiomqtt drops the PUBACK's MQTT v5 reason code, so a broker that
refuses a message (Mosquitto answers ``0x87 Not authorized`` when an ACL denies the topic) looks
like a success. `_Client` keeps that reason code, and a refused message keeps its rows. To tie a
PUBACK to its publish without aiomqtt's internals, QoS 1 publishes on one connection go one at a
time (a lock): the reason recorded is the one for the only publish in flight. Batches of up to
`MqttSettings.batch_size` readings keep that cheap.

aiomqtt does not fail pending publishes when the connection drops; the command listener sees the
disconnect, which ends the connection's task group, and every publish also has a timeout.

Each outbox kind (events, round reports, readings) is published on its own: a refused message
backs off its kind only (`_KindState`), so an ACL that denies one topic or one bad message never
holds up the others. What the broker will not take:

- a refusing PUBACK: 0x97 Quota exceeded only delays; any other code counts as a strike against
  the message. A readings batch is halved until the reading the broker objects to is alone.
  After `MqttSettings.dead_letter_after` strikes of one message, the next message of its kind is
  sent first (a probe). Taken: the struck message gets a last try, and failing that its rows go
  to the dead-letter table (counted, logged, an ``outbox_dead_letter`` event). Refused too: it
  is the topic (an ACL), so every row stays and the kind keeps backing off.
- size: no payload exceeds `MqttSettings.max_payload_bytes` (nor the Maximum Packet Size a
  broker announces in its CONNACK): readings batches are cut by bytes, a round report too large
  for one message is sent in parts (``part``: index, of, failed_total). Mosquitto's
  ``message_size_limit`` answers a larger PUBLISH by closing the connection, not with a PUBACK:
  when the connection dies twice in a row under the same message, the link halves its payload
  cap (`MqttLink.payload_cap`) if the message can be split, else counts a strike against it.
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

log = logging.getLogger(__package__)  # "agent.mqtt", the name it logged under as agent/mqtt.py

PASSWORD_ENV: Final = "METERLINK_MQTT_PASSWORD"  # noqa: S105 - a variable name, not a secret
MAX_COMMANDS_IN_FLIGHT: Final = 4
MAX_QUEUED_COMMANDS: Final = 100
PUMPED_KINDS: Final = ("events", "rounds", "readings")
"""outbox kinds, in the order of each publisher pass; each backs off on its own"""
DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024
MIN_PAYLOAD_BYTES: Final = 4096
"""the learned payload cap never goes below this (a reading or a failed meter is far smaller)"""
PUBLISH_OVERHEAD: Final = 64
"""bytes of a PUBLISH packet besides its topic and payload (fixed header, packet id, our
properties), with room to spare: subtracted from a broker's Maximum Packet Size"""
TRANSIENT_REFUSALS: Final = frozenset({0x97})
"""PUBACK reason codes that say nothing about the message: 0x97 Quota exceeded (a rate limit).
Every other failure code counts against the message (see `MqttLink._strike`)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _report_parts(message: dict[str, Any], cap: int) -> list[tuple[bytes, int]] | None:
    """A round report too large for one message, as parts of at most `cap` bytes: the same
    report, its `failed` list cut in order, each with ``part`` = {index (from 1), of,
    failed_total}; with each part's number of failed meters. None when that cannot be done
    (no failed meters to spread, or one alone is too large)."""
    failed = message["failed"]
    total = len(failed)
    # the envelope with part numbers as wide as any split of this report can have
    widest = {"index": max(total, 1), "of": max(total, 1), "failed_total": total}
    envelope = len(_json_bytes({**message, "failed": [], "part": widest}))
    chunks: list[list[Any]] = [[]]
    size = envelope
    for entry in failed:
        grow = len(_json_bytes(entry))
        if chunks[-1] and size + 1 + grow > cap:
            chunks.append([])
            size = envelope
        if chunks[-1]:
            grow += 1  # the comma
        if size + grow > cap:
            return None
        chunks[-1].append(entry)
        size += grow
    if len(chunks) < 2:
        return None
    n = len(chunks)
    return [
        (
            _json_bytes(
                {**message, "failed": chunk, "part": {"index": i, "of": n, "failed_total": total}}
            ),
            len(chunk),
        )
        for i, chunk in enumerate(chunks, 1)
    ]


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
    """readings per `readings` message, at most"""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    """largest payload published: readings batches are cut, round reports split into parts to
    stay under it; set it to at most the broker's limit (Mosquitto ``message_size_limit``)"""
    dead_letter_after: int = 5
    """refusals of one message (see `MqttLink._strike`) before the next message of its kind is
    tried: if the broker takes that one, the refused rows go to the dead-letter table"""
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
        if self.max_payload_bytes < MIN_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must be at least {MIN_PAYLOAD_BYTES}")
        if self.dead_letter_after < 1:
            raise ValueError("dead_letter_after must be at least 1")
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


@dataclass(frozen=True)
class _Outgoing:
    """One message built from outbox rows."""

    kind: str
    key: str
    """names the message: the same rows (and part) give the same key"""
    payload: bytes
    rows: tuple[OutboxRow, ...]
    units: int
    """readings, or failed meters of a report part, it carries: more than 1 can be split"""
    last_part: bool = True
    """the rows are acknowledged after this message (a report's last part)"""


@dataclass
class _KindState:
    """How publishing one outbox kind is going; reset by the next accepted message."""

    refusals: int = 0
    """refused publishes in a row: the exponent of this kind's backoff"""
    retry_at: float = 0.0
    """event-loop time before which this kind is not published"""
    head: frozenset[int] = frozenset()
    """rows of the one-row message (or report) the strikes are for"""
    head_key: str = ""
    """the refused message itself (a report's part)"""
    strikes: int = 0
    reason: str = ""
    row_limit: int = 0
    """readings per message while isolating the reading the broker objects to (0: no limit)"""
    probe: bool = False
    """`strikes` reached `dead_letter_after`: send the next message of the kind first"""
    last_chance: bool = False
    """the probe went through: the head is tried once more, and goes if it fails again"""
    condemned: bool = False
    """it did: the head's rows go to the dead-letter table on the next pass"""
    topic_refused: bool = False
    """a probe was refused too: the broker refuses the topic (said once per episode)"""


class _Client(aiomqtt.Client):
    """aiomqtt's client, plus the v5 reason code of the PUBACK for the publish in flight."""

    def __init__(self, hostname: str, port: int, **kwargs: Any) -> None:
        super().__init__(hostname, port, **kwargs)
        self.publish_lock = asyncio.Lock()
        self.puback_reason: ReasonCode | None = None
        self.max_packet_size: int | None = None
        """the broker's Maximum Packet Size from its CONNACK (None: it announced none)"""

    def _on_connect(
        self,
        client: PahoClient,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        size = getattr(properties, "MaximumPacketSize", None)
        if isinstance(size, int) and size > 0:
            self.max_packet_size = size
        super()._on_connect(client, userdata, flags, reason_code, properties)

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
    refused: dict[str, int] = field(default_factory=dict)
    """refused outbox messages, by kind"""
    probes: int = 0
    """messages sent past a repeatedly refused one to tell a refused message from a refused
    topic"""
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
        self.payload_cap = settings.max_payload_bytes
        """largest payload sent: `max_payload_bytes`, halved (down to `MIN_PAYLOAD_BYTES`) each
        time the connection died twice in a row under a message that could be split"""

        self._kinds = {kind: _KindState() for kind in PUMPED_KINDS}
        self._archive_retry_at = 0.0
        self._flight: _Outgoing | None = None
        """the outbox message being published (cleared when the broker answered)"""
        self._suspect: str | None = None
        """key of the message in flight when the last connection died"""
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
            logger=logging.getLogger(f"{__package__}.paho"),
        )

    async def _connect_once(self) -> None:
        tls = await asyncio.to_thread(self.settings.ssl_context) if self.settings.tls else None
        client = self._new_client(tls)
        async with client:
            self._went_up(client)
            self._flight = None
            try:
                await self._announce(client)
                stopping = await self._serve(client)
                if stopping:
                    await self._say_goodbye(client)
            except (aiomqtt.MqttError, OSError):
                self._lost_in_flight()
                raise
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
        message: dict[str, Any] | bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        try:
            await client.publish_acked(
                topic_name,
                message if isinstance(message, bytes) else _json_bytes(message),
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
        """Publish each kind on its own: a kind the broker refuses (or whose message keeps
        killing the connection) backs off alone while the other kinds keep flowing."""
        loop = asyncio.get_running_loop()
        while True:
            mark = self.outbox.put_count
            progress = 0
            for kind in PUMPED_KINDS:
                if loop.time() >= self._kinds[kind].retry_at:
                    progress += await self._publish_kind(client, kind)
            if self._archive_dirty and loop.time() >= self._archive_retry_at:
                try:
                    await self._publish_archive(client)
                except PublishRefused as exc:
                    log.error("%s; retried later", exc)
                    self._archive_retry_at = loop.time() + self.settings.reconnect_max_s
            if progress == 0:
                wait = self.settings.idle_poll_s
                pending = self.outbox.depth_now()
                for kind, state in self._kinds.items():
                    if pending.get(kind) and state.retry_at > loop.time():
                        wait = min(wait, state.retry_at - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.outbox.wait_for_put(mark)

    def _header(self, kind: str) -> dict[str, Any]:
        return {"schema": f"meterlink.{kind}/1", "concentrator": self.concentrator}

    def _limits(self, client: _Client, kind: str) -> tuple[int, int]:
        """(hard, soft) payload limits for `kind` on this connection. Over `hard` a message can
        never be sent: `max_payload_bytes`, or less when the broker announced a Maximum Packet
        Size in its CONNACK. `soft` is lower once the link learned that the broker drops
        connections over smaller messages (see `payload_cap`)."""
        hard = self.settings.max_payload_bytes
        if client.max_packet_size is not None:
            overhead = PUBLISH_OVERHEAD + len(self.topics[kind].encode("utf-8"))
            hard = min(hard, client.max_packet_size - overhead)
        return hard, min(hard, self.payload_cap)

    async def _publish_kind(self, client: _Client, kind: str) -> int:
        """One pass over `kind`; returns rows acknowledged or dead-lettered (0: nothing to do,
        or the kind is backing off)."""
        state = self._kinds[kind]
        progress = 0
        if state.condemned:
            head = sorted(state.head)
            log.error(
                "%d %s row(s) failed %d times (%s), the broker takes other %s messages and"
                " they failed once more: moving them to the dead-letter table",
                len(head),
                kind,
                state.strikes + 1,
                state.reason,
                kind,
            )
            reason = f"failed {state.strikes + 1} times: {state.reason}"
            await self._dead_letter(kind, dict.fromkeys(head, reason), announce=True)
            self._kinds[kind] = state = _KindState()
            progress += len(head)
        messages, dropped = await self._outgoing(client, kind)
        progress += dropped
        probing = False
        if state.probe and messages:
            # The head failed `dead_letter_after` times: is it the message or the topic? Send
            # the next message of the kind first: if the broker takes that one, the head's rows
            # go to the dead-letter table; if it refuses it too, everything stays.
            others = [m for m in messages if not state.head.intersection(r.id for r in m.rows)]
            if others:
                messages, probing = others, True
                self.stats.probes += 1
        for message in messages:
            if not await self._publish_message(client, message, probing=probing):
                break
            if message.last_part:
                await self._acked(kind, list(message.rows))
                progress += len(message.rows)
            if probing:  # the head's turn again: its last chance
                progress += 1
                break
        return progress

    async def _publish_message(self, client: _Client, m: _Outgoing, *, probing: bool) -> bool:
        """Publish one message; False when the broker refused it (the rows stay)."""
        self._flight = m
        try:
            await self._send(client, m.kind, self.topics[m.kind], m.payload)
        except PublishRefused as exc:
            self._flight = None
            await self._refused(m, exc, probing=probing)
            return False
        self._flight = None
        state = self._kinds[m.kind]
        refusals, state.refusals, state.retry_at = state.refusals, 0, 0.0
        if probing:
            # Not condemned yet: the broker may only just have started to take this topic
            # (an ACL fixed meanwhile). The head is tried once more, and goes if it fails.
            state.probe, state.last_chance = False, True
            log.warning(
                "the broker took the %s message after one that failed %d times (%s): trying"
                " that one a last time",
                m.kind,
                state.strikes,
                state.reason,
            )
        elif m.key == state.head_key or not state.head.intersection(r.id for r in m.rows):
            # (not when another part of a report whose part was refused went through)
            self._kinds[m.kind] = _KindState()
        if refusals:
            log.info("%s messages accepted again after %d failed attempt(s)", m.kind, refusals)
        return True

    async def _refused(self, m: _Outgoing, exc: PublishRefused, *, probing: bool) -> None:
        state = self._kinds[m.kind]
        self.stats.bump(self.stats.refused, m.kind)
        code = exc.reason.value
        if code in TRANSIENT_REFUSALS:
            pass  # the broker's rate limit: it passes, this message is not to blame
        elif probing:
            # the next message was refused as well: the topic, not the head, is refused
            # (an ACL); every row stays, and the next probe is `dead_letter_after` refusals away
            state.probe, state.strikes = False, 0
            log.log(
                logging.DEBUG if state.topic_refused else logging.ERROR,
                "the broker refuses every %s message (%s), not just one: the rows stay in the"
                " outbox until it takes them",
                m.kind,
                exc.reason,
            )
            state.topic_refused = True
        elif state.last_chance and state.head == frozenset(r.id for r in m.rows):
            state.condemned = True
        else:
            self._strike(m, f"PUBACK {exc.reason} (0x{code:02X})")
        if state.refusals == 0:
            log.error(
                "%s; the %s rows stay in the outbox, retried with backoff (other kinds go on)",
                exc,
                m.kind,
            )
        self._back_off(m.kind)

    def _strike(self, m: _Outgoing, reason: str) -> None:
        """The broker will not take this message (a non-transient refusal, or the connection
        died under it twice). A readings batch is halved until the row it objects to is
        alone; a message of one row counts strikes, and at `dead_letter_after` the next
        message of its kind is sent first as a probe."""
        state = self._kinds[m.kind]
        state.reason = reason
        if m.kind == "readings" and len(m.rows) > 1:
            state.row_limit = max(1, len(m.rows) // 2)
            return
        ids = frozenset(r.id for r in m.rows)
        if ids != state.head:  # (a probe that fails in turn becomes the head)
            state.head, state.strikes, state.probe, state.last_chance = ids, 0, False, False
        state.head_key = m.key
        state.strikes += 1
        if state.strikes >= self.settings.dead_letter_after:
            state.probe = True

    def _back_off(self, kind: str) -> None:
        state = self._kinds[kind]
        delay = backoff_delay(
            state.refusals, self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
        )
        state.refusals += 1
        state.retry_at = asyncio.get_running_loop().time() + delay

    def _lost_in_flight(self) -> None:
        """The connection died. If it died twice in a row under the same outbox message, the
        broker probably drops messages that large (Mosquitto's ``message_size_limit`` closes
        the connection instead of refusing the PUBLISH): halve the payload cap if the message
        can be split, else count it against the message and let the other kinds go first."""
        m, self._flight = self._flight, None
        previous, self._suspect = self._suspect, (m.key if m is not None else None)
        if m is None:
            return
        state = self._kinds[m.kind]
        if state.last_chance and state.head == frozenset(r.id for r in m.rows):
            state.condemned = True  # after a probe went through: it is the message
            return
        if m.key != previous:
            return
        self._suspect = None
        size = len(m.payload)
        if m.units > 1 and size > MIN_PAYLOAD_BYTES:
            self.payload_cap = min(self.payload_cap, max(MIN_PAYLOAD_BYTES, size // 2))
            log.warning(
                "the connection was lost twice in a row while a %d-byte %s message was in"
                " flight: sending at most %d bytes per message from now on (does the broker"
                " limit message sizes? set max_payload_bytes below its limit)",
                size,
                m.kind,
                self.payload_cap,
            )
            return
        self._strike(m, f"the connection was lost twice while this {size}-byte message was sent")
        self._back_off(m.kind)

    async def _outgoing(self, client: _Client, kind: str) -> tuple[list[_Outgoing], int]:
        """The next messages of `kind` (oldest rows first), and how many rows were
        dead-lettered on the way (invalid, or too large to ever be sent)."""
        state = self._kinds[kind]
        if kind == "readings":
            return await self._readings_out(client, state.row_limit or self.settings.batch_size)
        rows = await self.outbox.peek_rows(kind, self.settings.batch_size)
        hard, soft = self._limits(client, kind)
        messages: list[_Outgoing] = []
        bad: dict[int, str] = {}
        for row in rows:
            message = {**row.payload, **self._header(kind)}
            try:
                validate(kind, message)
            except PayloadInvalid as exc:
                bad[row.id] = str(exc)
                continue
            payload = _json_bytes(message)
            if len(payload) <= soft:
                units = len(message["failed"]) if kind == "rounds" else 1
                messages.append(_Outgoing(kind, f"{kind}:{row.id}", payload, (row,), units))
                continue
            parts = _report_parts(message, soft) if kind == "rounds" else None
            if parts is None and len(payload) > hard:
                bad[row.id] = f"payload of {len(payload)} bytes is over the {hard} byte limit"
                continue
            if parts is None:  # over what the broker seems to take, under what it announced
                parts = [(payload, 1)]
            for i, (part, units) in enumerate(parts, 1):
                key = f"{kind}:{row.id}:{i}/{len(parts)}"
                messages.append(_Outgoing(kind, key, part, (row,), units, i == len(parts)))
        if bad:
            await self._dead_letter(kind, bad, announce=kind != "events")
        return messages, len(bad)

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

    async def _readings_out(self, client: _Client, limit: int) -> tuple[list[_Outgoing], int]:
        rows = await self.outbox.peek_rows("readings", self.settings.batch_size)
        if not rows:
            return [], 0
        message = self._readings_message(rows)
        bad: dict[int, str] = {}
        try:
            validate("readings", message)
        except PayloadInvalid:
            for row in rows:
                try:
                    validate("readings", {**message, "readings": [row.payload]})
                except PayloadInvalid as exc:
                    bad[row.id] = str(exc)
            rows = [r for r in rows if r.id not in bad]
        state = self._kinds["readings"]
        if state.probe and any(r.id not in state.head for r in rows):
            rows = [r for r in rows if r.id not in state.head]  # the probe: the rows after it
        rows = rows[:limit]
        hard, soft = self._limits(client, "readings")
        # The batch as large as `soft` allows: the envelope (with an id at least as long as the
        # final one) plus each reading as it is encoded inside the message, comma separated.
        envelope = len(_json_bytes({**self._readings_message(rows), "readings": []})) if rows else 0
        size, taken = envelope, 0
        for row in rows:
            grow = len(_json_bytes(row.payload)) + (1 if taken else 0)
            if taken and size + grow > soft:
                break
            size += grow
            taken += 1
        if taken == 1 and size > hard:  # this reading alone can never be sent
            bad[rows[0].id] = f"a reading of {size} bytes is over the {hard} byte limit"
            taken = 0
        if bad:
            await self._dead_letter("readings", bad, announce=True)
        if taken == 0:
            return [], len(bad)
        chosen = rows[:taken]
        message = self._readings_message(chosen)
        validate("readings", message)  # each reading passed alone: cannot fail together
        payload = _json_bytes(message)
        return [_Outgoing("readings", message["batch_id"], payload, tuple(chosen), taken)], len(bad)

    async def _dead_letter(self, kind: str, bad: dict[int, str], *, announce: bool) -> None:
        """Move rows out of the queue for good (kept for inspection, counted, logged) and, if
        `announce`, tell the centre with an ``outbox_dead_letter`` event (never for events
        rows: an event about a dead event could be refused and dead-lettered in turn)."""
        for row_id, reason in bad.items():
            await self.outbox.dead_letter([row_id], reason)
        self.stats.dead_lettered += len(bad)
        if announce and kind != "events":
            reasons = sorted(set(bad.values()))
            detail = {"kind": kind, "rows": len(bad), "reason": reasons[0][:500]}
            if len(reasons) > 1:
                detail["other_reasons"] = len(reasons) - 1
            await self.outbox.put(
                "events", {"at": _now_iso(), "event": "outbox_dead_letter", "detail": detail}
            )
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
