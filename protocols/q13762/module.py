"""Module management data units: AFN00 confirm/deny, AFN01 initialisation, AFN03 queries,
AFN05 control. Layouts in `_wire`; see docs/q13762.md for sources and UNCONFIRMED choices."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntFlag
from typing import Any, Self

from protocols.errors import LocalProtocolError, ModuleRejection
from protocols.q13762 import _wire
from protocols.q13762.address import NodeAddress
from protocols.q13762.deny import deny_info
from protocols.q13762.frame import CommMode, Direction
from protocols.q13762.messages import CarriesFrame, Fields, Message, NoData, register

__all__ = [
    "BroadcastDelay",
    "Confirm",
    "DataInit",
    "Deny",
    "HardwareInit",
    "MainNode",
    "ModuleInfo",
    "ParameterInit",
    "QueryBroadcastDelay",
    "QueryMainNode",
    "QueryModuleInfo",
    "QueryVendor",
    "Rate",
    "ReadingMode",
    "SetEventReporting",
    "SetMainNode",
    "SetMonitorTimeout",
    "StartBroadcast",
    "VendorInfo",
    "VendorReply",
    "bcd_date",
]

_DOWN, _UP = Direction.DOWN, Direction.UP


# --- AFN00 confirm / deny (both directions: replies, and the concentrator's confirms) ------
@register
@dataclass(frozen=True, slots=True)
class Confirm(Message):
    """AFN00 F1. `status_bytes`: command status + channel busy bitmap (bit meaning UNCONFIRMED:
    real CCOs send 00 00 00 00, the SGCC test tools FF FF FF FF; kept raw, never rejected).
    `wait_s`: seconds to wait (broadcast-type commands). `status_bytes=None` is the short form
    with no data unit at all (sent by real concentrators; then `wait_s` must be 0)."""

    status_bytes: bytes | None = bytes(4)
    wait_s: int = 0
    AFN = 0x00
    FN = 1
    DIRECTION = None
    PRM = False

    def payload(self) -> bytes:
        if self.status_bytes is None:
            if self.wait_s:
                raise LocalProtocolError("the short confirm (no data unit) carries no wait time")
            return b""
        return _wire.build(
            _wire.CONFIRM, {"status_bytes": self.status_bytes, "wait_s": self.wait_s}
        )

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if not data:
            return cls(None, 0)
        c = _wire.parse(_wire.CONFIRM, data)
        return cls(bytes(c.status_bytes), c.wait_s)


@register
@dataclass(frozen=True, slots=True)
class Deny(Fields):
    """AFN00 F2: the module (or concentrator) refuses; `code` as sent, any value kept."""

    code: int
    AFN = 0x00
    FN = 2
    DIRECTION = None
    PRM = False
    LAYOUT = _wire.DENY

    @property
    def meaning(self) -> str:
        return deny_info(self.code).meaning

    @property
    def kind(self) -> str:
        return deny_info(self.code).kind

    @property
    def retryable(self) -> bool:
        return deny_info(self.code).retryable

    def error(self) -> ModuleRejection:
        """The typed error (`ConcurrencyExceeded`, `ModuleBusy`, …) to raise or branch on."""
        row = deny_info(self.code)
        return row.error(self.code, row.meaning)

    def json_extras(self) -> dict[str, Any]:
        row = deny_info(self.code)
        return {
            "name": row.name,
            "meaning": row.meaning,
            "kind": row.kind,
            "retryable": row.retryable,
        }


# --- AFN01 initialisation (down, no data; answered by 00F1) --------------------------------
@register
@dataclass(frozen=True, slots=True)
class HardwareInit(NoData):
    """AFN01 F1: restart the module. It answers 00F1, reboots and reports AFN03 F10."""

    AFN = 0x01
    FN = 1
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class ParameterInit(NoData):
    """AFN01 F2: parameter-area init — CLEARS THE MODULE'S ARCHIVE, then reboots."""

    AFN = 0x01
    FN = 2
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class DataInit(NoData):
    """AFN01 F3: data-area init."""

    AFN = 0x01
    FN = 3
    DIRECTION = _DOWN


# --- AFN03 queries -------------------------------------------------------------------------
def bcd_date(raw: bytes) -> dt.date | None:
    """A BCD ``DD MM YY`` date (20YY), or None when the bytes are not one."""
    text = raw[::-1].hex()
    if len(raw) != 3 or not text.isdigit():
        return None
    try:
        return dt.date(2000 + int(text[:2]), int(text[2:4]), int(text[4:]))
    except ValueError:
        return None


