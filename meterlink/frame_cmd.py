"""`meterlink frame decode|encode` — the technician's DL/T 645 and Q/GDW 1376.2 decoder and
frame builder.

decode: one JSON object per frame on stdout, 645 and 1376.2 frames told apart in the same input
(`protocols.q13762.mixed`); a frame that fails validation gives a one-line error on stderr
(exit 1); input that is not hex exits 2.
encode: builds a request frame from flags and prints it as spaced hex: a DL/T 645 request, or
the 1376.2 frame a carrier module (CCO) takes (`--carrier`, `--nodes`, `--add-node`, …).
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
    hex_spaced,
    parse_item,
    to_frame,
)
from protocols.errors import FrameError, LocalProtocolError
from protocols.q13762 import (
    AddNodes,
    ConcurrentRead,
    DeleteNodes,
    DownInfo,
    MonitorRequest,
    NodeAddress,
    NodeEntry,
    Protocol,
    QueryModuleInfo,
    QueryNodeCount,
    QueryNodes,
    RouterPause,
    RouterRestart,
    RouterResume,
    SetMainNode,
)
from protocols.q13762 import Frame as CarrierFrame
from protocols.q13762 import Message as CarrierMessage
from protocols.q13762 import to_frame as carrier_frame
from protocols.q13762.describe import describe as describe_1376
from protocols.q13762.describe import describe_645_event
from protocols.q13762.mixed import MixedFrameDecoder

_HEX_NOISE = re.compile(r"[\s,:;-]|0x", re.IGNORECASE)


_ENCODE_EPILOG = """\
carrier module (Q/GDW 1376.2) frames, to send to a CCO on its serial line:
  --carrier hplc   AFN F1 F1 concurrent read: A1 = --main-node, A3 = --meter, the 645
                   read request(s) inside; several --read items go in one frame
  --carrier point  AFN13 F1 monitor (point read) of one --read item
  --nodes S C      AFN10 F2 node list page: C nodes from node number S (first is 1)
  --node-count     AFN10 F1          --module-info   AFN03 F10 (max frame, timeouts)
  --add-node A[:P] AFN11 F1 (P: 2007 default, 1997, 698, transparent or 0-3)
  --delete-node A  AFN11 F2          --router restart|pause|resume   AFN12 F1/F2/F3
  --set-main-node A  AFN05 F1
  --seq N is the frame's SEQ (R5, decimal or 0x..), --comm-mode the C byte's mode
  (3 HPLC, 1 narrowband, 10 wireless); --edition picks the 645 edition inside
  (protocol 02 / 01); --wakeup the FE bytes before each inner 645 frame (default 0).
  Commands to the module itself carry no address field (a real CCO ignored them
  with one); reads are addressed.

examples:
  meterlink frame encode --meter 123456789012 --read energy_import_total_kwh
  meterlink frame encode --carrier hplc --main-node 049999888888 --seq 0x6B \\
      --meter 000000003304 --read 00010000
  meterlink frame encode --carrier point --main-node 049999888888 --meter 3304 --read 00010000
  meterlink frame encode --nodes 1 25 --seq 7
  meterlink frame encode --add-node 000000003304 000000003305:1997
