"""Router and archive data units: AFN10 router queries, AFN11 archive (slave nodes), AFN12
router control. Commands to the module itself: sent WITHOUT an address field (a real CCO
silently ignored AFN10/AFN11 frames that carried one)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Self

from protocols.dlt645.formats import ClockField
from protocols.errors import LocalProtocolError
from protocols.q13762 import _wire
from protocols.q13762.address import NodeAddress
from protocols.q13762.frame import Direction
from protocols.q13762.messages import Counted, Fields, Message, NoData, Protocol, register

__all__ = [
    "AddNodes",
    "DeleteNodes",
    "NodeCount",
    "NodeEntry",
    "NodeInfo",
    "NodeList",
    "QueryNodeCount",
    "QueryNodes",
    "QueryRouterStatus",
    "QueryTopology",
    "RouterPause",
    "RouterRestart",
    "RouterResume",
    "RouterStatus",
    "StartSearch",
    "StopSearch",
]

_DOWN, _UP = Direction.DOWN, Direction.UP

#: ss mm hh DD MM YY, BCD (the 645 clock field of broadcast time)
SSMMHHDDMMYY = ClockField("YYMMDDhhmmss")


def clock_bytes(when: dt.datetime) -> bytes:
    return SSMMHHDDMMYY.encode(when.replace(tzinfo=None, microsecond=0).isoformat())


def clock_of(raw: bytes) -> dt.datetime:
    return dt.datetime.fromisoformat(SSMMHHDDMMYY.decode(raw))


# --- AFN10 router queries ------------------------------------------------------------------
@register
@dataclass(frozen=True, slots=True)
class QueryNodeCount(NoData):
    """AFN10 F1 down: how many slave nodes the module holds."""

    AFN = 0x10
    FN = 1
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class NodeCount(Fields):
    """AFN10 F1 up: nodes in the archive and the most the module supports."""

    total: int
    max_supported: int
    AFN = 0x10
    FN = 1
    DIRECTION = _UP
    PRM = False
    LAYOUT = _wire.NODE_COUNT


@dataclass(frozen=True, slots=True)
class _Page(Fields):
    start_seq: int = 1
    """node sequence number of the first node (the first node is 1)"""
    count: int = 25
    LAYOUT = _wire.NODE_PAGE


@register
@dataclass(frozen=True, slots=True)
class QueryNodes(_Page):
    """AFN10 F2 down: a page of the node list (a real CCO answered 25 per page)."""

    AFN = 0x10
    FN = 2
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class QueryTopology(_Page):
    """AFN10 F21 down: a page of the HPLC network topology (the answer is not decoded here)."""

    AFN = 0x10
    FN = 21
    DIRECTION = _DOWN


# info word of a 10F2 node: (field, bit offset, width)
_NODE_INFO_BITS: tuple[tuple[str, int, int], ...] = (
    ("relay_level", 0, 4),
    ("signal_quality", 4, 4),
    ("phase", 8, 3),
    ("protocol", 11, 3),
    ("reserved", 14, 2),
)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node of the 10F2 answer: address + 16-bit info word. Split UNCONFIRMED: D3–D0 relay
    level, D7–D4 signal quality, D10–D8 phase, D13–D11 protocol — as a real CCO's reply shows
    (info 1000H for nodes added with protocol 02); a 2019-edition parser puts phase in D11–D8
    and protocol in D14–D12 instead."""

    addr: NodeAddress
    protocol: int = Protocol.DLT645_2007
    phase: int = 0
    relay_level: int = 0
    signal_quality: int = 0
    reserved: int = 0

    def __post_init__(self) -> None:
        _info_word(self)

    @property
    def word(self) -> int:
        """The 16-bit info word as sent."""
        return _info_word(self)

    @classmethod
    def from_word(cls, addr: NodeAddress, word: int) -> NodeInfo:
        fields = {n: (word >> s) & ((1 << w) - 1) for n, s, w in _NODE_INFO_BITS}
        return cls(addr, **fields)


def _info_word(node: NodeInfo) -> int:
    value = 0
    for name, shift, width in _NODE_INFO_BITS:
        field = int(getattr(node, name))
        if not 0 <= field < 1 << width:
            raise LocalProtocolError(f"node info {name}={field} does not fit {width} bits")
        value |= field << shift
    return value


@register
@dataclass(frozen=True, slots=True)
class NodeList(Counted):
    """AFN10 F2 up: total nodes in the archive and this page's nodes."""

    total: int
    nodes: tuple[NodeInfo, ...] = ()
    AFN = 0x10
    FN = 2
    DIRECTION = _UP
    PRM = False

    def payload(self) -> bytes:
        nodes = [{"addr": n.addr.wire, "info": n.word} for n in self.nodes]
        return _wire.build(_wire.NODE_LIST, {"total": self.total, "nodes": nodes})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.NODE_LIST, data)
        nodes = tuple(NodeInfo.from_word(NodeAddress.from_wire(n.addr), n.info) for n in c.nodes)
        return cls(c.total, nodes)


