"""Readings per second from MQTT into the database through `meterlink central run`, beside a
raw line-protocol write of the same points and a publish-only run, in the same run.

    .venv/bin/python bench/ingest.py [--readings 100000] [--per-message 500] [--rounds 2]
                                     [--database influxd|victoria|both] [--kind daily|interval]
                                     [--batch 10000]

Starts its own influxd (Debian `influxdb`, v1 write path) and VictoriaMetrics (v2 write path
through influxdb-client) on free loopback ports, and a fresh Mosquitto for every run (so no
session a run leaves behind queues messages in the next). A reading is one meter's values for
one data item at one time: a daily freeze with the total and four tariffs (a coverage fact
each), or with ``--kind interval`` a 15-minute read of the three phase voltages (no coverage
fact); 500 readings per MQTT message (the agent's default batch). The runs:

- ``raw``: the same points as line protocol built beforehand, POSTed in 10,000-line requests
  from this process, two at a time as a consumer writes (`central.consumer.IN_FLIGHT`; no
  MQTT, no JSON, no schema, no ledger). The clock stops at the HTTP 204 of the last request.
- ``publish``: every message published (QoS 1) to a broker with nobody subscribed: how fast
  the publisher and the broker alone go.
- ``1 consumer`` / ``2 consumers`` (one shared-subscription group): the consumers are
  connected first, then every message is published and the clock stops at the consumers' last
  acknowledgement, once their own ``/metrics`` (read every 0.25 s) say every reading is
  acknowledged — which a consumer does only after the database answered 2xx for it (the same
  kind of signal as raw's last 204). Nothing polls the database while the clock runs; the
  points are counted after it stopped.

Every run writes a data day of its own into series that exist already (a warm-up day creates
them first), as every day but the first does in the field. The kinds run in alternating order
(round 1: raw, publish, 1, 2; round 2: 2, 1, publish, raw; ...); the summary gives the median
of each kind, and the goals take the median of each round's consumer rate over the same
round's raw rate (measured minutes apart, so least moved by whatever else loads the machine). CPU seconds of each process over a run are printed: the database, the broker,
the consumers and the publisher (this process) share the machine's cores. Before the runs, the
consumer's stages (decode + check, lines + facts, HTTP bodies, the coverage ledger) are timed
in this process through the consumer's own functions. ``BENCH_PROFILE=DIR`` runs the consumers
under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from central.consumer import IN_FLIGHT  # noqa: E402
from central.points import Converted, convert  # noqa: E402
from tests.fixtures.services import (  # noqa: E402
    InfluxDB1,
    Mosquitto,
    VictoriaMetrics,
    free_port,
)

CST = dt.timezone(dt.timedelta(hours=8))
TICKS = os.sysconf("SC_CLK_TCK")
#: how often the consumers' /metrics are read while a run waits for its end (a scrape costs
#: a consumer ~1 ms of CPU; the end time is the one the consumers report, not the poll's)
POLL_S = 0.25
#: BENCH_PROFILE=DIR: the consumers run under cProfile, their profiles written there
PROFILE = os.environ.get("BENCH_PROFILE", "")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: --kind: what a reading is. daily: a daily freeze, total + 4 tariffs (a coverage fact each);
#: interval: a 15-minute read of the voltage block 0201FF00, three phases (no coverage fact)
KIND = "daily"
FIELD = {"daily": "energy_import_total_kwh", "interval": "voltage_a_v"}


def payloads(readings: int, per_message: int, day: int) -> list[tuple[str, bytes]]:
    out = []
    for start in range(0, readings, per_message):
        c = f"c-{start // 2048:05d}"
        batch = []
        for i in range(start, min(start + per_message, readings)):
            kwh = 1000 + i % 997 + 0.25
            if KIND == "daily":
                values = {"energy_import_total_kwh": {"value": kwh, "unit": "kWh"}}
                for t in range(1, 5):
                    values[f"energy_import_t{t}_kwh"] = {"value": round(kwh / 4, 2),
                                                         "unit": "kWh"}  # fmt: skip
                item, plan, at = "daily_freeze", "daily", "00:00:00"
            else:
                values = {f"voltage_{p}_v": {"value": 220 + (i + k) % 13 * 0.1, "unit": "V"}
                          for k, p in enumerate("abc")}  # fmt: skip
                item, plan, at = "0201FF00", "interval", "10:15:00"
            batch.append({
                "meter": f"{i:012d}", "item": item, "plan": plan,
                "data_time": f"2026-10-{day:02d}T{at}+08:00",
                "read_at": f"2026-10-{day:02d}T{at[:3]}{int(at[3:5]) + 1:02d}:07+08:00",
                "values": values,
            })  # fmt: skip
        body = {"schema": "meterlink.readings/1", "concentrator": c, "batch_id": f"{c}:{start}",
                "sent_at": f"2026-10-{day:02d}T00:30:00+08:00", "readings": batch}  # fmt: skip
        out.append((f"meterlink/v1/{c}/readings", json.dumps(body).encode()))
    return out


def lines_of(messages: list[tuple[str, bytes]]) -> list[str]:
    out = Converted()
    for _, body in messages:
        convert("readings", json.loads(body), out)
    return out.lines


@dataclass
class Target:
    """A database the consumer writes to: how to write raw lines, how to count a day's points."""

    name: str
    api: str  # the consumer's [influx] api
    url: str
    write_path: str
    pid: int
    count: Callable[[int], int]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def influxd_target(db: InfluxDB1) -> Target:
    for q in ('DROP DATABASE "consumer"', 'CREATE DATABASE "consumer"'):
        urllib.request.urlopen(
            f"{db.url}/query", data=urllib.parse.urlencode({"q": q}).encode(), timeout=30
        ).close()

    def count(day: int) -> int:
        # 00:00 (daily) or 10:15 (interval) +08:00 of the data day
        when = (f"time = '2026-10-{day - 1:02d}T16:00:00Z'" if KIND == "daily"
                else f"time = '2026-10-{day:02d}T02:15:00Z'")  # fmt: skip
        q = f'SELECT count("{FIELD[KIND]}") FROM "reading" WHERE {when}'
        body = _get(f"{db.url}/query?" + urllib.parse.urlencode({"q": q, "db": "consumer"}))
        series = body["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0

    assert db.proc is not None
    return Target("InfluxDB 1.6 (influxd), v1 /write", "v1", db.url,
                  "/write?db=consumer&precision=s", db.proc.pid, count)  # fmt: skip


def victoria_target(vm: VictoriaMetrics) -> Target:
    def count(day: int) -> int:
        urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=30).close()
        at = int(dt.datetime(2026, 10, day, tzinfo=CST).timestamp()) + 60
        at += 0 if KIND == "daily" else 10 * 3600 + 15 * 60
        q = urllib.parse.urlencode({"query": f"count(reading_{FIELD[KIND]})", "time": at})
        result = _get(f"{vm.url}/api/v1/query?{q}")["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    assert vm.proc is not None
    return Target("VictoriaMetrics, v2 /api/v2/write (influxdb-client)", "v2", vm.url,
                  "/api/v2/write?org=meterlink&bucket=meterlink&precision=s", vm.proc.pid, count)  # fmt: skip


@dataclass
class Run:
    kind: str  # raw | publish | 1 | 2
    readings: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    round: int = 0

    @property
    def rate(self) -> float:
        return self.readings / self.seconds


def bodies(lines: list[str]) -> list[bytes]:
    """10,000-line requests (the consumers' max_lines_per_write)."""
    return ["\n".join(lines[i : i + 10_000]).encode() for i in range(0, len(lines), 10_000)]


async def _post_all(target: Target, bodies: list[bytes]) -> float:
    """POST every body, as many at once as a consumer has batches on their way (IN_FLIGHT):
    the baseline gets the database's concurrency a consumer gets."""
    queue = list(reversed(bodies))
    async with aiohttp.ClientSession() as http:

        async def post() -> None:
            while queue:
                async with http.post(target.url + target.write_path, data=queue.pop()) as resp:
                    assert resp.status == 204, await resp.text()

        start = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(IN_FLIGHT)))
        return time.perf_counter() - start


