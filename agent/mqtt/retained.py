"""The concentrator's retained messages: its status (``online`` / ``offline``, and the last will
the broker publishes for it when the connection dies) and its archive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes

from agent.mqtt.client import (
    LinkStats,
    PublishRefused,
    Sender,
    _Client,
    _json_bytes,
    _now_iso,
    _properties,
)
from agent.mqtt.settings import LinkSettings
from agent.outbox import Outbox
from protocols.payloads import PayloadInvalid, validate

log = logging.getLogger(__package__)  # "agent.mqtt", as before the split into modules


class RetainedMessages:
    """Builds and publishes the retained status and archive; remembers an archive still to
    publish (it changed, and the last attempt failed or there was no connection)."""

    def __init__(
        self,
        settings: LinkSettings,
        outbox: Outbox,
        concentrator: str,
        *,
        status_topic: str,
        archive_topic: str,
        status_provider: Callable[[], dict[str, Any]],
        archive_provider: Callable[[], dict[str, Any]],
        sender: Sender,
        stats: LinkStats,
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._concentrator = concentrator
        self._status_topic = status_topic
        self._archive_topic = archive_topic
        self._status_provider = status_provider
        self._archive_provider = archive_provider
        self._sender = sender
        self._stats = stats
        self._archive_dirty = False
        self._archive_retry_at = 0.0

    def last_will(self) -> aiomqtt.Will:
        """The retained ``offline`` status the broker publishes if the connection dies."""
        will_props = _properties(PacketTypes.WILLMESSAGE)
        will_props.PayloadFormatIndicator = 1
        will_props.ContentType = "application/json"
        return aiomqtt.Will(
            self._status_topic,
            _json_bytes(self._status("offline", will=True)),
            qos=1,
            retain=True,
            properties=will_props,
        )

    def archive_changed(self) -> None:
        """The archive is to be published again: now if connected, else on the next connect;
        after a failed attempt, by `republish_archive`."""
        self._archive_dirty = True

    def _status(self, state: str, *, will: bool = False) -> dict[str, Any]:
        """The status message; the will's leaves out the depth (it would be from connect time)."""
        base = {
            "schema": "meterlink.status/1",
            "concentrator": self._concentrator,
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
            message.setdefault("outbox_depth", sum(self._outbox.depth_now().values()))
        try:
            validate("status", message)
        except PayloadInvalid as exc:
            self._stats.bump(self._stats.payloads_invalid, "status")
            log.error("status provider gave an invalid status (%s); publishing the bare one", exc)
            return base
        return message

    async def publish_status(self, client: _Client, state: str) -> None:
        await self._sender.send(
            client, "status", self._status_topic, self._status(state), retain=True
        )

    async def publish_archive(self, client: _Client) -> None:
        try:
            message = {
                **self._archive_provider(),
                "schema": "meterlink.archive/1",
                "concentrator": self._concentrator,
            }
            validate("archive", message)
        except Exception as exc:
            self._stats.bump(self._stats.payloads_invalid, "archive")
            log.error("archive not published: %s", exc)
            self._archive_dirty = False  # republished when it changes or on the next connect
            return
        self._archive_dirty = False
        try:
            await self._sender.send(client, "archive", self._archive_topic, message, retain=True)
        except aiomqtt.MqttError:
            self._archive_dirty = True
            raise
        log.info("archive version %s published (retained)", message.get("version"))

    async def republish_archive(self, client: _Client) -> None:
        """After each pass of the publisher (`OutboxPublisher.pump`): publish the archive if it
        is still to be published (an attempt failed); after a refusal, `reconnect_max_s` later."""
        loop = asyncio.get_running_loop()
        if self._archive_dirty and loop.time() >= self._archive_retry_at:
            try:
                await self.publish_archive(client)
            except PublishRefused as exc:
                log.error("%s; retried later", exc)
                self._archive_retry_at = loop.time() + self._settings.reconnect_max_s
