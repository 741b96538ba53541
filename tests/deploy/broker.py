"""The production broker (deploy/mosquitto/) on a private port, and clients that connect to it
as the agent and the central side do (`common.mqtt`), each with an identity from the PKI."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt import PublishRefused, _Client
from common.mqtt import MqttSettings, client_arguments
from tests.conftest import REPO
from tests.fixtures.pki import Pki
from tests.fixtures.services import Mosquitto, free_port

DEPLOY = REPO / "deploy" / "mosquitto"
NOT_AUTHORIZED = 0x87


@contextlib.contextmanager
def production_broker(workdir: Path, pki: Pki, conf: str = "meterlink.conf") -> Iterator[Mosquitto]:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(
        workdir,
        free_port(),
        config=DEPLOY / conf,
        paths={"/etc/mosquitto/meterlink": str(pki.dir)},
        log=workdir / "mosquitto.log",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def broker_log(broker: Mosquitto) -> str:
    assert broker.log is not None
    return broker.log.read_text(errors="replace")


def settings(broker: Mosquitto, pki: Pki, identity: str | None, **kw: Any) -> MqttSettings:
    """As the agent and the central side connect: `common.mqtt`, TLS with our CA."""
    certs: dict[str, Any] = {}
    if identity is not None:
        certs = {"cert_file": pki.cert(identity), "key_file": pki.key(identity)}
    base: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "connect_timeout_s": 5.0,
        "tls": True,
        "ca_file": pki.ca,
        "session_expiry_s": 0,
    }
    return MqttSettings(**{**base, **certs, **kw})


@dataclass
class Peer:
    client: _Client
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def topics(self) -> list[str]:
        return [t for t, _ in self.seen]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish_acked(topic, payload, retain=retain, within_s=10)

    async def refused(self, topic: str, payload: bytes = b"forged") -> int:
        try:
            await self.publish(topic, payload)
        except PublishRefused as exc:
            return int(exc.reason.value)
        raise AssertionError(f"the broker took {topic}")

    async def subscribe(self, *filters: str) -> list[int]:
        granted = await self.client.subscribe([(f, 1) for f in filters])
        return [int(c.value) if isinstance(c, ReasonCode) else int(c) for c in granted]


@contextlib.asynccontextmanager
async def peer(s: MqttSettings, identifier: str = "x") -> AsyncIterator[Peer]:
    async with _Client(**await client_arguments(s, identifier)) as client:
        me = Peer(client)

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                me.seen.append((message.topic.value, message.payload))

        task = asyncio.create_task(collect())
        try:
            yield me
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def request(
    sender: Peer, topic: str, payload: bytes, response_topic: str, correlation: bytes
) -> None:
    """Publish a command with the v5 Response Topic and Correlation Data (the centre's side)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    await sender.client.publish_acked(topic, payload, properties=props, within_s=10)
