"""Typed application messages: what a frame's data field means, per function and direction.

`to_frame(address, message, edition)` builds the frame for a message; `from_frame(frame)` gives
the message back (or raises `PayloadError` when the data field does not fit the function).
Messages are frozen dataclasses; the edition decides code numbers and DI width, not the class.
The 03H security messages are in `security`; they register themselves in the same tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar

from protocols.dlt645.address import Address
from protocols.dlt645.formats import ClockField, bcd_to_int, int_to_bcd
from protocols.dlt645.frame import Frame
from protocols.dlt645.functions import Control, Edition, di_length
from protocols.errors import LocalProtocolError, MeterRejection, PayloadError, ValueFormatError

__all__ = [
    "BAUD_BITS",
    "BroadcastTimeRequest",
    "ChangeBaudReply",
    "ChangeBaudRequest",
    "ChangePasswordReply",
    "ChangePasswordRequest",
    "ClearDemandRequest",
    "ClearEventsRequest",
    "ClearMeterRequest",
    "Done",
    "ErrorFlags",
    "ErrorFlags1997",
    "ErrorReply",
    "FreezeRequest",
    "Message",
    "ReadAddressReply",
    "ReadAddressRequest",
    "ReadFollowUpRequest",
    "ReadReply",
    "ReadRequest",
    "RelayAction",
    "RemoteControlRequest",
    "RereadRequest",
    "SecureRemoteControlRequest",
    "TerminalOutput",
    "TerminalOutputReply",
    "TerminalOutputRequest",
    "WriteAddressRequest",
    "WriteRequest",
    "from_frame",
    "to_frame",
]

# DL/T 645 §4.5 (both editions): "读数据时 L≤200，写数据时 L≤50". A read *request* is at most
# 10 bytes, so the 200 is the data field of a read reply (longer data goes into follow-up
# frames); the 50 is the data field of a write request, DI and password included. Every other
# frame is only limited by the one-byte L field (255, checked by `Frame`). Decoding accepts
# up to 255 everywhere: vendors do not all keep to the limits.
READ_LIMIT = 200
WRITE_LIMIT = 50
#: password levels of State-Grid secure writes (99 plaintext + MAC, 98 ciphertext + MAC)
SECURE_WRITE_LEVELS = (b"\x98", b"\x99")
#: (edition, function code, reply) -> limit on the data field when *building* that frame
LENGTH_LIMITS: dict[tuple[Edition, int, bool], int] = {
    (Edition.V2007, 0x11, True): READ_LIMIT,
    (Edition.V2007, 0x12, True): READ_LIMIT,
    (Edition.V1997, 0x01, True): READ_LIMIT,
    (Edition.V1997, 0x02, True): READ_LIMIT,
    (Edition.V2007, 0x14, False): WRITE_LIMIT,
    (Edition.V1997, 0x04, False): WRITE_LIMIT,
}


class Message:
    """Base of all messages. Subclasses declare which function code they travel under."""

    CODE: ClassVar[dict[Edition, int]]
    REPLY: ClassVar[bool] = False
    ABNORMAL: ClassVar[bool] = False

    def code(self, edition: Edition) -> int | None:
        return self.CODE.get(edition)

    def payload(self, edition: Edition) -> bytes:
        raise NotImplementedError


_Decoder = Callable[[bytes, Edition], Message]
# (edition, code, reply) -> decoder of the data field; abnormal replies are handled separately
_DECODERS: dict[tuple[Edition, int, bool], _Decoder] = {}


def register(codes: dict[Edition, int], reply: bool) -> Callable[[_Decoder], _Decoder]:
    def deco(fn: _Decoder) -> _Decoder:
        for edition, code in codes.items():
            _DECODERS[(edition, code, reply)] = fn
        return fn

    return deco


def to_frame(
    address: Address, message: Message, edition: Edition = Edition.V2007, *, follow_up: bool = False
) -> Frame:
    """The frame that carries `message` in `edition`.

    Raises `LocalProtocolError` when the message cannot be sent in that edition or breaks a
    length limit of the standard (`LENGTH_LIMITS`). `follow_up` sets D5 (more data follows).
    """
    code = message.code(edition)
    if code is None:
        raise LocalProtocolError(f"{message!r} cannot be sent in DL/T 645-{edition}")
    data = message.payload(edition)
    limit = None if message.ABNORMAL else LENGTH_LIMITS.get((edition, code, message.REPLY))
    if isinstance(message, WriteRequest) and message.password[:1] in SECURE_WRITE_LEVELS:
        # State-Grid secure writes carry whole tables + MAC: the CLDC sequence writes 04060AFF
        # (70 bytes + MAC, a data field of 86), past the standard's 50; only L's byte limits it
        limit = None
    if limit is not None and len(data) > limit:
        raise LocalProtocolError(
            f"{type(message).__name__}: data field of {len(data)} bytes exceeds the limit {limit}"
            " of DL/T 645 (split long read replies into follow-up frames)"
        )
    if not 0 <= code <= 0x1F:
        raise LocalProtocolError(f"function code {code:#x} does not fit 5 bits")
    control = Control.from_byte(code | message.REPLY << 7 | message.ABNORMAL << 6 | follow_up << 5)
    return Frame(address, control, data, edition)


def from_frame(frame: Frame) -> Message:
    """The message a frame carries. Raises `PayloadError` if the data does not fit.

    Only `RemoteProtocolError` subclasses are raised, whatever the bytes.
    """
    ctl = frame.control
    if ctl.abnormal:
        if not ctl.reply:
            raise PayloadError(f"abnormal flag (D6) set on a request (C={ctl.byte:02X})")
        abnormal = _ABNORMAL.get((frame.edition, ctl.code), _decode_error_reply)
        return abnormal(frame.data, frame.edition, ctl.code)
    decoder = _DECODERS.get((frame.edition, ctl.code, ctl.reply))
    if decoder is None:
        raise PayloadError(
            f"no message layout for {frame.function.name} "
            f"{'reply' if ctl.reply else 'request'} (C={ctl.byte:02X})"
        )
    try:
        return decoder(frame.data, frame.edition)
    except (ValueFormatError, LocalProtocolError, ValueError) as exc:
        raise PayloadError(f"{frame.function.name}: {exc}") from None


def need(data: bytes, n: int, what: str, *, exact: bool = True) -> None:
    if (len(data) != n) if exact else (len(data) < n):
        raise PayloadError(f"{what}: data field of {len(data)} bytes, expected {n}")


def read_di(data: bytes, edition: Edition) -> int:
    n = di_length(edition)
    if len(data) < n:
        raise PayloadError(f"data field of {len(data)} bytes has no {n}-byte DI")
    return int.from_bytes(data[:n], "little")


def di_bytes(di: int, edition: Edition) -> bytes:
    n = di_length(edition)
    if not 0 <= di < 1 << (8 * n):
        raise LocalProtocolError(f"DI {di:#x} does not fit {n} bytes (DL/T 645-{edition})")
    return di.to_bytes(n, "little")


def four(value: bytes, what: str) -> bytes:
    if len(value) != 4:
        raise LocalProtocolError(f"{what} is 4 bytes, got {len(value)}")
    return bytes(value)


# --- clock fields in the standard's order ---------------------------------------------------------
_SSMMHHDDMMYY = ClockField("YYMMDDhhmmss")  # sent ss mm hh DD MM YY
_MMHHDDMMYY = ClockField("YYMMDDhhmm")  # sent mm hh DD MM YY


def _clock(fmt: ClockField, when: dt.datetime) -> bytes:
    return fmt.encode(when.replace(tzinfo=None, microsecond=0).isoformat())


def _unclock(fmt: ClockField, raw: bytes) -> dt.datetime:
    return dt.datetime.fromisoformat(fmt.decode(raw))


# --- errors ---------------------------------------------------------------------------------------
class ErrorFlags(IntFlag):
    """ERR byte of 2007 abnormal replies."""

    OTHER = 0x01
    NO_DATA = 0x02
    UNAUTHORIZED = 0x04
    BAUD_UNCHANGEABLE = 0x08
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40


class ErrorFlags1997(IntFlag):
    """ERR byte of 1997 abnormal replies."""

    ILLEGAL_DATA = 0x01
    BAD_DI = 0x02
    WRONG_PASSWORD = 0x04
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40


def flag_names(flags: IntFlag) -> tuple[str, ...]:
    return tuple(f.name.lower() for f in type(flags) if f in flags and f.name)


class MeterError(MeterRejection):
    """An abnormal reply with an ERR byte, raised by `ErrorReply.raise_for_error()`."""

    def __init__(self, function: int, flags: ErrorFlags | ErrorFlags1997) -> None:
        names = flag_names(flags)
        super().__init__(
            f"meter rejected function {function:02X}H: ERR={int(flags):02X} "
            f"{', '.join(names) or 'no flag set'}",
            int(flags),
            names,
        )
        self.function = function
        self.flags = flags
        # only "other error" can be a passing condition; no-data, password and limits are not
        self.retryable = flags in (ErrorFlags.OTHER, ErrorFlags1997.ILLEGAL_DATA)


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """Abnormal reply (C | C0H) carrying the one-byte ERR word, for every function but 03H."""

    function: int
    flags: ErrorFlags | ErrorFlags1997
    CODE: ClassVar[dict[Edition, int]] = {}
    REPLY: ClassVar[bool] = True
    ABNORMAL: ClassVar[bool] = True

    def code(self, edition: Edition) -> int | None:
        return self.function

    def payload(self, edition: Edition) -> bytes:
        if (edition, self.function) in _ABNORMAL:
            raise LocalProtocolError(
                f"abnormal replies to {self.function:02X}H have a layout of their own"
                " (03H: SecurityErrorReply with the 2-byte SERR word)"
            )
        if not 0 <= int(self.flags) <= 0xFF:
            raise LocalProtocolError(f"ERR word {int(self.flags):#x} does not fit one byte")
        return bytes((int(self.flags),))

    @property
    def flag_names(self) -> tuple[str, ...]:
        return flag_names(self.flags)

    def error(self) -> MeterError:
        return MeterError(self.function, self.flags)


def _decode_error_reply(data: bytes, edition: Edition, code: int) -> Message:
    need(data, 1, "abnormal reply")
    flags: ErrorFlags | ErrorFlags1997 = (
        ErrorFlags(data[0]) if edition is Edition.V2007 else ErrorFlags1997(data[0])
    )
    return ErrorReply(code, flags)


# abnormal replies with a layout of their own (03H: the 2-byte SERR word), filled by `security`
_ABNORMAL: dict[tuple[Edition, int], Callable[[bytes, Edition, int], Message]] = {}


# --- 11H / 01H read, 12H / 02H follow-up, 03H (1997) re-read --------------------------------------
_READ = {Edition.V2007: 0x11, Edition.V1997: 0x01}
_FOLLOW = {Edition.V2007: 0x12, Edition.V1997: 0x02}


@dataclass(frozen=True, slots=True)
class ReadRequest(Message):
    """Read a DI. For load-profile reads give `blocks` (NN) and optionally `since` (the time
    of the first record, minute resolution): L = 5 or 10."""

    di: int
    blocks: int | None = None
    since: dt.datetime | None = None
    CODE: ClassVar[dict[Edition, int]] = _READ

    def payload(self, edition: Edition) -> bytes:
        out = di_bytes(self.di, edition)
        if self.since is not None and self.blocks is None:
            raise LocalProtocolError("a start time needs a block count")
        if self.blocks is not None:
            if edition is not Edition.V2007:
                raise LocalProtocolError("load-profile reads exist only in DL/T 645-2007")
            out += int_to_bcd(self.blocks, 1, what="block count")
            if self.since is not None:
                out += _clock(_MMHHDDMMYY, self.since)
        return out


@register(_READ, reply=False)
def _read_request(data: bytes, edition: Edition) -> Message:
    di = read_di(data, edition)
    n = di_length(edition)
    rest = data[n:]
    if edition is Edition.V1997 or not rest:
        need(rest, 0, "read request")
        return ReadRequest(di)
    if len(rest) == 1:
        return ReadRequest(di, bcd_to_int(rest, what="block count"))
    need(rest, 6, "load-profile read")
    return ReadRequest(
        di, bcd_to_int(rest[:1], what="block count"), _unclock(_MMHHDDMMYY, rest[1:])
    )


@dataclass(frozen=True, slots=True)
class ReadReply(Message):
    """Normal read reply: the DI and the value bytes. `seq` is the frame sequence number that
    ends a 12H follow-up reply (`FollowUpReply`); an 11H reply has none, so it must be None
    here. The control byte's follow-up bit, set when more data follows, is a frame property
    (`to_frame(..., follow_up=True)`, `Frame.control.follow_up`)."""

    di: int
    value: bytes
    seq: int | None = None
    CODE: ClassVar[dict[Edition, int]] = _READ
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        if self.seq is not None:
            raise LocalProtocolError("a read reply (11H/01H) carries no SEQ; use FollowUpReply")
        return di_bytes(self.di, edition) + self.value


@dataclass(frozen=True, slots=True)
class FollowUpReply(ReadReply):
    """Reply to 12H: DI, value bytes, SEQ (0..255, required). In 1997 a 02H reply carries no
    SEQ: `seq` is not sent and decodes as None."""

    CODE: ClassVar[dict[Edition, int]] = _FOLLOW

    def payload(self, edition: Edition) -> bytes:
        head = di_bytes(self.di, edition) + self.value
        if edition is Edition.V1997:
            return head
        if self.seq is None or not 0 <= self.seq <= 0xFF:
            raise LocalProtocolError(f"a 12H reply ends with a one-byte SEQ, got {self.seq!r}")
        return head + bytes((self.seq,))


@register(_READ, reply=True)
def _read_reply(data: bytes, edition: Edition) -> Message:
    di = read_di(data, edition)
    return ReadReply(di, data[di_length(edition) :])


@register({Edition.V2007: 0x12}, reply=True)
def _follow_reply(data: bytes, edition: Edition) -> Message:
    di = read_di(data, edition)
    rest = data[di_length(edition) :]
    need(rest, 1, "follow-up reply", exact=False)
    return FollowUpReply(di, rest[:-1], rest[-1])


@register({Edition.V1997: 0x02}, reply=True)
def _follow_reply_1997(data: bytes, edition: Edition) -> Message:
    return FollowUpReply(read_di(data, edition), data[2:])


@dataclass(frozen=True, slots=True)
class ReadFollowUpRequest(Message):
    """Ask for the next part of a long reply (2007: DI + SEQ; 1997: DI only — `seq` is not
    sent and decodes as the default 1)."""

    di: int
    seq: int = 1
    CODE: ClassVar[dict[Edition, int]] = _FOLLOW

    def payload(self, edition: Edition) -> bytes:
        if edition is Edition.V1997:
            return di_bytes(self.di, edition)
        if not 0 <= self.seq <= 0xFF:
            raise LocalProtocolError(f"sequence {self.seq} does not fit one byte")
        return di_bytes(self.di, edition) + bytes((self.seq,))


@register(_FOLLOW, reply=False)
def _follow_request(data: bytes, edition: Edition) -> Message:
    if edition is Edition.V1997:
        need(data, 2, "follow-up request")
        return ReadFollowUpRequest(read_di(data, edition))
    need(data, 5, "follow-up request")
    return ReadFollowUpRequest(read_di(data, edition), data[4])


@dataclass(frozen=True, slots=True)
class RereadRequest(Message):
    """1997 03H: repeat the last reply (no data)."""

    CODE: ClassVar[dict[Edition, int]] = {Edition.V1997: 0x03}

    def payload(self, edition: Edition) -> bytes:
        return b""


@register({Edition.V1997: 0x03}, reply=False)
def _reread(data: bytes, edition: Edition) -> Message:
    need(data, 0, "re-read request")
    return RereadRequest()


register({Edition.V1997: 0x03}, reply=True)(_read_reply)


# --- replies with no data (94, 95, 96, 99, 9A, 9B, 9C, 88 …) --------------------------------------
@dataclass(frozen=True, slots=True)
class Done(Message):
    """A normal reply with an empty data field, acknowledging `function` (only functions whose
    normal reply is empty: `DONE_CODES`)."""

    function: int
    CODE: ClassVar[dict[Edition, int]] = {}
    REPLY: ClassVar[bool] = True

    def code(self, edition: Edition) -> int | None:
        return self.function if self.function in DONE_CODES[edition] else None

    def payload(self, edition: Edition) -> bytes:
        return b""


def _done_for(code: int) -> _Decoder:
    def decode(data: bytes, edition: Edition) -> Message:
        need(data, 0, "acknowledgement")
        return Done(code)

    return decode


#: functions whose normal reply has an empty data field
DONE_CODES: dict[Edition, tuple[int, ...]] = {
    Edition.V2007: (0x08, 0x14, 0x15, 0x16, 0x19, 0x1A, 0x1B, 0x1C),
    Edition.V1997: (0x04, 0x08, 0x0A, 0x10),
}
for _edition, _codes in DONE_CODES.items():
    for _code in _codes:
        register({_edition: _code}, reply=True)(_done_for(_code))


# --- 13H read address -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadAddressRequest(Message):
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x13}

    def payload(self, edition: Edition) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class ReadAddressReply(Message):
    address: Address
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x13}
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        return self.address.wire


@register({Edition.V2007: 0x13}, reply=False)
def _read_address(data: bytes, edition: Edition) -> Message:
    need(data, 0, "read-address request")
    return ReadAddressRequest()


@register({Edition.V2007: 0x13}, reply=True)
def _read_address_reply(data: bytes, edition: Edition) -> Message:
    need(data, 6, "read-address reply")
    return ReadAddressReply(Address.from_wire(data))


# --- 14H / 04H write, 15H / 0AH write address -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class WriteRequest(Message):
    """Write a DI: password (level PA + P0..P2), operator code (2007 only), data."""

    di: int
    password: bytes
    value: bytes
    operator: bytes = b"\x00\x00\x00\x00"
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x14, Edition.V1997: 0x04}

    def payload(self, edition: Edition) -> bytes:
        head = di_bytes(self.di, edition) + four(self.password, "password")
        if edition is Edition.V2007:
            head += four(self.operator, "operator code")
        return head + self.value


@register({Edition.V2007: 0x14, Edition.V1997: 0x04}, reply=False)
def _write(data: bytes, edition: Edition) -> Message:
    n = di_length(edition)
    fixed = n + (8 if edition is Edition.V2007 else 4)
    need(data, fixed, "write request", exact=False)
    operator = data[n + 4 : n + 8] if edition is Edition.V2007 else b"\x00\x00\x00\x00"
    return WriteRequest(read_di(data, edition), data[n : n + 4], data[fixed:], operator)


@dataclass(frozen=True, slots=True)
class WriteAddressRequest(Message):
    """Set a meter's communication address (sent to all-AA, needs the programming key)."""

    new_address: Address
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x15, Edition.V1997: 0x0A}

    def payload(self, edition: Edition) -> bytes:
        if not self.new_address.is_specific:
            raise LocalProtocolError("a meter's new address must be 12 specific digits")
        return self.new_address.wire


