"""Signed commands to agents: build, sign, send over MQTT v5 request/response, wait for the reply.

    async with CommandSender(cfg.mqtt, key=key) as sender:
        reply = await sender.send("c-0001", "read", meter="000000000001",
                                  args={"items": ["energy_import_total_kwh"]})

One connection serves any number of commands (the top-up service and the panel keep one open);
each command carries its own Correlation Data and names the Response Topic
`meterlink-replies/<concentrator>/<our client id>`: outside `meterlink/v1/` (agents refuse to
answer onto a data topic), and under the concentrator's own reply tree, the only one the
production broker's ACL lets it write (deploy/mosquitto/acl), so the topic proves who answered.
The payload is signed with `protocols.commands`, the code the agent verifies with; a reply is
checked against the `meterlink.response/1` schema and against the concentrator it came from.

With the production broker the client id is the certificate's name and a second connection
under one name takes over the first: give the sender an identity of its own
(`make-pki --central meterlink-central-ops`), not a running consumer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import common.clock
from central.config import MqttConfig
from common.aio import raise_if_cancelled
from common.mqtt import Client, client_arguments
from protocols.commands import new_command
from protocols.payloads import TOPIC_ROOT, PayloadInvalid, validate

__all__ = [
    "KEY_ENV",
    "CommandReply",
    "CommandSender",
    "CommandTimeout",
    "NotConnected",
]

log = logging.getLogger(__name__)

KEY_ENV = "METERLINK_MQTT_COMMAND_KEY"
"""the command key's environment variable (`[mqtt] command_key`): the agents' own"""

REPLY_ROOT = "meterlink-replies"


class CommandTimeout(TimeoutError):
    """No reply within the wait: the agent is offline, busy past the wait, or not listening."""


class NotConnected(aiomqtt.MqttError):
    """The sender has no connection to the broker at the moment (it is connecting again)."""


@dataclass(frozen=True)
class CommandReply:
    payload: dict[str, Any]
    """the agent's `meterlink.response/1` reply"""
    command: dict[str, Any]
    """what was sent (signed)"""
    seconds: float
    """from the publish to the reply"""

    @property
    def ok(self) -> bool:
        return bool(self.payload.get("ok"))

    @property
    def reason(self) -> str | None:
        reason = self.payload.get("reason")
        return str(reason) if reason is not None else None