def run_raw(target: Target, messages: list[tuple[str, bytes]], readings: int) -> Run:
    requests = bodies(lines_of(messages))
    db0, own0 = cpu_seconds(target.pid), own_cpu_seconds()
    seconds = asyncio.run(_post_all(target, requests))
    cpu = {"database": cpu_seconds(target.pid) - db0, "writer (this process)":
           own_cpu_seconds() - own0}  # fmt: skip
    return Run("raw", readings, seconds, cpu)


class Publisher:
    """Publishes every message (QoS 1, 100 in flight) from a paho network thread; `acked` is
    the moment the broker acknowledged the last one. (Stopping paho's thread can take up to its
    1 s select timeout: that happens after, outside every clock.)"""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.acked = 0.0

    def publish(self, messages: list[tuple[str, bytes]]) -> float:
        infos = [self.client.publish(t, body, qos=1) for t, body in messages]
        for info in infos:
            info.wait_for_publish(120)
        self.acked = time.perf_counter()
        return self.acked

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Broker:
    """A fresh Mosquitto for one run."""

    work: Path
    mosquitto: Mosquitto | None = None

    def __enter__(self) -> Mosquitto:
        self.mosquitto = Mosquitto(self.work / f"broker-{time.monotonic_ns()}", free_port())
        self.mosquitto.start()
        return self.mosquitto

    def __exit__(self, *_: object) -> None:
        assert self.mosquitto is not None
        self.mosquitto.stop()


