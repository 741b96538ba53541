"""End to end over TLS with the production broker: simulated meters -> `meterlink agent run` (its
client certificate) -> Mosquitto with deploy/mosquitto/meterlink.conf and a PKI from make-pki
-> `meterlink central run` (its own certificate) -> a private InfluxDB 1.x. Every reading the
agent publishes is in InfluxDB with the simulator's values; a signed command from the centre,
answered on a reply topic the ACL allows, comes back over the same broker."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocols.commands import new_command
from tests.agent.helpers_mqtt import CONCENTRATOR, KEY, archive_and_plans, eventually
from tests.agent.test_e2e import (
    _STARTED,
    AgentProcess,
    _check_against_simulator,
    _daily,
    _field,
    _live,
    _now,
)
from tests.deploy.broker import Peer, peer, production_broker, request, settings
from tests.fixtures.pki import CENTRAL, Pki, make_pki
from tests.fixtures.services import InfluxDB1, Mosquitto, running_influxdb

pytestmark = pytest.mark.slow

WATCHER = "meterlink-central-2"  # a second central instance: watches what the agent publishes


@pytest.fixture(autouse=True)
async def _nothing_left_behind() -> AsyncIterator[None]:
    yield
    while _STARTED:
        proc = _STARTED.pop().proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


def agent_config(tmp: Path, broker: Mosquitto, pki: Pki, bus_url: str, archive: Path) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f"""
stop_timeout_s = 10
[agent]
concentrator = "{CONCENTRATOR}"
timezone = "UTC"
state_dir = "{tmp / "state"}"
[mqtt]
host = "localhost"
port = {broker.port}
tls = true
ca_file = "{pki.ca}"
cert_file = "{pki.cert(CONCENTRATOR)}"
key_file = "{pki.key(CONCENTRATOR)}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_size = 7
[metrics]
listen = ""
[[buses]]
name = "b1"
url = "{bus_url}"
{archive_and_plans(archive, backfill_days=1)}""",
        encoding="utf-8",
    )
    return path


def central_config(tmp: Path, broker: Mosquitto, pki: Pki, influx: InfluxDB1) -> Path:
    path = tmp / "central.toml"
    path.write_text(
        f"""
[mqtt]
host = "localhost"
port = {broker.port}
client_id = "{CENTRAL}"
group = "e2e"
tls = true
ca_file = "{pki.ca}"
cert_file = "{pki.cert(CENTRAL)}"
key_file = "{pki.key(CENTRAL)}"
session_expiry_s = 3600
[influx]
url = "{influx.url}"
[consumer]
spool = "{tmp / "spool.sqlite3"}"
flush_interval_s = 0.1
[coverage]
ledger = "{tmp / "ledger.sqlite3"}"
interval_s = 0.5
""",
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def central_process(config: Path) -> AsyncIterator[Path]:
    log = config.with_suffix(".log")
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterlink", "central", "run", "--config", str(config),
            stdout=out, stderr=out,
        )  # fmt: skip
    try:
        yield log
    finally:
        if proc.returncode is None:
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.read_text()


def readings(watcher: Peer) -> list[dict[str, Any]]:
    return [
        r
        for topic, body in watcher.seen
        if topic.endswith("/readings")
        for r in json.loads(body)["readings"]
    ]


def stored(influx: InfluxDB1) -> dict[tuple[str, str, int], float]:
    """(meter, item, epoch s) -> energy_import_total_kwh of every reading point in InfluxDB."""
    out = {}
    for series in influx.query("SELECT * FROM reading GROUP BY meter, item"):
        columns = series["columns"]
        for row in series["values"]:
            point = dict(zip(columns, row, strict=True))
            key = (series["tags"]["meter"], series["tags"]["item"], int(point["time"]))
            out[key] = point["energy_import_total_kwh"]
    return out


def key_of(r: dict[str, Any]) -> tuple[str, str, int]:
    return (r["meter"], r["item"], int(dt.datetime.fromisoformat(r["data_time"]).timestamp()))


async def test_meters_to_influxdb_over_tls_with_the_production_broker(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", CONCENTRATOR)
    pki.run("--central", WATCHER)
    with (
        production_broker(tmp_path / "broker", pki) as broker,
        running_influxdb(tmp_path / "influx") as influx,
    ):
        async with (
            _field(tmp_path, transport="tcp", count=12, dead=0.1) as (fleet, url, archive),
            peer(settings(broker, pki, WATCHER, host="localhost")) as watcher,
            central_process(central_config(tmp_path, broker, pki, influx)) as central_log,
        ):
            assert await watcher.subscribe(
                "meterlink/v1/+/readings", "meterlink/v1/+/status", "meterlink-replies/#"
            ) == [1, 1, 1]
            # the consumer's session exists before the agent publishes (nothing to lose)
            await eventually(lambda: "connected to" in central_log.read_text(), within=60)
            agent = AgentProcess(agent_config(tmp_path, broker, pki, url, archive))
            await agent.start()
            today, live = _now().date(), _live(fleet)
            with_history = {m for m in live if fleet.meter(m).identity.protocol != "dlt645-1997"}
            yesterday = today - dt.timedelta(days=1)
            try:
                await eventually(lambda: _daily(readings(watcher), today) >= live, within=90)
                await eventually(
                    lambda: _daily(readings(watcher), yesterday) >= with_history, within=90
                )
                # a command from the centre (its other identity), the reply on a topic the
                # ACL lets this concentrator write
                cmd = new_command(
                    "read",
                    concentrator=CONCENTRATOR,
                    key=KEY,
                    now=dt.datetime.now(dt.UTC),
                    meter=sorted(live)[0],
                    args={"items": ["energy_import_total_kwh"]},
                )
                reply_topic = f"meterlink-replies/{CONCENTRATOR}/{WATCHER}"
                await request(
                    watcher,
                    f"meterlink/v1/{CONCENTRATOR}/cmd",
                    json.dumps(cmd).encode(),
                    reply_topic,
                    b"corr-1",
                )
                await eventually(lambda: reply_topic in watcher.topics(), within=60)
            finally:
                assert await agent.stop() == 0, agent.log()  # drains its outbox
            published = {key_of(r): r for r in readings(watcher)}
            await eventually(lambda: stored(influx).keys() >= published.keys(), within=60)
        points = stored(influx)

    (reply,) = [json.loads(b) for t, b in watcher.seen if t == reply_topic]
    assert reply["ok"] is True, reply
    _check_against_simulator(fleet, list(published.values()))
    assert points.keys() == published.keys()  # every reading, and nothing else
    for key, r in published.items():
        assert points[key] == pytest.approx(r["values"]["energy_import_total_kwh"]["value"])
    statuses = [json.loads(b)["state"] for t, b in watcher.seen if t.endswith("/status")]
    assert statuses[0] == "online"
    assert statuses[-1] == "offline"
