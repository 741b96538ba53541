"""Q/GDW 1376.2 link frames, one complete frame at a time.

    68  L L  C  R0..R5  [A1 (A2 × relay level) A3]  AFN  DT1 DT2  data  CS  16

L (two bytes, low first) counts the WHOLE frame, 68 through 16. CS is the sum of C through the
last data byte, mod 256. The address field is present iff R0.D2 (the communication-module flag)
is set: down A1 + A2 × relay level + A3, up A1 + A3 only. R5 is SEQ. `Frame.data` is the data
unit after DT2, opaque here (the message modules give it a meaning). For a byte stream use
`stream.FrameDecoder`.

The information field R is read as one 48-bit little-endian integer; every field of `DownInfo` /
`UpInfo` is a (bit offset, width) row of a table, so each direction is data, not code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from functools import lru_cache
from typing import Any, ClassVar

from protocols.errors import ChecksumError, FramingError, LocalProtocolError, TruncatedFrame
from protocols.q13762 import _wire
from protocols.q13762.address import NodeAddress

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_FRAME",
    "CommMode",
    "Control",
    "Direction",
    "DownInfo",
    "Frame",
    "UpInfo",
    "checksum",
    "decode_frame",
    "dt_to_fn",
    "encode_frame",
    "fn_to_dt",
]

#: the L field is 16 bits: no frame can be longer
MAX_FRAME = 0xFFFF
#: what decoders accept unless told otherwise: the largest "max frame length" any module in
#: the sources reports in AFN03 F10 (2048; others 2012, 1103). Set it from F10.
DEFAULT_MAX_FRAME = 2048
#: Fn = DT2 × 8 + bit index (1..8): F1 .. F2048
MAX_FN = 255 * 8 + 8


class Direction(StrEnum):
    """C.D7: down = concentrator → module, up = module → concentrator."""

    DOWN = "down"
    UP = "up"

    def __str__(self) -> str:
        return self.value


class CommMode(IntEnum):
    """C.D5..D0, the communication mode (other values decode as plain ints)."""

    NARROWBAND = 1  # centralized-routing narrowband PLC
    DISTRIBUTED = 2  # distributed-routing PLC
    HPLC = 3  # broadband PLC
    WIRELESS = 10  # micro-power wireless
    ETHERNET = 20


@dataclass(frozen=True, slots=True)
class Control:
    """The control byte C: D7 DIR, D6 PRM (1 = from the initiating station), D5..D0 mode."""

    direction: Direction
    prm: bool
    comm_mode: int = CommMode.HPLC

    def __post_init__(self) -> None:
        if not 0 <= self.comm_mode <= 0x3F:
            raise LocalProtocolError(f"communication mode {self.comm_mode} does not fit 6 bits")

    @classmethod
    def from_byte(cls, c: int) -> Control:
        return _CONTROLS[c]

    @property
    def byte(self) -> int:
        return (self.direction is Direction.UP) << 7 | self.prm << 6 | self.comm_mode


_CONTROLS = tuple(
    Control(Direction.UP if c & 0x80 else Direction.DOWN, bool(c & 0x40), c & 0x3F)
    for c in range(256)
)

# --- the information field R ----------------------------------------------------------------
# (field, bit offset in R0..R5 read as a little-endian 48-bit integer, width)
_DOWN_BITS: tuple[tuple[str, int, int], ...] = (
    ("route_flag", 0, 1),  # R0.D0: 1 = no routing (bypass)
    ("affiliated_flag", 1, 1),  # R0.D1
    ("module_flag", 2, 1),  # R0.D2: 1 = to a slave node's module: address field present
    ("conflict_flag", 3, 1),  # R0.D3: conflict detection
    ("relay_level", 4, 4),  # R0.D7..D4: number of A2 relay addresses
    ("channel", 8, 4),  # R1.D3..D0
    ("ecc", 12, 4),  # R1.D7..D4: error-correction code id
    ("reply_bytes", 16, 8),  # R2: expected reply bytes
    ("rate", 24, 15),  # R3..R4 D14..D0: communication rate, 0 = default
    ("rate_unit", 39, 1),  # R4.D7 (D15 of the rate): 1 = kbit/s
    ("seq", 40, 8),  # R5
)
_UP_BITS: tuple[tuple[str, int, int], ...] = (
    ("route_flag", 0, 1),  # R0.D0
    ("module_flag", 2, 1),  # R0.D2: address field (A1 + A3) present
    ("relay_level", 4, 4),  # R0.D7..D4
    ("channel", 8, 4),  # R1.D3..D0
    ("phase", 16, 4),  # R2.D3..D0: measured phase, 0 unknown, 1..3
    ("channel_characteristic", 20, 4),  # R2.D7..D4: meter channel characteristic
    ("command_quality", 24, 4),  # R3.D3..D0: last-hop command signal quality
    ("reply_quality", 28, 4),  # R3.D7..D4: last-hop reply signal quality
    ("event_flag", 32, 1),  # R4.D0: the module has events to report
    ("seq", 40, 8),  # R5
)


def _mask(bits: tuple[tuple[str, int, int], ...]) -> int:
    mask = 0
    for _, shift, width in bits:
        mask |= ((1 << width) - 1) << shift
    return mask


#: bits the up table leaves undefined (R0.D1, R0.D3, R1.D7..D4, R4.D7..D1): often set by real
#: modules (R0 = 0C, R1 = F1, R4 = FC seen), never rejected, kept so frames re-encode exactly
UP_RESERVED_MASK = ((1 << 48) - 1) & ~_mask(_UP_BITS)


def _unpack(bits: tuple[tuple[str, int, int], ...], value: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, shift, width in bits:
        field = (value >> shift) & ((1 << width) - 1)
        out[name] = bool(field) if width == 1 else field
    return out


def _pack(bits: tuple[tuple[str, int, int], ...], obj: object) -> int:
    value = 0
    for name, shift, width in bits:
        field = int(getattr(obj, name))
        if not 0 <= field < 1 << width:
            raise LocalProtocolError(f"information field {name}={field} does not fit {width} bits")
        value |= field << shift
    return value


@dataclass(frozen=True, slots=True)
class DownInfo:
    """R of a down frame (concentrator → module). `seq` is R5, the message sequence number.

    `rate` / `rate_unit` read R3–R4 as one 16-bit value with D15 the unit flag (the standard's
    table as quoted by a concentrator-simulator tool); a library that reads two separate bytes
    gets the same bits (UNCONFIRMED which reading is right; nobody depends on the field).
    """

    seq: int = 0
    route_flag: bool = False
    affiliated_flag: bool = False
    module_flag: bool = False
    conflict_flag: bool = False
    relay_level: int = 0
    channel: int = 0
    ecc: int = 0
    reply_bytes: int = 0
    rate: int = 0
    rate_unit: bool = False

    direction: ClassVar[Direction] = Direction.DOWN

    def __post_init__(self) -> None:
        _pack(_DOWN_BITS, self)  # every field in range

    @classmethod
    def from_bytes(cls, raw: bytes) -> DownInfo:
        return _down_info(bytes(raw)) if cls is DownInfo else cls(**_down_fields(raw))

    def to_bytes(self) -> bytes:
        return _pack(_DOWN_BITS, self).to_bytes(6, "little")


@dataclass(frozen=True, slots=True)
class UpInfo:
    """R of an up frame (module → concentrator). `reserved` keeps the undefined bits as they
    came (a 48-bit mask over R0..R5, `UP_RESERVED_MASK`), so a frame re-encodes byte for byte."""

    seq: int = 0
    route_flag: bool = False
    module_flag: bool = False
    relay_level: int = 0
    channel: int = 0
    phase: int = 0
    channel_characteristic: int = 0
    command_quality: int = 0
    reply_quality: int = 0
    event_flag: bool = False
    reserved: int = 0

    direction: ClassVar[Direction] = Direction.UP

    def __post_init__(self) -> None:
        _pack(_UP_BITS, self)
        if self.reserved & ~UP_RESERVED_MASK:
            raise LocalProtocolError(f"reserved bits {self.reserved:#x} outside the reserved mask")

    @classmethod
    def from_bytes(cls, raw: bytes) -> UpInfo:
        return _up_info(bytes(raw)) if cls is UpInfo else cls(**_up_fields(raw))

    def to_bytes(self) -> bytes:
        return (_pack(_UP_BITS, self) | self.reserved).to_bytes(6, "little")


Info = DownInfo | UpInfo


def _down_fields(raw: bytes) -> dict[str, Any]:
    return _unpack(_DOWN_BITS, int.from_bytes(raw, "little"))


def _up_fields(raw: bytes) -> dict[str, Any]:
    value = int.from_bytes(raw, "little")
    return {**_unpack(_UP_BITS, value), "reserved": value & UP_RESERVED_MASK}


# a line repeats a few R fields (SEQ aside): decode each once, the dataclasses are immutable
@lru_cache(maxsize=4096)
def _down_info(raw: bytes) -> DownInfo:
    return DownInfo(**_down_fields(raw))


@lru_cache(maxsize=4096)
def _up_info(raw: bytes) -> UpInfo:
    return UpInfo(**_up_fields(raw))


# --- DT <-> Fn -----------------------------------------------------------------------------
def fn_to_dt(fn: int) -> bytes:
    """DT1 DT2 of Fn: F1 = 01 00, F10 = 02 01, F111 = 40 0D."""
    if not 1 <= fn <= MAX_FN:
        raise LocalProtocolError(f"F{fn} is outside F1..F{MAX_FN}")
    return bytes((1 << ((fn - 1) % 8), (fn - 1) // 8))


_BIT_INDEX = {1 << i: i + 1 for i in range(8)}


def dt_to_fn(dt1: int, dt2: int) -> int | None:
    """Fn = DT2 × 8 + index of the single set bit of DT1 (1-based); None when DT1 has no bit or
    several (a 376.1-style group, not used by 1376.2)."""
    index = _BIT_INDEX.get(dt1)
    return None if index is None else dt2 * 8 + index


def checksum(body: bytes | bytearray) -> int:
    """Sum mod 256 of C through the last data byte."""
    return sum(body) & 0xFF


# --- the frame -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    """One 1376.2 frame. `src` / `dst` are A1 / A3 (None without an address field), `relays`
    the A2 relay addresses (down frames only, as many as `info.relay_level`)."""

    control: Control
    info: Info
    afn: int
    fn: int
    data: bytes = b""
    src: NodeAddress | None = None
    dst: NodeAddress | None = None
    relays: tuple[NodeAddress, ...] = ()

    def __post_init__(self) -> None:
        if self.control.direction is not self.info.direction:
            raise LocalProtocolError(
                f"a {self.control.direction} control byte with {type(self.info).__name__}"
            )
        if not 0 <= self.afn <= 0xFF:
            raise LocalProtocolError(f"AFN {self.afn:#x} does not fit one byte")
        fn_to_dt(self.fn)
        if self.info.module_flag != (self.src is not None) or (self.src is None) != (
            self.dst is None
        ):
            raise LocalProtocolError(
                "the address field (A1 and A3) is present iff R0.D2 (module flag) is set"
            )
        if self.relays and (self.src is None or isinstance(self.info, UpInfo)):
            raise LocalProtocolError("relay addresses (A2) exist only in addressed down frames")
        if (
            self.src is not None
            and isinstance(self.info, DownInfo)
            and len(self.relays) != self.info.relay_level
        ):
            raise LocalProtocolError(
                f"relay level {self.info.relay_level} but {len(self.relays)} relay addresses"
            )
        if self.length > MAX_FRAME:
            raise LocalProtocolError(f"frame of {self.length} bytes exceeds L = {MAX_FRAME}")

    @property
    def direction(self) -> Direction:
        return self.control.direction

    @property
    def prm(self) -> bool:
        return self.control.prm

    @property
    def comm_mode(self) -> int:
        return self.control.comm_mode

    @property
    def seq(self) -> int:
        return self.info.seq

    @property
    def addressed(self) -> bool:
        return self.src is not None

    @property
    def dt(self) -> bytes:
        return fn_to_dt(self.fn)

    @property
    def length(self) -> int:
        """L: the whole frame in bytes."""
        addresses = 0 if self.src is None else _wire.ADDRESS_LEN * (2 + len(self.relays))
        return _wire.MIN_FRAME + addresses + len(self.data)

    def with_seq(self, seq: int) -> Frame:
        """The same frame with another SEQ (e.g. a retransmission numbered anew)."""
        return dataclasses.replace(self, info=dataclasses.replace(self.info, seq=seq))

    def to_bytes(self, *, max_length: int = MAX_FRAME) -> bytes:
        return encode_frame(self, max_length=max_length)


def encode_frame(frame: Frame, *, max_length: int = MAX_FRAME) -> bytes:
    """The frame as sent. `max_length` is the peer's limit (the module's AFN03 F10 "max frame
    length"): a longer frame raises `LocalProtocolError` instead of being refused on the line."""
    length = frame.length
    if length > max_length:
        raise LocalProtocolError(
            f"frame of {length} bytes exceeds the module's maximum frame length {max_length}"
        )
    body = bytearray(_header(length, frame.control.byte, frame.info.to_bytes())[3:])
    if frame.src is not None and frame.dst is not None:
        body += frame.src.wire
        for relay in frame.relays:
            body += relay.wire
        body += frame.dst.wire
    body.append(frame.afn)
    body += fn_to_dt(frame.fn)
    body += frame.data
    return b"\x68" + length.to_bytes(2, "little") + bytes(body) + bytes((checksum(body), _wire.END))