@register({Edition.V2007: 0x15, Edition.V1997: 0x0A}, reply=False)
def _write_address(data: bytes, edition: Edition) -> Message:
    need(data, 6, "write-address request")
    return WriteAddressRequest(Address.from_wire(data))


# --- 08H broadcast time, 16H freeze ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BroadcastTimeRequest(Message):
    """Time sync, data ``ss mm hh DD MM YY`` (both editions)."""

    time: dt.datetime
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x08, Edition.V1997: 0x08}

    def payload(self, edition: Edition) -> bytes:
        return _clock(_SSMMHHDDMMYY, self.time)


@register({Edition.V2007: 0x08, Edition.V1997: 0x08}, reply=False)
def _broadcast_time(data: bytes, edition: Edition) -> Message:
    need(data, 6, "broadcast time")
    return BroadcastTimeRequest(_unclock(_SSMMHHDDMMYY, data))


@dataclass(frozen=True, slots=True)
class FreezeRequest(Message):
    """Freeze at ``mm hh DD MM``; None is the 99 wildcard: (None, None, None, None) freezes now,
    month=None repeats monthly, month=day=None daily, only minute given hourly."""

    minute: int | None = None
    hour: int | None = None
    day: int | None = None
    month: int | None = None
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x16}

    def payload(self, edition: Edition) -> bytes:
        out = bytearray()
        for value, top in ((self.minute, 59), (self.hour, 23), (self.day, 31), (self.month, 12)):
            if value is None:
                out.append(0x99)
            elif not 0 <= value <= top:
                raise LocalProtocolError(f"freeze time field {value} outside 0..{top}")
            else:
                out += int_to_bcd(value, 1)
        return bytes(out)


