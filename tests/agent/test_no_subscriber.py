"""Found by the soak: after a broker restart, Mosquitto restores the central instances'
persistent sessions but queues nothing for them until they reconnect; a reading an agent
publishes in between is PUBACKed ("No matching subscribers", 0x10) and dropped. The agent
treats that code as "not delivered": the rows stay in the outbox and go again once the centre
is back. Here with a real Mosquitto (persistence on), restarted between the centre's
subscription and the agent's publish."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.outbox import Outbox
from common.mqtt import Client
from tests.agent.helpers_mqtt import CONCENTRATOR, eventually, make_link, reading, running
from tests.fixtures.services import Mosquitto, free_port

TOPIC = f"$share/centre/meterlink/v1/{CONCENTRATOR}/readings"


def _centre(broker: Mosquitto, *, first: bool) -> Client:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    return Client(
        broker.host, broker.port, identifier="centre-1", protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=first, properties=props,
    )  # fmt: skip


async def test_readings_published_before_the_centre_resubscribed_are_kept(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", free_port(), persistence=True)
    broker.start()
    try:
        async with _centre(broker, first=True) as centre:
            await centre.subscribe(TOPIC, qos=1)
        broker.stop()  # the broker restarts while the centre is away
        broker.start()
        async with await Outbox.open(tmp_path / "o.db") as outbox:
            link = make_link(broker, outbox, reconnect_min_s=0.05, reconnect_max_s=0.2)
            async with running(link):
                await outbox.put("readings", reading(1))
                await eventually(lambda: link.stats.no_subscribers >= 1)
                assert outbox.depth_now()["readings"] == 1  # not delivered, so not dropped
                got: list[dict[str, object]] = []
                async with _centre(broker, first=False) as centre:
                    await centre.subscribe(TOPIC, qos=1)
                    async with asyncio.timeout(30):
                        async for message in centre.messages:
                            assert isinstance(message.payload, bytes)
                            got += json.loads(message.payload)["readings"]
                            break
                await eventually(lambda: outbox.depth_now()["readings"] == 0)
        assert [r["meter"] for r in got] == [reading(1)["meter"]]
    finally:
        broker.stop()
