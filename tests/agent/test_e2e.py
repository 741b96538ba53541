"""End to end: simulated fleet (TCP serial server and pty) -> `meterlink agent run` (a real
subprocess) -> a Mosquitto of the test's own -> a subscriber that checks every reading against
the simulator's own values. Faults: the broker down during the plan, the agent SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import common.clock
from protocols.commands import new_command
from simulators import Fleet, parse_fleet, serve_fleet
from tests.agent.helpers_mqtt import (
    CONCENTRATOR,
    KEY,
    Collector,
    Requester,
    archive_and_plans,
    eventually,
)
from tests.fixtures.clock import clear_of_midnight, on_clock
from tests.fixtures.services import Mosquitto, free_port, running_mosquitto

pytestmark = pytest.mark.slow


def _now() -> dt.datetime:
    """The run's local time of the meters (the agent runs with timezone UTC here)."""
    return common.clock.current().now(dt.UTC).replace(tzinfo=None, microsecond=0)


@pytest.fixture(autouse=True)
def _clear_of_midnight() -> Iterator[None]:
    """The daily plan reads today's 00:00 freeze: simulator, agent and test share a clock that
    starts at 10:00 today, so no test straddles a midnight (and none waits for one to pass)."""
    with on_clock(clear_of_midnight(dt.UTC)):
        yield


FLEET = """
seed = 23
start = "{start}"
[[district]]
name = "north"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 4, DTZY666 = 1, DDS1997 = 1 }}
    prepaid = 1.0
    dead = {dead}
    intermittent = {intermittent}
    intermittent_loss = 0.5
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    wakeup = [0, 4]
"""


_STARTED: list[AgentProcess] = []


@pytest.fixture(autouse=True)
async def _no_agent_left_behind() -> AsyncIterator[None]:
    """Whatever a test does (or fails to do), no agent process outlives it."""
    yield
    while _STARTED:
        proc = _STARTED.pop().proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class AgentProcess:
    config: Path
    proc: asyncio.subprocess.Process | None = None
    secrets: dict[str, str] = field(
        default_factory=lambda: {"METERLINK_MQTT_COMMAND_KEY": KEY.hex()}
    )
    """the agent's secrets, from its environment as in production"""

    async def start(self) -> None:
        _STARTED.append(self)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meterlink",
            "agent",
            "run",
            "--config",
            str(self.config),
            env={**os.environ, **self.secrets},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.config.with_suffix(".log"), "ab"),  # noqa: SIM115, ASYNC230
        )

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 40)

    def log(self) -> str:
        return self.config.with_suffix(".log").read_text(errors="replace")


def _config(tmp: Path, broker: Mosquitto, bus_url: str, archive: Path, *, metrics: int = 0) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f"""
stop_timeout_s = 10
[agent]
concentrator = "{CONCENTRATOR}"
timezone = "UTC"
state_dir = "{tmp / "state"}"
log_format = "json"
[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_size = 7
[metrics]
listen = "{f"127.0.0.1:{metrics}" if metrics else ""}"
[[buses]]
name = "b1"
url = "{bus_url}"
{archive_and_plans(archive, backfill_days=2)}""",
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def _field(
    tmp: Path, *, transport: str, count: int = 12, dead: float = 0.1, intermittent: float = 0.0
) -> AsyncIterator[tuple[Fleet, str, Path]]:
    fleet = parse_fleet(
        FLEET.format(start=_now().isoformat(), count=count, dead=dead, intermittent=intermittent)
    )
    archive = tmp / "archive.json"
    archive.write_text(json.dumps(fleet.archive()))
    async with serve_fleet(fleet, transport=transport) as serving:
        ep = serving.endpoint("b1")
        opts = "parity=N&reply_timeout_ms=1000&byte_gap_ms=300&frame_gap_ms=0&baud=19200"
        if ep.kind == "tcp":
            assert ep.address is not None
            url = f"tcp://{ep.address[0]}:{ep.address[1]}?{opts}"
        else:
            url = f"serial://{ep.path}?{opts}"
        yield fleet, url, archive


def _outbox_readings(outbox: Path) -> list[dict[str, Any]]:
    """Readings committed to the agent's outbox and not yet acknowledged (read-only look)."""
    if not outbox.exists():
        return []
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
        ) as db:
            rows = db.execute("SELECT payload FROM outbox WHERE kind='readings'").fetchall()
    except sqlite3.OperationalError:  # created but not migrated yet
        return []
    return [json.loads(p) for (p,) in rows]