@register
@dataclass(frozen=True, slots=True)
class QueryRouterStatus(NoData):
    """AFN10 F4 down: router run status."""

    AFN = 0x10
    FN = 4
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class RouterStatus(Message):
    """AFN10 F4 up, 16 bytes as a real 2013 CCO sends them (a 2019-edition parser expects 17
    and shifts the status bits by one: UNCONFIRMED). Status byte: D0 route done, D1 working,
    D2 event pending, D3 kept as `status_d3`, D7–D4 error-correction code. `work_switch`: D0
    learn/read, D1 registration allowed (kept raw). `relay_levels` / `work_steps` per phase
    1–3 (steps: 1 init, 2 direct, 3 relay, 4 monitor, 5 broadcast, 6 broadcast-collect,
    7 read listening, 8 idle)."""

    route_done: bool = False
    working: bool = False
    event_pending: bool = False
    ecc: int = 0
    node_total: int = 0
    nodes_read: int = 0
    nodes_via_relay: int = 0
    work_switch: int = 0
    rate: int = 0
    relay_levels: tuple[int, int, int] = (0, 0, 0)
    work_steps: tuple[int, int, int] = (0, 0, 0)
    status_d3: bool = False
    AFN = 0x10
    FN = 4
    DIRECTION = _UP
    PRM = False

    def payload(self) -> bytes:
        if not 0 <= self.ecc <= 0x0F:
            raise LocalProtocolError(f"ECC {self.ecc} does not fit 4 bits")
        status = (
            self.route_done | self.working << 1 | self.event_pending << 2 | self.status_d3 << 3
        ) | self.ecc << 4
        return _wire.build(
            _wire.ROUTER_STATUS,
            {
                "status": status,
                "node_total": self.node_total,
                "nodes_read": self.nodes_read,
                "nodes_via_relay": self.nodes_via_relay,
                "work_switch": self.work_switch,
                "rate": self.rate,
                "relay_levels": bytes(self.relay_levels),
                "work_steps": bytes(self.work_steps),
            },
        )

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.ROUTER_STATUS, data)
        levels, steps = bytes(c.relay_levels), bytes(c.work_steps)
        return cls(
            route_done=bool(c.status & 1),
            working=bool(c.status & 2),
            event_pending=bool(c.status & 4),
            ecc=c.status >> 4,
            node_total=c.node_total,
            nodes_read=c.nodes_read,
            nodes_via_relay=c.nodes_via_relay,
            work_switch=c.work_switch,
            rate=c.rate,
            relay_levels=(levels[0], levels[1], levels[2]),
            work_steps=(steps[0], steps[1], steps[2]),
            status_d3=bool(c.status & 8),
        )


# --- AFN11 archive -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeEntry:
    """An archive entry: meter address + protocol (11F1, 06F4 attached nodes)."""

    addr: NodeAddress
    protocol: int = Protocol.DLT645_2007


@register
@dataclass(frozen=True, slots=True)
class AddNodes(Counted):
    """AFN11 F1: add slave nodes, n × (address + protocol) — the 2013 layout without node
    sequence numbers, as every capture has it. Batch what the frame length allows (real
    concentrators add 3–5 per frame)."""

    nodes: tuple[NodeEntry, ...]
    AFN = 0x11
    FN = 1
    DIRECTION = _DOWN

    def payload(self) -> bytes:
        nodes = [{"addr": n.addr.wire, "protocol": n.protocol} for n in self.nodes]
        return _wire.build(_wire.ADD_NODES, {"nodes": nodes})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.ADD_NODES, data)
        return cls(tuple(NodeEntry(NodeAddress.from_wire(n.addr), n.protocol) for n in c.nodes))


@register
@dataclass(frozen=True, slots=True)
class DeleteNodes(Counted, Fields):
    """AFN11 F2: delete slave nodes, n × address."""

    addresses: tuple[NodeAddress, ...]
    AFN = 0x11
    FN = 2
    DIRECTION = _DOWN
    LAYOUT = _wire.DELETE_NODES
    ENTRIES = "addresses"


@register
@dataclass(frozen=True, slots=True)
class StartSearch(Message):
    """AFN11 F5: activate slave-node self-registration (搜表): start time (BCD ss mm hh DD MM YY),
    duration in minutes, retries, random wait slots (a slot is 150 ms)."""

    start: dt.datetime
    duration_min: int
    retries: int = 1
    random_slots: int = 1
    AFN = 0x11
    FN = 5
    DIRECTION = _DOWN

    def payload(self) -> bytes:
        values = {
            "start": clock_bytes(self.start),
            "duration_min": self.duration_min,
            "retries": self.retries,
            "random_slots": self.random_slots,
        }
        return _wire.build(_wire.START_SEARCH, values)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.START_SEARCH, data)
        return cls(clock_of(bytes(c.start)), c.duration_min, c.retries, c.random_slots)

    def json_extras(self) -> dict[str, Any]:
        # the start time also as sent (BCD, seconds first), under the reference's name
        return {"start_time_bcd_ssmmhhDDMMYY": clock_bytes(self.start).hex(" ").upper()}


@register
@dataclass(frozen=True, slots=True)
class StopSearch(NoData):
    """AFN11 F6: stop self-registration."""

    AFN = 0x11
    FN = 6
    DIRECTION = _DOWN


# --- AFN12 router control (down, no data; 00F1 in ~0.1 s) -----------------------------------
@register
@dataclass(frozen=True, slots=True)
class RouterRestart(NoData):
    """AFN12 F1: restart routing (router-led reading starts over)."""

    AFN = 0x12
    FN = 1
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class RouterPause(NoData):
    """AFN12 F2: pause routing — before concentrator-led reading (13F1, F1F1) or an archive
    sync."""

    AFN = 0x12
    FN = 2
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class RouterResume(NoData):
    """AFN12 F3: resume routing."""

    AFN = 0x12
    FN = 3
    DIRECTION = _DOWN