@lru_cache(maxsize=1024)
def _header(length: int, control: int, info: bytes) -> bytes:
    return bytes(_wire.HEADER.build({"length": length, "control": control, "info": info}))


def address_field_len(control: int, r0: int) -> int:
    """Bytes of the address field announced by C and R0 (0 when R0.D2 is clear)."""
    if not r0 & 0x04:
        return 0
    relays = 0 if control & 0x80 else r0 >> 4
    return _wire.ADDRESS_LEN * (2 + relays)


def decode_frame(raw: bytes, *, max_length: int = MAX_FRAME) -> Frame:
    """Decode exactly one frame (leading FE bytes allowed, nothing after the end byte).

    Raises a `FrameError` subclass naming what is wrong: `TruncatedFrame` (fewer bytes than L),
    `FramingError` (start/end byte, L impossible or over `max_length`, bytes after the end, an
    address field that does not fit, a DT1 without exactly one bit), `ChecksumError`.
    """
    start = 0
    while start < len(raw) and raw[start] == _wire.WAKEUP:
        start += 1
    frame_bytes = bytes(raw[start:])
    if len(frame_bytes) < _wire.MIN_FRAME:
        raise TruncatedFrame(
            f"frame of {len(frame_bytes)} bytes is shorter than the minimum {_wire.MIN_FRAME}",
            frame_bytes,
        )
    if frame_bytes[0] != _wire.START:
        raise FramingError(f"frame starts with {frame_bytes[0]:02X}, expected 68", frame_bytes)
    length = int.from_bytes(frame_bytes[1:3], "little")
    if length < _wire.MIN_FRAME:
        raise FramingError(f"L={length} is below the minimum frame of 15 bytes", frame_bytes)
    if length > max_length:
        raise FramingError(f"L={length} exceeds the limit {max_length}", frame_bytes)
    if len(frame_bytes) < length:
        raise TruncatedFrame(f"L={length} but only {len(frame_bytes)} bytes", frame_bytes)
    if len(frame_bytes) > length:
        raise FramingError(
            f"L={length} but {len(frame_bytes)} bytes given ({len(frame_bytes) - length} after"
            " the end byte)",
            frame_bytes,
        )
    return parse_validated(frame_bytes)


