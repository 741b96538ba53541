"""`meterlink central tariff plans | check | workorders | correct`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from central.config import CentralConfig
from central.store import Store, open_store
from central.tariff.store import TariffStore

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tariff_action", required=True, metavar="ACTION")
    plans = sub.add_parser("plans", help="show the plans in force, or replace them")
    plans.add_argument("--config", type=Path, required=True, help="central TOML config")
    plans.add_argument(
        "--replace", type=Path, metavar="FILE", help="a plan file (TOML) to put in force"
    )
    plans.add_argument("--by", default="cli", help="who replaces them (kept with the plans)")
    plans.add_argument("--history", action="store_true", help="list every plan file put in force")


def _open(cfg: CentralConfig, name: str) -> Store:
    return open_store(
        cfg.store.url,
        password=cfg.store.password,
        connect_timeout_s=cfg.store.connect_timeout_s,
        name=name,
    )


def run(cfg: CentralConfig, args: argparse.Namespace) -> int:
    store = _open(cfg, f"meterlink central tariff {args.tariff_action}")
    try:
        tariffs = TariffStore(store)
        if args.tariff_action == "plans":
            return _plans(tariffs, args)
    finally:
        store.close()
    return 2


def _plans(tariffs: TariffStore, args: argparse.Namespace) -> int:
    from common.config import ConfigError

    if args.replace is not None:
        try:
            text = args.replace.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{args.replace}: cannot read: {exc.strerror}") from None
        try:
            replaced = tariffs.replace_plans(text, args.by)
        except ConfigError as exc:
            raise ConfigError(f"{args.replace}: {exc}") from None
        print(
            f"{len(replaced.plans)} plans in force ({', '.join(sorted(replaced.plans))}),"
            f" digest {replaced.digest}"
        )
        return 0
    if args.history:
        for seq, digest, at, by in tariffs.plan_history():
            print(f"{seq:>4} {at} {digest} by {by}")
        return 0
    book = tariffs.plans()
    if book is None:
        print("meterlink central tariff: no plans yet (--replace FILE)", file=sys.stderr)
        return 1
    sys.stdout.write(book.text)
    return 0
