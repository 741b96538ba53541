"""Meter-reading data units, the ones that carry DL/T 645 (or 698.45) frames: AFN02 F1
forward, AFN06 module reports, AFN13 F1 monitor (point read), AFN14 router-led reading, AFN F1 F1
HPLC concurrent reading.

The carried frames are opaque bytes here (FE preamble and all): `carried()` hands them to
`inner.inner_frames`, which splits them with the 645 codec. The `of_645` constructors build
requests from `protocols.dlt645` frames.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Self

from protocols import dlt645
from protocols.errors import LocalProtocolError
from protocols.q13762 import _wire
from protocols.q13762.address import NodeAddress
from protocols.q13762.archive import NodeEntry, clock_bytes, clock_of
from protocols.q13762.frame import Direction
from protocols.q13762.messages import (
    CarriesFrame,
    Counted,
    Fields,
    Message,
    NoData,
    Protocol,
    register,
)

__all__ = [
    "ClockAnswer",
    "ClockRequest",
    "ConcurrentRead",
    "ConcurrentReply",
    "CorrectionAnswer",
    "CorrectionRequest",
    "DeviceNode",
    "Forward",
    "MonitorReply",
    "MonitorRequest",
    "ReadFlag",
    "ReportEvent",
    "ReportNodeDevices",
    "ReportNodes",
    "ReportReadData",
    "ReportRouteChange",
    "ReportedNode",
    "RouterReadAnswer",
    "RouterReadRequest",
    "pack_645",
]

_DOWN, _UP = Direction.DOWN, Direction.UP


def pack_645(frames: Sequence[dlt645.Frame], *, wakeup: int = 0) -> tuple[Protocol, bytes]:
    """The protocol type and bytes of 645 frames to carry (all of one edition), each encoded by
    the 645 codec with `wakeup` FE bytes (captured requests carry 0 or 4)."""
    if not frames:
        raise LocalProtocolError("no DL/T 645 frame to carry")
    editions = {f.edition for f in frames}
    if len(editions) > 1:
        raise LocalProtocolError("one request carries 645 frames of one edition")
    protocol = Protocol.DLT645_2007 if editions == {dlt645.Edition.V2007} else Protocol.DLT645_1997
    return protocol, b"".join(dlt645.encode_frame(f, wakeup=wakeup) for f in frames)


# --- AFN02 F1 forward (both directions) ----------------------------------------------------
@register
@dataclass(frozen=True, slots=True)
class Forward(CarriesFrame):
    """AFN02 F1: forward a protocol frame (transparent point read), both ways:
    protocol(1) length(1) frame. Sent with an address field (A3 = meter)."""

    protocol: int
    frame: bytes
    AFN = 0x02
    FN = 1
    DIRECTION = None
    LAYOUT = _wire.FORWARD


# --- AFN06 module reports (up, PRM 1; confirm each with 00F1 carrying its SEQ) -------------
@dataclass(frozen=True, slots=True)
class ReportedNode:
    addr: NodeAddress
    protocol: int = Protocol.DLT645_2007
    node_seq: int = 0


@register
@dataclass(frozen=True, slots=True)
class ReportNodes(Counted):
    """AFN06 F1: the module reports slave nodes, n × (address, protocol, node seq). Layout
    from a 2019-edition parser; no real frame was found (UNCONFIRMED)."""

    nodes: tuple[ReportedNode, ...]
    AFN = 0x06
    FN = 1
    DIRECTION = _UP

    def payload(self) -> bytes:
        nodes = [
            {"addr": n.addr.wire, "protocol": n.protocol, "node_seq": n.node_seq}
            for n in self.nodes
        ]
        return _wire.build(_wire.REPORT_NODES, {"nodes": nodes})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.REPORT_NODES, data)
        return cls(
            tuple(
                ReportedNode(NodeAddress.from_wire(n.addr), n.protocol, n.node_seq) for n in c.nodes
            )
        )


@register
@dataclass(frozen=True, slots=True)
class ReportReadData(CarriesFrame):
    """AFN06 F2: read data of router-led reading: node seq, protocol, uplink duration (s),
    frame (a real CCO sends the meter's reply with its FE preamble)."""

    node_seq: int
    protocol: int
    frame: bytes
    duration_s: int = 0
    AFN = 0x06
    FN = 2
    DIRECTION = _UP
    LAYOUT = _wire.REPORT_READ


@register
@dataclass(frozen=True, slots=True)
class ReportRouteChange(Fields):
    """AFN06 F3: route work changed: 1 reading task done, 2 search task done, 3 台区 done."""

    status: int
    AFN = 0x06
    FN = 3
    DIRECTION = _UP
    LAYOUT = _wire.REPORT_ROUTE


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A node of 06F4: address, protocol, node seq, device type and its attached nodes."""

    addr: NodeAddress
    protocol: int = Protocol.DLT645_2007
    node_seq: int = 0
    device_type: int = 1
    attached: tuple[NodeEntry, ...] = ()


@register
@dataclass(frozen=True, slots=True)
class ReportNodeDevices(Counted):
    """AFN06 F4: slave nodes with device type (search results): n × (address, protocol, node
    seq, device type, m, m × (address, protocol)). Read from a 2019-edition parser's
    description; no real frame found (UNCONFIRMED)."""

    nodes: tuple[DeviceNode, ...]
    AFN = 0x06
    FN = 4
    DIRECTION = _UP

    def payload(self) -> bytes:
        nodes = [
            {
                "addr": n.addr.wire,
                "protocol": n.protocol,
                "node_seq": n.node_seq,
                "device_type": n.device_type,
                "attached": [{"addr": a.addr.wire, "protocol": a.protocol} for a in n.attached],
            }
            for n in self.nodes
        ]
        return _wire.build(_wire.REPORT_DEVICES, {"nodes": nodes})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.REPORT_DEVICES, data)
        return cls(
            tuple(
                DeviceNode(
                    NodeAddress.from_wire(n.addr),
                    n.protocol,
                    n.node_seq,
                    n.device_type,
                    tuple(NodeEntry(NodeAddress.from_wire(a.addr), a.protocol) for a in n.attached),
                )
                for n in c.nodes
            )
        )


@register
@dataclass(frozen=True, slots=True)
class ReportEvent(CarriesFrame):
    """AFN06 F5: a slave-node event: device type (01 meter), protocol (04 = power-down /
    restore), frame (e.g. the meter's 645 active-report status word reply)."""

    device_type: int
    protocol: int
    frame: bytes
    AFN = 0x06
    FN = 5
    DIRECTION = _UP
    LAYOUT = _wire.REPORT_EVENT


# --- AFN13 F1 monitor a slave node (point read; address field required) --------------------
@register
@dataclass(frozen=True, slots=True)
class MonitorRequest(CarriesFrame):
    """AFN13 F1 down: protocol, delay-related flag, affiliated nodes, length(1), frame. The
    frame may start with FE bytes (counted in the length). One at a time on narrowband."""

    protocol: int
    frame: bytes
    delay_flag: int = 0
    affiliated: tuple[NodeAddress, ...] = ()
    AFN = 0x13
    FN = 1
    DIRECTION = _DOWN
    LAYOUT = _wire.MONITOR_DOWN

    @classmethod
    def of_645(cls, frame: dlt645.Frame, *, wakeup: int = 0, delay_flag: int = 0) -> Self:
        protocol, raw = pack_645([frame], wakeup=wakeup)
        return cls(protocol, raw, delay_flag)

    def json_extras(self) -> dict[str, Any]:
        return {"length": len(self.frame), "n_affiliated": len(self.affiliated)}


@register
@dataclass(frozen=True, slots=True)
class MonitorReply(CarriesFrame):
    """AFN13 F1 up: uplink duration (s), protocol, length(1), the meter's reply. Length 0 =
    the meter did not answer (the AFN F1 F1 rule, UNCONFIRMED for 13F1; a failed read may also
    come back as 00F2 with code 11, 12 or 7)."""

    protocol: int
    frame: bytes
    duration_s: int = 0
    AFN = 0x13
    FN = 1
    DIRECTION = _UP
    PRM = False
    LAYOUT = _wire.MONITOR_UP

    @property
    def answered(self) -> bool:
        return bool(self.frame)


# --- AFN14 router-led reading (the module asks, the concentrator answers) ------------------
class ReadFlag(IntEnum):
    """The concentrator's answer to 14F1."""

    FAILED = 0  # reading this node failed / skip it
    DONE = 1  # this node is finished (no frame)
    READ = 2  # read this frame


@register
@dataclass(frozen=True, slots=True)
class RouterReadRequest(Fields):
    """AFN14 F1 up (C = C3): the router asks what to send to a node: phase, address, node seq.
    Answer with `RouterReadAnswer` carrying its SEQ, else the module asks again (~10 s)."""

    phase: int
    node_addr: NodeAddress
    node_seq: int = 0
    AFN = 0x14
    FN = 1
    DIRECTION = _UP
    LAYOUT = _wire.ROUTER_ASK


@register
@dataclass(frozen=True, slots=True)
class RouterReadAnswer(CarriesFrame):
    """AFN14 F1 down: read flag, delay-related flag, length(1), frame, affiliated nodes. The
    frame carries no protocol field (it is the protocol of the node in the archive)."""

    read_flag: int
    frame: bytes = b""
    delay_flag: int = 0
    affiliated: tuple[NodeAddress, ...] = ()
    AFN = 0x14
    FN = 1
    DIRECTION = _DOWN
    PRM = False
    LAYOUT = _wire.ROUTER_ANSWER

    def json_extras(self) -> dict[str, Any]:
        return {"length": len(self.frame), "n_affiliated": len(self.affiliated)}


@register
@dataclass(frozen=True, slots=True)
class ClockRequest(NoData):
    """AFN14 F2 up: the router asks for the concentrator's clock."""

    AFN = 0x14
    FN = 2
    DIRECTION = _UP


@register
@dataclass(frozen=True, slots=True)
class ClockAnswer(Message):
    """AFN14 F2 down: the clock as BCD ss mm hh DD MM YY (the answer layout is in none of the
    sources: UNCONFIRMED; this is the clock field of 645 broadcast time and of 11F5)."""

    time: dt.datetime
    AFN = 0x14
    FN = 2
    DIRECTION = _DOWN
    PRM = False

    def payload(self) -> bytes:
        return _wire.build(_wire.CLOCK, {"time": clock_bytes(self.time)})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls(clock_of(bytes(_wire.parse(_wire.CLOCK, data).time)))


@register
@dataclass(frozen=True, slots=True)
class CorrectionRequest(CarriesFrame):
    """AFN14 F3 up: the router asks for delay-corrected data: node, delay (s), frame."""

    node_addr: NodeAddress
    delay_s: int
    frame: bytes
    AFN = 0x14
    FN = 3
    DIRECTION = _UP
    LAYOUT = _wire.CORRECTION_ASK


@register
@dataclass(frozen=True, slots=True)
class CorrectionAnswer(CarriesFrame):
    """AFN14 F3 down: length(1) + the corrected frame."""

    frame: bytes
    AFN = 0x14
    FN = 3
    DIRECTION = _DOWN
    PRM = False
    LAYOUT = _wire.CORRECTION_ANSWER


# --- AFN F1 F1 HPLC concurrent reading -----------------------------------------------------
@register
@dataclass(frozen=True, slots=True)
class ConcurrentRead(CarriesFrame):
    """AFN F1 F1 down (address field: A1 main node, A3 meter): protocol(1), byte 2, length(2),
    the 645 frame(s) — several frames for the SAME meter may be concatenated (too many → deny
    110). Byte 2 is `reserved` (concentrator firmware writes 0 "保留"; a closed library names it
    an affiliated-node count; it is 0 in every captured frame): kept as a plain byte, never
    followed by addresses (UNCONFIRMED). A 2024 schema's n × (addr, protocol, len, frame)
    layout matches no capture and is not supported."""

    protocol: int
    frame: bytes
    reserved: int = 0
    AFN = 0xF1
    FN = 1
    DIRECTION = _DOWN
    LAYOUT = _wire.CONCURRENT_DOWN

    @classmethod
    def of_645(cls, frames: Sequence[dlt645.Frame], *, wakeup: int = 0) -> Self:
        protocol, raw = pack_645(frames, wakeup=wakeup)
        return cls(protocol, raw)

    def json_extras(self) -> dict[str, Any]:
        # the reference's name for byte 2, which says what is unsure about it
        return {**CarriesFrame.json_extras(self), "reserved_or_n_affiliated": self.reserved}


@register
@dataclass(frozen=True, slots=True)
class ConcurrentReply(CarriesFrame):
    """AFN F1 F1 up (A1 = the meter): protocol(1), length(2), the reply — no reserved byte.
    Length 0 = the read failed."""

    protocol: int
    frame: bytes = b""
    AFN = 0xF1
    FN = 1
    DIRECTION = _UP
    PRM = False
    LAYOUT = _wire.CONCURRENT_UP

    @property
    def answered(self) -> bool:
        return bool(self.frame)
