"""The README's own path, as a new user follows it: the example fleet (`meterlink sim fleet
--example`), `meterlink sim serve` on ptys and on TCP, the archive it prints, an agent
configuration made from deploy/agent.example.toml with its buses pointed at the simulator (the
edits the README lists), `meterlink agent check`, `meterlink agent run`, `meterlink read` and
`meterlink scan`, then the central side from deploy/central.example.toml and `meterlink central
report`. Every meter the simulator's own record shows answering must be counted as read, and no
meter it shows silent may be."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import common.clock
from tests.fixtures.clock import clear_of_midnight, on_clock
from tests.fixtures.processes import SimProcess, meterlink
from tests.fixtures.services import running_influxdb, running_mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hang guard, not a speed limit

REPO = Path(__file__).resolve().parents[1]
BEIJING = zoneinfo.ZoneInfo("Asia/Shanghai")
ENERGY_DIS = ("0506", "901F", "9010")


def set_keys(text: str, section: str, values: dict[str, str], *, bus: str | None = None) -> str:
    """Set `key = value` lines of one TOML table (`[[buses]]` picked by its name) in the
    example's text, keeping its comments: the key's line if the table has one, else its
    commented-out example line, else a new line at the table's end."""
    lines = text.splitlines()
    table: list[int] = []  # line numbers inside the table
    current, current_bus = "", None
    for n, line in enumerate(lines):
        header = re.match(r"^\[\[?([\w.]+)\]\]?", line)
        if header:
            current, current_bus = header.group(1), None
            continue
        name = re.match(r'^name = "([^"]+)"', line)
        if name and current == "buses":
            current_bus = name.group(1)
        if current == section and (bus is None or current_bus == bus):
            table.append(n)
    assert table, f"no table [{section}] {bus or ''}"
    for key, value in values.items():
        plain = [n for n in table if re.match(rf"^{key}\s*=", lines[n])]
        commented = [n for n in table if re.match(rf"^#\s*{key}\s*=", lines[n])]
        if plain or commented:
            lines[(plain or commented)[0]] = f"{key} = {value}"
        else:
            lines.insert(table[-1] + 1, f"{key} = {value}")
            table.append(table[-1] + 1)
    return "\n".join(lines) + "\n"


def comment_keys(text: str, section: str, keys: set[str]) -> str:
    """Comment out `key = …` lines of one table (what a user does to drop a setting)."""
    out, current = [], ""
    for line in text.splitlines():
        header = re.match(r"^\[\[?([\w.]+)\]\]?", line)
        if header:
            current = header.group(1)
        key = re.match(r"^(\w+)\s*=", line)
        if current == section and key and key.group(1) in keys:
            line = f"# {line}"
        out.append(line)
    return "\n".join(out) + "\n"