@register({Edition.V2007: 0x16}, reply=False)
def _freeze(data: bytes, edition: Edition) -> Message:
    need(data, 4, "freeze request")
    fields = [None if b == 0x99 else bcd_to_int(bytes((b,)), what="freeze time") for b in data]
    return FreezeRequest(*fields)


# --- 17H / 0CH baud change ------------------------------------------------------------------------
BAUD_BITS = {600: 0x02, 1200: 0x04, 2400: 0x08, 4800: 0x10, 9600: 0x20, 19200: 0x40}
_BAUD_OF = {bit: baud for baud, bit in BAUD_BITS.items()}
_BAUD = {Edition.V2007: 0x17, Edition.V1997: 0x0C}


def _baud_byte(baud: int) -> bytes:
    try:
        return bytes((BAUD_BITS[baud],))
    except KeyError:
        raise LocalProtocolError(f"{baud} bps is not one of {sorted(BAUD_BITS)}") from None


def _baud_of(data: bytes) -> int:
    need(data, 1, "baud feature word")
    try:
        return _BAUD_OF[data[0]]
    except KeyError:
        raise PayloadError(f"baud feature word {data[0]:02X} sets no single known rate") from None


@dataclass(frozen=True, slots=True)
class ChangeBaudRequest(Message):
    baud: int
    CODE: ClassVar[dict[Edition, int]] = _BAUD

    def payload(self, edition: Edition) -> bytes:
        return _baud_byte(self.baud)


