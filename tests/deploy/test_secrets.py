"""No secret is ever printed. The agent and the central side run as real processes at debug log
level with known secrets in their environment (the one way secrets reach them), against the
production broker's password variant (so the MQTT passwords are really sent and checked),
through: no broker, a broker that refuses their credentials, a connection, a signed command,
a broker restart and a reconnect, a stop; then configuration errors and `check --print-config`.
Not one secret appears in anything they wrote, in clear, hex or base64."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.config import Secret
from protocols.commands import new_command
from tests.agent.helpers_mqtt import eventually
from tests.deploy.broker import peer, production_broker, request, settings
from tests.fixtures.pki import CENTRAL, Pki, make_pki
from tests.fixtures.services import Mosquitto, running_influxdb

pytestmark = pytest.mark.slow

C = "c-001"
SENDER = "meterlink-central-2"


def forms(secret: str) -> list[str]:
    """The secret as it could leak: itself, its bytes in hex, and inside HTTP basic auth."""
    return [
        secret,
        secret.encode().hex(),
        base64.b64encode(f"meterlink:{secret}".encode()).decode(),
    ]


@contextlib.asynccontextmanager
async def daemon(argv: list[str], log: Path, env: dict[str, str]) -> AsyncIterator[None]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterlink", *argv, stdout=out, stderr=out,
            env={**os.environ, **env},
        )  # fmt: skip
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.read_text()  # noqa: ASYNC240


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterlink", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def write_configs(tmp: Path, broker: Mosquitto, pki: Pki, influx_url: str) -> tuple[Path, Path]:
    tls = f'tls = true\nca_file = "{pki.ca}"\nhost = "localhost"\nport = {broker.port}\n'
    agent = tmp / "agent.toml"
    agent.write_text(
        f'[agent]\nconcentrator = "{C}"\nstate_dir = "{tmp / "state"}"\nlog_level = "debug"\n'
        f'[mqtt]\n{tls}username = "{C}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
        '[metrics]\nlisten = ""\n'
        '[[buses]]\nname = "b1"\nurl = "tcp://127.0.0.1:9?reply_timeout_ms=100"\n'
        '[[archive.meters]]\naddress = "1"\nbus = "b1"\n'
    )
    central = tmp / "central.toml"
    central.write_text(
        f'[mqtt]\n{tls}client_id = "{CENTRAL}"\nusername = "{CENTRAL}"\nreconnect_max_s = 0.5\n'
        f'[influx]\nurl = "{influx_url}"\nusername = "meterlink"\n'
        f'[consumer]\nspool = "{tmp / "spool.sqlite3"}"\n'
        f'[coverage]\nledger = "{tmp / "ledger.sqlite3"}"\n'
    )
    return agent, central


async def test_no_secret_is_ever_printed(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", C, passwords=True)
    pki.run("--central", SENDER, "--passwords")
    command_key = "cmd-key-0b7e3f9d1c"
    agent_env = {
        "METERLINK_MQTT_PASSWORD": pki.password(C),
        "METERLINK_MQTT_COMMAND_KEY": command_key,
    }
    central_env = {
        "METERLINK_MQTT_PASSWORD": pki.password(CENTRAL),
        "METERLINK_INFLUX_PASSWORD": "influx-pw-5d2a8e71",
        "METERLINK_INFLUX_TOKEN": "influx-token-93c4f0aa",
    }
    secrets = [*agent_env.values(), *central_env.values()]
    passwd = pki.dir / "passwd"
    right = passwd.read_bytes()
    outputs: list[str] = []

    with running_influxdb(tmp_path / "influx") as influx:
        broker_dir = tmp_path / "broker"
        with production_broker(broker_dir, pki, "meterlink-password.conf") as broker:
            broker.stop()  # the daemons start while there is no broker
            agent_toml, central_toml = write_configs(tmp_path, broker, pki, influx.url)
            agent_log, central_log = tmp_path / "agent.log", tmp_path / "central.log"
            async with (
                daemon(["agent", "run", "--config", str(agent_toml)], agent_log, agent_env),
                daemon(
                    ["central", "run", "--config", str(central_toml), "--log-level", "DEBUG"],
                    central_log,
                    central_env,
                ),
            ):
                await eventually(lambda: "cannot connect" in agent_log.read_text(), within=60)
                await eventually(lambda: "MQTT:" in central_log.read_text(), within=60)
                # a broker that does not know their passwords: CONNACK 0x87, again and again
                await asyncio.to_thread(
                    subprocess.run,
                    ["mosquitto_passwd", "-c", "-b", str(passwd), "somebody", "else"],
                    check=True,
                )
                broker.start()
                await eventually(lambda: "Not authorized" in central_log.read_text(), within=60)
                await eventually(lambda: "Not authorized" in agent_log.read_text(), within=60)
                # the right password file: they connect
                broker.stop()
                passwd.write_bytes(right)
                broker.start()
                await eventually(lambda: "MQTT connected" in agent_log.read_text(), within=60)
                await eventually(lambda: "connected to" in central_log.read_text(), within=60)
                # a signed command (the HMAC key at work), answered
                reply_topic = f"meterlink-replies/{C}/{SENDER}"
                sender = settings(
                    broker, pki, None, host="localhost", username=SENDER,
                    password=Secret(pki.password(SENDER)),
                )  # fmt: skip
                async with peer(sender) as centre:
                    await centre.subscribe(reply_topic)
                    cmd = new_command(
                        "read",
                        concentrator=C,
                        key=command_key.encode(),
                        now=dt.datetime.now(dt.UTC),
                        meter="000000000001",
                        args={"items": ["energy_import_total_kwh"]},
                    )
                    await request(
                        centre, f"meterlink/v1/{C}/cmd", json.dumps(cmd).encode(), reply_topic,
                        b"corr-1",
                    )  # fmt: skip
                    await eventually(lambda: bool(centre.seen), within=60)
                reply = json.loads(centre.seen[0][1])
                assert reply.get("reason") != "unauthorized", reply  # the key did its job
                # the broker goes away and comes back: both reconnect
                broker.stop()
                await eventually(lambda: "connection lost" in agent_log.read_text(), within=60)
                broker.start()
                await eventually(
                    lambda: agent_log.read_text().count("MQTT connected") >= 2, within=60
                )
                await eventually(
                    lambda: central_log.read_text().count("connected to") >= 2, within=60
                )
            outputs += [agent_log.read_text(), central_log.read_text()]

        # configuration errors, with the secrets in the environment (and one in the file)
        bad = tmp_path / "bad-agent.toml"
        bad.write_text(agent_toml.read_text().replace("[mqtt]", "[mqtt]\nkeepalive = 5"))
        proc = await asyncio.to_thread(run, ["agent", "run", "--config", str(bad)], agent_env)
        assert proc.returncode == 78
        assert "mqtt.keepalive: renamed to keepalive_s" in proc.stdout + proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        leaked = tmp_path / "leaked-central.toml"
        token = central_env["METERLINK_INFLUX_TOKEN"]
        leaked.write_text(
            central_toml.read_text().replace("[influx]", f'[influx]\ntoken = "{token}"')
        )
        proc = await asyncio.to_thread(
            run, ["central", "run", "--config", str(leaked)], central_env
        )
        assert proc.returncode == 78
        assert "influx.token: a secret is never written in the config file" in proc.stderr
        outputs.append(proc.stdout + proc.stderr)

        # what a technician prints
        for argv, env in (
            (["agent", "check", "--config", str(agent_toml), "--print-config"], agent_env),
            (["central", "check", "--config", str(central_toml), "--print-config"], central_env),
        ):
            proc = await asyncio.to_thread(run, argv, env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert '"password": "********"' in proc.stdout
            assert "secret mqtt.password: set from METERLINK_MQTT_PASSWORD" in proc.stdout
            outputs.append(proc.stdout + proc.stderr)

    assert "DEBUG" in outputs[1]  # the central side did log at debug level
    assert '"level": "debug"' in outputs[0]  # and so did the agent
    leaks = [
        f"secret #{n} ({how}) in output #{i}"  # not the secret itself: CI logs are read too
        for i, text in enumerate(outputs)
        for n, secret in enumerate(secrets)
        for how, form in zip(("clear", "hex", "basic auth"), forms(secret), strict=True)
        if form in text
    ]
    assert leaks == []