def parse_validated(frame_bytes: bytes) -> Frame:
    """Check end byte, checksum and structure of a frame delimited by its L, build the `Frame`.

    Shared by `decode_frame` and the stream decoder so both report errors identically.
    """
    length = len(frame_bytes)
    if frame_bytes[-1] != _wire.END:
        raise FramingError(
            f"end byte is {frame_bytes[-1]:02X}, expected 16 (L={length})", frame_bytes
        )
    computed = checksum(frame_bytes[3:-2])
    if frame_bytes[-2] != computed:
        raise ChecksumError(frame_bytes[-2], computed, frame_bytes)
    header = _wire.HEADER.parse(frame_bytes[: _wire.HEADER_LEN])
    control = Control.from_byte(header.control)
    info_raw = bytes(header.info)
    pos = _wire.HEADER_LEN
    addr_len = address_field_len(header.control, info_raw[0])
    if _wire.MIN_FRAME + addr_len > length:
        raise FramingError(
            f"R0={info_raw[0]:02X} announces a {addr_len}-byte address field that does not fit"
            f" in L={length}",
            frame_bytes,
        )
    info: Info = (
        UpInfo.from_bytes(info_raw)
        if control.direction is Direction.UP
        else DownInfo.from_bytes(info_raw)
    )
    src = dst = None
    relays: tuple[NodeAddress, ...] = ()
    if addr_len:
        step = _wire.ADDRESS_LEN
        src = NodeAddress.from_wire(frame_bytes[pos : pos + step])
        relays = tuple(
            NodeAddress.from_wire(frame_bytes[p : p + step])
            for p in range(pos + step, pos + addr_len - step, step)
        )
        dst = NodeAddress.from_wire(frame_bytes[pos + addr_len - step : pos + addr_len])
        pos += addr_len
    afn, dt1, dt2 = frame_bytes[pos], frame_bytes[pos + 1], frame_bytes[pos + 2]
    fn = dt_to_fn(dt1, dt2)
    if fn is None:
        raise FramingError(
            f"DT1={dt1:02X} must have exactly one bit set (AFN {afn:02X})", frame_bytes
        )
    return Frame(control, info, afn, fn, frame_bytes[pos + 3 : -2], src, dst, relays)