def _code(text: str, what: str) -> bytes:
    raw = text.encode("latin-1", errors="replace")[::-1]
    if len(raw) != 2:
        raise LocalProtocolError(f"{what} is 2 characters, got {text!r}")
    return raw


def _version(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)[::-1]
    except ValueError:
        raw = b""
    if len(raw) != 2:
        raise LocalProtocolError(f"version is 4 hex digits, got {text!r}")
    return raw


@dataclass(frozen=True, slots=True)
class VendorInfo:
    """Vendor code & version (AFN03 F1, and bytes 30–38 of F10).

    The two 2-character codes are sent low byte first (concentrator firmware matches
    ``('T'<<8)+'C'`` for 鼎信 "TC" after reversing; a real CCO sends ``5A 57`` for "WZ"):
    `vendor_code` and `chip_code` are shown in reading order (UNCONFIRMED for every vendor).
    `version_date` is kept raw (BCD DD MM YY, see `date`); `version` is the 2 BCD bytes as 4
    digits, high byte first (``01 24`` on the wire is ``"2401"``).
    """

    vendor_code: str
    chip_code: str
    version_date: bytes = bytes(3)
    version: str = "0000"

    def __post_init__(self) -> None:
        _code(self.vendor_code, "vendor code")
        _code(self.chip_code, "chip code")
        _version(self.version)
        if len(self.version_date) != 3:
            raise LocalProtocolError("the version date is 3 bytes (DD MM YY)")

    @property
    def date(self) -> dt.date | None:
        return bcd_date(self.version_date)

    def fields(self) -> dict[str, bytes]:
        return {
            "vendor_code": _code(self.vendor_code, "vendor code"),
            "chip_code": _code(self.chip_code, "chip code"),
            "version_date": self.version_date,
            "version": _version(self.version),
        }

    @classmethod
    def from_container(cls, c: Any) -> VendorInfo:
        return cls(
            bytes(c.vendor_code)[::-1].decode("latin-1"),
            bytes(c.chip_code)[::-1].decode("latin-1"),
            bytes(c.version_date),
            bytes(c.version)[::-1].hex().upper(),
        )


@register
@dataclass(frozen=True, slots=True)
class QueryVendor(NoData):
    """AFN03 F1 down: ask for vendor code and version (answered by `VendorReply`)."""

    AFN = 0x03
    FN = 1
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class VendorReply(Message):
    """AFN03 F1 up."""

    vendor: VendorInfo
    AFN = 0x03
    FN = 1
    DIRECTION = _UP
    PRM = False

    def payload(self) -> bytes:
        return _wire.build(_wire.VENDOR_EXACT, {"v": self.vendor.fields()})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls(VendorInfo.from_container(_wire.parse(_wire.VENDOR_EXACT, data).v))


@register
@dataclass(frozen=True, slots=True)
class QueryMainNode(NoData):
    """AFN03 F4 down: ask for the main-node address."""

    AFN = 0x03
    FN = 4
    DIRECTION = _DOWN


@register
@dataclass(frozen=True, slots=True)
class MainNode(Fields):
    """AFN03 F4 up: the main-node address."""

    main_node_addr: NodeAddress
    AFN = 0x03
    FN = 4
    DIRECTION = _UP
    PRM = False
    LAYOUT = _wire.MAIN_NODE


@register
@dataclass(frozen=True, slots=True)
class QueryBroadcastDelay(CarriesFrame):
    """AFN03 F9 down: how long would broadcasting this frame take (protocol + frame)."""

    protocol: int
    frame: bytes
    AFN = 0x03
    FN = 9
    DIRECTION = _DOWN
    LAYOUT = _wire.FORWARD


@register
@dataclass(frozen=True, slots=True)
class BroadcastDelay(CarriesFrame):
    """AFN03 F9 up: delay (s) + protocol + frame."""

    delay_s: int
    protocol: int
    frame: bytes
    AFN = 0x03
    FN = 9
    DIRECTION = _UP
    PRM = False
    LAYOUT = _wire.BROADCAST_DELAY


@register
@dataclass(frozen=True, slots=True)
class QueryModuleInfo(NoData):
    """AFN03 F10 down: ask for the running-mode information (answer `ModuleInfo`)."""

    AFN = 0x03
    FN = 10
    DIRECTION = _DOWN


_NO_ADDRESS = NodeAddress(bytes(6))
_NO_VENDOR = VendorInfo("00", "00")


