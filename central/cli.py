"""`meterlink central run | check | report | spool | panel | topup | command`: the central side's
command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import logging
import sys
from pathlib import Path

from central.commands import KEY_ENV
from central.config import CentralConfig, load
from common.config import EX_CONFIG, ConfigError

__all__ = ["configure", "run"]

#: sysexits.h: a service this one needs is not available (the store)
EX_UNAVAILABLE = 69


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_p = sub.add_parser("run", help="consume MQTT into InfluxDB and keep coverage current")
    run_p.add_argument("--config", type=Path, required=True, help="central TOML config")
    run_p.add_argument(
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="overrides [log] level (until a SIGHUP reload reads the file's again)",
    )

    chk = sub.add_parser(
        "check",
        help="validate the configuration (and its TLS files) and say where each secret comes from",
    )
    chk.add_argument("--config", type=Path, required=True, help="central TOML config")
    chk.add_argument(
        "--print-config",
        action="store_true",
        help="also print the effective configuration, defaults included (secrets masked)",
    )

    rep = sub.add_parser("report", help="print the daily full-coverage success rate")
    rep.add_argument("--config", type=Path, required=True)
    rep.add_argument("--day", help="data day YYYY-MM-DD (default: the latest with data)")
    rep.add_argument("--concentrator", help="only this concentrator's meters")
    rep.add_argument("--format", choices=["table", "csv", "json"], default="table")
    rep.add_argument(
        "--min-days", type=int, help="consecutive-failure list threshold (default: config)"
    )
    rep.add_argument(
        "--topups",
        action="store_true",
        help="the remote top-up success rate (远程充值成功率) of --day instead (docs/topup.md)",
    )
    rep.add_argument(
        "--tariff",
        action="store_true",
        help="the tariff execution rate 电价执行正确率 instead (checks the day; docs/tariff.md)",
    )

    from central.tariff import cli as tariff_cli

    tariff = sub.add_parser(
        "tariff",
        help="tariff execution check: plans, check a day, work orders (docs/tariff.md)",
        description="The tariff execution check (电价执行正确): replace or show the plans, run"
        " the check for a data day, list the work orders for technicians, correct a meter.",
    )
    tariff_cli.configure(tariff)

    sp = sub.add_parser("spool", help="show what waits for InfluxDB and the dead letters")
    sp.add_argument("--config", type=Path, required=True)
    sp.add_argument("--show", type=int, default=10, help="dead letters to print (default 10)")
    sp.add_argument(
        "--replay-dead",
        action="store_true",
        help="move the lines InfluxDB refused back to the spool for another attempt (after"
        " fixing the cause); a running consumer writes them within a second, else the next",
    )

    from central.panel import cli as panel_cli

    panel = sub.add_parser(
        "panel",
        help="serve the operators' web panel; manage its users (docs/panel.md)",
        description="Serve the operators' web panel on [panel] listen (coverage, agent status,"
        " read now), or manage its users: meterlink central panel users add|passwd|role|remove"
        "|list.",
    )
    panel_cli.configure(panel)

    from central.topup import cli as topup_cli

    topup = sub.add_parser(
        "topup",
        help="the remote top-up order service: serve the billing API, reconcile a day",
        description="Remote top-up (远程充值) and relay orders (停复电) for billing:"
        " `serve` runs the HTTP API and executes the orders ([topup] section); `reconcile`"
        " prints a day's totals and orders (docs/topup.md).",
    )
    topup_cli.configure(topup)

    cmd = sub.add_parser(
        "command",
        help="send a signed command to an agent and print its reply",
        description="Send a signed command (MQTT v5 request/response) to one concentrator's"
        " agent and print its reply (JSON on stdout, one summary line on stderr). The key comes"
        f" from ${KEY_ENV}, the same variable the agent reads. Exit: 0 ok, 1 the command ran"
        " and failed (e.g. the meter did not answer), 3 refused by the agent (signature, clock,"
        " addressee, arguments), 4 no reply in time, 69 broker unreachable.",
    )
    cmd.add_argument("--config", type=Path, required=True, help="central TOML config ([mqtt])")
    cmd.add_argument("--concentrator", required=True, help="the agent's concentrator id")
    cmd.add_argument("--meter", help="the meter (its id in the archive)")
    cmd.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the reply (default 60)"
    )
    what = cmd.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c_read = what.add_parser("read", help="read items of --meter now")
    c_read.add_argument("items", nargs="+", help="DIs (hex) or measurement names")
    c_sync = what.add_parser(
        "time_sync", help="broadcast a time sync on --bus or --meter's bus (and read it back)"
    )
    c_sync.add_argument("--bus", help="bus name (default: --meter's bus)")
    c_sync.add_argument("--time", help="ISO 8601 time to set (default: the agent's now)")
    c_relay = what.add_parser("relay", help="relay control (1CH) of --meter")
    c_relay.add_argument(
        "relay_action",
        metavar="ACTION",
        choices=["trip", "close_allowed", "direct_close", "alarm", "alarm_release", "keep_power",
                 "keep_power_release"],
    )  # fmt: skip
    c_relay.add_argument("--valid-until", help="ISO 8601 (default: the agent's now + 10 min)")
    c_raw = what.add_parser("raw", help="send a raw frame on a bus and decode what comes back")
    c_raw.add_argument("--bus", help="bus name (default: --meter's bus)")
    c_raw.add_argument("hex", help="the frame, hex (spaces allowed)")
    c_arch = what.add_parser("archive_update", help="change the agent's archive")
    c_arch.add_argument("mode", choices=["upsert", "replace", "remove"])
    c_arch.add_argument(
        "file", type=Path, help="JSON list of meters (remove: meter ids or meter objects)"
    )
    what.add_parser(
        "tariff", help="read --meter's tariff set-up now (also published as a tariff payload)"
    )


def run(args: argparse.Namespace) -> int:
    from central.store import StoreError, StoreTooNew, StoreUnavailable

    try:
        if args.config is None:  # only `panel` leaves --config optional on its parser
            print("meterlink central panel: --config is required", file=sys.stderr)
            return 2
        cfg = load(args.config)
        if args.action == "panel":
            from central.panel.cli import run as panel_run

            return panel_run(cfg, args)
        if args.action == "command":
            return _command(cfg, args)
        if args.action == "topup":
            from central.topup.cli import run as topup_run

            return topup_run(cfg, args)
        if args.action == "report" and args.topups and args.tariff:
            print("meterlink central report: --topups or --tariff, not both", file=sys.stderr)
            return 2
        if args.action == "report" and args.topups:
            return _report_topups(cfg, args)
        if args.action == "run":
            return _run(cfg, args.config, args.log_level)
        if args.action == "check":
            return _check(cfg, args.config, print_config=args.print_config)
        if args.action == "report":
            return _report(cfg, args)
        if args.action == "tariff":
            from central.tariff.cli import run as tariff_run

            return tariff_run(cfg, args)
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


def _check(cfg: CentralConfig, path: Path, *, print_config: bool) -> int:
    from common.config import describe_secrets, dump
    from common.mqtt import check_tls

    ok, tls = check_tls(cfg.mqtt, "mqtt")
    print(f"{path}: OK — group {cfg.mqtt.group}, instance {cfg.mqtt.client_id}")
    print(f"  {tls}")
    for line in describe_secrets(cfg):
        print(f"  {line}")
    if print_config:
        print(dump(cfg))
    return 0 if ok else 1


def _run(cfg: CentralConfig, path: Path, level: str | None) -> int:
    from central.consumer import Consumer, configure_logging, install_signal_handlers

    configure_logging(level or cfg.log.level, cfg.log.format)
    # Every reading leaves a JSON tree of short-lived containers that reference counting frees;
    # the cycle collector scanning them every 700 allocations cost ~1.5 µs per reading.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)

    async def main() -> None:
        stop = asyncio.Event()
        consumer = Consumer(cfg, path)
        install_signal_handlers(stop, consumer)
        await consumer.run(stop)
        logging.getLogger("central.consumer").info("stopped")

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
        if args.tariff:
            from central.tariff.cli import report as tariff_report
            from central.tariff.store import TariffStore

            return tariff_report(cfg, store, TariffStore(store), args.day, args.format)
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


def _report_topups(cfg: CentralConfig, args: argparse.Namespace) -> int:
    import zoneinfo

    from central.store import open_store
    from central.topup.kpi import compute, render
    from central.topup.orders import OrderBook

    store = open_store(
        cfg.store.url,
        password=cfg.store.password,
        connect_timeout_s=cfg.store.connect_timeout_s,
        name="meterlink central report",
    )
    try:
        book = OrderBook(store, zoneinfo.ZoneInfo(cfg.topup.timezone))
        book.migrate()
        day = args.day
        if day is None:
            days = book.days()
            if not days:
                print("meterlink central: no top-up order yet", file=sys.stderr)
                return 1
            day = days[-1]
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            print(f"meterlink central: --day {day!r} is not YYYY-MM-DD", file=sys.stderr)
            return 2
        orders = book.orders_of_days([day])
        if args.concentrator:
            orders = [o for o in orders if o.concentrator == args.concentrator]
    finally:
        store.close()
    sys.stdout.write(render(compute(day, orders), args.format))
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


class _Usage(ValueError):
    """Bad arguments to `meterlink central command` (exit 2)."""


#: exit codes of `meterlink central command`
EXIT_FAILED, EXIT_REFUSED, EXIT_NO_REPLY, EXIT_UNAVAILABLE = 1, 3, 4, 69
_REFUSALS = {"unauthorized", "invalid"}


def _command_args(args: argparse.Namespace) -> dict[str, object] | None:
    import json

    match args.command:
        case "read":
            return {"items": list(args.items)}
        case "time_sync":
            out = {"bus": args.bus, "time": args.time}
        case "relay":
            out = {"action": args.relay_action, "valid_until": args.valid_until}
        case "raw":
            out = {"bus": args.bus, "hex": args.hex}
        case "archive_update":
            try:
                meters = json.loads(args.file.read_text(encoding="utf-8"))
            except OSError as exc:
                raise _Usage(f"{args.file}: {exc.strerror}") from None
            except ValueError as exc:
                raise _Usage(f"{args.file}: not JSON: {exc}") from None
            if not isinstance(meters, list):
                raise _Usage(f"{args.file}: expected a JSON list of meters")
            return {"mode": args.mode, "meters": meters}
        case _:
            return None
    return {k: v for k, v in out.items() if v is not None}


def _command(cfg: CentralConfig, args: argparse.Namespace) -> int:
    import json

    import aiomqtt

    from central.commands import CommandSender, CommandTimeout
    from protocols.commands import key_bytes

    if cfg.mqtt.command_key is None:
        print(
            f"meterlink central command: no command key: set {KEY_ENV} (the agents' key)",
            file=sys.stderr,
        )
        return 2
    key = key_bytes(cfg.mqtt.command_key.reveal())
    try:
        payload_args = _command_args(args)
    except _Usage as exc:
        print(f"meterlink central command: {exc}", file=sys.stderr)
        return 2
    where = f"{args.command} on {args.concentrator}" + (f" {args.meter}" if args.meter else "")

    async def send() -> int:
        try:
            async with CommandSender(cfg.mqtt, key) as sender:
                try:
                    reply = await sender.send(
                        args.concentrator,
                        args.command,
                        meter=args.meter,
                        args=payload_args,
                        wait_s=args.timeout,
                    )
                except CommandTimeout as exc:
                    status = await sender.agent_status(args.concentrator)
                    state = (
                        f"; its status: {status.get('state')} at {status.get('at')}"
                        if status
                        else "; the broker holds no status for it (unknown concentrator?)"
                    )
                    print(f"meterlink central command: {where}: {exc}{state}", file=sys.stderr)
                    return EXIT_NO_REPLY
        except aiomqtt.MqttError as exc:
            m = cfg.mqtt
            print(
                f"meterlink central command: broker {m.host}:{m.port} unreachable: {exc}",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        print(json.dumps(reply.payload, ensure_ascii=False, indent=2))
        items = (reply.payload.get("result") or {}).get("items") if reply.ok else None
        failed = {
            k: v["error"].get("reason")
            for k, v in (items or {}).items()
            if isinstance(v, dict) and isinstance(v.get("error"), dict)
        }
        if failed:  # a read that ran, but some items got no value
            reasons = ", ".join(f"{k}: {reason}" for k, reason in failed.items())
            print(f"meterlink central command: {where}: failed {reasons}", file=sys.stderr)
            return EXIT_FAILED
        if reply.ok:
            print(
                f"meterlink central command: {where}: ok in {reply.seconds:.1f} s", file=sys.stderr
            )
            return 0
        detail = reply.payload.get("detail", "")
        print(
            f"meterlink central command: {where}: {reply.reason}"
            + (f": {detail}" if detail else ""),
            file=sys.stderr,
        )
        return EXIT_REFUSED if reply.reason in _REFUSALS else EXIT_FAILED

    return asyncio.run(send())
