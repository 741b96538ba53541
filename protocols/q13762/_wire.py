"""Private `construct` layouts of Q/GDW 1376.2 frames and data units.

Only this module (and the message modules through the names below) knows construct; the public
API is the dataclasses in `frame` and the message modules. Every data-unit layout ends with
`Terminated`, so a data unit with bytes left over is refused instead of silently cut.
Multi-byte integers are little-endian everywhere (the standard's 低字节在前).
"""

from __future__ import annotations

from typing import Any

import construct as cs

from protocols.q13762.address import NodeAddress

START = 0x68
END = 0x16
WAKEUP = 0xFE
#: 68 L L C R0..R5
HEADER_LEN = 10
#: AFN DT1 DT2
UNIT_ID_LEN = 3
#: CS 16
TRAILER_LEN = 2
#: no address field, no data: 68 L L C R(6) AFN DT1 DT2 CS 16
MIN_FRAME = HEADER_LEN + UNIT_ID_LEN + TRAILER_LEN
ADDRESS_LEN = 6

HEADER = cs.Struct(
    "start" / cs.Const(b"\x68"),
    "length" / cs.Int16ul,
    "control" / cs.Int8ul,
    "info" / cs.Bytes(6),
).compile()

U8 = cs.Int8ul
U16 = cs.Int16ul
ADDR = cs.Bytes(ADDRESS_LEN)
#: a protocol frame behind a one-byte / two-byte length
FRAME8 = cs.Prefixed(U8, cs.GreedyBytes)
FRAME16 = cs.Prefixed(U16, cs.GreedyBytes)
#: a node address, parsed as a `NodeAddress`
NODE = cs.ExprAdapter(ADDR, lambda obj, ctx: NodeAddress.from_wire(obj), lambda obj, ctx: obj.wire)
#: count(1) + that many node addresses, parsed as a tuple of `NodeAddress`
NODES = cs.ExprAdapter(
    cs.PrefixedArray(U8, NODE), lambda obj, ctx: tuple(obj), lambda obj, ctx: obj
)


def exact(*fields: Any) -> Any:
    """A data-unit layout that must consume the data unit exactly.

    Not compiled: construct's compiled parsers are laxer (a `Prefixed` field whose bytes run
    short is returned short instead of refused, and `struct.error` escapes); a data unit costs
    some tens of µs interpreted, nothing next to the seconds a carrier read takes."""
    return cs.Struct(*fields, cs.Terminated)


def parse(layout: Any, data: bytes) -> Any:
    """Parse with `layout`; construct's errors become ValueError (the callers' PayloadError)."""
    try:
        return layout.parse(data)
    except cs.ConstructError as exc:
        raise ValueError(_reason(exc)) from None


def build(layout: Any, values: dict[str, Any]) -> bytes:
    """Build with `layout`; construct's errors become ValueError (LocalProtocolError upstream)."""
    try:
        return bytes(layout.build(values))
    except cs.ConstructError as exc:
        raise ValueError(_reason(exc)) from None


def _reason(exc: cs.ConstructError) -> str:
    if isinstance(exc, cs.TerminatedError):
        return "bytes left over after the data unit"
    if isinstance(exc, cs.StreamError):
        return "data unit ends early"
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.replace("\n", " ")


# --- data-unit layouts (field names match the dataclasses) ----------------------------------

EMPTY = exact()
CONFIRM = exact("status_bytes" / cs.Bytes(4), "wait_s" / U16)
DENY = exact("code" / U8)
#: protocol(1) length(1) frame — AFN02 F1 both ways, AFN03 F9 down
FORWARD = exact("protocol" / U8, "frame" / FRAME8)
VENDOR = cs.Struct(
    "vendor_code" / cs.Bytes(2),
    "chip_code" / cs.Bytes(2),
    "version_date" / cs.Bytes(3),
    "version" / cs.Bytes(2),
)
VENDOR_EXACT = exact("v" / VENDOR)
MAIN_NODE = exact("main_node_addr" / NODE)
BROADCAST_DELAY = exact("delay_s" / U16, "protocol" / U8, "frame" / FRAME8)
FLAG = exact("flag" / U8)
MONITOR_TIMEOUT = exact("seconds" / U8)
#: AFN05 F3: control word, length, frame
BROADCAST = exact("control" / U8, "frame" / FRAME8)

