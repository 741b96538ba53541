"""How long a simulator fleet takes to build, and what its energy walk costs against the generic
per-day path, measured in the same run.

A meter installed years before the fleet's start walks every day since its installation when the
fleet is built (cumulative energy at midnight, per tariff register). `Accumulator._at_midnight`
does that walk with the per-day arithmetic inlined; the baseline does the same walk through the
generic `Accumulator._day_energy(day)` one day at a time, on fresh copies of the same registers.
Both must give the same values bit for bit (checked); the ratio is baseline / walk, CPU time.

A register that books nothing (the export register of a pure consumer, ratio 0) is not walked at
all. What that saves is measured in the same run: the build's CPU time beside the build plus the
walk those registers would take to the day their meter shows.

    .venv/bin/python bench/fleet.py [--fleet simulators/fleets/field.toml] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simulators.energy import Accumulator  # noqa: E402
from simulators.fleet import load_fleet  # noqa: E402


def fresh(acc: Accumulator) -> Accumulator:
    """The same register with nothing computed yet."""
    return replace(acc, offset=list(acc.offset), _days={}, _hour_shares={})


def per_day(acc: Accumulator, day: dt.date) -> tuple[float, ...]:
    """The baseline: cumulative energy at 00:00 of `day`, one `_day_energy` call per day."""
    total = [0.0] * acc.tou.tariffs
    d = acc.origin
    while d < day:
        for i, e in enumerate(acc._day_energy(d)):
            total[i] += e
        d += dt.timedelta(days=1)
    return tuple(total)


def cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        fn()
        best = min(best, time.process_time() - began)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", type=Path, default=REPO / "simulators/fleets/field.toml")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (CPU time)")
    args = ap.parse_args()

    build = cpu(lambda: load_fleet(args.fleet), args.repeat)
    fleet = load_fleet(args.fleet)
    meters = fleet.meters()
    # the registers and the day each one was walked to while the fleet was built
    work = [(acc, max(acc._days)) for m in meters for acc in (m.importer, m.exporter) if acc._days]
    days = sum((day - acc.origin).days for acc, day in work)

    def walk() -> list[tuple[float, ...]]:
        return [fresh(acc)._at_midnight(day) for acc, day in work]

    def baseline() -> list[tuple[float, ...]]:
        return [per_day(fresh(acc), day) for acc, day in work]

    # the registers the build no longer walks, and the day their meter shows
    idle = [(acc, m.now().date()) for m in meters for acc in (m.importer, m.exporter)]
    idle = [(acc, day) for acc, day in idle if acc.ratio == 0.0 and day > acc.origin]

    def walk_idle() -> list[tuple[float, ...]]:
        return [fresh(acc)._at_midnight(day) for acc, day in idle]

    if walk() != baseline():
        print("FAIL: the walk and the per-day baseline disagree", file=sys.stderr)
        return 1
    t_walk = cpu(walk, args.repeat)
    t_base = cpu(baseline, args.repeat)
    print(f"fleet {args.fleet.name}: {len(meters)} meters, built in {build:.2f} s CPU")
    print(f"energy walk: {len(work)} registers, {days} register-days, same values bit for bit")
    print(f"  per-day baseline (_day_energy): {t_base:.3f} s CPU")
    print(f"  inlined walk (_at_midnight):    {t_walk:.3f} s CPU")
    print(f"  ratio baseline / walk: {t_base / t_walk:.2f}x")
    if idle:
        t_idle = cpu(walk_idle, args.repeat)
        print(f"registers that book nothing (ratio 0): {len(idle)}, not walked by the build")
        print(f"  build + walking them (baseline): {build + t_idle:.2f} s CPU")
        print(f"  ratio baseline / build: {(build + t_idle) / build:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
