"""The seeded stack the panel's browser tests run against, all real processes:

- Mosquitto and InfluxDB 1.x of the tests' own (meterlink.services);
- `meterlink central run` (the real consumer) fed ten days of history for concentrator
  `c-hist` as an agent publishes it (archive, daily freezes, round reports with reasons), so
  the ledger, InfluxDB's readings and the coverage job's points are what production makes;
- `meterlink sim serve` (tests/panel/data/live.toml, one dead meter, answer record on) and
  `meterlink agent run` for concentrator `c-live`, whose daily round reads today's freezes and
  answers the panel's signed "read now";
- two users made with `meterlink central panel users add`, then `meterlink central panel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterlink.services import die_with_parent, free_port, running_influxdb, running_mosquitto
from tests.central.helpers import archive, batch, publish, reading, round_report

REPO = Path(__file__).resolve().parents[2]
FLEET = Path(__file__).parent / "data" / "live.toml"
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
KEY = "6d657465726c696e6b2d70616e656c2d746573742d6b6579"
USERS = {"vera": ("viewer", "viewer-password-1"), "otto": ("operator", "operator-password-1")}
HIST = "c-hist"
LIVE = "c-live"
#: c-hist's meters: (meter, district, manufacturer)
HIST_METERS = [
    (f"{i:012d}", "east" if i <= 6 else "west", "acme" if i % 2 else "zeta") for i in range(1, 13)
]


def day(offset: int) -> str:
    return (dt.datetime.now(TZ).date() + dt.timedelta(days=offset)).isoformat()


def history_messages() -> list[tuple[str, str, dict[str, Any]]]:
    """Ten days of c-hist: meters 1 and 2 dead throughout (no_reply), 3 failing the last four
    days (route_failure), 4 unexplained today, 5 read after the deadline today, 6 incomplete
    today, 7 failing yesterday (checksum); the rest read every day."""
    m = {i: f"{i:012d}" for i in range(1, 13)}
    first = day(-9)
    out: list[tuple[str, str, dict[str, Any]]] = [
        (HIST, "archive", archive(HIST, 1, HIST_METERS, f"{first}T08:00:00+08:00")),
    ]
    for offset in range(-9, 1):
        d = day(offset)
        failed = [(m[1], "no_reply"), (m[2], "no_reply")]
        if offset >= -3:
            failed.append((m[3], "route_failure"))
        if offset == -1:
            failed.append((m[7], "checksum"))
        skip = {f for f, _ in failed} | ({m[4]} if offset == 0 else set())
        readings = []
        for meter, _, _ in HIST_METERS:
            if meter in skip:
                continue
            kwh = 1000.0 + 7.5 * (offset + 10) + int(meter)
            if offset == 0 and meter == m[5]:
                readings.append(reading(meter, d, read_at="23:30", kwh=kwh))
            elif offset == 0 and meter == m[6]:
                readings.append(reading(meter, d, kwh=kwh, names=["energy_import_total_kwh"]))
            else:
                readings.append(reading(meter, d, kwh=kwh))
        out.append((HIST, "readings", batch(HIST, readings, f"hist-{d}")))
        out.append((HIST, "rounds", round_report(HIST, d, failed, expected=len(HIST_METERS))))
    return out


def late_reading() -> list[tuple[str, str, dict[str, Any]]]:
    """Meter 4's freeze of today arrives (the live-update test)."""
    d = day(0)
    return [(HIST, "readings", batch(HIST, [reading("000000000004", d, kwh=1100.0)], "late"))]


