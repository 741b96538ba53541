"""Technician commands and centre commands against the simulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import pytest

from agent.archive import ArchiveStore
from agent.commands import CommandExecutor
from agent.config import load_config
from agent.dlt645 import Dlt645Client
from agent.technician import scan_bus
from agent.transports import open_byte_transport
from simulators import parse_fleet, serve_fleet
from tests.agent.simenv import sim_agent

SCAN_FLEET = """
seed = 5
start = "2026-03-11T10:00:00"
frozen = true
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = 3
    first_address = "000000000001"
    models = {{ DDZY666 = 1 }}
    [[district.bus.meters]]
    count = 2
    first_address = "{second}"
    models = {{ DDZY666 = 1 }}
"""


async def _scan(second: str) -> tuple[set[str], int]:
    fleet = parse_fleet(SCAN_FLEET.format(second=second))
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("b1").address or ("", 0)
        # the scan's own window (300 ms, what a technician runs): a reply later than the window
        # is silence to the search, which prunes it; 40 ms here lost 000000000003 and
        # 000000000103 once on a loaded machine (the in-process simulator answered too late)
        url = f"tcp://{host}:{port}?reply_timeout_ms=300&frame_gap_ms=0&parity=N&baud=19200"
        async with open_byte_transport(url) as bus:
            result = await scan_bus(Dlt645Client(bus))
    return set(result.found), result.collisions


@pytest.mark.slow  # ~200 probes, most of them a whole window of silence
async def test_scan_finds_every_meter_including_colliding_ones() -> None:
    # 000000000103 shares its lowest byte (03) with 000000000003: the probe for 03 collides
    # and the search descends one byte to tell them apart
    found, collisions = await _scan("000000000103")
    assert found == {"000000000001", "000000000002", "000000000003", "000000000103", "000000000104"}
    assert collisions >= 2  # 13H to all-AA, then the shared byte 03


async def test_read_command_line_against_the_simulator(tmp_path: Path) -> None:
    fleet = parse_fleet(SCAN_FLEET.format(second="000000000201"))
    meter = fleet.meter("000000000002")
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("b1").address or ("", 0)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meterlink",
            "read",
            "--bus",
            f"tcp://{host}:{port}?parity=N",
            "--meter",
            "000000000002",
            "00010000",
            "voltage_a_v",
            "04000503",
            "--trace",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    energy = meter.values()["energy_import_total_kwh"]
    assert f"00010000  energy_import_total_kwh = {energy} kWh" in lines
    assert any(
        line.startswith("02010100  voltage_a_v = ") and line.endswith(" V") for line in lines
    )
    assert any(line.startswith("04000503  status_word_3 = ") for line in lines)
    trace = err.decode().splitlines()
    assert trace[0].startswith("-> FE FE FE FE 68 02 00 00 00 00 00 68 11 04")
    assert trace[1].startswith("<- ")


async def test_centre_commands_read_relay_raw_archive(tmp_path: Path) -> None:
    fleet_toml = SCAN_FLEET.format(second="000000000201")
    async with sim_agent(fleet_toml, tmp_path) as sa:
        cfg_text = (
            f'[agent]\nconcentrator = "c-test"\nstate_dir = "{tmp_path}"\n'
            '[[buses]]\nname = "b1"\nurl = "tcp://127.0.0.1:1"\n'
            + "".join(
                f'[[archive.meters]]\naddress = "{m.identity.meter_id}"\nbus = "b1"\n'
                for m in sa.fleet.meters()
            )
        )
        path = tmp_path / "agent.toml"
        path.write_text(cfg_text)
        store = ArchiveStore(load_config(path))
        changed = []

        async def on_change() -> None:
            changed.append(store.current.version)

        run = CommandExecutor(sa.ctx, store, on_change)
        meter = sa.fleet.meter("000000000001")

        reply = await run(
            {
                "command": "read",
                "meter": "000000000001",
                "args": {"items": ["00010000", "balance_yuan", "EEEEEEEE"]},
            }
        )
        assert reply["ok"] is True
        items = reply["result"]["items"]
        assert (
            items["00010000"]["values"]["energy_import_total_kwh"]["value"]
            == meter.values()["energy_import_total_kwh"]
        )
        assert items["EEEEEEEE"]["error"]["reason"] == "abnormal_reply"
        assert [f["dir"] for f in reply["frames"]][:2] == ["tx", "rx"]

        until = (sa.ctx.clock.now() + dt.timedelta(minutes=5)).replace(tzinfo=None).isoformat()
        tripped = await run(
            {
                "command": "relay",
                "meter": "000000000001",
                "args": {"action": "trip", "valid_until": until},
            }
        )
        assert tripped["ok"] is True, tripped
        assert tripped["result"]["relay_open"] is True
        assert meter.relay.open

        raw = await run(
            {
                "command": "raw",
                "args": {
                    "bus": "b1",
                    "hex": "FE FE 68 02 00 00 00 00 00 68 11 04 33 33 34 33 B4 16",
                },
            }
        )
        assert raw["ok"] is True
        assert (
            raw["result"]["replies"][0]["values"]["energy_import_total_kwh"]["value"]
            == sa.fleet.meter("000000000002").values()["energy_import_total_kwh"]
        )

        unknown = await run(
            {"command": "read", "meter": "999999999999", "args": {"items": ["00010000"]}}
        )
        assert (unknown["ok"], unknown["reason"]) == (False, "invalid")

        updated = await run(
            {"command": "archive_update", "args": {"mode": "remove", "meters": ["000000000201"]}}
        )
        assert updated["ok"] is True
        assert updated["result"]["version"] == 2
        assert changed == [2]
