"""Two central hosts on one store: `meterlink central run` twice, each with its own config,
spool and state directory, in one shared-subscription group, on one PostgreSQL (and the same on
one SQLite file: two instances of one host). One is SIGKILLed while it holds messages it has not
acknowledged (the broker's log says which) and started again. Then every fact is in the store,
every point in InfluxDB once, and `meterlink central report` — and the coverage the instances
published — equal what was sent."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.central.helpers import archive, batch, publish, reading, round_report, stamp, wait_for
from tests.fixtures.services import InfluxDB1, Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
CONCENTRATORS = ("c-101", "c-102", "c-103")
DAYS = ("2026-11-22", "2026-11-23", "2026-11-24")
METERS = 120
PER_MESSAGE = 5


def meter(c: str, i: int) -> str:
    return f"{c[2:]}{i:09d}"


def fate(i: int) -> str:
    """What meter i does every day: read, fail with a reason the round reports, or nothing."""
    return "no_reply" if i % 7 == 0 else "unexplained" if i % 11 == 0 else "read"


def traffic() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for c in CONCENTRATORS:
        fleet = [(meter(c, i), "east" if i % 2 else "west", "acme") for i in range(1, METERS + 1)]
        out.append((c, "archive", archive(c, 1, fleet, stamp("2026-11-20", "10:00"))))
    for d in DAYS:
        for c in CONCENTRATORS:
            read = [meter(c, i) for i in range(1, METERS + 1) if fate(i) == "read"]
            for k in range(0, len(read), PER_MESSAGE):
                chunk = [reading(m, d) for m in read[k : k + PER_MESSAGE]]
                out.append((c, "readings", batch(c, chunk, f"{c}-{d}-{k}")))
            failed = [
                (meter(c, i), "no_reply") for i in range(1, METERS + 1) if fate(i) == "no_reply"
            ]
            out.append((c, "rounds", round_report(c, d, failed, expected=METERS)))
    return out


READ = sum(fate(i) == "read" for i in range(1, METERS + 1)) * len(CONCENTRATORS)
NO_REPLY = sum(fate(i) == "no_reply" for i in range(1, METERS + 1)) * len(CONCENTRATORS)
UNEXPLAINED = sum(fate(i) == "unexplained" for i in range(1, METERS + 1)) * len(CONCENTRATORS)
EXPECTED = METERS * len(CONCENTRATORS)
POINTS = READ * len(DAYS)


def host_config(
    home: Path,
    name: str,
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    store_url: str,
    flush_interval_s: float = 0.1,
) -> Path:
    """Host `name`'s own config and state directory."""
    home.mkdir()
    path = home / "central.toml"
    path.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {mosquitto.port}
client_id = "central-{name}"
group = "province"
session_expiry_s = 3600

[influx]
api = "v1"
url = "{influxdb.url}"
database = "meterlink"
retry_initial_s = 0.05

[consumer]
spool = "{home}/spool.sqlite3"
batch_readings = 200
flush_interval_s = {flush_interval_s}

[coverage]
interval_s = 0.5

[store]
url = {json.dumps(store_url)}
"""
    )
    return path


class Host:
    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.log = conf.parent / "central.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meterlink", "central", "run", "--config", str(self.conf)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def connections(self) -> int:
        """Sessions this host has subscribed (logged once the broker's SUBACK is in)."""
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self.log.read_text().count(" connected to 127.0.0.1:")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
            assert self.proc.returncode == 0, self.log.read_text()[-3000:]


def unacknowledged(broker_log: str, client: str) -> set[int]:
    """Message ids of readings the broker sent `client` that it has not acknowledged."""
    sent = re.findall(
        rf"Sending PUBLISH to {client} \(d\d, q1, r0, m(\d+), 'meterlink/v1/[^/]+/readings'",
        broker_log,
    )
    acked = re.findall(rf"Received PUBACK from {client} \(Mid: (\d+)", broker_log)
    return {int(m) for m in sent} - {int(m) for m in acked}


def redelivered(broker_log: str, client: str) -> set[int]:
    return {
        int(m)
        for m in re.findall(rf"Sending PUBLISH to {client} \(d1, q1, r0, m(\d+),", broker_log)
    }


def count(db: InfluxDB1, q: str) -> int:
    series = db.query(q)
    return int(series[0]["values"][0][1]) if series else 0


def readings(db: InfluxDB1) -> int:
    return count(db, "SELECT count(energy_import_total_kwh) FROM reading")


def report(conf: Path, day: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "meterlink", "central", "report", "--config", str(conf),
         "--day", day, "--format", "json", "--min-days", "1"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    data: dict[str, Any] = json.loads(out)
    return data


async def test_two_hosts_one_killed_mid_ingest_lose_nothing_and_agree(
    tmp_path: Path, influxdb: InfluxDB1, store_url: str
) -> None:
    broker_log = tmp_path / "mosquitto.log"
    broker = Mosquitto(
        tmp_path / "broker", free_port(), extra=(f"log_dest file {broker_log}", "log_type all")
    )
    # host a acknowledges every 2 s, so it is caught holding messages
    a = Host(host_config(tmp_path / "host-a", "a", broker, influxdb, store_url, 2.0))
    b = Host(host_config(tmp_path / "host-b", "b", broker, influxdb, store_url))
    sent = traffic()
    try:
        broker.start()
        a.start()
        b.start()
        await wait_for(lambda: a.connections() and b.connections(), what="both subscribed")
        publisher = asyncio.create_task(publish(broker.port, sent))
        await wait_for(
            lambda: len(unacknowledged(broker_log.read_text(), "central-a")) >= 5,
            what="host a holding messages",
        )
        a.kill()
        await wait_for(
            lambda: re.search(r"(Client|on client) central-a (disconnected|closed)",
                              broker_log.read_text()),
            what="the broker seeing host a gone",
        )  # fmt: skip
        held = unacknowledged(broker_log.read_text(), "central-a")
        assert held  # killed with readings in hand, not acknowledged
        await publisher
        a.start()
        await wait_for(lambda: a.connections() == 2, what="a back")
        await wait_for(lambda: readings(influxdb) == POINTS, within=60, what="every point")
        # what it held was handed to it again (and landed once: the counts below)
        assert held <= redelivered(broker_log.read_text(), "central-a")

        def published() -> dict[int, list[Any]]:
            s = influxdb.query("SELECT expected, collected FROM coverage WHERE scope = 'fleet'")
            return {t: v for t, *v in s[0]["values"]} if s else {}

        await wait_for(
            lambda: sorted(published().values()) == [[EXPECTED, READ]] * len(DAYS),
            within=60,
            what="coverage of every day published",
        )
        for d in DAYS:
            got = report(a.conf, d)
            fleet = got["scopes"][0]
            assert (fleet["expected"], fleet["read"]) == (EXPECTED, READ)
            assert fleet["failed_by_reason"] == {"no_reply": NO_REPLY, "unexplained": UNEXPLAINED}
            streaks = Counter(s["days"] for s in got["consecutive_failures"])
            assert streaks == {DAYS.index(d) + 1: NO_REPLY + UNEXPLAINED}
            assert report(b.conf, d) == got  # either host's view is the store's
        # no point twice: one per (meter, data day), as many as were sent
        per_meter = influxdb.query(
            "SELECT count(energy_import_total_kwh) FROM reading GROUP BY meter"
        )
        assert len(per_meter) == READ
        assert {s["values"][0][1] for s in per_meter} == {len(DAYS)}
    finally:
        for host in (a, b):
            host.stop()
        broker.stop()
