"""`meterlink frame decode|encode` — the technician's DL/T 645 decoder and frame builder.

decode: one JSON object per frame on stdout; a frame that fails validation gives a one-line
error on stderr (exit 1); input that is not hex exits 2.
encode: builds a request frame from flags and prints it as spaced hex.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys

from protocols.dlt645 import (
    BROADCAST,
    WILDCARD,
    Address,
    BroadcastTimeRequest,
    ChangeBaudRequest,
    ClearDemandRequest,
    ClearEventsRequest,
    ClearMeterRequest,
    Edition,
    FrameDecoder,
    FreezeRequest,
    Message,
    ReadAddressRequest,
    ReadFollowUpRequest,
    ReadRequest,
    RelayAction,
    RemoteControlRequest,
    TerminalOutput,
    TerminalOutputRequest,
    WriteRequest,
    describe,
    hex_spaced,
    parse_item,
    to_frame,
)
from protocols.errors import FrameError, LocalProtocolError

_HEX_NOISE = re.compile(r"[\s,:;-]|0x", re.IGNORECASE)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    dec = sub.add_parser("decode", help="decode frames given as hex (spaces optional)")
    dec.add_argument(
        "hex", nargs="*", help="hex bytes; several frames allowed; '-' or none reads stdin"
    )
    dec.add_argument(
        "--edition", choices=["2007", "1997"], help="force the edition (default: infer)"
    )

    enc = sub.add_parser("encode", help="build a request frame")
    enc.add_argument(
        "--meter", default=None, help="meter address, nameplate order (default all-AA)"
    )
    enc.add_argument("--edition", choices=["2007", "1997"], default="2007")
    enc.add_argument("--wakeup", type=int, default=4, help="FE bytes before the frame (default 4)")
    what = enc.add_mutually_exclusive_group(required=True)
    what.add_argument("--read", metavar="DI|NAME", help="read a DI (hex) or a measurement name")
    what.add_argument("--follow-up", metavar="DI", help="read follow-up data of DI (12H)")
    what.add_argument("--read-address", action="store_true", help="read address (13H, all-AA)")
    what.add_argument("--write", metavar="DI", help="write DI with --value (14H)")
    what.add_argument("--time-sync", metavar="TIME", help="broadcast time: ISO time or 'now'")
    what.add_argument(
        "--freeze", metavar="MM:HH:DD:MM", help="freeze; '99' fields are wildcards, 'now' = instant"
    )
    what.add_argument("--baud", type=int, help="change baud rate (17H)")
    what.add_argument(
        "--relay", choices=[a.name.lower() for a in RelayAction], help="remote control (1CH)"
    )
    what.add_argument("--terminal-output", choices=[t.name.lower() for t in TerminalOutput])
    what.add_argument("--clear-demand", action="store_true")
    what.add_argument("--clear-meter", action="store_true")
    what.add_argument("--clear-events", metavar="DI", nargs="?", const="FFFFFFFF")
    enc.add_argument("--seq", type=int, default=1, help="follow-up frame sequence number")
    enc.add_argument("--blocks", type=int, help="load-profile read: number of blocks")
    enc.add_argument("--since", help="load-profile read: time of the first block (ISO)")
    enc.add_argument("--value", default="", help="hex data for --write (as the meter stores it)")
    enc.add_argument("--password", default="02000000", help="PA P0 P1 P2 as hex (default 02000000)")
    enc.add_argument("--operator", default="00000000", help="operator code as hex")
    enc.add_argument("--valid-until", help="1CH valid-until time (ISO; default now + 1 hour)")


def run(args: argparse.Namespace) -> int:
    if args.action == "decode":
        return _decode(args)
    return _encode(args)


def parse_hex(text: str) -> bytes:
    """Hex with or without spaces (also 0x prefixes, commas, colons)."""
    cleaned = _HEX_NOISE.sub("", text)
    if len(cleaned) % 2:
        raise ValueError(f"odd number of hex digits ({len(cleaned)})")
    return bytes.fromhex(cleaned)


def _decode(args: argparse.Namespace) -> int:
    text = " ".join(args.hex) if args.hex and args.hex != ["-"] else sys.stdin.read()
    try:
        raw = parse_hex(text)
    except ValueError as exc:
        print(f"meterlink frame: input is not hex: {exc}", file=sys.stderr)
        return 2
    edition = Edition(args.edition) if args.edition else None
    decoder = FrameDecoder(edition=edition)
    events = decoder.feed(raw) + decoder.flush()
    status = 0
    if not events:
        print("meterlink frame: no frame found (no 68H start byte)", file=sys.stderr)
        return 1
    for event in events:
        if isinstance(event, FrameError):
            print(
                f"meterlink frame: {type(event).__name__}: {event}: {hex_spaced(event.raw)}",
                file=sys.stderr,
            )
            status = 1
            continue
        info = describe(event)
        for problem in ("payload_error", "value_error"):
            if problem in info:
                print(f"meterlink frame: {info[problem]}", file=sys.stderr)
                status = 1
        print(json.dumps(info, ensure_ascii=False))
    return status


def _when(text: str | None, default: dt.datetime) -> dt.datetime:
    if text is None:
        return default
    if text == "now":
        return dt.datetime.now().replace(microsecond=0)
    return dt.datetime.fromisoformat(text)


def _request(args: argparse.Namespace, edition: Edition) -> tuple[Message, Address]:
    meter = Address.parse(args.meter) if args.meter else WILDCARD
    password = parse_hex(args.password)
    operator = parse_hex(args.operator)
    now = dt.datetime.now().replace(microsecond=0)
    if args.read:
        di = parse_item(args.read, edition)
        since = _when(args.since, now) if args.since else None
        return ReadRequest(di, args.blocks, since), meter
    if args.follow_up:
        return ReadFollowUpRequest(int(args.follow_up, 16), args.seq), meter
    if args.read_address:
        return ReadAddressRequest(), WILDCARD
    if args.write:
        return WriteRequest(int(args.write, 16), password, parse_hex(args.value), operator), meter
    if args.time_sync:
        return BroadcastTimeRequest(_when(args.time_sync, now)), Address.parse(
            args.meter
        ) if args.meter else BROADCAST
    if args.freeze:
        if args.freeze == "now":
            return FreezeRequest(), meter
        parts = args.freeze.split(":")
        if len(parts) != 4:
            raise LocalProtocolError("--freeze takes mm:hh:DD:MM (99 = any), or 'now'")
        mm, hh, dd, mo = (None if p == "99" else int(p) for p in parts)
        return FreezeRequest(mm, hh, dd, mo), meter
    if args.baud:
        return ChangeBaudRequest(args.baud), meter
    if args.relay:
        until = _when(args.valid_until, now + dt.timedelta(hours=1))
        return RemoteControlRequest(
            RelayAction[args.relay.upper()], until, password, operator
        ), meter
    if args.terminal_output:
        return TerminalOutputRequest(TerminalOutput[args.terminal_output.upper()]), meter
    if args.clear_demand:
        return ClearDemandRequest(password, operator), meter
    if args.clear_meter:
        return ClearMeterRequest(password, operator), meter
    return ClearEventsRequest(password, int(args.clear_events, 16), operator), meter


def _encode(args: argparse.Namespace) -> int:
    edition = Edition(args.edition)
    try:
        message, address = _request(args, edition)
        frame = to_frame(address, message, edition)
        print(hex_spaced(frame.to_bytes(wakeup=args.wakeup)))
    except (LocalProtocolError, ValueError) as exc:
        print(f"meterlink frame encode: {exc}", file=sys.stderr)
        return 2
    return 0
