"""`meterlink agent run|check --config FILE`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import ConfigError, describe_secrets


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_p = sub.add_parser("run", help="run the daemon (systemd: meterlink-agent.service)")
    run_p.add_argument("--config", type=Path, required=True, help="agent TOML file")
    check = sub.add_parser(
        "check",
        help="validate the configuration (and its TLS files), say where each secret comes from,"
        " and print the bus-time budget",
    )
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--print-config",
        action="store_true",
        help="also print the effective configuration, defaults included (secrets masked)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "run":
        from agent.daemon import run_agent

        return run_agent(args.config)
    return _check(args.config, print_config=args.print_config)


def _check(path: Path, *, print_config: bool = False) -> int:
    from agent.archive import ArchiveStore
    from agent.budget import daily_budget
    from agent.config import load_config
    from common.config import dump
    from common.mqtt import check_tls

    try:
        cfg = load_config(path)
        archive = ArchiveStore.preview(cfg)
    except ConfigError as exc:
        print(f"meterlink agent: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"{path}: OK — concentrator {cfg.agent.concentrator}, {len(cfg.buses)} buses, "
        f"{len(archive)} archived meters"
    )
    fits, tls = check_tls(cfg.mqtt, "mqtt")
    print(f"  {tls}")
    for line in describe_secrets(cfg):
        print(f"  {line}")
    if print_config:
        print(dump(cfg))
    for budget in daily_budget(cfg, archive):
        print(f"  {budget.describe()}")
        fits &= budget.ok
    return 0 if fits else 1
