"""How close the agent gets to the physical limit of an RS-485 line, and what it costs.

1. Timed line: a simulated bus on a pty, bytes paced at 11 bits per byte, every reply delayed by
   the meter's own 20-500 ms turnaround. The agent's daily plan reads N meters (freeze time +
   energy block each). The physical minimum is computed in the same run from what actually
   crossed the line: for every exchange, request wire time + the meter's drawn reply delay +
   reply wire time; for a dead meter, request wire time + the 500 ms reply window (one timeout).
   Printed: measured / minimum, at 2400 and 9600 baud, with 0 % and 10 % dead meters.
2. Footprint: `meterlink agent run` as a subprocess with a 2048-meter archive against
   `meterlink sim serve --tcp` (no line timing) and a private Mosquitto; after one full daily
   round: the agent's resident memory beside a bare interpreter that imports the same modules
   (baseline), and CPU time per reading.

    .venv/bin/python bench/bus.py [--meters 40] [--quick]
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.config import DailyPlan  # noqa: E402
from agent.plans.daily import DailyPlanner  # noqa: E402
from simulators import Fleet, parse_fleet  # noqa: E402
from tests.agent.simenv import sim_agent  # noqa: E402
from tests.fixtures.services import free_port, running_mosquitto, wait_port  # noqa: E402

BITS = 11  # what the simulator paces: 8E1
WINDOW = 0.5

FLEET = """
seed = 3
start = "2026-03-11T00:10:00"
frozen = true
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
  baud = {baud}
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 1 }}
    prepaid = 0.0
    dead = {dead}
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    wakeup = [0, 0]
"""


class LineLog:
    """Wraps the simulated bus to log what crossed the line (request size, delay, reply size)."""

    def __init__(self, fleet: Fleet) -> None:
        self.exchanges: list[tuple[int, float, int]] = []
        bus = fleet.bus("b1")
        original = bus.exchange

        def exchange(frame: Any) -> Any:
            out = list(original(frame))
            request = len(frame.to_bytes(wakeup=4))
            for tx in out:
                self.exchanges.append((request, tx.delay, len(tx.data)))
            return out

        bus.exchange = exchange  # type: ignore[method-assign]


async def timed_round(
    baud: int, count: int, dead: float, tmp: Path
) -> tuple[float, float, int, int]:
    text = FLEET.format(baud=baud, count=count, dead=dead)
    opts = f"baud={baud}&reply_timeout_ms=500&byte_gap_ms=500"
    async with sim_agent(text, tmp, transport="pty", url_options=opts, timing=True) as sa:
        log = LineLog(sa.fleet)
        dead_meters = sum(1 for m in sa.fleet.meters() if m.faults.dead)
        planner = DailyPlanner(DailyPlan(backfill_days=0, prepaid_balance=False), sa.ctx)
        started = time.perf_counter()
        report = await planner.run_round(dt.date(2026, 3, 11), final=False)
        elapsed = time.perf_counter() - started
    per_byte = BITS / baud
    minimum = sum(req * per_byte + delay + rep * per_byte for req, delay, rep in log.exchanges)
    minimum += dead_meters * (20 * per_byte + WINDOW)
    return elapsed, minimum, int(report["read"]), dead_meters


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _reads_so_far(port: int) -> int:
    """Successful daily reads so far, from the agent's own Prometheus endpoint."""
    import urllib.error
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except (OSError, urllib.error.URLError):
        return 0
    for line in text.splitlines():
        if line.startswith('meterlink_reads_total{plan="daily",result="ok"}'):
            return int(float(line.split()[-1]))
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def footprint(meters: int) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fleet_file = tmp / "fleet.toml"
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        fleet_file.write_text(
            FLEET.replace("frozen = true", "")
            .replace('start = "2026-03-11T00:10:00"', f'start = "{now.isoformat()}"')
            .format(baud=9600, count=meters, dead=0.0)
        )
        archive = tmp / "archive.json"
        archive.write_text(json.dumps(parse_fleet(fleet_file.read_text()).archive()))
        port, metrics_port = free_port(), free_port()
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meterlink",
                "sim",
                "serve",
                "--fleet",
                str(fleet_file),
                "--tcp",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        baseline = subprocess.Popen(
            [sys.executable, "-c", "import agent.daemon, time; time.sleep(60)"],
            cwd=REPO,
        )
        try:
            wait_port(port, timeout=120, proc=sim)
            with running_mosquitto(tmp / "broker") as broker:
                config = tmp / "agent.toml"
                config.write_text(f"""
[agent]
concentrator = "bench"
timezone = "UTC"
state_dir = "{tmp / "state"}"
log_format = "text"
log_level = "warning"
[mqtt]
host = "{broker.host}"
port = {broker.port}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[buses]]
name = "b1"
url = "tcp://127.0.0.1:{port}?parity=N&baud=115200&frame_gap_ms=0&reply_timeout_ms=300"
[archive]
file = "{archive}"
[plans.daily]
start = "00:00"
deadline = "23:59"
backfill_days = 0
[plans.clock]
enabled = false
""")
                agent = subprocess.Popen(
                    [sys.executable, "-m", "meterlink", "agent", "run", "--config", str(config)]
                )
                read = 0
                first: tuple[int, float] | None = None  # (readings, agent CPU) once reading began
                started = time.monotonic()
                while time.monotonic() - started < 600:
                    time.sleep(0.1)
                    read = _reads_so_far(metrics_port)
                    if read and first is None:
                        first = (read, _cpu_s(agent.pid))
                    if read >= meters:
                        break
                rss, base = _rss_kb(agent.pid), _rss_kb(baseline.pid)
                cpu = _cpu_s(agent.pid)
                assert first is not None, "the agent read nothing"
                agent.terminate()
                agent.wait(60)
        finally:
            sim.terminate()
            baseline.terminate()
            sim.wait(30)
            baseline.wait(30)
    print(f"footprint, {meters}-meter archive, one daily round over TCP ({read} meters read):")
    print(f"  agent RSS                 {rss / 1024:8.1f} MiB")
    print(f"  baseline RSS              {base / 1024:8.1f} MiB  (python importing agent.daemon)")
    print(f"  ratio                     {rss / base:8.2f}")
    steady = (cpu - first[1]) / max(read - first[0], 1)
    print(
        f"  CPU per reading           {steady * 1000:8.2f} ms  (steady state, {read - first[0]} readings)"
    )
    print(
        f"  CPU incl. start-up        {cpu / max(read, 1) * 1000:8.2f} ms  ({cpu:.1f} s for {read} readings)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--footprint-meters", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="fewer meters (a smoke run)")
    args = parser.parse_args()
    count = 10 if args.quick else args.meters
    print(f"timed RS-485 line on a pty, {count} meters, 2 exchanges per meter, 11 bits/byte:")
    print(
        f"  {'baud':>5} {'dead':>5} {'read':>5} {'measured s':>11} {'minimum s':>10} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        for baud in (2400, 9600):
            for dead in (0.0, 0.1):
                tmp = Path(tmpdir) / f"{baud}-{dead}"
                tmp.mkdir()
                elapsed, minimum, read, n_dead = await timed_round(baud, count, dead, tmp)
                print(
                    f"  {baud:>5} {n_dead:>5} {read:>5} {elapsed:>11.2f} {minimum:>10.2f} {elapsed / minimum:>6.3f}"
                )
    footprint(256 if args.quick else args.footprint_meters)


if __name__ == "__main__":
    asyncio.run(main())
