"""Signed commands over MQTT v5 request/response: listen on the ``cmd`` topic, verify each
command (schema, addressee, signature, freshness, nonce), run the handler, and publish the reply
on the request's response topic with its correlation data."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

import common.clock
from agent.mqtt.client import (
    ConnectionState,
    LinkStats,
    PublishRefused,
    Sender,
    _Client,
    _header,
    _publish_properties,
)
from agent.mqtt.settings import MAX_COMMANDS_IN_FLIGHT, LinkSettings
from protocols.commands import CommandRejected, NonceCache, NonceMemory, verify_command
from protocols.payloads import TOPIC_ROOT, PayloadInvalid, loads, validate

log = logging.getLogger(__package__)  # "agent.mqtt", as before the split into modules


@dataclass
class _Incoming:
    payload: Any
    response_topic: str | None
    correlation: bytes | None


class CommandChannel:
    """Answers the commands `listen` hears on a connection. Executions run in `MqttLink.run`'s
    task group (see `run_in`), so a reconnect does not cancel one half way; the reply waits for
    the next connection instead (`ConnectionState`)."""

    def __init__(
        self,
        settings: LinkSettings,
        concentrator: str,
        cmd_topic: str,
        *,
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        key: bytes | None,
        sender: Sender,
        stats: LinkStats,
        connection: ConnectionState,
        nonces: NonceMemory | None = None,
    ) -> None:
        """`key` None: every command is refused. `nonces`: where accepted nonces are remembered
        (the agent keeps them on disk, so a restart does not reopen the replay window); default
        in memory."""
        self._settings = settings
        self._concentrator = concentrator
        self._cmd_topic = cmd_topic
        self._handler = handler
        self._key = key
        self._sender = sender
        self._stats = stats
        self._connection = connection
        self._nonces: NonceMemory = nonces if nonces is not None else NonceCache()
        self._slots = asyncio.Semaphore(MAX_COMMANDS_IN_FLIGHT)
        self._tasks: asyncio.TaskGroup | None = None

    def run_in(self, tasks: asyncio.TaskGroup | None) -> None:
        """Where command executions run: `MqttLink.run`'s task group (None: it is exiting)."""
        self._tasks = tasks

    async def listen(self, client: _Client) -> None:
        async for message in client.messages:
            if message.topic.value != self._cmd_topic:
                continue
            props = message.properties
            incoming = _Incoming(
                message.payload,
                getattr(props, "ResponseTopic", None) if props is not None else None,
                getattr(props, "CorrelationData", None) if props is not None else None,
            )
            await self._slots.acquire()
            if self._tasks is None:  # MqttLink.run owns both; it is exiting
                self._slots.release()
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
                self._stats.responses_dropped += 1
                log.warning("refusing to reply on topic %r", target)
                return
            correlation = incoming.correlation if isinstance(incoming.correlation, bytes) else None
            await self._reply(target, reply, correlation)
        except Exception:  # the link never dies from a command
            log.exception("unexpected error while handling a command")
        finally:
            self._slots.release()

    def _usable_response_topic(self, target: str) -> bool:
        # No wildcards (paho would refuse to publish), and nothing inside the data tree:
        # a forged request must not make us write onto readings, status or another agent's cmd.
        if "+" in target or "#" in target or "\0" in target or len(target.encode()) > 65535:
            return False
        return not target.startswith(f"{TOPIC_ROOT}/")

    def _refusal(self, reason: str, detail: str, command: Any) -> dict[str, Any]:
        self._stats.bump(self._stats.commands_refused, reason)
        name = command.get("command") if isinstance(command, dict) else None
        return {
            **_header("response", self._concentrator),
            "ok": False,
            "command": name if isinstance(name, str) else "unknown",
            "reason": reason,
            "detail": detail,
        }

    async def answer(self, raw: Any) -> dict[str, Any]:
        """The reply to one command payload (bytes or text as received); never raises."""
        self._stats.commands_received += 1
        try:
            command = loads(raw) if isinstance(raw, str | bytes | bytearray) else raw
        except UnicodeDecodeError as exc:
            log.warning("command is not UTF-8: %s", exc)
            return self._refusal("invalid", f"payload is not UTF-8 (byte {exc.start})", None)
        except (ValueError, RecursionError) as exc:
            detail = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
            log.warning("command is not JSON: %s", detail)
            return self._refusal("invalid", f"payload is not JSON: {detail}", None)
        try:
            validate("cmd", command)
        except RecursionError:
            log.warning("invalid command: nested too deep")
            return self._refusal("invalid", "cmd payload nested too deep", None)
        except PayloadInvalid as exc:
            log.warning("invalid command: %s", exc)
            return self._refusal("invalid", str(exc), command)
        if command["concentrator"] != self._concentrator:
            detail = f"addressed to {command['concentrator']!r}, this is {self._concentrator!r}"
            log.warning("command refused: %s", detail)
            return self._refusal("unauthorized", detail, command)
        try:
            if self._key is None:
                raise CommandRejected("no command key configured: every command is refused")
            verify_command(command, self._key, now=common.clock.current().now())
            self._nonces.check_and_remember(command["nonce"], now=common.clock.current().time())
        except CommandRejected as exc:
            log.warning("command %s refused: %s", command["command"], exc)
            return self._refusal("unauthorized", str(exc), command)
        log.info("command %s accepted", command["command"], extra={"meter": command.get("meter")})
        try:
            result = await self._handler(command)
            reply: dict[str, Any] = {"command": command["command"]}
            if "meter" in command:
                reply["meter"] = command["meter"]
            reply.update(result)
            reply.update(_header("response", self._concentrator))
            validate("response", reply)
        except Exception as exc:
            log.exception("command %s failed in its handler", command["command"])
            return self._refusal("internal_error", f"{type(exc).__name__}: {exc}", command)
        return reply

    async def _reply(self, target: str, reply: dict[str, Any], correlation: bytes | None) -> None:
        """Publish a reply on the current connection, waiting for one (or the next one after a
        failure) until `LinkSettings.response_wait_s` has passed or the link stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.response_wait_s
        props = _publish_properties(correlation)
        while loop.time() < deadline:
            client, changed = self._connection.client, self._connection.changed
            if client is None and self._connection.stop.is_set():
                break
            if client is not None:
                try:
                    await self._sender.send(client, "response", target, reply, properties=props)
                except PublishRefused as exc:
                    log.error("reply not delivered: %s", exc)
                    break
                except aiomqtt.MqttError as exc:
                    log.info("reply publish failed (%s); waiting for the next connection", exc)
                else:
                    self._stats.responses_sent += 1
                    return
            if self._connection.changed is changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()
        self._stats.responses_dropped += 1
        log.warning(
            "reply to %s dropped: not delivered within %.0f s",
            target,
            self._settings.response_wait_s,
        )
