"""The real `meterlink agent run` with one bus of every scheme — `serial` on a pty, `tcp`,
`modbus+tcp` and `modbus+rtu` on a pty — against real `meterlink sim serve` processes: every
archived meter's reading arrives at a subscriber.

Run under the machine zones servers really have (UTC) and another one: the meters keep the
fleet's zone (Asia/Shanghai by default) and the agent its configured one (the same default),
whatever TZ says, so the first daily round finds today's freeze on every meter."""

from __future__ import annotations

import datetime as dt
import json
import signal
import zoneinfo
from pathlib import Path

import pytest

from simulators import load_fleet
from tests.agent.helpers_mqtt import Collector, daily_agent_config, eventually
from tests.fixtures.processes import SimProcess, meterlink
from tests.fixtures.services import running_mosquitto

pytestmark = pytest.mark.slow

FLEET = """
seed = 5
# no `timezone`: the default, Asia/Shanghai, as real meters keep
[[district]]
name = "north"
  [[district.bus]]
  name = "rs485"
    [[district.bus.meters]]
    count = 3
    first_address = "000000000001"
    models = { DDZY666 = 2, DDS1997 = 1 }
  [[district.bus]]
  name = "dtu"
    [[district.bus.meters]]
    count = 3
    first_address = "000000000011"
    models = { DTZY666 = 1 }
  [[district.bus]]
  name = "mb-tcp"
  protocol = "modbus"
    [[district.bus.meters]]
    count = 2
    first_unit = 1
    models = { DTSU666 = 1, SDM630 = 1 }
  [[district.bus]]
  name = "mb-rtu"
  protocol = "modbus"
    [[district.bus.meters]]
    count = 2
    first_unit = 3
    models = { DTSU666 = 1 }
"""

#: which simulator process serves which bus: ptys for the serial schemes, TCP for the others
ON_PTY = {"rs485": "", "mb-rtu": "baud=9600&parity=N"}
ON_TCP = {"dtu": "", "mb-tcp": ""}
FAST_645 = "parity=N&reply_timeout_ms=300&byte_gap_ms=100&frame_gap_ms=0&baud=9600"


@pytest.mark.parametrize("machine_tz", ["UTC", "America/New_York"])
async def test_one_bus_of_every_scheme(tmp_path: Path, machine_tz: str) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET, encoding="utf-8")
    fleet = load_fleet(fleet_file)
    archive = tmp_path / "archive.json"
    archive.write_text(json.dumps(fleet.archive()), encoding="utf-8")
    env = {"TZ": machine_tz}
    beijing = zoneinfo.ZoneInfo("Asia/Shanghai")
    with running_mosquitto(tmp_path / "broker") as broker:
        async with (
            SimProcess.serving(fleet_file, tmp_path, env=env, name="sim-pty") as on_pty,
            SimProcess.serving(fleet_file, tmp_path, tcp=True, env=env, name="sim-tcp") as on_tcp,
            Collector(broker) as seen,
        ):
            urls = {}
            for sim, buses in ((on_pty, ON_PTY), (on_tcp, ON_TCP)):
                for bus, options in buses.items():
                    ep = sim.endpoints[bus]
                    urls[bus] = ep.url(options or (FAST_645 if ep.protocol == "dlt645" else ""))
            assert {u.split(":")[0] for u in urls.values()} == {
                "serial", "tcp", "modbus+tcp", "modbus+rtu",
            }  # fmt: skip
            config = daily_agent_config(tmp_path, broker.port, urls, archive)
            async with meterlink(
                ["agent", "run", "--config", str(config)], tmp_path / "agent.log", env=env
            ) as agent:
                expected = {m.identity.meter_id for m in fleet.meters()}

                def all_arrived() -> bool:
                    assert agent.proc is not None
                    assert agent.proc.returncode is None, agent.log()[-3000:]  # died: say why
                    return {r["meter"] for r in seen.readings()} >= expected

                try:
                    await eventually(all_arrived, within=90)
                finally:
                    assert await agent.stop(signal.SIGTERM) == 0, agent.log()[-3000:]
    assert not seen.invalid
    today = dt.datetime.now(beijing).date().isoformat()
    dlt645_2007 = {
        m.identity.meter_id for m in fleet.meters() if m.identity.protocol == "dlt645-2007"
    }
    freezes = {
        r["meter"]
        for r in seen.readings()
        if r["item"] == "daily_freeze" and r["data_time"].startswith(today)
    }
    # the meters' freeze stamps are Beijing dates, not the machine's
    assert dlt645_2007 <= freezes, (dlt645_2007 - freezes, agent.log()[-3000:])
    failures = [
        f
        for s in seen.of("rounds")
        for f in s.payload.get("failed", [])
        if f.get("reason") == "implausible_value"
    ]
    assert failures == []
    assert "Traceback" not in agent.log()
