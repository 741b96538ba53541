"""A signed command cannot be replayed, not even across an agent restart: the nonces of accepted
commands live on disk (agent/nonces.py), written before the command runs."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path

import pytest

from agent.nonces import PersistentNonces
from protocols.commands import CommandRejected, new_command
from tests.agent.helpers_mqtt import CONCENTRATOR, KEY, Collector, Requester, eventually
from tests.fixtures.processes import meterlink
from tests.fixtures.services import running_mosquitto


def test_a_nonce_is_remembered_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nonces.sqlite"
    nonces = PersistentNonces(path)
    nonces.check_and_remember("n-1", now=1000.0)
    nonces.close()
    reopened = PersistentNonces(path)
    with pytest.raises(CommandRejected, match="already used"):
        reopened.check_and_remember("n-1", now=1100.0)
    reopened.check_and_remember("n-1", now=1000.0 + reopened.ttl_s + 1)  # forgotten after the TTL
    assert len(reopened) == 1
    reopened.close()


def test_the_memory_is_bounded_and_fails_closed(tmp_path: Path) -> None:
    nonces = PersistentNonces(tmp_path / "n.sqlite", capacity=3)
    for n in range(3):
        nonces.check_and_remember(f"n-{n}", now=10.0)
    with pytest.raises(CommandRejected, match="too many"):
        nonces.check_and_remember("n-3", now=11.0)
    nonces.check_and_remember("n-3", now=10.0 + nonces.ttl_s + 1)  # room again once they expire
    with pytest.raises(CommandRejected, match="nonce missing"):
        nonces.check_and_remember("", now=12.0)
    nonces.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "power_loss"])
async def test_a_replay_after_an_agent_restart_is_refused(tmp_path: Path, how: int) -> None:
    config = tmp_path / "agent.toml"
    with running_mosquitto(tmp_path / "broker") as broker:
        config.write_text(
            f'[agent]\nconcentrator = "{CONCENTRATOR}"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min_s = 0.2\n'
            '[metrics]\nlisten = ""\n'
            '[[buses]]\nname = "b1"\nurl = "tcp://127.0.0.1:9"\n'
            "[plans.daily]\nenabled = false\n[plans.clock]\nenabled = false\n"
        )
        env = {"METERLINK_MQTT_COMMAND_KEY": KEY.hex()}
        command = new_command(
            "archive_update",
            concentrator=CONCENTRATOR,
            key=KEY,
            now=dt.datetime.now(dt.UTC),
            args={"mode": "upsert", "meters": []},
        )
        payload = json.dumps(command).encode()  # the very bytes an eavesdropper captured
        async with (
            Collector(broker, filters=(f"meterlink/v1/{CONCENTRATOR}/status",)) as seen,
            Requester.connect(broker) as centre,
        ):

            def online_count() -> int:
                return sum(s.payload["state"] == "online" for s in seen.of("status"))

            async with meterlink(
                ["agent", "run", "--config", str(config)], tmp_path / "agent1.log", env=env
            ) as first:
                await eventually(lambda: online_count() >= 1, within=30)
                reply = await centre.request(payload, b"first")
                assert reply.payload["ok"] is True, reply.payload
                if how == signal.SIGKILL:
                    assert first.proc is not None
                    first.proc.kill()
                    await first.proc.wait()
                else:
                    assert await first.stop(how) == 0
            async with meterlink(
                ["agent", "run", "--config", str(config)], tmp_path / "agent2.log", env=env
            ) as second:
                await eventually(lambda: online_count() >= 2, within=30)
                replay = await centre.request(payload, b"replay")
                assert second.proc is not None
                assert second.proc.returncode is None
                assert await second.stop() == 0
    assert replay.payload["ok"] is False
    assert replay.payload["reason"] == "unauthorized"
    assert replay.payload["detail"] == "nonce already used"
