"""`meterlink central run | report | spool` — the central side's command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import logging
import sys
from pathlib import Path

from central.config import CentralConfig, load
from common.config import EX_CONFIG, ConfigError

__all__ = ["configure", "run"]

#: sysexits.h: a service this one needs is not available (the store)
EX_UNAVAILABLE = 69


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_p = sub.add_parser("run", help="consume MQTT into InfluxDB and keep coverage current")
    run_p.add_argument("--config", type=Path, required=True, help="central TOML config")
    run_p.add_argument("--log-level", default="INFO")

    rep = sub.add_parser("report", help="print the daily full-coverage success rate")
    rep.add_argument("--config", type=Path, required=True)
    rep.add_argument("--day", help="data day YYYY-MM-DD (default: the latest with data)")
    rep.add_argument("--concentrator", help="only this concentrator's meters")
    rep.add_argument("--format", choices=["table", "csv", "json"], default="table")
    rep.add_argument(
        "--min-days", type=int, help="consecutive-failure list threshold (default: config)"
    )

    sp = sub.add_parser("spool", help="show what waits for InfluxDB and the dead letters")
    sp.add_argument("--config", type=Path, required=True)
    sp.add_argument("--show", type=int, default=10, help="dead letters to print (default 10)")
    sp.add_argument(
        "--replay-dead",
        action="store_true",
        help="move the lines InfluxDB refused back to the spool for another attempt (after"
        " fixing the cause); a running consumer writes them within a second, else the next",
    )


def run(args: argparse.Namespace) -> int:
    from central.store import StoreError, StoreTooNew, StoreUnavailable

    try:
        cfg = load(args.config)
        if args.action == "run":
            return _run(cfg, args.log_level)
        if args.action == "report":
            return _report(cfg, args)
        return _spool(cfg, args.show, replay_dead=args.replay_dead)
    except ConfigError as exc:
        print(f"meterlink central: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoreError as exc:
        # unreachable: systemd tries again later; migrated by a newer meterlink, or refused:
        # a technician must act, so no restart loop (78, as a bad config)
        print(f"meterlink central: {exc}", file=sys.stderr)
        if isinstance(exc, StoreUnavailable):
            return EX_UNAVAILABLE
        return EX_CONFIG if isinstance(exc, StoreTooNew) else 1


def _run(cfg: CentralConfig, level: str) -> int:
    from central.consumer import Consumer, install_signal_handlers

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Every reading leaves a JSON tree of short-lived containers that reference counting frees;
    # the cycle collector scanning them every 700 allocations cost ~1.5 µs per reading.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await Consumer(cfg).run(stop)

    asyncio.run(main())
    return 0


def _report(cfg: CentralConfig, args: argparse.Namespace) -> int:
    from central.coverage import compute_day
    from central.ledger import Ledger
    from central.report import render
    from central.store import open_store, parse_url

    where = parse_url(cfg.store.url)
    if where.path is not None and not where.path.exists():
        print(f"meterlink central: no ledger at {where.path} yet", file=sys.stderr)
        return 1
    store = open_store(
        cfg.store.url,
        password=cfg.store.password,
        connect_timeout_s=cfg.store.connect_timeout_s,
        name="meterlink central report",
    )
    try:
        ledger = Ledger(store)
        day = args.day
        if day is None:
            known = ledger.known_days()
            if not known:
                print("meterlink central: the ledger has no data day yet", file=sys.stderr)
                return 1
            day = known[-1]
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            print(f"meterlink central: --day {day!r} is not YYYY-MM-DD", file=sys.stderr)
            return 2
        cov = compute_day(ledger, day, cfg.coverage, concentrator=args.concentrator)
    finally:
        store.close()
    min_days = args.min_days if args.min_days is not None else cfg.coverage.streak_min_days
    sys.stdout.write(render(cov, args.format, min_days=min_days))
    return 0


def _spool(cfg: CentralConfig, show: int, *, replay_dead: bool = False) -> int:
    from central.spool import Spool

    spool = Spool(cfg.consumer.spool)
    try:
        if replay_dead:
            letters, lines = spool.revive_dead("influx")
            print(f"moved {letters} dead letters ({lines} lines) back to the spool")
        batches, lines = spool.pending()
        print(f"waiting for InfluxDB: {batches} batches, {lines} lines")
        counts = spool.dead_counts()
        print("dead letters: " + (", ".join(f"{k} {n}" for k, n in counts.items()) or "none"))
        for d in spool.dead_letters(show):
            when = dt.datetime.fromtimestamp(d.at, dt.UTC).isoformat(timespec="seconds")
            print(f"  #{d.id} {when} {d.kind} {d.source} {d.status or ''} {d.error[:200]}")
    finally:
        spool.close()
    return 0