@dataclass(frozen=True, slots=True)
class ChangeBaudReply(Message):
    baud: int
    CODE: ClassVar[dict[Edition, int]] = _BAUD
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        return _baud_byte(self.baud)


register(_BAUD, reply=False)(lambda data, edition: ChangeBaudRequest(_baud_of(data)))
register(_BAUD, reply=True)(lambda data, edition: ChangeBaudReply(_baud_of(data)))


# --- 18H / 0FH password change --------------------------------------------------------------------
_PASSWORD = {Edition.V2007: 0x18, Edition.V1997: 0x0F}


@dataclass(frozen=True, slots=True)
class ChangePasswordRequest(Message):
    """Replace the password of `new[0]`'s level. 2007 prefixes DI 04000C(level+1)."""

    old: bytes
    new: bytes
    CODE: ClassVar[dict[Edition, int]] = _PASSWORD

    def payload(self, edition: Edition) -> bytes:
        old, new = four(self.old, "old password"), four(self.new, "new password")
        if new[0] > 9:
            raise LocalProtocolError(f"password level {new[0]:02X} is not 00..09")
        head = (0x04000C01 + new[0]).to_bytes(4, "little") if edition is Edition.V2007 else b""
        return head + old + new


@dataclass(frozen=True, slots=True)
class ChangePasswordReply(Message):
    """Normal reply: the new password (layout UNCONFIRMED against the official text)."""

    new: bytes
    CODE: ClassVar[dict[Edition, int]] = _PASSWORD
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        return four(self.new, "new password")


