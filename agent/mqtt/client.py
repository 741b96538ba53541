"""What every part of the link uses to talk to the broker: `_Client` (aiomqtt's client, keeping
the PUBACK's v5 reason code), JSON payloads and MQTT properties, `Sender` (one QoS 1 publish,
counted in `LinkStats`) and `ConnectionState` (the connection of the moment).

Names with a leading underscore belong to the `agent.mqtt` package, not to its callers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

import common.clock
from agent.mqtt.settings import NO_SUBSCRIBERS
from common.mqtt import Client


def _now_iso() -> str:
    return common.clock.current().now().isoformat(timespec="milliseconds")


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _header(kind: str, concentrator: str) -> dict[str, Any]:
    return {"schema": f"meterlink.{kind}/1", "concentrator": concentrator}


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code (v5 PUBACK >= 0x80)."""

    def __init__(self, topic_name: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish to {topic_name}: {reason}")
        self.reason = reason


class _Client(Client):
    """`common.mqtt.Client`, plus the v5 reason code of the PUBACK for the publish in flight."""

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
        need_subscriber: bool = False,
    ) -> None:
        """QoS 1 publish that returns after a successful PUBACK and raises `PublishRefused`
        on a refusing one (or `aiomqtt.MqttError` on timeout / disconnection); with
        `need_subscriber` also on "No matching subscribers" (the message went nowhere)."""
        async with self.publish_lock:
            self.puback_reason = None
            await self.publish(
                topic_name, payload, qos=1, retain=retain, properties=properties, timeout=within_s
            )
            reason = self._last_reason()
        if reason is not None and (
            reason.is_failure or (need_subscriber and reason.value == NO_SUBSCRIBERS)
        ):
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
    connections_lost: int = 0
    no_subscribers: int = 0
    """data publishes the broker took with "No matching subscribers": kept, sent again"""
    """established connections that went down (broker restart, link cut, PUBACK timeout)"""
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


class Sender:
    """Publishes one message (QoS 1, waiting for its PUBACK) and counts it in `LinkStats`."""

    def __init__(self, stats: LinkStats, *, publish_timeout_s: float) -> None:
        self._stats = stats
        self._publish_timeout_s = publish_timeout_s

    async def send(
        self,
        client: _Client,
        kind: str,
        topic_name: str,
        message: dict[str, Any] | bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        need_subscriber: bool = False,
    ) -> None:
        try:
            await client.publish_acked(
                topic_name,
                message if isinstance(message, bytes) else _json_bytes(message),
                retain=retain,
                properties=properties or _publish_properties(),
                within_s=self._publish_timeout_s,
                need_subscriber=need_subscriber,
            )
        except PublishRefused as exc:
            self._stats.publishes_refused += 1
            if exc.reason.value == NO_SUBSCRIBERS:
                self._stats.no_subscribers += 1
            raise
        self._stats.bump(self._stats.published, kind)


class ConnectionState:
    """The link's connection of the moment, for work that outlives a connection (a command's
    reply waits for the next one). `MqttLink` changes it; the other parts only read it."""

    def __init__(self) -> None:
        self.client: _Client | None = None
        """None between connections"""
        self.stop = asyncio.Event()
        """set when the link stops (`MqttLink.drain`)"""
        self._changed = asyncio.Event()
        """replaced (after being set) whenever the connection comes or goes, or the link stops"""

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change: the connection comes or goes, or the link stops."""
        return self._changed

    def signal_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
