"""`meterlink sim serve|fleet|hsm` — the meter simulator for technicians and tests.

serve: serves every bus of a fleet file (pty by default, or TCP, or a real serial device),
prints one line per bus with where to connect, then runs until interrupted. `-v` prints every
frame as spaced hex with a direction mark (``->`` request, ``<-`` reply), as the agent traces.
``--control`` adds the control channel (faults, meter state, credits, clock: simulators.control),
``--credits`` the credit log as JSON lines.
fleet: prints the commented example fleet, or a fleet's meter archive as JSON.
hsm: serves the fleet's software encryption machine (simulators.hsm) until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
from pathlib import Path

from simulators.fleet import FleetError, load_fleet
from simulators.record import Recorder

EXAMPLE = Path(__file__).with_name("fleets") / "example.toml"
EX_CONFIG = 78


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = sub.add_parser("serve", help="serve a fleet of simulated meters")
    serve.add_argument("--fleet", type=Path, required=True, help="fleet file (TOML)")
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--pty", nargs="?", const="", metavar="PATH",
        help="serve on pseudo-terminals (default); PATH = a symlink to the first bus's pty",
    )  # fmt: skip
    where.add_argument(
        "--tcp", metavar="HOST:PORT", type=_host_port,
        help="TCP transparent serial server(s): one port per bus from PORT (0: any free ports)",
    )  # fmt: skip
    where.add_argument("--serial", metavar="DEV", help="a real serial device (one-bus fleet)")
    serve.add_argument(
        "--timing", action="store_true",
        help="line timing: 20-500 ms reply delay, bytes paced at 11 bits/byte at the bus baud",
    )  # fmt: skip
    serve.add_argument(
        "--time-scale", type=_scale, metavar="X",
        help="carrier buses: every drawn latency and module timer x X (0.01: 100 times faster)",
    )  # fmt: skip
    serve.add_argument("--record", type=Path, metavar="FILE", help="answer record as JSONL")
    serve.add_argument(
        "--credits", type=Path, metavar="FILE", help="credit log as JSONL (every wallet credit)"
    )
    serve.add_argument(
        "--control", metavar="HOST:PORT", type=_host_port,
        help="HTTP control channel for tests in other processes (faults, meter state, credits,"
        " clock); port 0: any free port. No authentication: keep it on loopback",
    )  # fmt: skip
    serve.add_argument("-v", "--verbose", action="store_true", help="print every frame")

    hsm = sub.add_parser(
        "hsm", help="serve the fleet's software encryption machine (密码机) over HTTP/JSON"
    )
    hsm.add_argument("--fleet", type=Path, required=True, help="fleet file (TOML): its master key")
    hsm.add_argument(
        "--listen", metavar="HOST:PORT", type=_host_port, default=("127.0.0.1", 0),
        help="where to listen (default 127.0.0.1, any free port); no authentication",
    )  # fmt: skip

    fleet = sub.add_parser("fleet", help="print the example fleet or a fleet's archive")
    what = fleet.add_mutually_exclusive_group(required=True)
    what.add_argument("--example", action="store_true", help="print a commented fleet file")
    what.add_argument("--archive", action="store_true", help="print the meter archive (JSON)")
    what.add_argument(
        "--tariff-plans", action="store_true",
        help="print the tariff plans the meters were programmed from (central plan file, TOML)",
    )  # fmt: skip
    what.add_argument(
        "--tariff-truth", nargs="?", const="", metavar="DAY",
        help="print per meter its tariff defect and the check outcome expected on DAY (JSON)",
    )  # fmt: skip
    fleet.add_argument("--fleet", type=Path, help="fleet file for --archive / --tariff-*")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:4001")
    return host or "127.0.0.1", int(port)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: a number > 0, e.g. 0.01")
    return value


def run(args: argparse.Namespace) -> int:
    if args.action == "fleet":
        return _fleet(args)
    if args.action == "hsm":
        return asyncio.run(_hsm(args))
    return asyncio.run(_serve(args))


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _forget_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)


async def _hsm(args: argparse.Namespace) -> int:
    from simulators.hsm import serve_hsm

    try:
        fleet = load_fleet(args.fleet)
    except FleetError as exc:
        print(f"meterlink sim: {exc}", file=sys.stderr)
        return EX_CONFIG
    stop = _stop_event()
    try:
        async with serve_hsm(fleet, *args.listen) as (service, url):
            print(f"hsm {url} meters={service.meters}", flush=True)
            print("ready", flush=True)
            await stop.wait()
    except OSError as exc:
        print(f"meterlink sim: {exc}", file=sys.stderr)
        return 1
    finally:
        _forget_signals()
    return 0


def _fleet(args: argparse.Namespace) -> int:
    if args.example:
        sys.stdout.write(EXAMPLE.read_text(encoding="utf-8"))
        return 0
    if args.fleet is None:
        print("meterlink sim fleet --archive / --tariff-* need --fleet FILE", file=sys.stderr)
        return 2
    day = None
    if args.tariff_truth:
        try:
            day = dt.date.fromisoformat(args.tariff_truth)
        except ValueError:
            print(f"meterlink sim: --tariff-truth {args.tariff_truth}: not a date", file=sys.stderr)
            return 2
    try:
        fleet = load_fleet(args.fleet)
    except FleetError as exc:
        print(f"meterlink sim: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.tariff_plans:
        sys.stdout.write(fleet.tariff_plans_toml())
        return 0
    if args.tariff_truth is not None:
        truth = {m: t.as_json() for m, t in fleet.tariff_truth(day).items()}
        json.dump(truth, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return 0
    json.dump(fleet.archive(), sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from simulators.record import CreditLog
    from simulators.server import serve_fleet

    try:
        recorder = Recorder(args.record)
    except OSError as exc:
        print(f"meterlink sim: --record {args.record}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        credits = CreditLog(args.credits)
    except OSError as exc:
        recorder.close()
        print(f"meterlink sim: --credits {args.credits}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        fleet = load_fleet(args.fleet, recorder=recorder, credits=credits)
    except FleetError as exc:
        recorder.close()
        credits.close()
        print(f"meterlink sim: {exc}", file=sys.stderr)
        return EX_CONFIG
    transport, host, port, serial, link = "pty", "127.0.0.1", 0, None, None
    if args.tcp:
        transport, (host, port) = "tcp", args.tcp
    elif args.serial:
        transport, serial = "serial", args.serial
    else:
        link = Path(args.pty) if args.pty else None
    trace = (lambda line: print(line, flush=True)) if args.verbose else None
    stop = _stop_event()
    try:
        async with contextlib.AsyncExitStack() as stack:
            serving = await stack.enter_async_context(
                serve_fleet(
                    fleet,
                    transport=transport,
                    host=host,
                    port=port,
                    link=link,
                    serial=serial,
                    timing=args.timing,
                    trace=trace,
                    time_scale=args.time_scale,
                )
            )
            meters = {e.bus: len(fleet.bus(e.bus).meters) for e in serving.endpoints}
            for endpoint in serving.endpoints:
                print(f"bus {endpoint.describe()} meters={meters[endpoint.bus]}", flush=True)
            if args.control is not None:
                from simulators.control import serve_control

                where = await stack.enter_async_context(serve_control(fleet, *args.control))
                print(f"control http://{where[0]}:{where[1]}", flush=True)
            print("ready", flush=True)
            await stop.wait()
    except (OSError, ValueError) as exc:
        print(f"meterlink sim: {exc}", file=sys.stderr)
        return 1
    finally:
        recorder.close()
        credits.close()
        _forget_signals()
    return 0