@register(_PASSWORD, reply=False)
def _change_password(data: bytes, edition: Edition) -> Message:
    skip = 4 if edition is Edition.V2007 else 0
    need(data, skip + 8, "password change")
    return ChangePasswordRequest(data[skip : skip + 4], data[skip + 4 :])


@register(_PASSWORD, reply=True)
def _change_password_reply(data: bytes, edition: Edition) -> Message:
    need(data, 4, "password change reply")
    return ChangePasswordReply(data)


# --- 19H / 10H demand clear, 1AH meter clear, 1BH event clear -------------------------------------
@dataclass(frozen=True, slots=True)
class ClearDemandRequest(Message):
    password: bytes
    operator: bytes = b"\x00\x00\x00\x00"
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x19, Edition.V1997: 0x10}

    def payload(self, edition: Edition) -> bytes:
        out = four(self.password, "password")
        return out + four(self.operator, "operator code") if edition is Edition.V2007 else out


@register({Edition.V2007: 0x19, Edition.V1997: 0x10}, reply=False)
def _clear_demand(data: bytes, edition: Edition) -> Message:
    if edition is Edition.V1997:
        need(data, 4, "demand clear")
        return ClearDemandRequest(data)
    need(data, 8, "demand clear")
    return ClearDemandRequest(data[:4], data[4:])


