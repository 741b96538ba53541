"""`meterlink carrier info|nodes|sync|read --bus URL [--config F]`: a technician's look at a
carrier module (CCO) on its serial line, with the agent's own client.

    meterlink carrier info  --bus carrier:///dev/ttyS4
    meterlink carrier nodes --bus carrier+tcp://10.0.0.9:4002 --config /etc/meterlink/agent.toml
    meterlink carrier sync  --bus carrier:///dev/ttyS4 --config agent.toml [--dry-run]
    meterlink carrier read  --bus carrier:///dev/ttyS4 --meter 410100000001 00010000 voltage_a_v

`nodes` lists the module's node list beside the archive (archived / EXTRA / MISSING, and the
nodes the module has never heard from); `sync` makes the module's list the archive's (what the
agent does at start-up); `read` reads a meter through the module, printing like `meterlink
read` (a meter the module does not know is added first). Stop the agent first: the module has
one serial line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.carrier.client import ArchivedNode, CarrierClient, technician_client
from agent.transports import BusUrl, BusUrlError, TraceHook, TransportError
from common.config import ConfigError
from protocols import dlt645
from protocols import q13762 as q
from protocols.errors import LocalProtocolError, ModuleRejection, PayloadError

__all__ = ["configure", "print_nodes", "run"]

_PROTOCOL_NAMES = {0: "transparent", 1: "1997", 2: "2007", 3: "698.45"}
_MODE_NAMES = {1: "concentrator-led", 2: "router-led", 3: "both"}
_COMM_NAMES = {1: "narrowband PLC", 2: "HPLC (broadband)", 3: "micro-power wireless"}


def _trace(direction: str, data: bytes) -> None:
    print(f"{direction} {dlt645.hex_spaced(data)}", file=sys.stderr, flush=True)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text}", end="", file=sys.stderr, flush=True)


def _progress_done() -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr, flush=True)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, *, config: bool) -> None:
        p.add_argument("--bus", required=True, help="carrier:///dev/ttyS4 or carrier+tcp://h:p")
        if config:
            p.add_argument("--config", type=Path, help="agent config: its archive of this bus")
            p.add_argument("--bus-name", help="which configured bus this is (default: by URL)")
        p.add_argument("--trace", action="store_true", help="print every 1376.2 frame on stderr")

    common(
        sub.add_parser("info", help="the module's running-mode information (AFN03 F10)"),
        config=False,
    )
    common(sub.add_parser("nodes", help="the module's node list beside the archive"), config=True)
    sync = sub.add_parser("sync", help="make the module's node list the archive's")
    common(sync, config=True)
    sync.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    read = sub.add_parser("read", help="read items of one meter through the module")
    common(read, config=False)
    read.add_argument("--meter", required=True, help="meter address (nameplate order)")
    read.add_argument("--edition", choices=["2007", "1997"], default="2007")
    read.add_argument("--json", action="store_true", help="one JSON object per item")
    read.add_argument("items", nargs="+", help="DIs (hex) or measurement names")


def run(args: argparse.Namespace) -> int:
    try:
        url = BusUrl.parse(args.bus)
    except BusUrlError as exc:
        print(f"meterlink carrier: {exc}", file=sys.stderr)
        return 2
    if not url.is_carrier:
        print(
            f"meterlink carrier: {url} is not a carrier bus (carrier:///dev/… or carrier+tcp://…)",
            file=sys.stderr,
        )
        return 2
    trace = _trace if args.trace else None
    if args.action == "info":
        return _guard(lambda: _info(url, trace))
    if args.action == "read":
        return _read(url, args, trace)
    archived: list[ArchivedNode] | None = None
    if args.config is not None:
        try:
            archived = archive_of(args.config, args.bus_name, args.bus)
        except ConfigError as exc:
            print(f"meterlink carrier: configuration error: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.action == "nodes":
        return print_nodes(url, archived, trace=trace)
    if archived is None:
        print("meterlink carrier sync: --config names the archive to sync with", file=sys.stderr)
        return 2
    nodes = archived
    return _guard(lambda: _sync(url, nodes, trace, dry_run=args.dry_run))


def archive_of(config: Path, bus_name: str | None, url_text: str) -> list[ArchivedNode]:
    """The DL/T 645 meters the agent config archives on this bus (by name, else by URL)."""
    from agent.archive import ArchiveStore
    from agent.config import load_config

    cfg = load_config(config)
    names = [b.name for b in cfg.buses if (b.name == bus_name if bus_name else b.url == url_text)]
    if not names:
        known = ", ".join(f"{b.name} ({b.url})" for b in cfg.buses)
        what = f"no bus named {bus_name!r}" if bus_name else f"no bus with url {url_text!r}"
        raise ConfigError(f"{config}: {what}; buses: {known} (use --bus-name)")
    return [
        ArchivedNode.of(m.address, m.protocol, m.meter_id)
        for m in ArchiveStore.preview(cfg)
        if m.bus in names and m.address is not None and m.protocol != "modbus"
    ]


def _guard(action: Callable[[], Any]) -> int:
    try:
        result: int = asyncio.run(action())
    except (TransportError, ModuleRejection, PayloadError) as exc:
        print(f"meterlink carrier: {exc}", file=sys.stderr)
        return 1
    return result


# --- info ---------------------------------------------------------------------------------------
async def _info(url: BusUrl, trace: TraceHook | None) -> int:
    async with technician_client(url, trace=trace) as client:
        info = await client.module_info()
        vendor = info.vendor
        rows = [
            ("communication", _COMM_NAMES.get(info.comm_type, str(info.comm_type))),
            ("reading mode", _MODE_NAMES.get(int(info.reading_mode), str(info.reading_mode))),
            ("vendor / chip", f"{vendor.vendor_code} / {vendor.chip_code}"),
            ("version", f"{vendor.version} ({vendor.date or 'no date'})"),
            ("main node", client.main_node.digits),
            ("max frame length", f"{info.max_frame_len} bytes"),
            ("monitor timeout", f"{info.monitor_max_timeout_s} s (a read's deadline)"),
            ("broadcast timeout", f"{info.broadcast_max_timeout_s} s"),
            ("nodes", f"{info.node_count} of {info.max_nodes}"),
            (
                "rates",
                ", ".join(f"{r.value} {'kbit/s' if r.kbps else 'bit/s'}" for r in info.rates),
            ),
            ("channels", str(info.channels)),
            ("concurrency", "not reported by the module: learnt from deny 109 when reading"),
        ]
    width = max(len(k) for k, _ in rows)
    print(f"carrier module on {url}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0


# --- nodes --------------------------------------------------------------------------------------
def print_nodes(
    url: BusUrl,
    archived: list[ArchivedNode] | None,
    *,
    trace: TraceHook | bool | None = None,
    command: str = "carrier nodes",
) -> int:
    """The module's node list as a table, beside the archive when one is given."""
    hook: TraceHook | None = _trace if trace is True else (trace or None)

    async def go() -> list[q.NodeInfo]:
        async with technician_client(url, trace=hook) as client:
            await client.module_info()
            return await _node_list(client)

    try:
        nodes = asyncio.run(go())
    except (TransportError, ModuleRejection, PayloadError) as exc:
        print(f"meterlink {command}: {exc}", file=sys.stderr)
        return 1
    wanted = {n.address: n for n in archived} if archived is not None else None
    unheard = [n for n in nodes if not (n.phase or n.signal_quality or n.relay_level)]
    print(f"{len(nodes)} nodes in the module")
    for node in nodes:
        digits = node.addr.digits
        if node in unheard:
            heard = "unknown: never heard (no phase, no signal quality)"
        else:
            heard = (
                f"phase {node.phase}  hops {node.relay_level + 1}  quality {node.signal_quality:>2}"
            )
        mark = ""
        if wanted is not None:
            mark = "  archived" if digits in wanted else "  EXTRA: not in the archive"
        protocol = _PROTOCOL_NAMES.get(node.protocol, str(node.protocol))
        print(f"  {digits}  {protocol:<11}  {heard}{mark}")
    if wanted is not None:
        present = {n.addr.digits for n in nodes}
        missing = [a for a in wanted if a not in present]
        extra = [n for n in nodes if n.addr.digits not in wanted]
        print(f"{len(missing)} archived meters not in the module")
        for address in missing:
            print(f"  {address}  MISSING: archived, not in the module")
        print(
            f"summary: {len(nodes) - len(extra)} archived, {len(extra)} extra,"
            f" {len(missing)} missing, {len(unheard)} unknown (never heard)"
        )
    return 0