@dataclass
class CommandSender:
    mqtt: MqttConfig
    key: bytes
    client_id: str = ""
    """default: `<the consumer's client id>-cmd-<random>`; a clean session of its own"""
    start_offline: bool = False
    """a long-running service (the order service) starts while the broker is unreachable and
    connects in the background; commands fail at once (`NotConnected`) until it has. Off: the
    start fails (a one-shot command has nothing to wait for)."""
    _client: Client | None = None
    _connections: int = 0
    _reader: asyncio.Task[None] | None = None
    _waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _status: dict[str, dict[str, Any]] = field(default_factory=dict)
    _status_seen: dict[str, asyncio.Event] = field(default_factory=dict)

    def reply_topic(self, concentrator: str) -> str:
        return f"{REPLY_ROOT}/{concentrator}/{self.client_id}"

    async def __aenter__(self) -> Self:
        if not self.key:
            raise ValueError("empty command key")
        self.client_id = self.client_id or f"{self.mqtt.client_id}-cmd-{secrets.token_hex(4)}"
        try:
            await self._connect()
        except aiomqtt.MqttError as exc:
            raise_if_cancelled(exc)
            if not self.start_offline:
                raise
            log.warning(
                "MQTT broker %s:%d not reachable (%s); starting without it, connecting in the"
                " background",
                self.mqtt.host, self.mqtt.port, exc,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._keep_reading(), name="command-replies")
        return self

    async def _connect(self) -> None:
        # a session of its own that ends with the connection: replies are awaited while it lasts
        arguments = await client_arguments(self.mqtt, self.client_id, SessionExpiryInterval=0)
        arguments["clean_start"] = True
        client = Client(**arguments)
        await client.__aenter__()
        try:
            await client.subscribe(f"{REPLY_ROOT}/+/{self.client_id}", qos=1)
            for concentrator in self._status_seen:
                await client.subscribe(f"{TOPIC_ROOT}/{concentrator}/status", qos=1)
        except BaseException:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            raise
        self._client = client
        self._connections += 1

    async def _keep_reading(self) -> None:
        """Read replies; when the connection is lost (a broker restart), connect again with
        backoff. Commands sent meanwhile fail at once (`aiomqtt.MqttError`: not connected),
        commands in flight time out: their replies went to the lost session."""
        while True:
            if self._client is None:
                await self._reconnect()
            try:
                await self._read()
                error = "the broker closed the connection"
            except aiomqtt.MqttError as exc:
                raise_if_cancelled(exc)
                error = str(exc)
            log.warning("MQTT connection lost (%s); connecting again", error)
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)

    async def _reconnect(self) -> None:
        """Connect with backoff until connected."""
        delay = self.mqtt.reconnect_min_s
        while True:
            await asyncio.sleep(delay)  # real time: the broker's, not the run's
            try:
                await self._connect()
            except aiomqtt.MqttError as exc:
                raise_if_cancelled(exc)
                delay = min(delay * 2, self.mqtt.reconnect_max_s)
                log.debug("MQTT connect failed (%s); again in %.1f s", exc, delay)
                continue
            again = "again " if self._connections > 1 else ""
            log.info("MQTT connected %sto %s:%d", again, self.mqtt.host, self.mqtt.port)
            return

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        for future in self._waiting.values():
            future.cancel()
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(kind, exc, tb)

    async def send(
        self,
        concentrator: str,
        command: str,
        *,
        meter: str | None = None,
        args: Mapping[str, Any] | None = None,
        wait_s: float = 60.0,
    ) -> CommandReply:
        """Sign and send one command; the agent's reply, or `CommandTimeout` when the broker's
        PUBACK and the reply together took longer than `wait_s` (a caller with a deadline, a
        top-up order, must not wait for a slow broker past it)."""
        client = self._connected()
        payload = new_command(
            command,
            concentrator=concentrator,
            key=self.key,
            now=common.clock.current().now().astimezone(),
            meter=meter,
            args=args,
        )
        correlation = secrets.token_bytes(16)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic(concentrator)
        props.CorrelationData = correlation
        started = time.monotonic()
        published = False
        try:
            async with asyncio.timeout(wait_s):
                await client.publish(
                    f"{TOPIC_ROOT}/{concentrator}/cmd",
                    json.dumps(payload, ensure_ascii=False).encode(),
                    qos=1,
                    properties=props,
                )
                published = True
                reply = await future
        except TimeoutError:
            if not published:
                raise CommandTimeout(
                    f"the broker did not acknowledge the command to {concentrator}"
                    f" within {wait_s:g} s"
                ) from None
            raise CommandTimeout(f"no reply from {concentrator} within {wait_s:g} s") from None
        finally:
            self._waiting.pop(correlation, None)
        return CommandReply(reply, payload, time.monotonic() - started)

    async def agent_status(self, concentrator: str, within: float = 2.0) -> dict[str, Any] | None:
        """The agent's retained status (online / offline with its last will), if the broker
        holds one."""
        client = self._connected()
        seen = self._status_seen.setdefault(concentrator, asyncio.Event())
        await client.subscribe(f"{TOPIC_ROOT}/{concentrator}/status", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await seen.wait()
        return self._status.get(concentrator)

    def _connected(self) -> Client:
        assert self._reader is not None, "use CommandSender as `async with`"
        if self._client is None:
            raise NotConnected(
                f"not connected to the MQTT broker {self.mqtt.host}:{self.mqtt.port}"
                " (connecting again)"
            )
        return self._client

    async def _read(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            topic = message.topic.value
            try:
                body = json.loads(bytes(message.payload))
            except (TypeError, ValueError):
                log.warning("not JSON on %s, ignored", topic)
                continue
            if topic.endswith("/status"):
                concentrator = topic.split("/")[2]
                self._status[concentrator] = body
                self._status_seen.setdefault(concentrator, asyncio.Event()).set()
                continue
            correlation = getattr(message.properties, "CorrelationData", None)
            future = self._waiting.get(bytes(correlation)) if correlation else None
            if future is None or future.done():
                log.info("reply on %s answers no command waiting here, ignored", topic)
                continue
            try:
                validate("response", body)
                if body["concentrator"] != topic.split("/")[1]:
                    raise PayloadInvalid(
                        "response", f"from {body['concentrator']!r} on {topic}", "/concentrator"
                    )
            except PayloadInvalid as exc:
                body = {
                    "schema": "meterlink.response/1",
                    "ok": False,
                    "command": str(body.get("command", "")) if isinstance(body, dict) else "",
                    "reason": "invalid_reply",
                    "detail": str(exc),
                }
            future.set_result(body)