def run_publish(work: Path, messages: list[tuple[str, bytes]], readings: int) -> Run:
    with Broker(work) as broker:
        assert broker.proc is not None
        publisher = Publisher(broker.port)
        b0, own0 = cpu_seconds(broker.proc.pid), own_cpu_seconds()
        start = time.perf_counter()
        seconds = publisher.publish(messages) - start
        publisher.close()
        cpu = {"mosquitto": cpu_seconds(broker.proc.pid) - b0,
               "publisher (this process)": own_cpu_seconds() - own0}  # fmt: skip
    return Run("publish", readings, seconds, cpu)


def write_config(path: Path, broker: int, target: Target, name: str, group: str, work: Path,
                 metrics: int, batch: int) -> None:  # fmt: skip
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
batch_readings = {batch}
flush_interval_s = 0.2
[coverage]
interval_s = 3600
[store]
url = "sqlite://{work}/{group}.ledger.sqlite3"
[metrics]
listen = "127.0.0.1:{metrics}"
""")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _metric(ports: list[int], name: str) -> float:
    return sum(scrape(p).get(name, 0.0) for p in ports)


def _wait_subscribed(broker: Mosquitto, ports: list[int]) -> None:
    """Every consumer serves its metrics and says it is connected (it subscribes first)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if _metric(ports, "meterlink_central_mqtt_connected") == len(ports):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("consumers did not connect")
        time.sleep(0.1)


