"""A frame as plain data (JSON-ready), as `meterlink frame decode` and traces show it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from enum import Enum, IntFlag
from typing import Any

from protocols.dlt645.catalogue import lookup
from protocols.dlt645.frame import Frame
from protocols.dlt645.functions import Edition, format_di
from protocols.dlt645.messages import ErrorReply, Message, ReadReply, flag_names, from_frame
from protocols.dlt645.security import SecurityErrorReply
from protocols.dlt645.tariff import describe_item
from protocols.errors import RemoteProtocolError

__all__ = [
    "TRACE_RX",
    "TRACE_TX",
    "describe",
    "hex_spaced",
    "message_fields",
    "trace_line",
    "values_of",
]


def hex_spaced(data: bytes) -> str:
    return data.hex(" ").upper()


#: direction marks of a frame trace, seen from the master: "->" sent to the meter(s),
#: "<-" received from the line. The agent and the simulator print the same lines, so a
#: technician can diff the two traces.
TRACE_TX = "->"
TRACE_RX = "<-"


def trace_line(direction: str, data: bytes) -> str:
    """One trace line: ``"-> FE FE 68 …"`` (request) or ``"<- 68 …"`` (reply)."""
    if direction not in (TRACE_TX, TRACE_RX):
        raise ValueError(f"trace direction is {TRACE_TX!r} or {TRACE_RX!r}, not {direction!r}")
    return f"{direction} {hex_spaced(data)}".rstrip()


def values_of(di: int, value: bytes, edition: Edition) -> dict[str, dict[str, object]]:
    """Decoded measurements of a read reply's value bytes; empty when the DI is not catalogued.

    Raises `ValueFormatError` when the bytes do not fit the catalogued format.
    """
    item = lookup(di, edition)
    if item is None:
        return {}
    out: dict[str, dict[str, object]] = {}
    for m in item.decode(value):
        entry = m.as_json()
        if item.history is not None:
            entry["history"] = {"kind": item.history.kind, "index": item.history.index}
        out[m.name] = entry
    return out


_DI_FIELDS = ("di", "event_di")


def _plain(value: Any) -> Any:
    if isinstance(value, IntFlag):
        return list(flag_names(value))
    if isinstance(value, bytes):
        return hex_spaced(value)
    if isinstance(value, Enum):
        return value.name.lower()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "digits"):
        return value.digits
    return value


def message_fields(message: Message, edition: Edition = Edition.V2007) -> dict[str, Any]:
    """The message's fields as JSON-ready values (bytes as spaced hex, DIs as hex digits)."""
    fields: dict[str, Any] = {"type": type(message).__name__}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if f.name in _DI_FIELDS and isinstance(value, int):
            fields[f.name] = format_di(value, edition)
        else:
            fields[f.name] = _plain(value)
    return fields


def describe(frame: Frame) -> dict[str, Any]:
    """Everything a technician needs from one frame. Never raises for a valid frame: payload
    or value problems are reported under ``payload_error`` / ``value_error``."""
    ctl = frame.control
    di = frame.di
    out: dict[str, Any] = {
        "edition": frame.edition.value,
        "address": frame.address.digits,
        "control": f"{ctl.byte:02X}",
        "direction": ctl.direction,
        "abnormal": ctl.abnormal,
        "follow_up": ctl.follow_up,
        "function": frame.function.name,
        "length": len(frame.data),
        "di": None if di is None else format_di(di, frame.edition),
        "data": hex_spaced(frame.data),
        "values": {},
        "error": None,
    }
    try:
        message = from_frame(frame)
    except RemoteProtocolError as exc:
        out["payload_error"] = str(exc)
        return out
    out["message"] = message_fields(message, frame.edition)
    message_di = getattr(message, "di", None)
    if di is None and isinstance(message_di, int):  # e.g. a 1997 re-read reply
        out["di"] = format_di(message_di, frame.edition)
    if isinstance(message, ErrorReply | SecurityErrorReply):
        out["error"] = {"code": int(message.flags), "flags": list(message.flag_names)}
    elif type(message) is ReadReply and not ctl.follow_up:
        # a complete value; parts of a long reply (B1, follow-up replies) are only raw data
        try:
            out["values"] = values_of(message.di, message.value, frame.edition)
            # a tariff set-up item (docs/tariff.md) is not in the catalogue: decoded on its own
            uncatalogued = not out["values"] and frame.edition is Edition.V2007
            tariff = describe_item(message.di, message.value) if uncatalogued else None
            if tariff is not None:
                out["tariff_item"] = {"name": tariff[0], "value": tariff[1]}
        except RemoteProtocolError as exc:
            out["value_error"] = str(exc)
    return out
