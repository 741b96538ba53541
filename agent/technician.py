"""Technician commands on the same transports as the agent: `meterlink read` and `meterlink scan`.

meterlink read --bus serial:///dev/ttyUSB0 --meter 123456789012 00010000 voltage_a_v --trace
meterlink read --bus modbus+tcp://10.0.0.8:502 --meter 1 --model chint_dtsu666 [voltage_a_v …]
meterlink scan --bus tcp://10.0.0.7:4001 --config /etc/meterlink/agent.toml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.carrier.errors import ModuleDown
from agent.config import MeterConfig
from agent.dlt645 import Dlt645Client, FrameSink, reason_of
from agent.transports import BusUrl, BusUrlError, TransportError, open_byte_transport
from common.config import ConfigError
from protocols.dlt645 import (
    WILDCARD,
    Address,
    Edition,
    ReadAddressRequest,
    ReadRequest,
    format_di,
    hex_spaced,
    parse_item,
    to_frame,
)
from protocols.dlt645.tariff import describe_item
from protocols.errors import LocalProtocolError, ValueFormatError
from protocols.modbus import MAPS, load_map

__all__ = ["READ", "SCAN", "print_reads", "scan_bus"]


def _trace(direction: str, data: bytes) -> None:
    print(f"{direction} {hex_spaced(data)}", file=sys.stderr, flush=True)


def _bus(text: str, command: str) -> BusUrl:
    try:
        return BusUrl.parse(text)
    except BusUrlError as exc:
        print(f"meterlink {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class _Read:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--bus", required=True, help="bus URL, e.g. serial:///dev/ttyUSB0?baud=2400"
        )
        parser.add_argument(
            "--meter", required=True, help="meter address (nameplate order); Modbus: unit id"
        )
        parser.add_argument("--edition", choices=["2007", "1997"], default="2007")
        parser.add_argument(
            "--model",
            help=f"Modbus buses: the register map ({', '.join(sorted(MAPS))} or the model name)",
        )
        parser.add_argument("--trace", action="store_true", help="print every frame on stderr")
        parser.add_argument("--json", action="store_true", help="one JSON object per item")
        parser.add_argument(
            "items",
            nargs="*",
            help="DIs (hex) or measurement names; Modbus: measurement names (default: all mapped)",
        )

    def run(self, args: argparse.Namespace) -> int:
        url = _bus(args.bus, "read")
        if url.is_modbus:
            return _read_modbus(url, args)
        if not args.items:
            print("meterlink read: name at least one item (a DI or a measurement)", file=sys.stderr)
            return 2
        edition = Edition(args.edition)
        try:
            address = Address.parse(args.meter)
            dis = [parse_item(item, edition) for item in args.items]
        except LocalProtocolError as exc:
            print(f"meterlink read: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(self._read(url, address, edition, dis, args))

    async def _read(
        self,
        url: BusUrl,
        address: Address,
        edition: Edition,
        dis: list[int],
        args: argparse.Namespace,
    ) -> int:
        trace = _trace if args.trace else None
        try:
            if url.is_carrier:
                from agent.carrier.client import technician_client

                async with technician_client(url, trace=trace) as carrier:
                    return await print_reads(carrier, address, edition, dis, json_out=args.json)
            async with open_byte_transport(url, trace=trace) as bus:
                return await print_reads(
                    Dlt645Client(bus), address, edition, dis, json_out=args.json
                )
        except TransportError as exc:
            print(f"meterlink read: {exc}", file=sys.stderr)
            return 1


async def print_reads(
    client: Dlt645Client, address: Address, edition: Edition, dis: list[int], *, json_out: bool
) -> int:
    """Read each item and print its values (one line per value, or one JSON object per item);
    1 when an item failed (its reason printed in its place), 0 otherwise. A carrier module that
    does not answer at all raises ModuleDown (a TransportError) for the caller to say once."""
    failed = 0
    for di in dis:
        try:
            result = await client.read(address, di, edition)
        except ModuleDown:
            raise  # no meter behind it can be read: said once, by the caller
        except Exception as exc:
            reason, detail = reason_of(exc)
            failed += 1
            if json_out:
                print(
                    json.dumps(
                        {"di": f"{format_di(di, edition)}", "error": reason.value, "detail": detail}
                    )
                )
            else:
                print(f"{format_di(di, edition)}  FAILED {reason.value}: {detail}")
            continue
        tariff = None if result.measurements else _tariff_item(di, result.value, edition)
        if json_out:
            values = {m.name: m.as_json() for m in result.measurements}
            line: dict[str, object] = {"di": f"{format_di(di, edition)}", "values": values}
            if tariff is not None:
                line["tariff_item"] = {"name": tariff[0], "value": tariff[1]}
            print(json.dumps(line, ensure_ascii=False))
        elif tariff is not None:
            shown = json.dumps(tariff[1], ensure_ascii=False)
            print(f"{format_di(di, edition)}  {tariff[0]} = {shown}")
        elif not result.measurements:
            print(f"{format_di(di, edition)}  (not catalogued) {hex_spaced(result.value)}")
        for m in result.measurements if not json_out else []:
            unit = f" {m.unit}" if m.unit else ""
            flags = f"  [{', '.join(m.flags)}]" if m.flags else ""
            print(f"{format_di(di, edition)}  {m.name} = {m.value}{unit}{flags}")
    return 1 if failed else 0


def _tariff_item(di: int, value: bytes, edition: Edition) -> tuple[str, object] | None:
    """A tariff set-up item decoded for the technician (docs/tariff.md), None otherwise or when
    its bytes do not fit (then the raw bytes are shown)."""
    if edition is not Edition.V2007:
        return None
    try:
        return describe_item(di, value)
    except ValueFormatError:
        return None


def _read_modbus(url: BusUrl, args: argparse.Namespace) -> int:
    from agent.modbus import ModbusBus, ModbusClient

    if not args.model:
        known = ", ".join(sorted(MAPS))
        print(f"meterlink read: a Modbus meter needs --model ({known})", file=sys.stderr)
        return 2
    if not args.meter.isdigit() or not 1 <= int(args.meter) <= 247:
        print(f"meterlink read: --meter {args.meter}: a Modbus unit id is 1..247", file=sys.stderr)
        return 2
    try:
        meter = MeterConfig(bus="cli", protocol="modbus", unit=int(args.meter), model=args.model)
        regmap = load_map(meter.model)
    except ValueError as exc:  # unit not 1..247; no such register map (LocalProtocolError)
        print(f"meterlink read: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.items) - set(regmap.measurements))
    if unknown:
        print(
            f"meterlink read: {regmap.model} maps no {', '.join(unknown)}"
            f" (it maps {', '.join(sorted(regmap.measurements))})",
            file=sys.stderr,
        )
        return 2

    # the failure is reported below, once, with its reason; pymodbus would log it again
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def read() -> int:
        bus = ModbusBus(url)
        try:
            values = await ModbusClient(bus).read(meter, set(args.items) or None)
        except Exception as exc:
            reason, detail = reason_of(exc)
            print(f"unit {meter.unit}  FAILED {reason.value}: {detail}")
            return 1
        finally:
            await bus.close()
        for m in values:
            if args.json:
                print(json.dumps({m.name: m.as_json()}, ensure_ascii=False))
            else:
                print(f"unit {meter.unit}  {m.name} = {m.value}{f' {m.unit}' if m.unit else ''}")
        return 0

    return asyncio.run(read())


@dataclass
class ScanResult:
    found: list[str] = field(default_factory=list)
    probes: int = 0
    collisions: int = 0


async def _probe(client: Dlt645Client, address: Address) -> tuple[list[str], bool]:
    """Ask every meter matching `address` for its address; (clean replies, collision seen)."""
    if address.is_wildcard:
        request = to_frame(WILDCARD, ReadAddressRequest())
    else:
        request = to_frame(address, ReadRequest(0x04000401))
    listen = _Listen(FrameSink(Edition.V2007))
    with contextlib.suppress(TransportError):  # silence is an answer: nobody matches
        await client.transport.exchange(request.to_bytes(client.transport.url.wakeup), listen)
    sink = listen.sink
    found = sorted({f.address.digits for f in sink.frames if f.address.is_specific})
    # overlapping replies garble each other: bytes that make no clean single frame = collision
    collided = (
        bool(sink.errors) or len(sink.frames) > 1 or (listen.received > 0 and not sink.frames)
    )
    return found, collided


class _Listen:
    """Listen for the whole reply window: several meters may answer one probe."""

    def __init__(self, sink: FrameSink) -> None:
        self.sink = sink
        self.received = 0

    def feed(self, data: bytes) -> bool:
        self.received += len(data)
        self.sink.feed(data)
        return False

    @property
    def started(self) -> bool:
        return False  # keep the window open until it ends, even after a frame


async def scan_bus(client: Dlt645Client, *, progress: Any = None) -> ScanResult:
    """Find every meter on a multi-drop bus.

    First 13H to all-AA: one clean reply and no noise means one meter. Otherwise a search on
    shortened addresses (缩位寻址), lowest byte first: probe ``AA…AA xx`` for each xx; silence
    prunes, one clean reply finds a meter, a collision (several replies, or garbled bytes) fixes
    that byte and descends to the next. Cost: at most 100 probes per ambiguous byte.
    """
    result = ScanResult()
    found, collided = await _probe(client, WILDCARD)
    result.probes += 1
    if found and not collided:
        result.found = found
        return result
    result.collisions += collided
    seen: set[str] = set()

    async def descend(prefix: bytes) -> None:
        for low in range(100):
            digit = bytes((((low // 10) << 4) | (low % 10),))
            wire = prefix + digit + b"\xaa" * (6 - len(prefix) - 1)
            replies, collision = await _probe(client, Address(wire))
            result.probes += 1
            if progress:
                progress(result)
            seen.update(replies)
            if collision and len(prefix) + 1 < 6:
                result.collisions += 1
                await descend(prefix + digit)

    await descend(b"")
    result.found = sorted(seen)
    return result


class _Scan:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bus", required=True, help="bus URL")
        parser.add_argument("--config", type=Path, help="agent config: compare with its archive")
        parser.add_argument("--bus-name", help="which configured bus this is (default: by URL)")
        parser.add_argument(
            "--reply-timeout-ms",
            type=int,
            default=300,
            help="silence that ends a probe (default 300; the standard allows 500)",
        )
        parser.add_argument("--trace", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        url = _bus(args.bus, "scan")
        if url.is_modbus:
            print(
                "meterlink scan: searches DL/T 645 buses by address; on a Modbus bus read each"
                " unit id with `meterlink read --bus URL --meter UNIT --model MAP`",
                file=sys.stderr,
            )
            return 2
        archived: set[str] | None = None
        if args.config:
            from agent.archive import ArchiveStore
            from agent.config import load_config

            try:
                cfg = load_config(args.config)
                names = [
                    b.name
                    for b in cfg.buses
                    if args.bus_name in (b.name, None) and (args.bus_name or b.url == args.bus)
                ]
                archived = {
                    m.address.rjust(12, "0")
                    for m in ArchiveStore.preview(cfg)
                    if m.address is not None and (not names or m.bus in names)
                }
            except ConfigError as exc:
                print(f"meterlink scan: configuration error: {exc}", file=sys.stderr)
                return exc.exit_code
        if url.is_carrier:
            # a module knows its network: its node list is the scan (AFN10, no probing)
            from agent.carrier.cli import print_nodes
            from agent.carrier.client import ArchivedNode

            nodes = None if archived is None else [ArchivedNode(a) for a in sorted(archived)]
            return print_nodes(url, nodes, trace=args.trace, command="scan")
        import dataclasses

        url = dataclasses.replace(url, reply_timeout_ms=args.reply_timeout_ms)
        try:
            result = asyncio.run(self._scan(url, args.trace))
        except TransportError as exc:
            print(f"meterlink scan: {exc}", file=sys.stderr)
            return 1
        print(
            f"{len(result.found)} meters found "
            f"({result.probes} probes, {result.collisions} collisions)"
        )
        for address in result.found:
            mark = (
                ""
                if archived is None
                else ("  archived" if address in archived else "  NOT IN ARCHIVE")
            )
            print(f"  {address}{mark}")
        if archived is not None:
            missing = sorted(archived - set(result.found))
            print(f"{len(missing)} archived meters not found")
            for address in missing:
                print(f"  {address}  NOT FOUND")
        return 0

    async def _scan(self, url: BusUrl, trace: bool) -> ScanResult:
        async with open_byte_transport(url, trace=_trace if trace else None) as bus:
            return await scan_bus(Dlt645Client(bus))


READ = _Read()
SCAN = _Scan()
