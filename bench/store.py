"""The coverage ledger on each store engine: PostgreSQL against SQLite, measured in one run.

    .venv/bin/python bench/store.py [--concentrators 20] [--meters 1000] [--days 3]

SQLite is the baseline (a file in WAL mode, synchronous=FULL: what one host runs); PostgreSQL is
a private cluster started here with fsync and synchronous commit on, as in production, on
loopback (a real deployment adds the network's round trips). For each engine:

1. ingest: the daily freezes of the whole fleet for each day, applied as the consumer does,
   in batches of 5000 readings (its default `batch_readings`), each batch one transaction;
   readings per second, and this process's CPU per reading (the driver's share of a consumer's);
2. coverage: `compute_day` for the last day (what the coverage job and `meterlink central
   report` do per day), seconds per day for the fleet.

Prints each figure with its ratio to SQLite's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from central.config import CoverageConfig  # noqa: E402
from central.coverage import compute_day  # noqa: E402
from central.ledger import Ledger  # noqa: E402
from central.points import Converted, convert  # noqa: E402
from central.store import Store, open_store  # noqa: E402
from meterlink.services import running_postgresql  # noqa: E402

CST = dt.timezone(dt.timedelta(hours=8))
TARIFFS = ("energy_import_total_kwh", *(f"energy_import_t{i}_kwh" for i in range(1, 5)))
BATCH = 5000


def fleet_batches(concentrators: int, meters: int, days: list[str]) -> list[Converted]:
    """The facts of every freeze, cut into consumer-sized batches (archives first)."""
    batches: list[Converted] = []
    archives = Converted()
    for c in range(concentrators):
        convert("archive", {
            "schema": "meterlink.archive/1", "concentrator": f"c-{c:04d}", "version": 1,
            "updated_at": "2026-11-01T10:00:00+08:00",
            "meters": [{"meter": f"{c:04d}{m:08d}", "protocol": "dlt645-2007", "bus": "rs485-1",
                        "district": f"d-{m % 7}", "manufacturer": f"f-{m % 3}",
                        "address": f"{c:04d}{m:08d}"} for m in range(meters)],
        }, archives)  # fmt: skip
    batches.append(archives)
    current, n = Converted(), 0
    for day in days:
        stamp = f"{day}T00:00:00+08:00"
        for c in range(concentrators):
            readings = [
                {"meter": f"{c:04d}{m:08d}", "item": "daily_freeze", "plan": "daily",
                 "data_time": stamp, "read_at": f"{day}T00:20:00+08:00",
                 "values": {t: {"value": 100.0, "unit": "kWh"} for t in TARIFFS}}
                for m in range(meters)
                if (m + c) % 50  # 2 % unread
            ]  # fmt: skip
            for k in range(0, len(readings), 500):
                convert("readings", {
                    "schema": "meterlink.readings/1", "concentrator": f"c-{c:04d}",
                    "batch_id": f"{day}-{c}-{k}", "sent_at": stamp,
                    "readings": readings[k : k + 500],
                }, current)  # fmt: skip
                n += len(readings[k : k + 500])
                if current.readings >= BATCH:
                    batches.append(current)
                    current = Converted()
    if current.readings:
        batches.append(current)
    return batches


def measure(store: Store, batches: list[Converted], day: str) -> tuple[float, float, float, int]:
    """(readings/s, CPU µs per reading, seconds for the day's coverage, meters expected)."""
    ledger = Ledger(store)
    required = CoverageConfig().required_values
    ledger.apply(batches[0], required)  # the archives
    readings = sum(len(b.reads) for b in batches[1:])
    wall, cpu = time.perf_counter(), time.process_time()
    for b in batches[1:]:
        ledger.apply(b, required)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    started = time.perf_counter()
    expected = compute_day(ledger, day, CoverageConfig()).fleet().expected
    return readings / wall, cpu / readings * 1e6, time.perf_counter() - started, expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concentrators", type=int, default=20)
    ap.add_argument("--meters", type=int, default=1000, help="per concentrator")
    ap.add_argument("--days", type=int, default=3)
    args = ap.parse_args()
    days = [(dt.date(2026, 11, 20) + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    batches = fleet_batches(args.concentrators, args.meters, days)
    readings = sum(len(b.reads) for b in batches[1:])
    print(
        f"{args.concentrators} concentrators x {args.meters} meters x {args.days} days:"
        f" {readings:,} daily freezes in {len(batches) - 1} batches of <= {BATCH}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        engines: list[tuple[str, Callable[[], Store]]] = [
            ("SQLite (WAL, synchronous=FULL)", lambda: open_store(Path(tmp) / "bench.sqlite3")),
        ]
        with running_postgresql(Path(tmp) / "pg", durable=True) as pg:
            engines.append(("PostgreSQL (loopback, fsync on)", lambda: open_store(pg.url)))
            base: tuple[float, float, float, int] | None = None
            for name, opened in engines:
                store = opened()
                try:
                    got = measure(store, batches, days[-1])
                finally:
                    store.close()
                base = base or got
                rate, cpu_us, cov_s, expected = got
                print(f"{name}:")
                print(
                    f"  ingest    {rate:10,.0f} readings/s ({rate / base[0]:.2f} of SQLite);"
                    f" this process's CPU {cpu_us:.1f} µs/reading ({cpu_us / base[1]:.2f})"
                )
                print(
                    f"  coverage  {cov_s:10.2f} s for one day of {expected:,} meters"
                    f" ({cov_s / base[2]:.2f} of SQLite)"
                )


if __name__ == "__main__":
    main()
