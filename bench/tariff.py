"""The tariff plan's bus time on an RS-485 line, against the physical minimum, as a share of a day.

A simulated bus on a pty at 2400 baud, bytes paced at 11 bits per byte, every reply delayed by
the meter's own 20-500 ms turnaround (as bench/bus.py). The agent's tariff plan reads the
tariff set-up of N meters (remote and local-prepaid meters, one old-firmware meter that denies
some items); the daily plan reads the same meters with and without the watched programming-event
counters. The physical minimum is computed in the same run from what crossed the line: for every
exchange, request wire time + the meter's drawn reply delay + reply wire time.

Printed: measured / minimum for the tariff reads and for the watched counters; the bus time per
meter; and what that costs a bus of `--bus-meters` meters per day (full reads spread over
`every_days`, counters every day) as a share of 24 h, beside the planning figure the agent's
budget uses (agent.budget.tariff_read_s).

    .venv/bin/python bench/tariff.py [--meters 4] [--bus-meters 256]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.budget import tariff_read_s  # noqa: E402
from agent.config import DailyPlan, MeterConfig, TariffPlan  # noqa: E402
from agent.plans.daily import DailyPlanner  # noqa: E402
from agent.plans.tariff import TariffPlanner, TariffWatch  # noqa: E402
from agent.transports import BusUrl  # noqa: E402
from bench.bus import BITS, LineLog  # noqa: E402
from tests.agent.simenv import sim_agent  # noqa: E402

DAY = dt.date(2026, 3, 11)
FLEET = """
seed = 3
start = "2026-03-11T12:00:00"
frozen = true
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
  baud = {baud}
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 1, DTSD1352 = 1 }}
    prepaid = 0.5
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    wakeup = [0, 0]
    [[district.bus.meters]]
    count = 1
    first_address = "000000000901"
    models = {{ "DDS-2009" = 1 }}
    offset_s = [0, 0]
    drift_ppm = [0, 0]
    wakeup = [0, 0]
"""


def _minimum(log: LineLog, baud: int, start: int) -> float:
    per_byte = BITS / baud
    return sum(req * per_byte + delay + rep * per_byte for req, delay, rep in log.exchanges[start:])


async def run(baud: int, count: int, tmp: Path) -> dict[str, float]:
    text = FLEET.format(baud=baud, count=count)
    opts = f"baud={baud}&reply_timeout_ms=500&byte_gap_ms=500"
    async with sim_agent(text, tmp, transport="pty", url_options=opts, timing=True) as sa:
        log = LineLog(sa.fleet)
        meters = len(sa.fleet.meters())
        local = sum(1 for m in sa.fleet.meters() if m.wallet is not None)
        cfg = TariffPlan(enabled=True)

        start = len(log.exchanges)
        t0 = time.perf_counter()
        published = await TariffPlanner(cfg, sa.ctx).run_once(DAY)
        tariff_s = time.perf_counter() - t0
        tariff_min = _minimum(log, baud, start)
        tariff_exchanges = len(log.exchanges) - start

        daily_cfg = DailyPlan(backfill_days=0, prepaid_balance=False)
        start = len(log.exchanges)
        t0 = time.perf_counter()
        await DailyPlanner(daily_cfg, sa.ctx).run_round(DAY, final=False)
        plain_s = time.perf_counter() - t0
        plain_min = _minimum(log, baud, start)
        next_day = DAY + dt.timedelta(days=1)
        sa.fleet.world.set(dt.datetime.combine(next_day, dt.time(12)))
        start = len(log.exchanges)
        t0 = time.perf_counter()
        planner = DailyPlanner(daily_cfg, sa.ctx, watch=TariffWatch(cfg, sa.ctx))
        await planner.run_round(next_day, final=False)
        watched_s = time.perf_counter() - t0
        watched_min = _minimum(log, baud, start)
    return {
        "meters": meters,
        "local": local,
        "published": published,
        "tariff_s": tariff_s,
        "tariff_min": tariff_min,
        "tariff_exchanges": tariff_exchanges,
        "watch_s": watched_s - plain_s,
        "watch_min": watched_min - plain_min,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=4, help="meters read (plus one old one)")
    parser.add_argument("--bus-meters", type=int, default=256, help="meters of the bus priced")
    parser.add_argument("--baud", type=int, default=2400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        r = await run(args.baud, args.meters, Path(tmpdir))
    n = r["meters"]
    print(
        f"timed RS-485 line on a pty at {args.baud} baud, 11 bits/byte: tariff set-ups of {n:.0f}"
        f" meters ({r['local']:.0f} local-prepaid, 1 old firmware), {r['published']:.0f} published"
    )
    print(f"  {'':28} {'measured s':>11} {'minimum s':>10} {'ratio':>6}")
    print(
        f"  {'tariff reads':28} {r['tariff_s']:>11.2f} {r['tariff_min']:>10.2f}"
        f" {r['tariff_s'] / r['tariff_min']:>6.3f}   ({r['tariff_exchanges']:.0f} exchanges)"
    )
    print(
        f"  {'watched counters (daily)':28} {r['watch_s']:>11.2f} {r['watch_min']:>10.2f}"
        f" {r['watch_s'] / r['watch_min']:>6.3f}"
    )
    every = TariffPlan().every_days
    per_meter_read = r["tariff_s"] / n
    per_meter_watch = r["watch_s"] / n
    day_s = args.bus_meters * (per_meter_read / every + per_meter_watch)
    url = BusUrl.parse(f"serial:///dev/null?baud={args.baud}")
    remote = MeterConfig(address="000000000001", bus="b1")
    local = MeterConfig(address="000000000002", bus="b1", prepaid=True)
    plan_remote, plan_local = tariff_read_s(url, remote)[1], tariff_read_s(url, local)[1]
    print(
        f"  per meter: a full read {per_meter_read:.2f} s (budget's planning figure: remote"
        f" {plan_remote:.2f} s, local {plan_local:.2f} s), watched counters"
        f" {per_meter_watch:.2f} s a day"
    )
    print(
        f"  a bus of {args.bus_meters} meters, full read every {every} days + counters daily:"
        f" {day_s:.0f} s a day = {100 * day_s / 86400:.2f} % of 24 h"
    )


if __name__ == "__main__":
    asyncio.run(main())