class ReadingMode(IntFlag):
    """F10 byte 0 D7–D6: which periodic reading the module supports."""

    CONCENTRATOR_LED = 1
    ROUTER_LED = 2


@dataclass(frozen=True, slots=True)
class Rate:
    """One communication rate of F10: D14–D0 the value, D15 the unit (1 = kbit/s, 0 = bit/s)."""

    value: int
    kbps: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 0x7FFF:
            raise LocalProtocolError(f"rate {self.value} does not fit 15 bits")

    @property
    def word(self) -> int:
        return self.value | self.kbps << 15


@register
@dataclass(frozen=True, slots=True)
class ModuleInfo(Message):
    """AFN03 F10 up: local-module running-mode information — sent on request (PRM 0) and
    unsolicited after power-up / init (C = C3, PRM 1: build it with ``prm=True``).

    The agent's figures: `max_frame_len` (never send longer: `encode_frame(max_length=)`),
    `monitor_max_timeout_s` (the AFN13 F1 reply deadline), `max_nodes`. There is no concurrency
    figure: it is learnt from 109 denies. Field layout per concentrator firmware, checked
    against three real frames. UNCONFIRMED: the split of bytes 2–3 (`channels` /
    `power_fail_info`, `rate_count`); the order of the two protocol dates (kept raw, read as
    BCD DD MM YY by `bcd_date`). The defaults describe a typical HPLC module.
    """

    comm_type: int = 2
    """D3–D0 of byte 0: 1 narrowband, 2 HPLC, 3 micro-power wireless"""
    route_mgmt: bool = True
    node_info_mode: bool = True
    """the concentrator must download the archive (slave-node information mode)"""
    reading_mode: int = ReadingMode.CONCENTRATOR_LED | ReadingMode.ROUTER_LED
    delay_params: int = 7
    """D2–D0 of byte 1: transmission-delay parameters supported (broadcast / monitor / router)"""
    failover_initiator: int = 0
    broadcast_confirm: bool = False
    """D5 of byte 1: 1 = confirm before executing a broadcast (wait time in 00F1)"""
    broadcast_channel_mode: int = 0
    channels: int = 1
    power_fail_info: int = 0
    monitor_max_timeout_s: int = 60
    broadcast_max_timeout_s: int = 20
    max_frame_len: int = 2048
    max_file_packet: int = 1024
    upgrade_wait_s: int = 12
    main_node_addr: NodeAddress = _NO_ADDRESS
    max_nodes: int = 2040
    node_count: int = 0
    protocol_release_date: bytes = bytes(3)
    protocol_record_date: bytes = bytes(3)
    vendor: VendorInfo = _NO_VENDOR
    rates: tuple[Rate, ...] = (Rate(100, kbps=True),)
    reserved: bytes = bytes(2)
    """bytes 4–5, kept as sent"""
    mode4_reserved: int = 0
    """D7–D4 of byte 3, kept as sent"""
    AFN = 0x03
    FN = 10
    DIRECTION = _UP
    PRM = False

    @property
    def comm(self) -> CommMode | int:
        """The C-byte communication mode matching `comm_type` (F10 numbers them differently)."""
        return _F10_COMM.get(self.comm_type, self.comm_type)

    def payload(self) -> bytes:
        return _wire.build(
            _wire.MODULE_INFO,
            {
                "mode1": {
                    "reading_mode": self.reading_mode,
                    "node_info_mode": self.node_info_mode,
                    "route_mgmt": self.route_mgmt,
                    "comm_type": self.comm_type,
                },
                "mode2": {
                    "broadcast_channel_mode": self.broadcast_channel_mode,
                    "broadcast_confirm": self.broadcast_confirm,
                    "failover_initiator": self.failover_initiator,
                    "delay_params": self.delay_params,
                },
                "mode3": {"power_fail_info": self.power_fail_info, "channels": self.channels},
                "mode4": {"mode4_reserved": self.mode4_reserved, "rate_count": len(self.rates)},
                "reserved": self.reserved,
                "monitor_max_timeout_s": self.monitor_max_timeout_s,
                "broadcast_max_timeout_s": self.broadcast_max_timeout_s,
                "max_frame_len": self.max_frame_len,
                "max_file_packet": self.max_file_packet,
                "upgrade_wait_s": self.upgrade_wait_s,
                "main_node_addr": self.main_node_addr.wire,
                "max_nodes": self.max_nodes,
                "node_count": self.node_count,
                "protocol_release_date": self.protocol_release_date,
                "protocol_record_date": self.protocol_record_date,
                "vendor": self.vendor.fields(),
                "rates": [rate.word for rate in self.rates],
            },
        )

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(_wire.MODULE_INFO, data)
        return cls(
            comm_type=c.mode1.comm_type,
            route_mgmt=c.mode1.route_mgmt,
            node_info_mode=c.mode1.node_info_mode,
            reading_mode=c.mode1.reading_mode,
            delay_params=c.mode2.delay_params,
            failover_initiator=c.mode2.failover_initiator,
            broadcast_confirm=c.mode2.broadcast_confirm,
            broadcast_channel_mode=c.mode2.broadcast_channel_mode,
            channels=c.mode3.channels,
            power_fail_info=c.mode3.power_fail_info,
            monitor_max_timeout_s=c.monitor_max_timeout_s,
            broadcast_max_timeout_s=c.broadcast_max_timeout_s,
            max_frame_len=c.max_frame_len,
            max_file_packet=c.max_file_packet,
            upgrade_wait_s=c.upgrade_wait_s,
            main_node_addr=NodeAddress.from_wire(c.main_node_addr),
            max_nodes=c.max_nodes,
            node_count=c.node_count,
            protocol_release_date=bytes(c.protocol_release_date),
            protocol_record_date=bytes(c.protocol_record_date),
            vendor=VendorInfo.from_container(c.vendor),
            rates=tuple(Rate(w & 0x7FFF, bool(w >> 15)) for w in c.rates),
            reserved=bytes(c.reserved),
            mode4_reserved=c.mode4.mode4_reserved,
        )

    def json_extras(self) -> dict[str, Any]:
        # the reference's raw views beside the typed fields: the six mode bytes, the dates and
        # vendor block as sent, and the rate words as sent (typed under `rate_list`)
        raw = self.payload()
        return {
            "mode_bytes": _spaced(raw[0:6]),
            "protocol_release_date_DDMMYY": _spaced(self.protocol_release_date),
            "protocol_record_date_DDMMYY": _spaced(self.protocol_record_date),
            "vendor_info": _spaced(raw[30:39]),
            "rate_list": [{"value": r.value, "kbps": r.kbps} for r in self.rates],
            "rates": _spaced(raw[39:]),
        }


