"""`MqttLink`, the agent's one MQTT v5 connection (see the package docstring): its lifecycle
(connect, reconnect with jittered backoff, drain) and what it says on each connection (subscribe,
then the retained status and archive). It composes `RetainedMessages`, `OutboxPublisher` and
`CommandChannel`, which share its `ConnectionState`, `Sender` and `LinkStats`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.client import (
    ConnectionState,
    LinkStats,
    PublishRefused,
    Sender,
    _Client,
)
from agent.mqtt.commands import CommandChannel
from agent.mqtt.publisher import OutboxPublisher
from agent.mqtt.retained import RetainedMessages
from agent.mqtt.settings import MAX_QUEUED_COMMANDS, PUMPED_KINDS, LinkSettings, backoff_delay
from agent.outbox import Outbox
from common.aio import raise_if_cancelled
from common.mqtt import client_arguments
from protocols.commands import NonceMemory
from protocols.payloads import topic

log = logging.getLogger(__package__)  # "agent.mqtt", as before the split into modules


class _Stopping(Exception):
    """raised inside a connection's task group when `drain` asks the link to stop"""


class MqttLink:
    """See the package docstring. Run `run` as a task; stop it with `drain` (or cancel it)."""

    def __init__(
        self,
        settings: LinkSettings,
        outbox: Outbox,
        concentrator: str,
        *,
        archive_provider: Callable[[], dict[str, Any]],
        status_provider: Callable[[], dict[str, Any]],
        command_handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        command_key: bytes | None,
        nonces: NonceMemory | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.concentrator = concentrator
        self.client_id = settings.client_id or f"meterlink-agent-{concentrator}"
        self.topics = {k: topic(concentrator, k) for k in PUMPED_KINDS}
        self.status_topic = topic(concentrator, "status")
        self.archive_topic = topic(concentrator, "archive")
        self.cmd_topic = topic(concentrator, "cmd")
        self._rng = rng or random.Random()

        self.connected = False
        self.reconnects = 0
        """successful connections after the first one"""
        self.stats = LinkStats()

        self._up_since = 0.0
        self._connections = 0
        self._state = "starting"
        self._connection = ConnectionState()
        self._stopped = asyncio.Event()
        self._progress = asyncio.Event()
        self._running = False
        self._sender = Sender(self.stats, publish_timeout_s=settings.publish_timeout_s)
        self._retained = RetainedMessages(
            settings,
            outbox,
            concentrator,
            status_topic=self.status_topic,
            archive_topic=self.archive_topic,
            status_provider=status_provider,
            archive_provider=archive_provider,
            sender=self._sender,
            stats=self.stats,
        )
        self._publisher = OutboxPublisher(
            settings,
            outbox,
            concentrator,
            self.topics,
            sender=self._sender,
            stats=self.stats,
            rng=self._rng,
            on_progress=self._progress.set,
            after_pass=self._retained.republish_archive,
        )
        self._commands = CommandChannel(
            settings,
            concentrator,
            self.cmd_topic,
            handler=command_handler,
            key=command_key or None,
            sender=self._sender,
            stats=self.stats,
            connection=self._connection,
            nonces=nonces,
        )

    @property
    def published(self) -> dict[str, int]:
        """Messages acknowledged by the broker, by kind (also in `stats`)."""
        return self.stats.published

    @property
    def publish_latency_s(self) -> float:
        """put-to-PUBACK age of the oldest row in the last acknowledged message"""
        return self._publisher.publish_latency_s

    @property
    def publish_latency_avg_s(self) -> float:
        """mean put-to-PUBACK over every acknowledged row"""
        return self._publisher.publish_latency_avg_s

    @property
    def payload_cap(self) -> int:
        """largest payload sent: `max_payload_bytes`, halved (down to `MIN_PAYLOAD_BYTES`) each
        time the connection died twice in a row under a message that could be split"""
        return self._publisher.payload_cap

    async def answer(self, raw: Any) -> dict[str, Any]:
        """The reply to one command payload (bytes or text as received); never raises."""
        return await self._commands.answer(raw)

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
                self._commands.run_in(tasks)
                while not self._connection.stop.is_set():
                    began = self._connections
                    try:
                        await self._connect_once()
                        reason = "closed"
                    except (aiomqtt.MqttError, OSError) as exc:
                        raise_if_cancelled(exc)
                        reason = str(exc) or type(exc).__name__
                    if self._connection.stop.is_set():
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
                            await self._connection.stop.wait()
        finally:
            self._commands.run_in(None)
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
            self._connection.stop.set()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline - reserve):
                while sum(self.outbox.depth_now().values()) > 0 and self._running:
                    self._progress.clear()
                    await self._progress.wait()
        left = sum(self.outbox.depth_now().values())
        if left:
            log.warning("stopping with %d row(s) still in the outbox (kept on disk)", left)
        self._connection.stop.set()
        self._connection.signal_change()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(max(deadline, loop.time())):
                await self._stopped.wait()

    async def publish_archive(self) -> None:
        """Publish the archive again (it changed). Without a connection this happens on the
        next connect anyway; a failed attempt is retried by the publisher."""
        self._retained.archive_changed()
        client = self._connection.client
        if client is not None:
            try:
                await self._retained.publish_archive(client)
            except aiomqtt.MqttError as exc:
                log.warning("archive publish failed (%s); the publisher retries it", exc)

    # --- one connection -----------------------------------------------------------------------
    async def _new_client(self) -> _Client:
        arguments = await client_arguments(self.settings, self.client_id)
        return _Client(
            **arguments,
            will=self._retained.last_will(),
            max_queued_incoming_messages=MAX_QUEUED_COMMANDS,
            logger=logging.getLogger(f"{__package__}.paho"),
        )

    async def _connect_once(self) -> None:
        client = await self._new_client()
        try:
            await self._serve_connection(client)
        finally:
            # aiomqtt keeps an unexpected disconnection as the exception of a future that only
            # its message iterator reads; lost any other way (a PUBACK that timed out), asyncio
            # would log it as "Future exception was never retrieved" with its traceback
            gone = client._disconnected
            if gone.done() and not gone.cancelled():
                gone.exception()

    async def _serve_connection(self, client: _Client) -> None:
        async with client:
            self._went_up(client)
            self._publisher.new_connection()
            try:
                await self._announce(client)
                stopping = await self._serve(client)
                if stopping:
                    await self._say_goodbye(client)
            except (aiomqtt.MqttError, OSError):
                self._publisher.connection_lost()
                raise
            finally:
                self._connection.client = None
                self.connected = False
                self._connection.signal_change()
                self._progress.set()

    def _went_up(self, client: _Client) -> None:
        self._connections += 1
        if self._connections > 1:
            self.reconnects += 1
        self._connection.client = client
        self.connected = True
        self._up_since = asyncio.get_running_loop().time()
        self._connection.signal_change()
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
            self.stats.connections_lost += 1
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
            await self._retained.publish_status(client, "online")
        except PublishRefused as exc:
            log.error("%s", exc)
        with contextlib.suppress(PublishRefused):
            await self._retained.publish_archive(client)

    async def _serve(self, client: _Client) -> bool:
        """Run the command listener and the publisher until one fails (the connection is gone:
        re-raised) or `drain` stops the link (returns True)."""
        # Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails cancels its parent (this
        # task) and never takes that back (`cancelling()` stays 1), and `run` must be able to
        # tell a real stop from that (see `raise_if_cancelled`)
        tasks = [
            asyncio.create_task(self._commands.listen(client), name="mqtt-commands"),
            asyncio.create_task(self._publisher.pump(client), name="mqtt-publisher"),
            asyncio.create_task(self._until_stopped(), name="mqtt-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        errors = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
        if any(isinstance(e, _Stopping) for e in errors):
            return True
        for error in errors:
            raise error  # the connection is gone (MqttError, OSError), or a bug: let it out
        return False

    async def _until_stopped(self) -> None:
        await self._connection.stop.wait()
        raise _Stopping

    async def _say_goodbye(self, client: _Client) -> None:
        """A clean DISCONNECT suppresses the last will, so say offline ourselves first."""
        try:
            async with asyncio.timeout(2.0):
                await self._retained.publish_status(client, "offline")
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish the offline status: %s", exc)