def run_consumers(n: int, target: Target, work: Path, messages: list[tuple[str, bytes]],
                  readings: int, day: int, batch: int) -> Run:  # fmt: skip
    group = f"bench-{target.api}-{n}-{day}"
    ports = [free_port() for _ in range(n)]
    with Broker(work) as broker:
        procs = []
        for k in range(n):
            conf = work / f"{group}-{k}.toml"
            write_config(conf, broker.port, target, f"{group}-{k}", group, work, ports[k], batch)
            profile = ["-m", "cProfile", "-o", f"{PROFILE}/{group}-{k}.prof"] if PROFILE else []
            procs.append(subprocess.Popen(
                [sys.executable, *profile, "-m", "meterlink", "central", "run", "--config",
                 str(conf), "--log-level", "WARNING"], cwd=REPO))  # fmt: skip
        try:
            _wait_subscribed(broker, ports)
            assert broker.proc is not None
            pids = {f"consumer {k + 1}": p.pid for k, p in enumerate(procs)}
            pids |= {"mosquitto": broker.proc.pid, "database": target.pid}
            publisher = Publisher(broker.port)
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            own0 = own_cpu_seconds()
            start = time.time()
            sending = threading.Thread(target=publisher.publish, args=(messages,))
            sending.start()
            while _metric(ports, "meterlink_central_acked_readings_total") < readings:
                time.sleep(POLL_S)
            cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
            # the end: the consumers' last acknowledgement, by their own clock (the machine's)
            ended = max(scrape(p)["meterlink_central_last_ack_timestamp_seconds"] for p in ports)
            seconds = ended - start
            # this process: the publisher and the /metrics polling
            cpu["publisher (this process)"] = own_cpu_seconds() - own0
            sending.join()
            publisher.close()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
    return Run(str(n), readings, seconds, cpu)


LABELS = {"raw": "raw line protocol", "publish": "publish only (no subscriber)",
          "1": "1 consumer", "2": "2 consumers, one group"}  # fmt: skip


def orders(rounds: int) -> Iterator[list[str]]:
    kinds = ["raw", "publish", "1", "2"]
    for r in range(rounds):
        yield kinds if r % 2 == 0 else kinds[::-1]


def bench(target: Target, work: Path, args: argparse.Namespace) -> None:
    print(f"\n{target.name}")
    day = iter(range(1, 32))
    warm = next(day)
    asyncio.run(
        _post_all(target, bodies(lines_of(payloads(args.readings, args.per_message, warm))))
    )
    runs: list[Run] = []
    for r, order in enumerate(orders(args.rounds), 1):
        for kind in order:
            d = next(day)
            messages = payloads(args.readings, args.per_message, d)
            if kind == "raw":
                run = run_raw(target, messages, args.readings)
            elif kind == "publish":
                run = run_publish(work, messages, args.readings)
            else:
                run = run_consumers(int(kind), target, work, messages, args.readings, d,
                                    args.batch)  # fmt: skip
            if kind != "publish":
                stored = target.count(d)
                assert stored == args.readings, f"{kind}: {stored} points of {args.readings}"
            run.round = r
            runs.append(run)
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in run.cpu.items())
            print(f"  round {r} {LABELS[kind] + ':':<31}{run.rate:10,.0f} readings/s"
                  f" ({run.seconds:.2f} s); CPU s: {cpu}")  # fmt: skip
    summary(runs, args.readings)