def _spaced(data: bytes) -> str:
    return data.hex(" ").upper()


#: F10's communication-type numbers → the C byte's communication modes
_F10_COMM: dict[int, CommMode] = {
    1: CommMode.NARROWBAND,
    2: CommMode.HPLC,
    3: CommMode.WIRELESS,
}


# --- AFN05 control (down; answered by 00F1 / 00F2) -----------------------------------------
@register
@dataclass(frozen=True, slots=True)
class SetMainNode(Fields):
    """AFN05 F1: set the main-node address (read it with 03F4 first; skip when equal)."""

    main_node_addr: NodeAddress
    AFN = 0x05
    FN = 1
    DIRECTION = _DOWN
    LAYOUT = _wire.MAIN_NODE


@register
@dataclass(frozen=True, slots=True)
class SetEventReporting(Message):
    """AFN05 F2: allow (True) or forbid slave-node event reports (AFN06 F5)."""

    enabled: bool
    AFN = 0x05
    FN = 2
    DIRECTION = _DOWN

    def payload(self) -> bytes:
        return bytes((int(self.enabled),))

    @classmethod
    def parse(cls, data: bytes) -> Self:
        flag = _wire.parse(_wire.FLAG, data).flag
        if flag > 1:
            raise ValueError(f"event-report flag {flag:02X} is neither 00 (forbid) nor 01 (allow)")
        return cls(bool(flag))


@register
@dataclass(frozen=True, slots=True)
class StartBroadcast(CarriesFrame):
    """AFN05 F3: broadcast a frame (e.g. a 645 time sync). `control`: 00 transparent,
    01 645-1997, 02 645-2007, 03 phase identification."""

    control: int
    frame: bytes
    AFN = 0x05
    FN = 3
    DIRECTION = _DOWN
    LAYOUT = _wire.BROADCAST
    PROTOCOL_FIELD = "control"


@register
@dataclass(frozen=True, slots=True)
class SetMonitorTimeout(Fields):
    """AFN05 F4: the slave-node monitor max timeout, seconds."""

    seconds: int
    AFN = 0x05
    FN = 4
    DIRECTION = _DOWN
    LAYOUT = _wire.MONITOR_TIMEOUT
