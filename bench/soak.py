"""A week of field life in a box: the soak of tests/fixtures/soak.py for 7 run days.

Every process of meterlink (simulator, two concentrator agents, two central instances, the
top-up order service and the simulated encryption machine) with a real Mosquitto and InfluxDB,
on one accelerated clock (common/clock.py); billing's top-ups and relay orders through the HTTP
API at seeded times (some submitted twice); faults at seeded random times (broker restarts and a
long outage, InfluxDB down for hours, an agent SIGKILLed, its disk budget outgrown, a
concentrator clock jumping, a meter replaced, a lossy link, a central instance SIGKILLed, the
order service SIGKILLed); then the invariants as a table (the orders': terminal by their
deadlines, no meter credited twice, confirmed top-ups = the simulator's credits, audit trails).
Faster than 1440x no top-up gets through (the meter's 5-minute ESAM session, docs/reliability.md). Ratios against the same run: readings
delivered per reading committed, and run time per real time (the clock's speed actually kept).

    .venv/bin/python bench/soak.py [--days 7] [--speed 1440] [--seed 13] [--work DIR]

Exit status 0 when every invariant held.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.soak import soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=7.0, help="run days (default 7)")
    parser.add_argument(
        "--speed", type=float, default=1440.0, help="run seconds per real second (default 1440)"
    )
    parser.add_argument("--seed", type=int, default=13, help="the faults' times (default 13)")
    parser.add_argument("--work", type=Path, help="keep logs and databases here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterlink-soak-") as tmp:
        work = args.work or Path(tmp)
        print(
            f"soak: {args.days:g} run days at {args.speed:g}x, seed {args.seed}, in {work}",
            flush=True,
        )
        result = asyncio.run(soak(work, days=args.days, speed=args.speed, seed=args.seed))
    print(result.table())
    run_s = result.days * 86400
    print(
        f"\nrun time / real time: {run_s:.0f} s / {result.real_seconds:.0f} s ="
        f" {run_s / result.real_seconds:.0f}x (asked {args.speed:g}x; the real time includes"
        " start-up and the final drain)"
    )
    print(f"readings checked: {result.readings_checked}")
    print("ALL INVARIANTS HELD" if result.ok else "SOME INVARIANTS FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
