"""`meterlink central topup serve | reconcile`: the order service and its daily export.

meterlink central topup serve --config central.toml
meterlink central topup reconcile --day 2026-12-03 [--format csv|json] --config central.toml
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
import zoneinfo
from pathlib import Path

from central.config import CentralConfig

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="topup_action", required=True, metavar="ACTION")
    serve = sub.add_parser(
        "serve",
        help="serve the billing API and execute the orders ([topup], docs/topup.md)",
    )
    serve.add_argument("--config", type=Path, required=True, help="central TOML config")
    serve.add_argument("--log-level", default="INFO")
    rec = sub.add_parser(
        "reconcile", help="the daily reconciliation: totals and every order of a day"
    )
    rec.add_argument("--config", type=Path, required=True, help="central TOML config")
    rec.add_argument("--day", required=True, help="acceptance day YYYY-MM-DD (meters' zone)")
    rec.add_argument("--format", choices=["csv", "json"], default="csv")


def _book(cfg: CentralConfig, name: str):  # type: ignore[no-untyped-def]
    from central.store import open_store
    from central.topup.orders import OrderBook

    store = open_store(
        cfg.store.url,
        password=cfg.store.password,
        connect_timeout_s=cfg.store.connect_timeout_s,
        name=name,
    )
    book = OrderBook(store, zoneinfo.ZoneInfo(cfg.topup.timezone))
    try:
        book.migrate()
    except BaseException:
        store.close()
        raise
    return book


def run(cfg: CentralConfig, args: argparse.Namespace) -> int:
    if args.topup_action == "reconcile":
        from central.topup.reconcile import reconciliation, render_csv

        try:
            dt.date.fromisoformat(args.day)
        except ValueError:
            print(f"meterlink central topup: --day {args.day!r} is not YYYY-MM-DD", file=sys.stderr)
            return 2
        book = _book(cfg, "meterlink central topup reconcile")
        try:
            doc = reconciliation(book, args.day)
        finally:
            book.store.close()
        if args.format == "json":
            sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        else:
            sys.stdout.write(render_csv(doc))
        return 0
    from central.store import open_store
    from central.topup.service import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    store = open_store(
        cfg.store.url,
        password=cfg.store.password,
        connect_timeout_s=cfg.store.connect_timeout_s,
        name="meterlink central topup",
    )
    try:
        asyncio.run(serve(cfg, store))
    except ValueError as exc:
        print(f"meterlink central topup: {exc}", file=sys.stderr)
        return 78
    finally:
        store.close()
    return 0