async def _node_list(client: CarrierClient) -> list[q.NodeInfo]:
    """The node list with progress on a terminal (a page of AFN10 F2 at a time)."""
    count = await client._command(q.QueryNodeCount(), q.NodeCount)
    nodes: list[q.NodeInfo] = []
    page = max(1, min(32, (client.link.max_frame_len - 24) // 8))
    while len(nodes) < count.total:
        _progress(f"reading the node list: {len(nodes)}/{count.total}")
        got = await client._command(
            q.QueryNodes(len(nodes) + 1, min(page, count.total - len(nodes))), q.NodeList
        )
        if not got.nodes:
            break
        nodes.extend(got.nodes)
    _progress_done()
    return nodes


# --- sync ---------------------------------------------------------------------------------------
async def _sync(
    url: BusUrl, archived: list[ArchivedNode], trace: TraceHook | None, *, dry_run: bool
) -> int:
    async with technician_client(url, trace=trace) as client:
        await client.module_info()
        if dry_run:
            present = {n.addr.digits for n in await _node_list(client)}
            wanted = {n.address for n in archived}
            missing, extra = sorted(wanted - present), sorted(present - wanted)
            print(f"would add {len(missing)} and delete {len(extra)} nodes (dry run)")
        else:
            _progress(f"syncing {len(archived)} archived meters")
            result = await client.sync(archived)
            _progress_done()
            missing, extra = result.added, result.deleted
            print(
                f"module synced: {result.module_before} nodes before, {len(archived)} archived;"
                f" added {len(missing)}, deleted {len(extra)}"
            )
    for address in missing:
        print(f"  {address}  {'ADD' if dry_run else 'added'}")
    for address in extra:
        print(f"  {address}  {'DELETE' if dry_run else 'deleted'}")
    return 0


# --- read ---------------------------------------------------------------------------------------
def _read(url: BusUrl, args: argparse.Namespace, trace: TraceHook | None) -> int:
    from agent.technician import print_reads

    edition = dlt645.Edition(args.edition)
    try:
        address = dlt645.Address.parse(args.meter)
        dis = [dlt645.parse_item(item, edition) for item in args.items]
    except LocalProtocolError as exc:
        print(f"meterlink carrier read: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        async with technician_client(url, trace=trace) as client:
            return await print_reads(client, address, edition, dis, json_out=args.json)

    return _guard(go)