@dataclass(frozen=True, slots=True)
class ClearMeterRequest(Message):
    password: bytes
    operator: bytes = b"\x00\x00\x00\x00"
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x1A}

    def payload(self, edition: Edition) -> bytes:
        return four(self.password, "password") + four(self.operator, "operator code")


@register({Edition.V2007: 0x1A}, reply=False)
def _clear_meter(data: bytes, edition: Edition) -> Message:
    need(data, 8, "meter clear")
    return ClearMeterRequest(data[:4], data[4:])


@dataclass(frozen=True, slots=True)
class ClearEventsRequest(Message):
    """Clear one event record family (`event_di`) or all of them (0xFFFFFFFF)."""

    password: bytes
    event_di: int = 0xFFFFFFFF
    operator: bytes = b"\x00\x00\x00\x00"
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x1B}

    def payload(self, edition: Edition) -> bytes:
        return (
            four(self.password, "password")
            + four(self.operator, "operator code")
            + di_bytes(self.event_di, edition)
        )


@register({Edition.V2007: 0x1B}, reply=False)
def _clear_events(data: bytes, edition: Edition) -> Message:
    need(data, 12, "event clear")
    return ClearEventsRequest(data[:4], int.from_bytes(data[8:], "little"), data[4:8])


# --- 1CH remote control ---------------------------------------------------------------------------
class RelayAction(IntEnum):
    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B
    DIRECT_CLOSE = 0x1C
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    KEEP_POWER = 0x3A
    KEEP_POWER_RELEASE = 0x3B


