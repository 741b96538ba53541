"""Faults: the database down, a consumer killed, duplicates, two consumers in one group."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from central.config import CoverageConfig
from central.coverage import compute_day
from central.ledger import Ledger
from central.spool import Spool
from central.store import open_store
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
from tests.fixtures.services import InfluxDB1, Mosquitto, running_influxdb

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
interval_s = 0.5

[store]
url = "sqlite://{tmp}/ledger.sqlite3"
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
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, store_url: str
) -> None:
    one = config(tmp_path, mosquitto.port, influxdb.url, client_id="c1", store=store_url)
    two = config(tmp_path, mosquitto.port, influxdb.url, client_id="c2", store=store_url)
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
    store = open_store(store_url)
    try:
        fleet = compute_day(Ledger(store), scenario.DAY, CoverageConfig()).fleet()
    finally:
        store.close()
    assert (fleet.expected, fleet.read) == (14, 12)
    for cfg in (one, two):
        spool = Spool(cfg.consumer.spool)
        assert spool.pending() == (0, 0)
        spool.close()


def _influxql(db: InfluxDB1, q: str, user: tuple[str, str] | None = ("admin", "a")) -> Any:
    """An InfluxQL statement on a server with authentication on (POST, as admin by default)."""
    url = f"{db.url}/query?" + urllib.parse.urlencode({"q": q, "db": "meterlink", "epoch": "s"})
    request = urllib.request.Request(url, method="POST")  # noqa: S310 (loopback only)
    if user is not None:
        token = base64.b64encode(":".join(user).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback only)
        results = json.loads(resp.read())["results"]
    assert not [r for r in results if "error" in r], (q, results)
    return results[0]


def _count_as_admin(db: InfluxDB1) -> int:
    result = _influxql(db, "SELECT count(energy_import_total_kwh) FROM reading")
    return int(result["series"][0]["values"][0][1]) if "series" in result else 0


async def test_401_403_404_keep_the_lines_in_the_spool_until_the_set_up_is_put_right(
    tmp_path: Path,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write right missing (403), a password changed under the consumer (401), the database
    dropped (404): nothing is wrong with the lines, so none is a dead letter; they wait in the
    spool and land once an operator fixes the set-up. One error is logged per episode."""
    monkeypatch.setenv("INFLUXDB_HTTP_AUTH_ENABLED", "true")  # influxd reads it over its config
    (tmp_path / "influx").mkdir()
    with running_influxdb(tmp_path / "influx") as db:
        _influxql(db, "CREATE USER admin WITH PASSWORD 'a' WITH ALL PRIVILEGES", user=None)
        _influxql(db, "CREATE DATABASE meterlink")
        _influxql(db, "CREATE USER central WITH PASSWORD 'c'")
        _influxql(db, "GRANT READ ON meterlink TO central")  # and no WRITE
        # no coverage job: its writes (retried every 0.3 s while refused) authenticate with the
        # old password while SET PASSWORD runs, and InfluxDB 1.x then caches the old password
        # as good (its Authenticate checks a hash read before the change, then caches it)
        cfg = config(
            tmp_path,
            mosquitto.port,
            db.url,
            influx={"username": "central", "create_database": False},
            coverage={"interval_s": 3600},
            environ={"METERLINK_INFLUX_PASSWORD": "c"},
        )
        data = batches(3, 100)
        async with running_consumer(cfg) as consumer:

            async def refused_then_fixed(k: int, fix: str, total: int) -> None:
                errors = consumer.sink.stats.write_errors
                await publish(mosquitto.port, data[k : k + 1])
                await wait_for(lambda: consumer.stats.acked == k + 1, what="acknowledged")
                # spooled, and retried again and again (backoff 0.05 .. 0.5 s)
                await wait_for(lambda: consumer.sink.stats.write_errors >= errors + 4, what="retry")
                assert consumer.spool.pending()[1] >= 100
                assert consumer.spool.dead_counts() == {}
                _influxql(db, fix)
                await wait_for(lambda: _count_as_admin(db) == total, what=f"after {fix}")
                await wait_for(lambda: consumer.spool.pending() == (0, 0), what="spool empty")

            await refused_then_fixed(0, "GRANT WRITE ON meterlink TO central", 100)  # 403
            _influxql(db, "SET PASSWORD FOR central = 'rotated'")
            await refused_then_fixed(1, "SET PASSWORD FOR central = 'c'", 200)  # 401
            _influxql(db, "DROP DATABASE meterlink")
            # (its grants went with it)
            fix = "CREATE DATABASE meterlink; GRANT WRITE ON meterlink TO central"
            await refused_then_fixed(2, fix, 100)  # 404
            assert consumer.sink.stats.dead_lines == 0
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "central.sink"]
    assert [m[:37] for level, m in messages if level == "ERROR"] == [
        f"InfluxDB refuses writes with HTTP {status}" for status in (403, 401, 404)
    ]
    assert sum(m.startswith("InfluxDB takes writes again") for _, m in messages) == 3