def _live(fleet: Fleet) -> set[str]:
    return {m.identity.meter_id for m in fleet.meters() if not m.faults.dead and m.faults.loss == 0}


def _check_against_simulator(fleet: Fleet, readings: list[dict[str, Any]]) -> None:
    today = _now().date()
    for r in readings:
        meter = fleet.meter(r["meter"])
        values = {k: v["value"] for k, v in r["values"].items()}
        if meter.identity.protocol == "dlt645-1997":  # no frozen history: totals at read time
            assert values["energy_import_total_kwh"] <= meter.values()["energy_import_total_kwh"]
            continue
        data_time = dt.datetime.fromisoformat(r["data_time"]).replace(tzinfo=None)
        (record,) = [f for f in meter.freeze_history() if f.time == data_time]
        for name, value in values.items():
            if name != "balance_yuan":
                assert value == pytest.approx(record.values()[name]), (r["meter"], name)
        if data_time.date() == today and meter.identity.prepaid:
            assert values["balance_yuan"] == pytest.approx(meter.values()["balance_yuan"], abs=0.5)


def _daily(readings: list[dict[str, Any]], day: dt.date) -> set[str]:
    return {
        r["meter"]
        for r in readings
        if r["item"] == "daily_freeze" and r["data_time"].startswith(day.isoformat())
    }


@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_fleet_to_subscriber_with_the_simulators_values(
    tmp_path: Path, transport: str
) -> None:
    metrics_port = free_port()
    with running_mosquitto(tmp_path / "broker") as broker:
        async with (
            _field(tmp_path, transport=transport, intermittent=0.2) as (fleet, url, archive),
            Collector(broker) as seen,
        ):
            agent = AgentProcess(_config(tmp_path, broker, url, archive, metrics=metrics_port))
            await agent.start()
            today = _now().date()
            live = _live(fleet)
            try:
                await eventually(lambda: _daily(seen.readings(), today) >= live, within=60)
                await eventually(
                    lambda: any(
                        s.payload["data_day"] == today.isoformat() for s in seen.of("rounds")
                    )
                )
                await eventually(lambda: bool(seen.of("archive")))
                with_history = {
                    m for m in live if fleet.meter(m).identity.protocol != "dlt645-1997"
                }
                for back in (1, 2):  # backfill brings the two previous days from frozen history
                    day = today - dt.timedelta(days=back)
                    await eventually(
                        lambda day=day: _daily(seen.readings(), day) >= with_history, within=60
                    )
                metrics = await asyncio.to_thread(
                    lambda: (
                        urllib.request.urlopen(
                            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                        )
                        .read()
                        .decode()
                    )
                )
            finally:
                assert await agent.stop() == 0, agent.log()
            assert not seen.invalid
            _check_against_simulator(fleet, seen.readings())
            dead = {m.identity.meter_id for m in fleet.meters() if m.faults.dead}
            flaky = {m.identity.meter_id for m in fleet.meters() if m.faults.loss > 0}
            assert dead
            assert flaky
            read = _daily(seen.readings(), today)
            assert live <= read <= live | flaky  # every live meter; the dead are not invented
            day = today.isoformat()
            reports = [s.payload for s in seen.of("rounds") if s.payload["data_day"] == day]
            for report in reports:  # every unread meter is explained
                assert report["read"] + len(report["failed"]) == report["expected"] == 12
                assert {f["meter"] for f in report["failed"]} <= dead | flaky
                assert {f["reason"] for f in report["failed"]} <= {
                    "no_reply",
                    "timeout",
                    "checksum",
                }
            assert {f["meter"] for f in reports[-1]["failed"]} >= dead
            statuses = [s.payload["state"] for s in seen.of("status")]
            assert statuses[0] == "online"
            async with Collector(broker, client_id="late") as late:  # retained for latecomers
                await eventually(lambda: bool(late.of("archive")) and bool(late.of("status")))
            (archive_msg,) = late.of("archive")
            assert archive_msg.retain
            assert len(archive_msg.payload["meters"]) == 12
            assert late.of("status")[-1].payload["state"] == "offline"  # stopped: retained offline
            assert 'meterlink_reads_total{plan="daily",result="ok"}' in metrics
            assert 'meterlink_bus_busy_ratio{bus="b1"}' in metrics
            assert 'meterlink_bus_queue{bus="b1"}' in metrics
            assert 'meterlink_mqtt_published_total{key="readings"}' in metrics
            assert "meterlink_outbox_dead_letters 0.0" in metrics
            for back in (1, 2):
                day = today - dt.timedelta(days=back)
                assert _daily(seen.readings(), day) == with_history


