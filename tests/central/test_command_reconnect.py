"""The command sender (the order service's, the panel's) outlives a broker restart: it connects
again on its own, and the next command goes out (before the fix it failed for good with
"The client is not currently connected", found by the soak's broker restarts)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import aiomqtt
import pytest

from central.commands import CommandSender, CommandTimeout, NotConnected
from central.config import MqttConfig
from common.mqtt import Client
from tests.fixtures.services import Mosquitto, free_port

pytestmark = pytest.mark.slow

KEY = bytes.fromhex("5f0e9c1d2b3a49586776a5b4c3d2e1f0" * 2)


async def test_a_broker_restart_is_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="central.commands")
    broker = Mosquitto(tmp_path / "broker", free_port())
    broker.start()
    try:
        mqtt = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1,
                          reconnect_max_s=0.5, client_id="test-reconnect")  # fmt: skip
        async with CommandSender(mqtt, KEY) as sender:
            broker.stop()
            with pytest.raises((aiomqtt.MqttError, CommandTimeout)):
                await sender.send("c-x", "ping", wait_s=0.2)
            broker.start()
            seen: list[dict[str, object]] = []
            async with Client(broker.host, broker.port) as agent:
                await agent.subscribe("meterlink/v1/c-x/cmd", qos=1)

                async def listen() -> None:
                    async for message in agent.messages:
                        seen.append(json.loads(bytes(message.payload)))
                        return

                listener = asyncio.create_task(listen())
                async with asyncio.timeout(30):  # a hang guard: connected again long before
                    while True:
                        try:
                            await sender.send("c-x", "ping", wait_s=0.2)
                        except CommandTimeout:
                            break  # published: nobody answers here
                        except aiomqtt.MqttError:
                            await asyncio.sleep(0.1)  # not connected again yet
                await asyncio.wait_for(listener, 10)
        assert seen[0]["command"] == "ping"
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("MQTT connection lost") for m in messages), messages
        assert any(m.startswith("MQTT connected again") for m in messages), messages
    finally:
        broker.stop()


async def test_start_offline_connects_in_the_background(tmp_path: Path) -> None:
    """`start_offline` (the order service's): no broker at the start is no failure; commands
    fail at once with `NotConnected` until the sender has connected on its own. Without it
    the start fails (a one-shot command has nothing to wait for)."""
    broker = Mosquitto(tmp_path / "broker", free_port())
    mqtt = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1,
                      reconnect_max_s=0.3, client_id="test-offline")  # fmt: skip
    with pytest.raises(aiomqtt.MqttError):
        async with CommandSender(mqtt, KEY):
            pass
    try:
        async with CommandSender(mqtt, KEY, start_offline=True) as sender:
            with pytest.raises(NotConnected, match="not connected to the MQTT broker"):
                await sender.send("c-x", "ping", wait_s=5)
            broker.start()
            timeout: CommandTimeout | None = None
            async with asyncio.timeout(30):  # a hang guard: connected long before
                while timeout is None:
                    try:
                        await sender.send("c-x", "ping", wait_s=0.2)
                    except NotConnected:
                        await asyncio.sleep(0.05)  # not connected yet
                    except CommandTimeout as exc:
                        timeout = exc
            assert "no reply from c-x" in str(timeout)  # published: nobody answers here
    finally:
        broker.stop()


async def test_a_broker_that_does_not_acknowledge_holds_a_command_no_longer_than_its_wait(
    tmp_path: Path,
) -> None:
    """`wait_s` bounds the broker's PUBACK and the reply together. Before, a publish waited for
    its PUBACK as long as the client's own timeout (10 s): a top-up order's last command, sent
    with what was left to its deadline, ended after it (found by the soak under heavy load: an
    order terminal 2.3 real s, 56 run minutes, past its deadline)."""
    broker = Mosquitto(tmp_path / "broker", free_port())
    broker.start()
    try:
        mqtt = MqttConfig(host=broker.host, port=broker.port, client_id="test-frozen-broker")
        async with CommandSender(mqtt, KEY) as sender:
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)  # connected, but it answers nothing
            try:
                with pytest.raises(CommandTimeout, match="did not acknowledge the command to c-x"):
                    await sender.send("c-x", "ping", wait_s=0.5)
            finally:
                broker.proc.send_signal(signal.SIGCONT)
    finally:
        broker.stop()
