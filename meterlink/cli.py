"""`meterlink` — one command, subcommands owned by the packages that implement them.

Subcommand modules are imported lazily (only the one you run), so `meterlink frame` starts
without importing MQTT or serial code. Each module provides ``configure(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Protocol, cast

import common.clock

EX_SOFTWARE = 70
"""sysexits: an internal error (a bug), as opposed to bad input (2), bad configuration (78)"""

#: name -> ("module" or "module:object", one-line help); the target has configure() and run()
COMMANDS: dict[str, tuple[str, str]] = {
    "frame": ("meterlink.frame_cmd", "decode or build DL/T 645 and Q/GDW 1376.2 frames"),
    "sim": ("simulators.cli", "meter simulator: serve a fleet on ptys / TCP / serial, fleet files"),
    "central": ("central.cli", "MQTT to InfluxDB consumer and the daily coverage report"),
    "demo": ("meterlink.demo", "the whole chain on this machine: simulator, agent, central"),
    "agent": ("agent.cli", "run the concentrator agent, or check its configuration"),
    "read": ("agent.technician:READ", "read items of one meter on a bus (values with units)"),
    "scan": (
        "agent.technician:SCAN",
        "find the meters on a multi-drop bus, compare with the archive",
    ),
    "carrier": (
        "agent.carrier.cli",
        "a carrier module (CCO): its info, its node list beside the archive, sync, a read",
    ),
}


class _Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterlink",
        description="Read DL/T 645 and Modbus meters, publish over MQTT, drive remote top-ups.",
    )
    parser.add_argument(
        "--clock",
        metavar="SPEC",
        help="run on an accelerated clock shared with the processes it starts:"
        " <iso-epoch>@<speed>, e.g. 2026-03-02T10:00:00+08:00@600 (also METERLINK_CLOCK)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _take_clock(args_in: list[str]) -> str | None:
    """`--clock SPEC` before the command: the run's time source (see common/clock.py), also
    given to every process the command starts. Returns an error message, or None."""
    spec = None
    if args_in and args_in[0].startswith("--clock"):
        option = args_in.pop(0)
        if "=" in option:
            spec = option.partition("=")[2]
        elif args_in:
            spec = args_in.pop(0)
        else:
            return "--clock needs a spec: <iso-epoch>@<speed>[@<unix-anchor>] or file:<path>"
    spec = spec if spec is not None else os.environ.get(common.clock.ENV)
    try:
        common.clock.install(common.clock.parse(spec))
    except common.clock.ClockSpecError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if (problem := _take_clock(args_in)) is not None:
        print(f"meterlink: {problem}", file=sys.stderr)
        return 2
    if not args_in or args_in[0] not in COMMANDS:
        parser = _top_parser()
        if not args_in or args_in[0] in ("-h", "--help"):
            parser.print_help()
            return 0 if args_in else 2
        parser.error(f"unknown command {args_in[0]!r}")
    name = args_in[0]
    target, _, attr = COMMANDS[name][0].partition(":")
    loaded = importlib.import_module(target)
    module = cast(_Command, getattr(loaded, attr) if attr else loaded)
    parser = argparse.ArgumentParser(prog=f"meterlink {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(args_in[1:])
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The subcommands turn every user error into one line that says what to change; what
        # reaches here is unforeseen. Still one line (no traceback wall for an operator), the
        # details in the log for daemons and on request for everyone.
        if logging.getLogger().handlers:  # a daemon's log (journald) keeps the whole story
            logging.getLogger("meterlink").critical("%s failed", name, exc_info=exc)
        if os.environ.get("METERLINK_TRACEBACK"):
            traceback.print_exception(exc)
        print(
            f"meterlink {name}: {type(exc).__name__}: {exc}"
            " (unexpected; METERLINK_TRACEBACK=1 shows where — please report it)",
            file=sys.stderr,
        )
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