MODULE_INFO = exact(
    "mode1"
    / cs.BitStruct(
        "reading_mode" / cs.BitsInteger(2),
        "node_info_mode" / cs.Flag,
        "route_mgmt" / cs.Flag,
        "comm_type" / cs.BitsInteger(4),
    ),
    "mode2"
    / cs.BitStruct(
        "broadcast_channel_mode" / cs.BitsInteger(2),
        "broadcast_confirm" / cs.Flag,
        "failover_initiator" / cs.BitsInteger(2),
        "delay_params" / cs.BitsInteger(3),
    ),
    "mode3" / cs.BitStruct("power_fail_info" / cs.BitsInteger(3), "channels" / cs.BitsInteger(5)),
    "mode4" / cs.BitStruct("mode4_reserved" / cs.BitsInteger(4), "rate_count" / cs.BitsInteger(4)),
    "reserved" / cs.Bytes(2),
    "monitor_max_timeout_s" / U8,
    "broadcast_max_timeout_s" / U16,
    "max_frame_len" / U16,
    "max_file_packet" / U16,
    "upgrade_wait_s" / U8,
    "main_node_addr" / ADDR,
    "max_nodes" / U16,
    "node_count" / U16,
    "protocol_release_date" / cs.Bytes(3),
    "protocol_record_date" / cs.Bytes(3),
    "vendor" / VENDOR,
    "rates" / cs.Array(cs.this.mode4.rate_count, U16),
)

# --- AFN06 module reports ---------------------------------------------------------------------
REPORTED_NODE = cs.Struct("addr" / ADDR, "protocol" / U8, "node_seq" / U16)
REPORT_NODES = exact("nodes" / cs.PrefixedArray(U8, REPORTED_NODE))
REPORT_READ = exact("node_seq" / U16, "protocol" / U8, "duration_s" / U16, "frame" / FRAME8)
REPORT_ROUTE = exact("status" / U8)
DEVICE_NODE = cs.Struct(
    "addr" / ADDR,
    "protocol" / U8,
    "node_seq" / U16,
    "device_type" / U8,
    "attached" / cs.PrefixedArray(U8, cs.Struct("addr" / ADDR, "protocol" / U8)),
)
REPORT_DEVICES = exact("nodes" / cs.PrefixedArray(U8, DEVICE_NODE))
REPORT_EVENT = exact("device_type" / U8, "protocol" / U8, "frame" / FRAME8)

# --- AFN10 router queries ---------------------------------------------------------------------
NODE_COUNT = exact("total" / U16, "max_supported" / U16)
NODE_PAGE = exact("start_seq" / U16, "count" / U8)
NODE_LIST = exact(
    "total" / U16,
    "nodes" / cs.PrefixedArray(U8, cs.Struct("addr" / ADDR, "info" / U16)),
)
ROUTER_STATUS = exact(
    "status" / U8,
    "node_total" / U16,
    "nodes_read" / U16,
    "nodes_via_relay" / U16,
    "work_switch" / U8,
    "rate" / U16,
    "relay_levels" / cs.Bytes(3),
    "work_steps" / cs.Bytes(3),
)

# --- AFN11 archive ----------------------------------------------------------------------------
ADD_NODES = exact("nodes" / cs.PrefixedArray(U8, cs.Struct("addr" / ADDR, "protocol" / U8)))
DELETE_NODES = exact("addresses" / NODES)
START_SEARCH = exact(
    "start" / cs.Bytes(6), "duration_min" / U16, "retries" / U8, "random_slots" / U8
)

# --- AFN13 / AFN14 / AFN F1 reading -----------------------------------------------------------
MONITOR_DOWN = exact(
    "protocol" / U8,
    "delay_flag" / U8,
    "affiliated" / NODES,
    "frame" / FRAME8,
)
MONITOR_UP = exact("duration_s" / U16, "protocol" / U8, "frame" / FRAME8)
ROUTER_ASK = exact("phase" / U8, "node_addr" / NODE, "node_seq" / U16)
ROUTER_ANSWER = exact(
    "read_flag" / U8,
    "delay_flag" / U8,
    "frame" / FRAME8,
    "affiliated" / NODES,
)
CLOCK = exact("time" / cs.Bytes(6))
CORRECTION_ASK = exact("node_addr" / NODE, "delay_s" / U16, "frame" / FRAME8)
CORRECTION_ANSWER = exact("frame" / FRAME8)
CONCURRENT_DOWN = exact("protocol" / U8, "reserved" / U8, "frame" / FRAME16)
CONCURRENT_UP = exact("protocol" / U8, "frame" / FRAME16)
