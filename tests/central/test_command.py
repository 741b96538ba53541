"""`meterlink central command` against a real `meterlink agent run` process, a private Mosquitto and
the simulator: each command reaches the meter, the reply is printed, the exit code says how it
went (0 ok, 1 failed, 2 usage, 3 refused, 4 no reply, 69 broker unreachable)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulators import Fleet, parse_fleet, serve_fleet
from tests.agent.helpers_mqtt import Collector, eventually
from tests.fixtures.processes import MeterlinkProcess, meterlink
from tests.fixtures.services import Mosquitto, free_port, running_mosquitto

pytestmark = pytest.mark.slow

KEY = "5f0e9c1d2b3a49586776a5b4c3d2e1f0" * 2
CONCENTRATOR = "c-cmd"
FLEET = """
seed = 11
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = 3
    first_address = "000000000001"
    models = { DDZY666 = 1 }
    prepaid = 1.0
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    [[district.bus.meters]]
    count = 1
    first_address = "000000000009"
    dead = 1.0
"""


@dataclass
class Stack:
    tmp: Path
    fleet: Fleet
    broker: Mosquitto
    central_config: Path
    agent: MeterlinkProcess

    def command(self, *args: str, key: str | None = KEY, config: Path | None = None) -> Any:
        env = {k: v for k, v in os.environ.items() if k != "METERLINK_MQTT_COMMAND_KEY"}
        if key is not None:
            env["METERLINK_MQTT_COMMAND_KEY"] = key
        return subprocess.run(
            [sys.executable, "-m", "meterlink", "central", "command",
             "--config", str(config or self.central_config), *args],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    fleet = parse_fleet(FLEET)
    archive = tmp_path / "archive.json"
    archive.write_text(json.dumps(fleet.archive()))
    with running_mosquitto(tmp_path / "broker") as broker:
        async with serve_fleet(fleet, transport="tcp") as serving:
            host, port = serving.endpoint("b1").address  # type: ignore[misc]
            # 1 s: the simulator answers from this test's process, late on a loaded machine
            opts = "parity=N&reply_timeout_ms=1000&byte_gap_ms=100&frame_gap_ms=0&baud=9600"
            agent_config = tmp_path / "agent.toml"
            agent_config.write_text(
                f'[agent]\nconcentrator = "{CONCENTRATOR}"\nstate_dir = "{tmp_path / "state"}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min_s = 0.2\n'
                f'[metrics]\nlisten = ""\n[[buses]]\nname = "b1"\n'
                f'url = "tcp://{host}:{port}?{opts}"\n[archive]\nfile = "{archive}"\n'
                "[plans.daily]\nenabled = false\n[plans.clock]\nenabled = false\n"
            )
            central_config = tmp_path / "central.toml"
            central_config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
            async with (
                Collector(broker, filters=(f"meterlink/v1/{CONCENTRATOR}/status",)) as seen,
                meterlink(
                    ["agent", "run", "--config", str(agent_config)],
                    tmp_path / "agent.log",
                    env={"METERLINK_MQTT_COMMAND_KEY": KEY},
                ) as agent,
            ):
                # online (retained status) means the agent listens on its cmd topic
                await eventually(
                    lambda: any(s.payload["state"] == "online" for s in seen.of("status")),
                    within=30,
                )
                yield Stack(tmp_path, fleet, broker, central_config, agent)
                assert await agent.stop() == 0, agent.log()[-3000:]


async def test_read_relay_sync_raw_and_archive(stack: Stack) -> None:
    meter = stack.fleet.meter("000000000001")
    done = await asyncio.to_thread(
        stack.command, "--concentrator", CONCENTRATOR, "--meter", "000000000001",
        "read", "energy_import_total_kwh", "balance_yuan",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr + stack.agent.log()[-2000:]
    reply = json.loads(done.stdout)
    assert reply["ok"] is True
    values = {
        name: v["value"]
        for item in reply["result"]["items"].values()
        for name, v in item["values"].items()
    }
    assert values["energy_import_total_kwh"] == pytest.approx(
        meter.values()["energy_import_total_kwh"], abs=0.05
    )
    assert values["balance_yuan"] == pytest.approx(meter.values()["balance_yuan"], abs=0.5)
    assert [f["dir"] for f in reply["frames"]][:2] == ["tx", "rx"]
    assert "read on c-cmd 000000000001: ok" in done.stderr

    assert not meter.relay.open
    done = await asyncio.to_thread(
        stack.command, "--concentrator", CONCENTRATOR, "--meter", "000000000001", "relay", "trip"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"]["relay_open"] is True
    assert meter.relay.open  # the simulated meter itself opened its relay

    done = await asyncio.to_thread(
        stack.command, "--concentrator", CONCENTRATOR, "time_sync", "--bus", "b1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"]["bus"] == "b1"

    # a 13H "read address" to all-AA on a one-meter line would collide here; read a DI instead
    raw = "FE FE FE FE 68 02 00 00 00 00 00 68 11 04 33 33 34 33 B4 16"
    done = await asyncio.to_thread(
        stack.command, "--concentrator", CONCENTRATOR, "raw", "--bus", "b1", raw
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (answer,) = json.loads(done.stdout)["result"]["replies"]
    assert answer["address"] == "000000000002"

    removal = stack.tmp / "remove.json"
    removal.write_text(json.dumps(["000000000003"]))
    done = await asyncio.to_thread(
        stack.command, "--concentrator", CONCENTRATOR, "archive_update", "remove", str(removal)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"]["meters"] == len(stack.fleet.meters()) - 1


async def test_outcomes_have_their_exit_codes(stack: Stack) -> None:
    base = ["--concentrator", CONCENTRATOR, "--meter"]
    # the meter does not answer: the command ran and failed
    done = await asyncio.to_thread(stack.command, *base, "000000000009", "read", "00010000")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no_reply" in done.stderr.splitlines()[-1]
    # not a meter of this archive: refused by the agent
    done = await asyncio.to_thread(stack.command, *base, "000000000077", "read", "00010000")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "invalid" in done.stderr
    # a key the agent does not have: refused, and nothing reached the meter
    done = await asyncio.to_thread(
        stack.command, *base, "000000000001", "read", "00010000", key="00" * 32
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert json.loads(done.stdout)["reason"] == "unauthorized"
    # no key at all: a usage error before anything is sent
    done = await asyncio.to_thread(
        stack.command, *base, "000000000001", "read", "00010000", key=None
    )
    assert done.returncode == 2
    assert "METERLINK_MQTT_COMMAND_KEY" in done.stderr
    # nobody listens for this concentrator
    done = await asyncio.to_thread(
        stack.command, "--concentrator", "c-nobody", "--timeout", "1", "time_sync", "--bus", "b1"
    )
    assert done.returncode == 4, done.stdout + done.stderr
    assert "no reply from c-nobody within 1 s" in done.stderr
    assert "holds no status" in done.stderr
    # no broker there
    dead_broker = stack.tmp / "nobroker.toml"
    dead_broker.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    done = await asyncio.to_thread(
        stack.command, *base, "000000000001", "read", "00010000", config=dead_broker
    )
    assert done.returncode == 69, done.stdout + done.stderr
    assert "unreachable" in done.stderr
    for line in done.stderr.splitlines():
        assert "Traceback" not in line
