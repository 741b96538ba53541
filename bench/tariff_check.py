"""The central tariff check's cost per meter per day, for a fleet, against a naive baseline
measured in the same run.

    .venv/bin/python bench/tariff_check.py [--meters 100000] [--bad 0.05] [--sample 20]

The fleet: `--meters` meters on the example plans (deploy/tariff-plans.example.toml), each with
a tariff set-up read today in its payload form (as the store keeps it) and its daily freezes of
the last three days; a share `--bad` is misprogrammed in one of a few dozen ways (a period
boundary, a missing holiday, a table of another zone, a clock off by minutes, a switch not
programmed, wrong prices), the rest as planned. Measured, in this process:

1. **check**: what `meterlink central tariff check` does per meter once the rows are read —
   parse the set-up (`TariffSetup.from_payload`), the six steps with the 366-day equivalence
   (1440-minute vectors per daily table, one answer per distinct set-up and plan per day:
   `EquivalenceCache`) — µs per meter per day over the whole fleet;
2. **vectorised, no cache**: the same on `--sample` × 40 meters with a fresh cache each: the
   cost of a meter whose set-up is unlike any other;
3. **baseline**: the naive way on `--sample` meters — the meter's tariff per minute with
   `protocols.tariff.meter_tariff` and the plan's per minute, compared minute by minute over the
   same 366 days.

Prints µs per meter per day for each, and the ratios baseline ÷ 1 and baseline ÷ 2. Then

4. **through the store**: `check_day` (what `meterlink central report --tariff` and the
   consumer's tariff job run) over a SQLite store holding `--store` of these meters (archive in
   concentrators of 2000, one set-up each, three freezes), the store's reads and the outcome
   writes included.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import random
import sys
import tempfile
import time
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from central.points import Freeze  # noqa: E402
from central.tariff.check import (  # noqa: E402
    CheckSettings,
    EquivalenceCache,
    MeterFacts,
    check_meter,
    tou_digest,
)
from central.tariff.expect import expected_set, holidays, weekend_word  # noqa: E402
from central.tariff.plans import Plan, load_plans  # noqa: E402
from central.tariff.store import FreezeFact  # noqa: E402
from protocols.tariff import Period, TariffSetup, TouSet, meter_tariff  # noqa: E402

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 6, 15)
DAY_END = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(), TZ)
READ_AT = dt.datetime.combine(DAY, dt.time(10), TZ)


def good(plan: Plan) -> TariffSetup:
    v = plan.in_force(DAY)
    assert v is not None
    tou = expected_set(v)
    setup = TariffSetup(
        read_at=READ_AT.astimezone(dt.UTC), meter_time=READ_AT.replace(tzinfo=None),
        zone_count=len(tou.zones), table_count=len(tou.tables),
        period_count=max(len(p) for p in tou.tables.values()), tariff_count=v.tariffs,
        holiday_count=len(v.holidays), sets=(tou, TouSet()),
        weekend_workdays=weekend_word(v), weekend_table=v.weekend_table or 1,
        holidays=holidays(v, dt.date(2000, 1, 1)), event_counters={"03300500": 2},
    )  # fmt: skip
    if v.prices is not None:
        nxt = plan.next_change(DAY, "price")
        backup = nxt.prices if nxt is not None and nxt.prices is not None else v.prices
        setup = dataclasses.replace(
            setup, prices_current=tuple(Decimal(str(p)) for p in v.prices),
            prices_backup=tuple(Decimal(str(p)) for p in backup),
            switch_prices=dt.datetime.combine(nxt.effective, dt.time()) if nxt else None,
        )  # fmt: skip
    return setup


def misprogrammed(setup: TariffSetup, rng: random.Random) -> TariffSetup:
    kind = rng.randrange(5)
    first = setup.sets[0]
    if kind == 0:  # a period boundary moved by 15..120 minutes
        table = rng.choice(sorted(first.tables))
        periods = list(first.tables[table])
        i = rng.randrange(1, len(periods))
        p = periods[i]
        minute = min(p.hour * 60 + p.minute + 15 * rng.randint(1, 8), 1439)
        periods[i] = Period(minute // 60, minute % 60, p.tariff)
        return dataclasses.replace(
            setup,
            sets=(TouSet(first.zones, {**first.tables, table: tuple(periods)}), setup.sets[1]),
        )
    if kind == 1 and setup.holidays:  # a holiday missing
        return dataclasses.replace(setup, holidays=setup.holidays[1:],
                                   holiday_count=len(setup.holidays) - 1)  # fmt: skip
    if kind == 2:  # the clock off by minutes
        drift = dt.timedelta(seconds=rng.randint(301, 900))
        return dataclasses.replace(setup, meter_time=setup.meter_time + drift)  # type: ignore[operator]
    if kind == 3 and setup.prices_current is not None:  # a wrong price
        prices = list(setup.prices_current)
        prices[rng.randrange(len(prices))] += Decimal("0.01")
        return dataclasses.replace(setup, prices_current=tuple(prices))
    # a tariff number off by one in one period
    table = rng.choice(sorted(first.tables))
    periods = list(first.tables[table])
    i = rng.randrange(len(periods))
    periods[i] = dataclasses.replace(periods[i], tariff=periods[i].tariff % 4 + 1)
    return dataclasses.replace(
        setup, sets=(TouSet(first.zones, {**first.tables, table: tuple(periods)}), setup.sets[1])
    )


def fleet(n: int, bad: float) -> list[tuple[Plan, dict[str, Any], dict[str, FreezeFact]]]:
    book = load_plans(REPO / "deploy" / "tariff-plans.example.toml")
    plans = [book.plans["resident-tou"], book.plans["prepaid-local"]]
    rng = random.Random(11)
    base = [good(p) for p in plans]
    variants: list[list[dict[str, Any]]] = [[], []]
    for i in (0, 1):
        variants[i] = [misprogrammed(base[i], rng).to_payload() for _ in range(25)]
    payloads = [b.to_payload() for b in base]
    out = []
    days = [(DAY - dt.timedelta(days=k)).isoformat() for k in (2, 1, 0)]
    for m in range(n):
        which = 0 if m % 10 else 1
        payload = rng.choice(variants[which]) if rng.random() < bad else payloads[which]
        # weekend days consumed: resident-tou runs T3/T4, prepaid-local T2/T4
        shares = (0.0, 0.0, 4.0, 6.0) if which == 0 else (0.0, 4.0, 0.0, 6.0)
        freezes = {
            d: FreezeFact("c", str(m), d, 10.0 * k, tuple(x * k for x in shares), None)
            for k, d in enumerate(days)
        }
        out.append((plans[which], payload, freezes))
    return out


def check_all(meters: list[tuple[Plan, dict[str, Any], dict[str, FreezeFact]]],
              fresh_cache: bool) -> tuple[float, dict[str, int]]:  # fmt: skip
    settings = CheckSettings()
    cache = EquivalenceCache()
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for i, (plan, payload, freezes) in enumerate(meters):
        setup = TariffSetup.from_payload(payload)
        facts = MeterFacts("c", str(i), plan, [setup], freezes, (), tou_digest(payload))
        out = check_meter(facts, DAY, DAY_END, TZ, settings,
                          EquivalenceCache() if fresh_cache else cache)  # fmt: skip
        counts[out.outcome] = counts.get(out.outcome, 0) + 1
    return time.perf_counter() - start, counts


def naive(meters: list[tuple[Plan, dict[str, Any], dict[str, FreezeFact]]], horizon: int) -> float:
    """Minute by minute: the meter's selection and the plan's, 366 × 1440 times per meter."""
    start = time.perf_counter()
    for plan, payload, _ in meters:
        setup = TariffSetup.from_payload(payload)
        bad = 0
        for d in range(horizon):
            day = DAY + dt.timedelta(days=d)
            midnight = dt.datetime.combine(day, dt.time())
            for minute in range(1440):
                found = meter_tariff(setup, midnight + dt.timedelta(minutes=minute))
                if found != plan.tariff(day, minute):
                    bad += 1
    return time.perf_counter() - start


def through_store(meters: list[tuple[Plan, dict[str, Any], dict[str, FreezeFact]]]) -> float:
    """`check_day` over a SQLite store holding these meters (archive, set-ups, freezes): what
    `meterlink central report --tariff` does, store reads and outcome writes included."""
    from central.ledger import Ledger
    from central.points import ArchiveFact, Converted, TariffRead, archive_digest
    from central.store import open_store
    from central.tariff.day import check_day
    from central.tariff.store import TariffStore

    book = load_plans(REPO / "deploy" / "tariff-plans.example.toml")
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store.sqlite3", name="bench")
        try:
            ledger, tariffs = Ledger(store), TariffStore(store)
            tariffs.replace_plans(book.text, "bench")
            at = int(READ_AT.timestamp()) - 86400 * 30
            facts = Converted()
            per = 2000  # meters per concentrator
            for first in range(0, len(meters), per):
                chunk = meters[first : first + per]
                c = f"c-{first // per:03d}"
                rows = tuple((f"{c}-{i}", "d", "f", "b") for i in range(len(chunk)))
                extras = tuple(("m", plan.name) for plan, _, _ in chunk)
                facts.archives.append(ArchiveFact(c, 1, at, "2026-05-01", rows,
                                                  archive_digest(rows, extras), extras))  # fmt: skip
                for (_, payload, freezes), (meter, *_) in zip(chunk, rows, strict=True):
                    facts.tariffs.append(TariffRead(c, meter, int(READ_AT.timestamp()), payload))
                    facts.freezes += [
                        Freeze(c, meter, f.day, f.total, f.registers, f.clock_offset_s)
                        for f in freezes.values()
                    ]
            ledger.apply(facts, [])
            tariffs.apply_converted(facts)
            start = time.perf_counter()
            check_day(ledger, tariffs, book, DAY.isoformat(), CheckSettings(), "Asia/Shanghai")
            return time.perf_counter() - start
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--bad", type=float, default=0.05, help="misprogrammed share")
    parser.add_argument("--sample", type=int, default=5, help="meters for the baseline")
    parser.add_argument(
        "--store", type=int, default=20_000, help="meters for the store-backed run (0: none)"
    )
    args = parser.parse_args()
    meters = fleet(args.meters, args.bad)
    print(f"fleet: {args.meters} meters, {args.bad:.0%} misprogrammed, day {DAY}, horizon 366 days")
    seconds, counts = check_all(meters, fresh_cache=False)
    per = seconds / args.meters * 1e6
    print(f"1. check (vectorised, equivalence per distinct set-up): {per:.1f} µs/meter/day"
          f" ({seconds:.2f} s for the fleet)")  # fmt: skip
    print("   outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    start = time.perf_counter()
    for _, payload, _ in meters:
        TariffSetup.from_payload(payload)
    parse = (time.perf_counter() - start) / args.meters * 1e6
    print(f"   of which parsing the set-up (TariffSetup.from_payload): {parse:.1f} µs/meter")
    rng = random.Random(5)
    sample = rng.sample(meters, min(len(meters), args.sample * 40))
    cold_s, _ = check_all(sample, fresh_cache=True)
    cold = cold_s / len(sample) * 1e6
    print(f"2. vectorised, no cache ({len(sample)} meters): {cold:.1f} µs/meter/day")
    base_sample = rng.sample(meters, min(len(meters), args.sample))
    base_s = naive(base_sample, 366)
    base = base_s / len(base_sample) * 1e6
    print(f"3. baseline, minute by minute ({len(base_sample)} meters): {base:.0f} µs/meter/day")
    print(f"ratio baseline / check: {base / per:.0f}x; baseline / vectorised without cache:"
          f" {base / cold:.0f}x")  # fmt: skip
    if args.store:
        stored = meters[: args.store]
        seconds = through_store(stored)
        print(f"4. check_day through a SQLite store ({len(stored)} meters, reads and outcome"
              f" writes included): {seconds / len(stored) * 1e6:.1f} µs/meter/day")  # fmt: skip


if __name__ == "__main__":
    main()
