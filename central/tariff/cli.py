"""`meterlink central tariff plans | check | workorders | correct`."""

from __future__ import annotations

import argparse
import datetime as dt
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

    chk = sub.add_parser(
        "check", help="check every meter with a plan for a data day, store the outcomes, report"
    )
    chk.add_argument("--config", type=Path, required=True)
    chk.add_argument("--day", help="data day YYYY-MM-DD (default: the latest with data)")
    chk.add_argument("--format", choices=["table", "csv", "json"], default="table")

    wo = sub.add_parser(
        "workorders",
        help="CSV of the meters a technician must reprogram (meter, concentrator, outcome,"
        " detail, what to write)",
    )
    wo.add_argument("--config", type=Path, required=True)
    wo.add_argument("--day", help="data day YYYY-MM-DD (default: the latest checked)")
    wo.add_argument("--output", type=Path, help="write the CSV here (default: stdout)")

    fix = sub.add_parser(
        "correct",
        help="a correction order: write the meter's tariff items back to its plan through the"
        " encryption machine (verified by read-back and a re-check), or a work order when it"
        " cannot be written remotely",
    )
    fix.add_argument("--config", type=Path, required=True)
    fix.add_argument("--meter", required=True, action="append", help="meter id (repeatable)")
    fix.add_argument("--day", help="the meters' local date YYYY-MM-DD (default: today)")
    fix.add_argument(
        "--workorders", type=Path, help="append work-order rows (CSV) for meters not writable"
    )
    fix.add_argument("--attempts", type=int, default=3, help="attempts per order (default 3)")
    fix.add_argument("--by", default="cli", help="who orders it (kept with the order)")
    fix.add_argument("--audit", action="store_true", help="print each order's audit trail")

    job = sub.add_parser(
        "job",
        help="record programming done on a meter outside meterlink (a work order carried out,"
        " billing's own system), so its programming events are not 'outside plan'",
    )
    job.add_argument("--config", type=Path, required=True)
    job.add_argument("--concentrator", required=True)
    job.add_argument("--meter", required=True)
    job.add_argument("--start", required=True, help="ISO 8601 time with offset")
    job.add_argument("--end", required=True, help="ISO 8601 time with offset")
    job.add_argument("--kind", default="workorder", help="what it was (default workorder)")
    job.add_argument("--by", required=True, help="who did it")
    job.add_argument("--detail", default="", help="free text (work order number, …)")


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
        if args.tariff_action == "check":
            return report(cfg, store, tariffs, args.day, args.format)
        if args.tariff_action == "workorders":
            return _workorders(tariffs, args)
        if args.tariff_action == "job":
            return _job(tariffs, args)
        if args.tariff_action == "correct":
            import asyncio

            return asyncio.run(_correct(cfg, store, tariffs, args))
    finally:
        store.close()
    return 2


def _day(day: str | None, known: list[str]) -> str | None:
    if day is None:
        if not known:
            print("meterlink central tariff: no data day yet", file=sys.stderr)
            return None
        return known[-1]
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        print(f"meterlink central tariff: --day {day!r} is not YYYY-MM-DD", file=sys.stderr)
        return None
    return day


def report(cfg: CentralConfig, store: Store, tariffs: TariffStore, day: str | None,
           fmt: str) -> int:  # fmt: skip
    """Check `day` (default: the latest day with data), store its outcomes, print the report."""
    from central.ledger import Ledger
    from central.tariff.day import check_day
    from central.tariff.report import render

    ledger = Ledger(store)
    chosen = _day(day, ledger.known_days())
    if chosen is None:
        return 2 if day is not None else 1
    book = tariffs.plans()
    if book is None:
        print("meterlink central tariff: no plans yet: meterlink central tariff plans"
              " --replace FILE (or PUT /api/tariff/plans)", file=sys.stderr)  # fmt: skip
        return 1
    t = cfg.tariff
    result = check_day(ledger, tariffs, book, chosen, t.settings(), t.timezone)
    sys.stdout.write(render(result, fmt))
    return 0


def _workorders(tariffs: TariffStore, args: argparse.Namespace) -> int:
    from central.tariff.report import workorders

    day = _day(args.day, tariffs.outcome_days())
    if day is None:
        return 2 if args.day is not None else 1
    book = tariffs.plans()
    if book is None:
        print("meterlink central tariff: no plans yet", file=sys.stderr)
        return 1
    text = workorders(day, tariffs.outcomes(day), book)
    if args.output is not None:
        args.output.write_text("\ufeff" + text, encoding="utf-8")  # BOM: Excel reads UTF-8
        print(f"{text.count(chr(10)) - 1} work orders for {day} in {args.output}")
    else:
        sys.stdout.write(text)
    return 0


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


