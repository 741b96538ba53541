"""`meterlink central run` as a service, with the real process: the systemd unit, the staged
stop on SIGTERM (stop taking messages, write and acknowledge what is held, close), SIGHUP
reload, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import configparser
import signal
import urllib.request
from pathlib import Path

import pytest

from central.config import load
from central.consumer import STAGES
from meterlink.services import free_port
from tests.central.helpers import batch, meters, publish, reading, wait_for
from tests.fixtures.processes import MeterlinkProcess, meterlink
from tests.fixtures.services import InfluxDB1, Mosquitto

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "meterlink-central.service"
AGENT_UNIT = REPO / "deploy" / "systemd" / "meterlink-agent.service"
EXAMPLE = REPO / "deploy" / "central.example.toml"


HARDENING = ("Protect", "Restrict", "NoNew", "Private", "Lock", "Memory", "SystemCall",
             "Capability", "Ambient", "UMask", "DevicePolicy")  # fmt: skip


def _service(path: Path) -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(path)
    return unit["Service"]


def test_the_unit_stops_within_its_timeout_reloads_and_is_hardened_like_the_agents() -> None:
    service = _service(UNIT)
    assert service["RestartPreventExitStatus"] == "78"
    assert service["KillSignal"] == "SIGTERM"
    assert load(EXAMPLE).consumer.stop_timeout_s < float(service["TimeoutStopSec"])
    assert sum(STAGES.values()) == pytest.approx(1.0)
    assert "kill -HUP $MAINPID" in service["ExecReload"]
    assert "central run --config" in service["ExecStart"]
    agent = _service(AGENT_UNIT)
    serial = {"DeviceAllow", "Group"}  # the agent's serial ports, and their group
    for key, value in agent.items():
        if key.startswith(HARDENING):
            assert key not in serial
            assert service.get(key) == value, key


def _config(tmp: Path, broker: Mosquitto, db: InfluxDB1, metrics: int, **consumer: object) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in consumer.items())
    path = tmp / "central.toml"
    path.write_text(f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port}
client_id = "service-1"
group = "service"
session_expiry_s = 3600
reconnect_min_s = 0.2
[influx]
url = "{db.url}"
database = "meterlink"
retry_initial_s = 0.05
[consumer]
spool = "{tmp}/spool.sqlite3"
stop_timeout_s = 10
{extra}
[coverage]
interval_s = 3600
[store]
url = "sqlite://{tmp}/ledger.sqlite3"
[metrics]
listen = "127.0.0.1:{metrics}"
""")
    return path


async def _scrape(port: int) -> dict[str, float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    try:
        text = await asyncio.to_thread(get)
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def _metric_is(port: int, name: str, value: float) -> None:
    seen: dict[str, float] = {}

    async def check() -> bool:
        seen.update(await _scrape(port))
        return seen.get(name) == value

    deadline = asyncio.get_running_loop().time() + 30
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} never {value} (last {seen.get(name)})")
        await asyncio.sleep(0.05)


SHOWN = [
    "meterlink_central_write_seconds_count",
    "meterlink_central_spool_lines",
    'meterlink_central_dead_letters_total{kind="schema"}',
    "meterlink_central_lag_seconds",
    "meterlink_central_oldest_held_seconds",
]


def _count(db: InfluxDB1) -> int:
    rows = db.query("SELECT count(energy_import_total_kwh) FROM reading")
    return int(rows[0]["values"][0][1]) if rows else 0


def _messages(n: int, readings: int, day: str) -> list[tuple[str, str, dict[str, object]]]:
    ids = meters(n * readings)
    return [
        ("c-001", "readings",
         batch("c-001", [reading(m, day) for m in ids[k : k + readings]], f"{day}-{k}"))
        for k in range(0, n * readings, readings)
    ]  # fmt: skip


