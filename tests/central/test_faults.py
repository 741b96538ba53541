"""Faults: the database down, a consumer killed, duplicates, two consumers in one group."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from central.config import CoverageConfig
from central.coverage import compute_day
from central.ledger import Ledger
from central.spool import Spool
from tests.central import scenario
from tests.central.helpers import (
    batch,
    config,
    meters,
    publish,
    reading,
    running_consumer,
    wait_for,
)
from tests.fixtures.services import InfluxDB1, Mosquitto

REPO = Path(__file__).resolve().parents[2]
FLEET_ROW = (
    "SELECT expected, collected, rate FROM coverage"
    " WHERE scope = 'fleet' AND time = '2026-11-24T00:00:00Z'"
)


def count(db: InfluxDB1) -> int:
    series = db.query("SELECT count(energy_import_total_kwh) FROM reading")
    return int(series[0]["values"][0][1]) if series else 0


def batches(
    n: int, size: int, day: str = "2026-11-25", prefix: str = "c-001"
) -> list[tuple[str, str, dict[str, object]]]:
    ids = meters(n * size)
    return [
        (prefix, "readings", batch(prefix, [reading(m, day) for m in ids[k : k + size]], f"b{k}"))
        for k in range(0, n * size, size)
    ]


async def test_influxdb_down_during_ingest_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    first, second = batches(10, 100)[:5], batches(10, 100)[5:]
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, first)
        await wait_for(lambda: count(influxdb) == 500, what="first half")
        influxdb.stop()
        await publish(mosquitto.port, second)
        # acknowledged only because the spool holds them
        await wait_for(lambda: consumer.stats.acked == 10, what="second half acked")
        assert consumer.sink.stats.spooled_lines >= 500
        assert consumer.spool.pending()[1] >= 500
        influxdb.start()
        await wait_for(lambda: consumer.spool.pending() == (0, 0), what="spool drained")
    assert count(influxdb) == 1000


def _write_toml(path: Path, cfg_port: int, influx_url: str, tmp: Path) -> None:
    path.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {cfg_port}
client_id = "central-killed"
group = "test"
session_expiry_s = 3600

[influx]
api = "v1"
url = "{influx_url}"
database = "meterlink"
retry_initial_s = 0.05

[consumer]
spool = "{tmp}/killed.spool.sqlite3"
batch_readings = 500
flush_interval_s = 0.1

[coverage]
ledger = "{tmp}/ledger.sqlite3"
interval_s = 0.5
"""
    )


def _start(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "meterlink", "central", "run", "--config", str(conf)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_a_killed_consumer_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    conf = tmp_path / "central.toml"
    _write_toml(conf, mosquitto.port, influxdb.url, tmp_path)
    data = batches(60, 100)
    proc = _start(conf)
    try:
        # the persistent session must exist before anything is published to it
        await wait_for(lambda: _subscribed(mosquitto, proc), what="consumer subscribed")
        publisher = asyncio.create_task(publish(mosquitto.port, data))
        await wait_for(lambda: count(influxdb) >= 500, what="some points")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await publisher
        assert count(influxdb) < 6000  # it really died mid-stream
        proc = _start(conf)
        await wait_for(lambda: count(influxdb) == 6000, within=60, what="every point")
    finally:
        if proc.poll() is None:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err.decode()[-2000:]


def _subscribed(broker: Mosquitto, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    return _probe(broker.port)


def _probe(port: int) -> bool:
    """True once a probe published on a shared topic finds a subscriber: Mosquitto answers
    PUBACK with reason 16 (no matching subscribers) before the consumer has subscribed."""
    import json
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    codes: list[int] = []
    done = threading.Event()

    def on_publish(_c: object, _u: object, _mid: int, reason: object, _p: object) -> None:
        codes.append(int(getattr(reason, "value", 0)))
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        probe = {"schema": "meterlink.events/1", "concentrator": "c-probe",
                 "at": "2026-11-25T00:00:00+08:00", "event": "probe"}  # fmt: skip
        client.publish("meterlink/v1/c-probe/events", json.dumps(probe), qos=1)
        done.wait(5)
        return codes == [0]
    finally:
        client.loop_stop()
        client.disconnect()


async def test_two_consumers_in_one_group_split_the_load_and_agree_on_coverage(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    ledger_path = tmp_path / "shared-ledger.sqlite3"
    one = config(tmp_path, mosquitto.port, influxdb.url, client_id="c1", ledger=ledger_path)
    two = config(tmp_path, mosquitto.port, influxdb.url, client_id="c2", ledger=ledger_path)
    async with running_consumer(one) as a, running_consumer(two) as b:
        await publish(mosquitto.port, batches(40, 50, prefix="c-009"))
        await publish(mosquitto.port, scenario.messages())
        await wait_for(lambda: count(influxdb) == 2000 + 36, what="every point")
        # both took a share, and none twice
        assert a.stats.readings > 0
        assert b.stats.readings > 0
        assert a.stats.readings + b.stats.readings == 2036

        def fleet_row() -> list[object] | None:
            s = influxdb.query(FLEET_ROW)
            return s[0]["values"][0][1:] if s else None

        await wait_for(lambda: fleet_row() == [14, 11, round(100 * 11 / 14, 4)], what="coverage")
        # late data: meter 9's freeze of the 24th, backfilled on the 25th, updates the 24th
        await publish(mosquitto.port, scenario.backfill())
        await wait_for(lambda: fleet_row() == [14, 12, round(100 * 12 / 14, 4)], what="backfill")
    ledger = Ledger(ledger_path)
    try:
        fleet = compute_day(ledger, scenario.DAY, CoverageConfig()).fleet()
    finally:
        ledger.close()
    assert (fleet.expected, fleet.read) == (14, 12)
    for cfg in (one, two):
        spool = Spool(cfg.consumer.spool)
        assert spool.pending() == (0, 0)
        spool.close()