"""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    dec = sub.add_parser(
        "decode",
        help="decode DL/T 645 and Q/GDW 1376.2 frames given as hex (spaces optional)",
    )
    dec.add_argument(
        "hex", nargs="*", help="hex bytes; several frames allowed; '-' or none reads stdin"
    )
    dec.add_argument(
        "--edition", choices=["2007", "1997"], help="force the 645 edition (default: infer)"
    )
    dec.add_argument(
        "--protocol",
        choices=["auto", "645", "1376.2"],
        default="auto",
        help="which frames to look for (default auto: both, told apart per frame)",
    )

    enc = sub.add_parser(
        "encode",
        help="build a request frame (DL/T 645, or 1376.2 for a carrier module)",
        epilog=_ENCODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enc.add_argument(
        "--meter", default=None, help="meter address, nameplate order (default all-AA)"
    )
    enc.add_argument("--edition", choices=["2007", "1997"], default="2007")
    enc.add_argument(
        "--wakeup",
        type=int,
        default=None,
        help="FE bytes before the 645 frame (default 4; 0 inside a carrier frame)",
    )
    what = enc.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--read",
        metavar="DI|NAME",
        action="append",
        help="read a DI (hex) or a measurement name; with --carrier hplc repeatable",
    )
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
    what.add_argument(
        "--nodes", nargs=2, type=int, metavar=("START", "COUNT"), help="1376.2 AFN10 F2"
    )
    what.add_argument("--node-count", action="store_true", help="1376.2 AFN10 F1")
    what.add_argument("--module-info", action="store_true", help="1376.2 AFN03 F10")
    what.add_argument("--add-node", nargs="+", metavar="ADDR[:PROTO]", help="1376.2 AFN11 F1")
    what.add_argument("--delete-node", nargs="+", metavar="ADDR", help="1376.2 AFN11 F2")
    what.add_argument("--router", choices=list(_ROUTER), help="1376.2 AFN12 F1/F2/F3")
    what.add_argument("--set-main-node", metavar="ADDR", help="1376.2 AFN05 F1")
    enc.add_argument(
        "--carrier",
        choices=["hplc", "point"],
        help="--read through a carrier module: hplc = AFN F1 F1, point = AFN13 F1",
    )
    enc.add_argument("--main-node", metavar="ADDR", help="1376.2 A1: the module's main node")
    enc.add_argument(
        "--comm-mode",
        type=int,
        default=3,
        help="1376.2 communication mode (C.D5-D0): 3 HPLC (default), 1 narrowband, 10 wireless",
    )
    enc.add_argument(
        "--seq",
        type=_number,
        default=None,
        help="645 follow-up frame number (default 1), or the 1376.2 frame's SEQ (default 0)",
    )
    enc.add_argument("--blocks", type=int, help="load-profile read: number of blocks")
    enc.add_argument("--since", help="load-profile read: time of the first block (ISO)")
    enc.add_argument("--value", default="", help="hex data for --write (as the meter stores it)")
    enc.add_argument("--password", default="02000000", help="PA P0 P1 P2 as hex (default 02000000)")
    enc.add_argument("--operator", default="00000000", help="operator code as hex")
    enc.add_argument("--valid-until", help="1CH valid-until time (ISO; default now + 1 hour)")


_ROUTER: dict[str, type[CarrierMessage]] = {
    "restart": RouterRestart,
    "pause": RouterPause,
    "resume": RouterResume,
}
_NODE_PROTOCOLS = {
    "2007": Protocol.DLT645_2007,
    "1997": Protocol.DLT645_1997,
    "698": Protocol.DLT698,
    "transparent": Protocol.TRANSPARENT,
}


def _number(text: str) -> int:
    """Decimal, or hex with 0x (a SEQ is often read off a trace as 0x6B)."""
    return int(text, 16) if text.lower().startswith("0x") else int(text)


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
    decoder = MixedFrameDecoder(
        edition=edition,
        dlt645_frames=args.protocol in ("auto", "645"),
        q13762_frames=args.protocol in ("auto", "1376.2"),
    )
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
        info = (
            describe_1376(event)
            if isinstance(event, CarrierFrame)
            else describe_645_event(event, edition)
        )
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
        if len(args.read) > 1:
            raise LocalProtocolError("one --read per 645 frame (several: --carrier hplc)")
        return _read_request(args, args.read[0], edition, now), meter
    if args.follow_up:
        seq = 1 if args.seq is None else args.seq
        return ReadFollowUpRequest(int(args.follow_up, 16), seq), meter
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


def _read_request(
    args: argparse.Namespace, item: str, edition: Edition, now: dt.datetime
) -> ReadRequest:
    di = parse_item(item, edition)
    since = _when(args.since, now) if args.since else None
    return ReadRequest(di, args.blocks, since)


_CARRIER_ONLY = ("nodes", "node_count", "module_info", "add_node", "delete_node", "router")


def _node_entry(text: str) -> NodeEntry:
    address, _, protocol = text.partition(":")
    if not protocol:
        return NodeEntry(NodeAddress.parse(address))
    if protocol.lower() in _NODE_PROTOCOLS:
        return NodeEntry(NodeAddress.parse(address), _NODE_PROTOCOLS[protocol.lower()])
    if protocol in ("0", "1", "2", "3"):
        return NodeEntry(NodeAddress.parse(address), int(protocol))
    raise LocalProtocolError(
        f"node protocol {protocol!r}: one of {', '.join(_NODE_PROTOCOLS)} or 0-3"
    )


def _carrier_read(args: argparse.Namespace, edition: Edition) -> CarrierFrame:
    if args.main_node is None or args.meter is None:
        raise LocalProtocolError("a carrier read needs --main-node (A1) and --meter (A3)")
    meter = Address.parse(args.meter)
    if not meter.is_specific:
        raise LocalProtocolError("a carrier read goes to one meter: give all 12 digits")
    now = dt.datetime.now().replace(microsecond=0)
    wakeup = 0 if args.wakeup is None else args.wakeup
    frames = [
        to_frame(meter, _read_request(args, item, edition, now), edition) for item in args.read
    ]
    message: CarrierMessage
    if args.carrier == "point":
        if len(frames) > 1:
            raise LocalProtocolError("AFN13 F1 carries one 645 frame: one --read")
        message = MonitorRequest.of_645(frames[0], wakeup=wakeup)
    else:
        message = ConcurrentRead.of_645(frames, wakeup=wakeup)
    return carrier_frame(
        message,
        DownInfo(seq=args.seq or 0),
        src=NodeAddress.parse(args.main_node),
        dst=meter,
        comm_mode=args.comm_mode,
    )


def _carrier_command(args: argparse.Namespace) -> CarrierFrame:
    """A command to the module itself: no address field."""
    message: CarrierMessage
    if args.nodes:
        message = QueryNodes(*args.nodes)
    elif args.node_count:
        message = QueryNodeCount()
    elif args.module_info:
        message = QueryModuleInfo()
    elif args.add_node:
        message = AddNodes(tuple(_node_entry(a) for a in args.add_node))
    elif args.delete_node:
        message = DeleteNodes(tuple(NodeAddress.parse(a) for a in args.delete_node))
    elif args.router:
        message = _ROUTER[args.router]()
    else:
        message = SetMainNode(NodeAddress.parse(args.set_main_node))
    return carrier_frame(message, DownInfo(seq=args.seq or 0), comm_mode=args.comm_mode)


def _encode(args: argparse.Namespace) -> int:
    edition = Edition(args.edition)
    try:
        if args.carrier is not None and not args.read:
            raise LocalProtocolError("--carrier goes with --read")
        if args.carrier is not None:
            print(hex_spaced(_carrier_read(args, edition).to_bytes()))
        elif any(getattr(args, name) for name in _CARRIER_ONLY) or args.set_main_node:
            print(hex_spaced(_carrier_command(args).to_bytes()))
        else:
            message, address = _request(args, edition)
            frame = to_frame(address, message, edition)
            print(hex_spaced(frame.to_bytes(wakeup=4 if args.wakeup is None else args.wakeup)))
    except (LocalProtocolError, ValueError) as exc:
        print(f"meterlink frame encode: {exc}", file=sys.stderr)
        return 2
    return 0