@dataclass(frozen=True, slots=True)
class RemoteControlRequest(Message):
    """Plain 1CH: password, operator, N1 action, N2 reserved, N3..N8 valid-until (ss…YY)."""

    action: RelayAction
    valid_until: dt.datetime
    password: bytes = b"\x02\x00\x00\x00"
    operator: bytes = b"\x00\x00\x00\x00"
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x1C}

    def payload(self, edition: Edition) -> bytes:
        return (
            four(self.password, "password")
            + four(self.operator, "operator code")
            + bytes((int(self.action), 0))
            + _clock(_SSMMHHDDMMYY, self.valid_until)
        )


@dataclass(frozen=True, slots=True)
class SecureRemoteControlRequest(Message):
    """State-Grid 1CH: password level 98, operator, 20 bytes ciphertext made by the master's
    encryption machine (the agent relays it verbatim)."""

    ciphertext: bytes
    password: bytes = b"\x98\x00\x00\x00"
    operator: bytes = b"\x00\x00\x00\x00"
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x1C}

    def payload(self, edition: Edition) -> bytes:
        if len(self.ciphertext) != 20:
            raise LocalProtocolError(f"1CH ciphertext is 20 bytes, got {len(self.ciphertext)}")
        return (
            four(self.password, "password") + four(self.operator, "operator code") + self.ciphertext
        )


@register({Edition.V2007: 0x1C}, reply=False)
def _remote_control(data: bytes, edition: Edition) -> Message:
    if len(data) == 28:
        return SecureRemoteControlRequest(data[8:], data[:4], data[4:8])
    need(data, 16, "remote control")
    try:
        action = RelayAction(data[8])
    except ValueError:
        raise PayloadError(f"remote control action {data[8]:02X} is not defined") from None
    return RemoteControlRequest(action, _unclock(_SSMMHHDDMMYY, data[10:]), data[:4], data[4:8])


# --- 1DH terminal output --------------------------------------------------------------------------
class TerminalOutput(IntEnum):
    SECOND_PULSE = 0x00
    DEMAND_PERIOD = 0x01
    PERIOD_SWITCH = 0x02


@dataclass(frozen=True, slots=True)
class TerminalOutputRequest(Message):
    mode: TerminalOutput
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x1D}

    def payload(self, edition: Edition) -> bytes:
        return bytes((int(self.mode),))


@dataclass(frozen=True, slots=True)
class TerminalOutputReply(Message):
    mode: TerminalOutput
    CODE: ClassVar[dict[Edition, int]] = {Edition.V2007: 0x1D}
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        return bytes((int(self.mode),))


def _terminal_mode(data: bytes) -> TerminalOutput:
    need(data, 1, "terminal output")
    try:
        return TerminalOutput(data[0])
    except ValueError:
        raise PayloadError(f"terminal output mode {data[0]:02X} is not defined") from None


register({Edition.V2007: 0x1D}, reply=False)(lambda d, e: TerminalOutputRequest(_terminal_mode(d)))
register({Edition.V2007: 0x1D}, reply=True)(lambda d, e: TerminalOutputReply(_terminal_mode(d)))