async def test_sigterm_writes_and_acknowledges_what_is_held_then_nothing_comes_again(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    port = free_port()
    # nothing is written before the stop: the batch fills for an hour or 100,000 readings
    conf = _config(tmp_path, mosquitto, influxdb, port, batch_readings=100_000,
                   flush_interval_s=3600)  # fmt: skip
    args = ["central", "run", "--config", str(conf)]
    async with meterlink(args, tmp_path / "central.log") as central:
        await _metric_is(port, "meterlink_central_mqtt_connected", 1)
        await publish(mosquitto.port, _messages(3, 100, "2026-11-25"))
        await _metric_is(port, "meterlink_central_held_messages", 3)
        shown = await _scrape(port)
        assert shown["meterlink_central_readings_total"] == 300
        assert shown["meterlink_central_acked_messages_total"] == 0
        assert _count(influxdb) == 0
        for name in SHOWN:
            assert name in shown, name
        assert await central.stop(signal.SIGTERM) == 0, central.log()
    log = central.log()
    assert "stopping (budget 10 s): taking no more messages, 3 held" in log
    assert "everything held is written and acknowledged" in log
    assert _count(influxdb) == 300
    # the same session again: had anything gone unacknowledged, the broker would send it
    # before the new message
    async with meterlink(args, tmp_path / "central-2.log") as again:
        await _metric_is(port, "meterlink_central_mqtt_connected", 1)
        await publish(mosquitto.port, _messages(1, 1, "2026-11-26"))
        await _metric_is(port, "meterlink_central_held_messages", 1)
        assert (await _scrape(port))["meterlink_central_messages_total"] == 1
        assert await again.stop(signal.SIGTERM) == 0, again.log()
    assert _count(influxdb) == 301


async def test_sigterm_with_the_database_down_puts_what_is_held_in_the_spool(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    port = free_port()
    conf = _config(tmp_path, mosquitto, influxdb, port, batch_readings=100_000,
                   flush_interval_s=3600)  # fmt: skip
    args = ["central", "run", "--config", str(conf)]
    async with meterlink(args, tmp_path / "central.log") as central:
        await _metric_is(port, "meterlink_central_mqtt_connected", 1)
        await publish(mosquitto.port, _messages(2, 50, "2026-11-25"))
        await _metric_is(port, "meterlink_central_held_messages", 2)
        influxdb.stop()
        assert await central.stop(signal.SIGTERM) == 0, central.log()
    assert "everything held is written and acknowledged" in central.log()
    influxdb.start()
    # the next start replays the spool; nothing comes again from the broker
    async with meterlink(args, tmp_path / "central-2.log") as again:
        await _metric_is(port, 'meterlink_central_lines_total{result="replayed"}', 100)
        assert (await _scrape(port))["meterlink_central_messages_total"] == 0
        await wait_for(lambda: _count(influxdb) == 100, what="the spooled readings")
        assert await again.stop(signal.SIGTERM) == 0, again.log()


async def test_sighup_applies_what_it_can_and_names_what_takes_a_restart(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    port = free_port()
    conf = _config(tmp_path, mosquitto, influxdb, port)
    central = MeterlinkProcess(["central", "run", "--config", str(conf)], tmp_path / "c.log")
    await central.start()
    try:
        await _metric_is(port, "meterlink_central_mqtt_connected", 1)
        conf.write_text(
            conf.read_text()
            .replace("stop_timeout_s = 10", "stop_timeout_s = 10\nbatch_readings = 777")
            .replace("session_expiry_s = 3600", "session_expiry_s = 60")
            + '[log]\nlevel = "debug"\n'
        )
        assert central.proc is not None
        central.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "reloaded: log debug, batches of 777" in central.log(),
                       what="the reload")  # fmt: skip
        assert "reload: [mqtt] changed; that takes a restart" in central.log()
        conf.write_text(conf.read_text() + "[consumer.nonsense]\n")
        central.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "reload refused, keeping the running configuration"
                       in central.log(), what="the refusal")  # fmt: skip
        # still working, with the reloaded batch size
        await publish(mosquitto.port, _messages(1, 10, "2026-11-25"))
        await wait_for(lambda: _count(influxdb) == 10, what="a write after the reloads")
        assert await central.stop(signal.SIGTERM) == 0, central.log()
    finally:
        await central.kill()