def summary(runs: list[Run], readings: int) -> None:
    def median(kind: str, key: Callable[[Run], float]) -> float:
        return statistics.median(key(r) for r in runs if r.kind == kind)

    raw = median("raw", lambda r: r.rate)
    print("  medians:")
    for kind in ("raw", "publish", "1", "2"):
        rate = median(kind, lambda r: r.rate)
        print(f"    {LABELS[kind] + ':':<31}{rate:10,.0f} readings/s, {rate / raw:.2f} of raw")
    for kind in ("1", "2"):
        per = median(kind, lambda r: sum(v for k, v in r.cpu.items()
                                         if k.startswith("consumer")) / readings)  # fmt: skip
        db = median(kind, lambda r: r.cpu["database"] / r.seconds)
        print(f"    {LABELS[kind]}: consumer CPU {per * 1e6:.1f} µs per reading ("
              f"{1 / per:,.0f} readings/s per core); the database used {db:.2f} cores")  # fmt: skip
    # the same round's raw run was measured minutes apart at most: its ratio is the one least
    # moved by what else the machine was doing
    paired: dict[str, float] = {}
    for kind in ("1", "2"):
        ratios = [r.rate / next(q.rate for q in runs if q.kind == "raw" and q.round == r.round)
                  for r in runs if r.kind == kind]  # fmt: skip
        paired[kind] = statistics.median(ratios)
        print(
            f"    {LABELS[kind]} / raw of the same round: "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + f" (median {paired[kind]:.2f})"
        )
    one, two = paired["1"], paired["2"]
    per1 = median("1", lambda r: r.cpu["consumer 1"] / readings) * 1e6
    print(
        f"  goal: 1 consumer >= 0.90 of raw: {one:.2f} {'met' if one >= 0.9 else 'NOT met'};"
        f" 2 consumers >= raw: {two:.2f} {'met' if two >= 1 else 'NOT met'};"
        f" consumer CPU <= 10 µs/reading: {per1:.1f} {'met' if per1 <= 10 else 'NOT met'}"
    )


def breakdown(messages: list[tuple[str, bytes]], readings: int) -> None:
    """Where one consumer's CPU goes per reading, stage by stage, in this process, through the
    consumer's own functions."""
    import central.ledger
    from central.config import CoverageConfig
    from central.points import convert_readings
    from protocols.payloads import decode_readings

    decoded: list[Any] = []
    out = Converted()
    bodies: list[bytes] = []
    stages: list[tuple[str, Callable[[], object]]] = [
        ("decode + check", lambda: decoded.extend(decode_readings(b) for _, b in messages)),
        ("lines + facts", lambda: [convert_readings(p, out) for p in decoded]),
        ("HTTP bodies", lambda: bodies.extend(
            "\n".join(out.lines[i : i + 10_000]).encode() for i in range(0, len(out.lines), 10_000)
        )),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ledger = central.ledger.Ledger(Path(tmp) / "ledger.sqlite3")
        required = CoverageConfig().required_values
        stages.append(("coverage ledger", lambda: ledger.apply(out, required)))
        print("consumer CPU per reading, by stage (in-process):")
        total = 0.0
        for name, stage in stages:
            started = time.process_time()
            stage()
            spent = time.process_time() - started
            total += spent
            print(f"  {name:<18}{spent / readings * 1e6:6.1f} µs")
        print(f"  {'together':<18}{total / readings * 1e6:6.1f} µs")
        ledger.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--per-message", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2, choices=range(1, 8))
    ap.add_argument("--batch", type=int, default=10_000, help="the consumers' batch_readings")
    ap.add_argument("--database", choices=["influxd", "victoria", "both"], default="both")
    ap.add_argument("--kind", choices=["daily", "interval"], default="daily",
                    help="daily freezes (total + 4 tariffs, a coverage fact each) or 15-minute"
                    " voltage reads (3 values, no coverage fact)")  # fmt: skip
    args = ap.parse_args()
    global KIND
    KIND = args.kind
    sample = payloads(args.readings, args.per_message, 1)
    what = "daily freeze, total + 4 tariffs" if KIND == "daily" else "15-minute, 3 voltages"
    print(f"{args.readings} readings ({what}) in {len(sample)}"
          f" messages of {args.per_message}; {os.cpu_count()} cores shared by the broker, the"
          f" database, the consumers and the publisher; load average before:"
          f" {os.getloadavg()[0]:.2f}")  # fmt: skip
    breakdown(sample, args.readings)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.database in ("influxd", "both"):
            db = InfluxDB1(work / "influxd", free_port(), free_port())
            db.start()
            try:
                bench(influxd_target(db), work, args)
            finally:
                db.stop()
        if args.database in ("victoria", "both"):
            vm = VictoriaMetrics(work / "victoria", free_port())
            vm.start()
            try:
                bench(victoria_target(vm), work, args)
            finally:
                vm.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