@dataclass
class Stack:
    workdir: Path
    config: Path
    url: str
    record: Path
    store: Path
    influx: str
    mqtt_port: int
    env: dict[str, str]

    def report(self, the_day: str, *args: str) -> dict[str, Any]:
        """`meterlink central report --format json` for the day."""
        out = subprocess.run(
            [sys.executable, "-m", "meterlink", "central", "report", "--config",
             str(self.config), "--day", the_day, "--format", "json", *args],
            capture_output=True, text=True, check=True, env=self.env, cwd=REPO,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def publish(self, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        asyncio.run(publish(self.mqtt_port, messages))

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(x) for x in self.record.read_text().splitlines() if x.strip()]


class _Procs:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "meterlink", *args], stdout=stdout or log, stderr=log,
            env=self.env, cwd=REPO, preexec_fn=die_with_parent(),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait(predicate: Any, within: float, what: str, procs: _Procs) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        for proc in procs.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode} while waiting for"
                                   f" {what}; logs in {procs.workdir}")  # fmt: skip
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; logs in {procs.workdir}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    env = {**os.environ, "METERLINK_MQTT_COMMAND_KEY": KEY}
    env.pop("METERLINK_TRACEBACK", None)
    with running_mosquitto(workdir) as broker, running_influxdb(workdir) as influx:
        store = workdir / "store.sqlite3"
        record = workdir / "answers.jsonl"
        panel_port = free_port()
        config = workdir / "central.toml"
        config.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "panel-test"\n'
            f'group = "panel-test"\n[influx]\napi = "v1"\nurl = "{influx.url}"\n'
            f'database = "meterlink"\n[consumer]\nspool = "{workdir}/spool.sqlite3"\n'
            f"flush_interval_s = 0.1\n[coverage]\ninterval_s = 0.5\n"
            f'[store]\nurl = "sqlite://{store}"\n'
            f'[panel]\nlisten = "127.0.0.1:{panel_port}"\nrefresh_s = 1.0\n'
            f"command_timeout_s = 20.0\n"
        )
        procs = _Procs(workdir, env)
        try:
            procs.start("central", "central", "run", "--config", str(config))
            central_log = workdir / "central.log"
            # subscribed (it logs "connected to" after SUBACK): history published now is taken
            _wait(lambda: "connected to" in central_log.read_text(), 60, "the consumer", procs)
            _wait(store.exists, 30, "the consumer's store", procs)
            stack = Stack(workdir, config, f"http://127.0.0.1:{panel_port}", record, store,
                          influx.url, broker.port, env)  # fmt: skip
            stack.publish(history_messages())
            _start_live(procs, workdir, broker.port, record)
            _wait(lambda: _settled(stack), 180, "c-live's round and c-hist's history", procs)
            for name, (role, password) in USERS.items():
                subprocess.run(
                    [sys.executable, "-m", "meterlink", "central", "panel", "users", "add", name,
                     "--role", role, "--password-stdin", "--config", str(config)],
                    input=password.encode(), check=True, env=env, cwd=REPO,
                    capture_output=True,
                )  # fmt: skip
            panel = procs.start("panel", "central", "panel", "--config", str(config),
                                stdout=subprocess.PIPE)  # fmt: skip
            assert panel.stdout is not None
            line = panel.stdout.readline().decode()
            assert line.startswith("panel http://"), (workdir / "panel.log").read_text()
            yield stack
        finally:
            procs.stop()


def _start_live(procs: _Procs, workdir: Path, mqtt_port: int, record: Path) -> None:
    archive_json = subprocess.run(
        [sys.executable, "-m", "meterlink", "sim", "fleet", "--archive", "--fleet", str(FLEET)],
        capture_output=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    (workdir / "archive.json").write_bytes(archive_json)
    sim = procs.start("sim", "sim", "serve", "--fleet", str(FLEET), "--tcp", "127.0.0.1:0",
                      "--record", str(record), stdout=subprocess.PIPE)  # fmt: skip
    assert sim.stdout is not None
    where = ""
    for raw in sim.stdout:
        line = raw.decode().strip()
        if line == "ready":
            break
        if line.startswith("bus "):  # "bus bus-1 (dlt645) tcp 127.0.0.1:34879 meters=6"
            where = line.split()[4]
    assert where, (workdir / "sim.log").read_text()
    opts = "parity=N&reply_timeout_ms=300&byte_gap_ms=100&frame_gap_ms=0&baud=9600"
    agent = workdir / "agent.toml"
    agent.write_text(
        f'stop_timeout_s = 10\n[agent]\nconcentrator = "{LIVE}"\n'
        f'state_dir = "{workdir}/agent-state"\nlog_format = "text"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nreconnect_min_s = 0.2\n'
        f'reconnect_max_s = 2.0\n[metrics]\nlisten = ""\n'
        f'[[buses]]\nname = "bus-1"\nurl = "tcp://{where}?{opts}"\n'
        f'[archive]\nfile = "{workdir}/archive.json"\n'
        f'[plans.daily]\nstart = "00:00"\ndeadline = "23:59"\nretry_spacing_minutes = 0.1\n'
        f"backfill_days = 0\n[plans.clock]\nenabled = false\n"
    )
    procs.start("agent", "agent", "run", "--config", str(agent))


def _settled(stack: Stack) -> bool:
    """c-live's six meters read or explained today, c-hist's ten days in the ledger, and the
    coverage job's point for three days ago in InfluxDB."""
    if not stack.store.exists():
        return False
    try:
        today = stack.report(day(0))
        before = stack.report(day(-9))
    except subprocess.CalledProcessError:
        return False
    live = next((s for s in today["scopes"] if s["key"] == LIVE), None)
    hist = next((s for s in before["scopes"] if s["key"] == HIST), None)
    if live is None or hist is None or live["expected"] != 6 or hist["expected"] != 12:
        return False
    if live["failed_by_reason"].get("unexplained") or live["read"] < 5:
        return False
    return _influx_has_coverage(stack, day(-3))


def _influx_has_coverage(stack: Stack, the_day: str) -> bool:
    import urllib.parse
    import urllib.request

    q = ("SELECT rate FROM coverage WHERE scope = 'fleet' AND time = "  # noqa: S608
         f"'{the_day}T00:00:00Z'")  # fmt: skip
    url = f"{stack.influx}/query?" + urllib.parse.urlencode({"db": "meterlink", "q": q})
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (the test's own server)
        body = json.loads(resp.read())
    return bool(body["results"][0].get("series"))