def drop_tables(text: str, section: str) -> str:
    """Remove every `[[section]]` table (the example's inline archive meters)."""
    out, skipping = [], False
    for line in text.splitlines():
        header = re.match(r"^\[\[?([\w.]+)\]\]?", line)
        if header:
            skipping = header.group(1) == section
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterlink", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _reachable(records: list[Path], archive: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(meters the simulator's record shows giving their energy intact, meters it shows silent
    on every energy request) — independent of the agent's and the centre's view."""
    answered: set[str] = set()
    asked: set[str] = set()
    modbus = {m["meter"] for m in archive if m["protocol"] == "modbus"}
    for record in records:
        for line in record.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            meter = r["meter"]
            if not meter:
                continue
            energy = meter in modbus or (r["di"] or "").startswith(ENERGY_DIS)
            if energy:
                asked.add(meter)
                if r["outcome"] == "answered":
                    answered.add(meter)
    return answered, asked - answered


@pytest.fixture(autouse=True)
def _clear_of_midnight() -> Iterator[None]:
    """The daily plan reads today's freeze (Beijing date): every process of the test runs on a
    clock that starts at 10:00 today, so none straddles a midnight or waits for one."""
    with on_clock(clear_of_midnight(BEIJING)):
        yield


async def test_the_readme_path(tmp_path: Path) -> None:
    work = tmp_path
    # meterlink sim fleet --example > my.toml ; meterlink sim fleet --archive --fleet my.toml
    example = _cli("sim", "fleet", "--example", cwd=work)
    assert example.returncode == 0, example.stderr
    (work / "my.toml").write_text(example.stdout, encoding="utf-8")
    printed = _cli("sim", "fleet", "--archive", "--fleet", "my.toml", cwd=work)
    assert printed.returncode == 0, printed.stderr
    (work / "archive.json").write_text(printed.stdout, encoding="utf-8")
    archive = json.loads(printed.stdout)
    archived = {m["meter"] for m in archive}

    def read_meters(report: dict[str, Any]) -> set[str]:
        """The meters the report counts read: archived minus those it lists failing today."""
        return archived - {f["meter"] for f in report["consecutive_failures"]}

    with (
        running_mosquitto(work / "broker") as broker,
        running_influxdb(work / "influx") as influx,
    ):
        async with (
            SimProcess.serving(
                work / "my.toml", work, record=work / "pty.jsonl", name="sim-pty"
            ) as on_pty,
            SimProcess.serving(
                work / "my.toml", work, tcp=True, record=work / "tcp.jsonl", name="sim-tcp"
            ) as on_tcp,
        ):
            # cp deploy/agent.example.toml agent.toml, then the README's edits
            text = (REPO / "deploy" / "agent.example.toml").read_text(encoding="utf-8")
            text = set_keys(text, "agent", {"state_dir": f'"{work / "state"}"'})
            text = set_keys(
                text, "mqtt", {"host": '"127.0.0.1"', "port": str(broker.port), "tls": "false"}
            )
            text = comment_keys(text, "mqtt", {"ca_file", "cert_file", "key_file"})
            text = set_keys(text, "metrics", {"listen": '""'})
            rs485, modbus = on_pty.endpoints["rs485-1"], on_pty.endpoints["modbus-1"]
            dtu = on_tcp.endpoints["dtu-east"]
            urls = {
                "rs485-1": rs485.url("baud=2400&parity=N"),
                "modbus-1": modbus.url("baud=9600&parity=N"),
                "dtu-east": dtu.url("baud=2400"),
            }
            for name, url in urls.items():
                text = set_keys(text, "buses", {"url": f'"{url}"'}, bus=name)
            text = drop_tables(text, "archive.meters")
            text = set_keys(text, "archive", {"file": f'"{work / "archive.json"}"'})
            # quick rounds for a test (the example waits 30 min between retries)
            text = set_keys(
                text,
                "plans.daily",
                {
                    "start": '"00:00"',
                    "deadline": '"23:59"',
                    "retry_spacing_minutes": "0.05",
                    "backfill_days": "0",
                },
            )
            (work / "agent.toml").write_text(text, encoding="utf-8")
            check = _cli("agent", "check", "--config", "agent.toml", cwd=work)
            assert check.returncode == 0, check.stdout + check.stderr
            assert f"{len(archive)} archived meters" in check.stdout

            # a technician's look at the line before the agent owns it
            read = _cli(
                "read", "--bus", urls["rs485-1"], "--meter", "000000000001", "00010000",
                cwd=work,
            )  # fmt: skip
            assert "Traceback" not in read.stderr
            assert read.returncode in (0, 1), read.stderr  # 1: this meter may be a dead one
            scan = _cli(
                "scan", "--bus", urls["dtu-east"], "--config", "agent.toml",
                "--bus-name", "dtu-east", "--reply-timeout-ms", "60", cwd=work,
            )  # fmt: skip
            assert scan.returncode == 0, scan.stdout + scan.stderr
            assert "meters found" in scan.stdout

            central = (REPO / "deploy" / "central.example.toml").read_text(encoding="utf-8")
            central = set_keys(central, "mqtt", {"host": '"127.0.0.1"', "port": str(broker.port)})
            central = set_keys(central, "influx", {"url": f'"{influx.url}"'})
            central = set_keys(central, "consumer", {"spool": f'"{work / "spool.sqlite3"}"'})
            central = set_keys(central, "coverage", {"interval_s": "1.0"})
            central = set_keys(central, "store", {"url": f'"sqlite://{work / "coverage.sqlite3"}"'})
            (work / "central.toml").write_text(central, encoding="utf-8")

            async with (
                meterlink(["central", "run", "--config", str(work / "central.toml")],
                          work / "central.log") as consumer,
                meterlink(["agent", "run", "--config", str(work / "agent.toml")],
                          work / "agent.log") as agent,
            ):  # fmt: skip
                records = [work / "pty.jsonl", work / "tcp.jsonl"]
                day = common.clock.current().now(BEIJING).date().isoformat()

                def report() -> dict[str, Any]:
                    done = _cli(
                        "central", "report", "--config", "central.toml", "--day", day,
                        "--format", "json", "--min-days", "1", cwd=work,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr + agent.log()[-2000:]
                    result: dict[str, Any] = json.loads(done.stdout)
                    return result

                snapshot: dict[str, Any] = {}

                def settled() -> bool:
                    """The record first, then the report: every meter the record shows
                    answering by then must be counted read (the agent goes on reading after)."""
                    for proc in (agent, consumer):
                        assert proc.proc is not None
                        assert proc.proc.returncode is None, proc.log()[-3000:]
                    if not (work / "coverage.sqlite3").exists():
                        return False
                    answered, _silent = _reachable(records, archive)
                    now = report()
                    (fleet,) = [s for s in now["scopes"] if s["scope"] == "fleet"]
                    reasons = [f["last_reason"] for f in now["consecutive_failures"]]
                    snapshot.update(answered=answered, report=now)
                    return (
                        fleet["expected"] == len(archived)  # the archive reached the centre
                        and "unexplained" not in reasons  # every meter tried at least once
                        and read_meters(now) >= answered
                    )

                async with asyncio.timeout(180):
                    # polling: the state is in other processes (the report command reads it)
                    while not await asyncio.to_thread(settled):  # noqa: ASYNC110
                        await asyncio.sleep(2.0)
                assert await agent.stop() == 0, agent.log()[-3000:]
                assert await consumer.stop() == 0, consumer.log()[-3000:]
                result = report()  # final: nothing reads or writes any more
    answered, silent = _reachable(records, archive)
    read = read_meters(result)
    assert read >= read_meters(snapshot["report"]) >= snapshot["answered"]
    assert not read & silent  # a meter the simulator never let answer is never counted read
    assert read <= answered  # ... and only meters it did
    (fleet,) = [s for s in result["scopes"] if s["scope"] == "fleet"]
    assert (fleet["expected"], fleet["read"]) == (len(archived), len(read))
    unread = {f["meter"]: f["last_reason"] for f in result["consecutive_failures"]}
    assert set(unread) == archived - read  # every missing meter is named ...
    assert "unexplained" not in unread.values()  # ... and explained
    assert "Traceback" not in agent.log() + consumer.log()
