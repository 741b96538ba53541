"""Readings per second from MQTT into InfluxDB through `meterlink central run`, beside a raw
line-protocol write of the same points in the same run.

    .venv/bin/python bench/ingest.py [--readings 200000] [--per-message 500]

Starts its own Mosquitto and influxd (Debian `influxdb`, v1 write path) on free loopback
ports. A reading is one meter's values for one data item at one time: here a daily freeze with
the total and four tariffs, 500 readings per MQTT message (an agent's batch). Each run:

1. baseline: the same points, as line protocol built beforehand, POSTed to /write in
   10,000-line requests from one process (no MQTT, no JSON, no schema, no ledger);
2. one consumer process; 3. two consumer processes in one shared-subscription group.

For 2 and 3 the consumers are connected first, then every message is published (QoS 1) and the
clock runs from the first publish until the database has the last reading of every message
(then every point is counted). CPU seconds of each
process over the run are printed, which shows what the two cores were spent on.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from central.points import Converted, convert  # noqa: E402
from tests.fixtures.services import (  # noqa: E402
    InfluxDB1,
    Mosquitto,
    VictoriaMetrics,
    free_port,
)

CST = dt.timezone(dt.timedelta(hours=8))

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def payloads(readings: int, per_message: int, day: int = 25) -> list[tuple[str, bytes]]:
    out = []
    for start in range(0, readings, per_message):
        c = f"c-{start // 2048:05d}"
        batch = []
        for i in range(start, min(start + per_message, readings)):
            kwh = 1000 + i % 997 + 0.25
            values = {"energy_import_total_kwh": {"value": kwh, "unit": "kWh"}}
            for t in range(1, 5):
                values[f"energy_import_t{t}_kwh"] = {"value": round(kwh / 4, 2), "unit": "kWh"}
            batch.append({
                "meter": f"{i:012d}", "item": "daily_freeze", "plan": "daily",
                "data_time": f"2026-11-{day:02d}T00:00:00+08:00",
                "read_at": f"2026-11-{day:02d}T00:21:07+08:00",
                "values": values,
            })  # fmt: skip
        body = {"schema": "meterlink.readings/1", "concentrator": c, "batch_id": f"{c}:{start}",
                "sent_at": "2026-11-25T00:30:00+08:00", "readings": batch}  # fmt: skip
        out.append((f"meterlink/v1/{c}/readings", json.dumps(body).encode()))
    return out


@dataclass
class Target:
    """A database the consumer writes to: how to write raw lines, how to count a day's points."""

    name: str
    api: str  # the consumer's [influx] api
    url: str
    write_path: str
    pid: int
    count: Callable[[int, list[str] | None], int]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def influxd_target(db: InfluxDB1) -> Target:
    for q in ('DROP DATABASE "consumer"', 'CREATE DATABASE "consumer"'):
        urllib.request.urlopen(
            f"{db.url}/query", data=urllib.parse.urlencode({"q": q}).encode(), timeout=30
        ).close()

    def count(day: int, meters: list[str] | None) -> int:
        when = f"time = '2026-11-{day - 1:02d}T16:00:00Z'"  # 00:00 +08:00 of the data day
        if meters:
            when += f" AND meter =~ /^({'|'.join(meters)})$/"
        q = f'SELECT count("energy_import_total_kwh") FROM "reading" WHERE {when}'
        body = _get(f"{db.url}/query?" + urllib.parse.urlencode({"q": q, "db": "consumer"}))
        series = body["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0

    assert db.proc is not None
    return Target("InfluxDB 1.6 (influxd), v1 /write", "v1", db.url,
                  "/write?db=consumer&precision=s", db.proc.pid, count)  # fmt: skip


def victoria_target(vm: VictoriaMetrics) -> Target:
    def count(day: int, meters: list[str] | None) -> int:
        urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=30).close()
        at = int(dt.datetime(2026, 11, day, tzinfo=CST).timestamp()) + 60
        match = f'{{meter=~"{"|".join(meters)}"}}' if meters else ""
        expr = f"count(reading_energy_import_total_kwh{match})"
        q = urllib.parse.urlencode({"query": expr, "time": at})
        result = _get(f"{vm.url}/api/v1/query?{q}")["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    assert vm.proc is not None
    return Target("VictoriaMetrics, v2 /api/v2/write (influxdb-client)", "v2", vm.url,
                  "/api/v2/write?org=meterlink&bucket=meterlink&precision=s", vm.proc.pid, count)  # fmt: skip


async def raw_write(target: Target, lines: list[str]) -> float:
    chunk = 10_000
    bodies = ["\n".join(lines[i : i + chunk]).encode() for i in range(0, len(lines), chunk)]
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        for body in bodies:
            async with http.post(target.url + target.write_path, data=body) as resp:
                assert resp.status == 204, await resp.text()
        return time.perf_counter() - start


def write_config(path: Path, broker: int, target: Target, name: str, group: str,
                 work: Path) -> None:  # fmt: skip
    path.write_text(f"""
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "{name}"
group = "{group}"
receive_maximum = 1000
[influx]
api = "{target.api}"
url = "{target.url}"
database = "consumer"
max_lines_per_write = 10000
[consumer]
spool = "{work}/{name}.spool.sqlite3"
batch_readings = 10000
flush_interval_s = 0.2
[coverage]
ledger = "{work}/{group}.ledger.sqlite3"
interval_s = 3600
""")


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(t, body, qos=1) for t, body in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def subscribers(port: int, group_topic: str) -> bool:
    """A probe finds a subscriber (reason 0, not 16 'no matching subscribers')."""
    codes: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_publish = lambda _c, _u, _m, rc, _p: codes.append(int(rc.value))
    client.connect("127.0.0.1", port)
    client.loop_start()
    probe = {"schema": "meterlink.status/1", "concentrator": "probe", "state": "online",
             "at": "2026-11-25T00:00:00+08:00"}  # fmt: skip
    client.publish(group_topic, json.dumps(probe), qos=1).wait_for_publish(5)
    time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return codes == [0]


def run_consumers(n: int, broker: Mosquitto, target: Target, messages: list[tuple[str, bytes]],
                  readings: int, work: Path, day: int) -> tuple[float, dict[str, float]]:  # fmt: skip
    # a group of its own: a persistent session left by an earlier run would keep its share
    group = f"bench-{target.api}-{n}"
    procs = []
    for k in range(n):
        conf = work / f"{group}-{k}.toml"
        write_config(conf, broker.port, target, f"{group}-{k}", group, work)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "meterlink", "central", "run", "--config", str(conf),
             "--log-level", "WARNING"], cwd=REPO))  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not subscribers(broker.port, "meterlink/v1/probe/status"):
            if time.monotonic() > deadline:
                raise RuntimeError("consumers did not subscribe")
            time.sleep(0.1)
        time.sleep(0.5 * n)  # every member of the group subscribed, not just the first
        assert broker.proc is not None
        pids = {f"consumer {k + 1}": p.pid for k, p in enumerate(procs)}
        pids |= {"mosquitto": broker.proc.pid, "database": target.pid}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        start = time.perf_counter()
        publish_all(broker.port, messages)
        # a message's readings are written in order within one batch, so its last reading
        # marks it done; asking for those few keeps the polling off the database's CPU
        last = [json.loads(body)["readings"][-1]["meter"] for _, body in messages]
        while target.count(day, last) < len(last):
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        assert target.count(day, None) == readings
        return elapsed, {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def bench(target: Target, broker: Mosquitto, days: dict[str, list[tuple[str, bytes]]],
          readings: int, work: Path) -> None:  # fmt: skip
    def lines(name: str) -> list[str]:
        out = Converted()
        for _, body in days[name]:
            convert("readings", json.loads(body), out)
        return out.lines

    print(f"\n{target.name}")
    # every run writes a new data day into series that exist already, as every day but the
    # first does in the field (creating 100k+ series is a database's slowest work)
    asyncio.run(raw_write(target, lines("warm")))
    raw_s = asyncio.run(raw_write(target, lines("raw")))
    while target.count(22, None) < readings:
        time.sleep(0.1)
    raw_rate = readings / raw_s
    print(f"  raw line protocol, one process:   {raw_rate:10,.0f} readings/s ({raw_s:.2f} s)")
    for n, name, day in ((1, "one", 23), (2, "two", 24)):
        elapsed, cpu = run_consumers(n, broker, target, days[name], readings, work, day)
        rate = readings / elapsed
        label = "1 consumer process" if n == 1 else f"{n} consumer processes, one group"
        print(f"  {label + ':':<34}{rate:10,.0f} readings/s ({elapsed:.2f} s),"
              f" {rate / raw_rate:.2f} of raw")  # fmt: skip
        print("      CPU seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        consumer_cpu = sum(v for k, v in cpu.items() if k.startswith("consumer"))
        per_reading = consumer_cpu / readings
        print(f"      consumer CPU per reading {per_reading * 1e6:.1f} µs: one process with a core"
              f" of its own would take {1 / per_reading:,.0f} readings/s;"
              f" the database used {cpu['database'] / elapsed:.2f} of the 2 cores")  # fmt: skip


def breakdown(messages: list[tuple[str, bytes]], readings: int) -> None:
    """Where one consumer's CPU goes per reading, stage by stage, in this process."""
    import central.ledger
    from central.config import CoverageConfig
    from protocols.payloads import validate

    parsed: list[Any] = []
    stages: list[tuple[str, Callable[[], object]]] = [
        ("JSON parse", lambda: parsed.extend(json.loads(body) for _, body in messages)),
        ("schema check", lambda: [validate("readings", p) for p in parsed]),
    ]
    out = Converted()
    stages.append(("line protocol", lambda: [convert("readings", p, out) for p in parsed]))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = central.ledger.Ledger(Path(tmp) / "ledger.sqlite3")
        required = CoverageConfig().required_values
        stages.append(("coverage ledger", lambda: ledger.apply(out, required)))
        print("consumer CPU per reading, by stage (in-process):")
        for name, stage in stages:
            started = time.process_time()
            stage()
            spent = time.process_time() - started
            print(f"  {name:<18}{spent / readings * 1e6:6.1f} µs")
        ledger.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--per-message", type=int, default=500)
    ap.add_argument("--database", choices=["influxd", "victoria", "both"], default="both")
    args = ap.parse_args()
    days = {name: payloads(args.readings, args.per_message, day)
            for name, day in (("warm", 21), ("raw", 22), ("one", 23), ("two", 24))}  # fmt: skip
    print(f"{args.readings} readings (daily freeze, total + 4 tariffs) in {len(days['raw'])}"
          f" messages of {args.per_message}; {os.cpu_count()} cores shared by the broker, the"
          f" database, the consumers and the publisher; load average before:"
          f" {os.getloadavg()[0]:.2f}")  # fmt: skip
    breakdown(days["raw"], args.readings)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work, free_port())
        broker.start()
        try:
            if args.database in ("influxd", "both"):
                db = InfluxDB1(work, free_port(), free_port())
                db.start()
                try:
                    bench(influxd_target(db), broker, days, args.readings, work)
                finally:
                    db.stop()
            if args.database in ("victoria", "both"):
                vm = VictoriaMetrics(work, free_port())
                vm.start()
                try:
                    bench(victoria_target(vm), broker, days, args.readings, work)
                finally:
                    vm.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
