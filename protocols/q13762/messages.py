"""Typed data units: what a frame's AFN/Fn and data mean, per direction, both ways.

`to_frame(message, info, src=…, dst=…)` builds the frame for a message; `from_frame(frame)` gives
the message back (`PayloadError` when the data unit does not fit its AFN/Fn, `RawMessage` for an
AFN/Fn without a layout here). `reply_to(request, message)` builds the answer to a frame: the
other direction, PRM 0, the same SEQ and communication mode, A1/A3 swapped.

Every message class declares AFN, FN and DIRECTION and is entered in `MESSAGES` (direction, AFN,
Fn) → class by `register`; the layouts live in `_wire` (construct). The classes themselves are
in `module` (AFN00/01/03/05), `archive` (AFN10/11/12) and `reading` (AFN02/06/13/14/F1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Self, TypeVar, cast

from protocols.dlt645.address import Address
from protocols.dlt645.functions import Edition
from protocols.errors import LocalProtocolError, PayloadError, RemoteProtocolError
from protocols.q13762 import _wire
from protocols.q13762.address import NodeAddress
from protocols.q13762.frame import CommMode, Control, Direction, DownInfo, Frame, UpInfo

__all__ = [
    "MESSAGES",
    "Carried",
    "CarriesFrame",
    "Counted",
    "Fields",
    "Message",
    "NoData",
    "Protocol",
    "RawMessage",
    "from_frame",
    "is_answer",
    "register",
    "reply_to",
    "to_frame",
]


class Protocol(IntEnum):
    """Protocol type of a carried frame (AFN02/13/F1, 06F2/F5, 11F1 archive entries …)."""

    TRANSPARENT = 0
    DLT645_1997 = 1
    DLT645_2007 = 2
    DLT698 = 3

    @property
    def edition(self) -> Edition | None:
        return _EDITIONS.get(self)


_EDITIONS: dict[int, Edition] = {
    Protocol.DLT645_1997: Edition.V1997,
    Protocol.DLT645_2007: Edition.V2007,
}


@dataclass(frozen=True, slots=True)
class Carried:
    """A protocol frame a data unit carries, opaque to 1376.2: `protocol` as sent (None when
    the layout has no protocol field, e.g. AFN14 answers) and the bytes (FE preamble kept)."""

    protocol: int | None
    frame: bytes

    @property
    def edition(self) -> Edition | None:
        """The DL/T 645 edition the protocol field names, None for anything else."""
        return None if self.protocol is None else _EDITIONS.get(self.protocol)


class Message:
    """Base of all data units. Subclasses are frozen dataclasses that declare where they go."""

    AFN: ClassVar[int]
    FN: ClassVar[int]
    #: the direction the data unit travels in; None for both (AFN00 F1/F2, AFN02 F1)
    DIRECTION: ClassVar[Direction | None]
    #: PRM when built: True for the initiating station's frames, False for answers
    PRM: ClassVar[bool] = True

    def unit_id(self) -> tuple[int, int]:
        """(AFN, Fn)."""
        return self.AFN, self.FN

    @property
    def direction(self) -> Direction | None:
        return self.DIRECTION

    def payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def parse(cls, data: bytes) -> Self:
        raise NotImplementedError

    def carried(self) -> Carried | None:
        """The protocol frame inside, for data units that carry one."""
        return None

    def json_extras(self) -> dict[str, Any]:
        """Derived values `describe` shows beside the fields (counts, lengths)."""
        return {}


class NoData(Message):
    """A data unit with no data at all (queries, router control, initialisation)."""

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _wire.parse(_wire.EMPTY, data)
        return cls()


class Fields(Message):
    """A data unit whose fields are its layout's, by name: `LAYOUT` (in `_wire`, which turns
    addresses into `NodeAddress` and address lists into tuples) builds and parses it."""

    LAYOUT: ClassVar[Any]

    def payload(self) -> bytes:
        return _wire.build(self.LAYOUT, {name: getattr(self, name) for name in _names(type(self))})

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = _wire.parse(cls.LAYOUT, data)
        return cls(**{name: c[name] for name in _names(cls)})


def _names(cls: type[Message]) -> tuple[str, ...]:
    """The init fields of a message dataclass, in order."""
    return tuple(f.name for f in dataclasses.fields(cast(Any, cls)) if f.init)


class CarriesFrame(Fields):
    """A data unit whose `frame` field is a protocol frame, with the protocol type in the field
    `PROTOCOL_FIELD` beside it (`Carried.protocol` None when the layout has no such field)."""

    PROTOCOL_FIELD: ClassVar[str] = "protocol"

    def carried(self) -> Carried:
        return Carried(getattr(self, self.PROTOCOL_FIELD, None), getattr(self, "frame", b""))

    def json_extras(self) -> dict[str, Any]:
        return {"length": len(getattr(self, "frame", b""))}


class Counted(Message):
    """A data unit that lists entries in its field `ENTRIES`; `describe` shows their count."""

    ENTRIES: ClassVar[str] = "nodes"

    def json_extras(self) -> dict[str, Any]:
        return {"count": len(getattr(self, self.ENTRIES))}


M = TypeVar("M", bound=type[Message])

MESSAGES: dict[tuple[Direction, int, int], type[Message]] = {}


def register(cls: M) -> M:
    """Enter a message class in `MESSAGES` under its direction(s), AFN and Fn."""
    directions = (Direction.DOWN, Direction.UP) if cls.DIRECTION is None else (cls.DIRECTION,)
    for direction in directions:
        key = (direction, cls.AFN, cls.FN)
        if key in MESSAGES:
            raise RuntimeError(f"{key} registered twice: {MESSAGES[key]} and {cls}")
        MESSAGES[key] = cls
    return cls


@dataclass(frozen=True, slots=True)
class RawMessage(Message):
    """A data unit without a layout in this codec: AFN, Fn and the bytes as they are."""

    afn: int
    fn: int
    data: bytes = b""
    DIRECTION: ClassVar[Direction | None] = None

    def unit_id(self) -> tuple[int, int]:
        return self.afn, self.fn

    def payload(self) -> bytes:
        return self.data


AddressLike = NodeAddress | Address


def _node(value: AddressLike | None) -> NodeAddress | None:
    return None if value is None else NodeAddress.of(value)


def to_frame(
    message: Message,
    info: DownInfo | UpInfo,
    *,
    src: AddressLike | None = None,
    dst: AddressLike | None = None,
    relays: tuple[AddressLike, ...] = (),
    comm_mode: int = CommMode.HPLC,
    prm: bool | None = None,
) -> Frame:
    """The frame that carries `message`; the direction is the info field's.

    `src` / `dst` are A1 / A3 (both or neither): giving them sets R0.D2 (module flag), and on a
    down frame `relays` (A2) sets the relay level. `prm` defaults to the message's (True for
    requests and module reports, False for answers). Raises `LocalProtocolError` when the
    message does not travel in that direction or a field does not fit its layout.
    """
    direction = info.direction
    if message.direction not in (None, direction):
        raise LocalProtocolError(f"{type(message).__name__} is not sent {direction}")
    if (src is None) != (dst is None):
        raise LocalProtocolError("the address field needs both A1 (src) and A3 (dst)")
    addressed = src is not None
    if relays and not (addressed and isinstance(info, DownInfo)):
        raise LocalProtocolError("relay addresses (A2) exist only in addressed down frames")
    if isinstance(info, DownInfo):
        level = len(relays) if addressed else info.relay_level
        info = dataclasses.replace(info, module_flag=addressed, relay_level=level)
    else:
        info = dataclasses.replace(info, module_flag=addressed)
    try:
        data = message.payload()
    except (ValueError, OverflowError) as exc:  # construct and int conversions
        raise LocalProtocolError(f"{type(message).__name__}: {exc}") from None
    afn, fn = message.unit_id()
    return Frame(
        Control(direction, message.PRM if prm is None else prm, comm_mode),
        info,
        afn,
        fn,
        data,
        _node(src),
        _node(dst),
        tuple(NodeAddress.of(r) for r in relays),
    )


def reply_to(
    request: Frame, message: Message, info: DownInfo | UpInfo | None = None, *, prm: bool = False
) -> Frame:
    """The answer to `request`: the other direction, PRM 0, the request's SEQ and
    communication mode, and A1/A3 swapped when the request had an address field (an up reply
    carries A1 = the meter, A3 = the main node). `info` sets the other R bits; its SEQ is
    replaced by the request's.

    PRM on a concentrator's answer to a module request (14F1 answers, AFN06 confirms) is
    UNCONFIRMED: the SGCC interoperability suite sends 0 (C = 03), some concentrators 1
    (C = 43). 0 is the default, as PRM means "from the initiating station"; `prm=True` gives
    the other. Modules key on AFN/Fn and SEQ.
    """
    answer_info: DownInfo | UpInfo
    if request.direction is Direction.DOWN:
        answer_info = UpInfo() if info is None else info
    else:
        answer_info = DownInfo() if info is None else info
    if answer_info.direction is request.direction:
        raise LocalProtocolError(f"an answer to a {request.direction} frame travels the other way")
    answer_info = dataclasses.replace(answer_info, seq=request.seq)
    return to_frame(
        message,
        answer_info,
        src=request.dst,
        dst=request.src,
        comm_mode=request.comm_mode,
        prm=prm,
    )


def is_answer(reply: Frame, request: Frame) -> bool:
    """Whether `reply` answers `request`: the other direction, the same SEQ, the request's AFN
    and Fn or AFN00 (confirm / deny), and — when both carry an address field — A1 of the reply
    is A3 of the request (the meter answers). Replies to concurrent requests arrive in any
    order; this is how to pair them."""
    return (
        reply.direction is not request.direction
        and reply.seq == request.seq
        and (reply.afn == 0 or (reply.afn, reply.fn) == (request.afn, request.fn))
        and (reply.src is None or request.dst is None or reply.src == request.dst)
    )


def from_frame(frame: Frame) -> Message:
    """The message a frame carries: the registered class of (direction, AFN, Fn), or
    `RawMessage` when there is none. Raises only `PayloadError` (a `RemoteProtocolError`)."""
    cls = MESSAGES.get((frame.direction, frame.afn, frame.fn))
    if cls is None:
        return RawMessage(frame.afn, frame.fn, frame.data)
    try:
        return cls.parse(frame.data)
    except PayloadError:
        raise
    except (ValueError, RemoteProtocolError) as exc:
        raise PayloadError(
            f"AFN{frame.afn:02X} F{frame.fn} {frame.direction} ({cls.__name__}): {exc}"
        ) from None