async def test_broker_down_during_the_plan_every_reading_arrives_once(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", free_port())
    (tmp_path / "broker").mkdir()
    async with _field(tmp_path, transport="tcp", count=18) as (fleet, url, archive):
        agent = AgentProcess(_config(tmp_path, broker, url, archive))
        await agent.start()  # the broker is not there yet
        outbox = tmp_path / "state" / "outbox.sqlite"
        live = _live(fleet)
        today = _now().date()

        def stored_daily() -> int:
            return len(_daily(_outbox_readings(outbox), today))

        try:
            await eventually(lambda: stored_daily() == len(live), within=60)
            broker.start()
            async with Collector(broker) as seen:
                await eventually(lambda: _daily(seen.readings(), today) >= live, within=60)
                await eventually(lambda: stored_daily() == 0)
        finally:
            assert await agent.stop() == 0, agent.log()
            broker.stop()
    keys = [(r["meter"], r["item"], r["data_time"]) for r in seen.readings()]
    assert len(keys) == len(set(keys))  # nothing published twice
    _check_against_simulator(fleet, seen.readings())


async def test_sigkill_mid_run_loses_nothing_committed(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", free_port())
    (tmp_path / "broker").mkdir()
    async with _field(tmp_path, transport="tcp", count=18, dead=0.0, intermittent=0.0) as (
        fleet,
        url,
        archive,
    ):
        agent = AgentProcess(_config(tmp_path, broker, url, archive))
        outbox = tmp_path / "state" / "outbox.sqlite"

        def committed() -> set[tuple[str, str, str]]:
            return {(p["meter"], p["item"], p["data_time"]) for p in _outbox_readings(outbox)}

        await agent.start()
        await eventually(lambda: len(committed()) >= 5, within=60)
        await agent.stop(signal.SIGKILL)
        before_kill = committed()
        assert before_kill

        broker.start()
        try:
            async with Collector(broker) as seen:
                agent = AgentProcess(agent.config)
                await agent.start()
                got = lambda: {(r["meter"], r["item"], r["data_time"]) for r in seen.readings()}  # noqa: E731
                await eventually(lambda: got() >= before_kill, within=60)
                await eventually(
                    lambda: _daily(seen.readings(), _now().date()) >= _live(fleet), within=60
                )
                assert await agent.stop() == 0, agent.log()
        finally:
            broker.stop()
    assert not seen.invalid


async def test_signed_read_command_end_to_end(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker") as broker:
        async with _field(tmp_path, transport="tcp", count=3, dead=0.0) as (fleet, url, archive):
            agent = AgentProcess(_config(tmp_path, broker, url, archive))
            await agent.start()
            try:
                async with Collector(broker) as seen, Requester.connect(broker) as centre:
                    await eventually(
                        lambda: any(s.payload.get("state") == "online" for s in seen.of("status")),
                        within=30,
                    )
                    cmd = new_command(
                        "read",
                        concentrator=CONCENTRATOR,
                        key=KEY,
                        now=common.clock.current().now(),
                        meter="000000000002",
                        args={"items": ["energy_import_total_kwh", "04000503"]},
                    )
                    reply = await centre.request(cmd, b"corr-1")
            finally:
                assert await agent.stop() == 0, agent.log()
    assert reply.payload["ok"] is True, reply.payload
    values = reply.payload["result"]["items"]["00010000"]["values"]
    assert values["energy_import_total_kwh"]["value"] == pytest.approx(
        fleet.meter("000000000002").values()["energy_import_total_kwh"], abs=0.02
    )
    assert reply.payload["frames"][0]["dir"] == "tx"


async def test_sighup_reloads_the_archive(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker") as broker:
        async with _field(tmp_path, transport="tcp", count=3, dead=0.0) as (fleet, url, archive):
            agent = AgentProcess(_config(tmp_path, broker, url, archive))
            await agent.start()
            try:
                async with Collector(broker) as seen:
                    await eventually(lambda: bool(seen.of("archive")), within=30)
                    archive.write_text(json.dumps(fleet.archive()[:2]))
                    assert agent.proc is not None
                    agent.proc.send_signal(signal.SIGHUP)
                    await eventually(lambda: len(seen.of("archive")) >= 2, within=30)
            finally:
                assert await agent.stop() == 0, agent.log()
    first, second = (s.payload for s in seen.of("archive")[:2])
    assert (first["version"], len(first["meters"])) == (1, 3)
    assert (second["version"], len(second["meters"])) == (2, 2)
    assert "reloaded: archive version 2" in agent.log()