def _job(tariffs: TariffStore, args: argparse.Namespace) -> int:
    times = []
    for name in ("start", "end"):
        text = getattr(args, name)
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            print(f"meterlink central tariff job: --{name} {text!r}: an ISO 8601 time with its"
                  " UTC offset", file=sys.stderr)  # fmt: skip
            return 2
        times.append(int(when.timestamp()))
    if times[1] < times[0]:
        print("meterlink central tariff job: --end before --start", file=sys.stderr)
        return 2
    job = tariffs.record_job(args.concentrator, args.meter, args.kind, times[0], times[1],
                             args.by, args.detail)  # fmt: skip
    print(f"job {job} recorded: {args.kind} on {args.meter} ({args.concentrator}) by {args.by}")
    return 0


async def _correct(
    cfg: CentralConfig, store: Store, tariffs: TariffStore, args: argparse.Namespace
) -> int:
    import json
    import zoneinfo

    import common.clock
    from central.commands import CommandSender
    from central.ledger import Ledger
    from central.tariff.correct import Corrector, SenderChannel, workorder_csv
    from central.tariff.day import archive_in_force
    from central.topup.hsm import load_security_module
    from protocols.commands import key_bytes

    t = cfg.tariff
    tz = zoneinfo.ZoneInfo(t.timezone)
    if args.day is not None:
        try:
            day = dt.date.fromisoformat(args.day)
        except ValueError:
            print(f"meterlink central tariff correct: --day {args.day!r}", file=sys.stderr)
            return 2
    else:
        day = dt.datetime.fromtimestamp(common.clock.current().time(), tz).date()
    book = tariffs.plans()
    if book is None:
        print("meterlink central tariff: no plans yet", file=sys.stderr)
        return 1
    if cfg.mqtt.command_key is None:
        print("meterlink central tariff correct: no command key: set"
              " METERLINK_MQTT_COMMAND_KEY (the agents' key)", file=sys.stderr)  # fmt: skip
        return 2
    known = {a.meter: a for a in archive_in_force(Ledger(store), str(day))}
    missing = [m for m in args.meter if m not in known or not known[m].plan]
    if missing:
        print(f"meterlink central tariff correct: not in the archive with a plan on {day}:"
              f" {', '.join(missing)}", file=sys.stderr)  # fmt: skip
        return 2
    tu = cfg.topup  # the same encryption machine as the top-ups
    hsm = load_security_module(tu.hsm, {"url": tu.hsm_url, "timeout_s": tu.hsm_timeout_s})
    key = key_bytes(cfg.mqtt.command_key.reveal())
    rows: list[list[str]] = []
    failed = 0
    async with hsm, CommandSender(cfg.mqtt, key, client_id=f"{cfg.mqtt.client_id}-tariff") as s:
        corrector = Corrector(store, hsm, SenderChannel(s), t.settings(), t.timezone,
                              attempts=args.attempts, by=args.by)  # fmt: skip
        for meter in args.meter:
            a = known[meter]
            plan = book.get(a.plan)
            if plan is None:
                print(f"{meter}: plan {a.plan!r} is not in the plan file", file=sys.stderr)
                failed += 1
                continue
            r = await corrector.correct(a.concentrator, meter, plan, model=a.model, day=day)
            after = f" -> {r.outcome_after}" if r.outcome_after else ""
            print(f"order {r.id} {meter} ({a.concentrator}): {r.state} [{r.outcome_before}{after}]"
                  f" items {','.join(r.items) or '-'} attempts {r.attempts}"
                  f"{': ' + r.reason if r.reason else ''}")  # fmt: skip
            if args.audit:
                for seq, at, kind, body in tariffs.correction_audit(r.id):
                    print(f"  {seq:>3} {at:.3f} {kind} {json.dumps(body, ensure_ascii=False)}")
            if r.workorder is not None:
                rows.append(r.workorder)
            failed += r.state in ("failed", "refused", "written")
    if rows:
        text = workorder_csv(rows)
        if args.workorders is not None:
            new = not args.workorders.exists()
            with args.workorders.open("a", encoding="utf-8") as f:
                f.write(("\ufeff" + text) if new else text.split("\n", 1)[1])
            print(f"{len(rows)} work orders in {args.workorders}")
        else:
            sys.stdout.write(text)
    return 1 if failed else 0
