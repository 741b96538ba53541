"""A 1376.2 frame as plain data (JSON-ready), as `meterlink frame decode` prints it.

The embedded DL/T 645 frames are described by the 645 codec's own `describe`, each with
``"protocol": "645"`` — the same object `meterlink frame decode` prints for a bare 645 frame.
An inner frame whose checksum is wrong keeps its place in ``inner`` with ``error`` set (its
fields are shown as the frame reads, the checksum being the only thing wrong), instead of
failing the outer frame.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from enum import Enum
from typing import Any

from protocols import dlt645
from protocols.errors import AddressError, ChecksumError, FrameError, RemoteProtocolError
from protocols.q13762.address import NodeAddress
from protocols.q13762.frame import Frame
from protocols.q13762.inner import inner_frames
from protocols.q13762.messages import Message, RawMessage, from_frame
from protocols.q13762.module import Deny

__all__ = ["describe", "describe_645_event", "message_fields"]


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


def _plain(value: Any) -> Any:
    if isinstance(value, NodeAddress):
        return value.digits
    if isinstance(value, bytes):
        return _hex(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):  # IntEnum / IntFlag fields print as their numbers
        return int(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def message_fields(message: Message) -> dict[str, Any]:
    """The data unit's fields as JSON-ready values (addresses as printed, bytes as spaced hex),
    plus derived counts and lengths."""
    if isinstance(message, RawMessage):
        return {}
    fields = _plain(message)
    assert isinstance(fields, dict)
    fields.update(message.json_extras())
    return fields


def describe_645_event(
    event: dlt645.Frame | FrameError, edition: dlt645.Edition | None = None
) -> dict[str, Any]:
    """A DL/T 645 frame (or a 645 frame error) as `meterlink frame decode` prints it."""
    if isinstance(event, dlt645.Frame):
        return {"protocol": "645", **dlt645.describe(event)}
    error = {"type": type(event).__name__, "message": str(event)}
    if isinstance(event, ChecksumError) and len(event.raw) >= 12:
        # show what the frame says; only its checksum is wrong
        repaired = bytearray(event.raw)
        repaired[-2] = event.computed
        try:
            frame = dlt645.decode_frame(bytes(repaired), edition=edition)
        except (AddressError, FrameError):
            pass
        else:
            return {"protocol": "645", **dlt645.describe(frame), "error": error}
    return {"protocol": "645", "error": error, "raw": _hex(event.raw)}


def describe(frame: Frame) -> dict[str, Any]:
    """Everything a technician needs from one 1376.2 frame. Never raises for a valid frame: a
    data unit that does not fit its AFN/Fn is reported under ``payload_error``."""
    out: dict[str, Any] = {
        "protocol": "1376.2",
        "dir": frame.direction.value,
        "prm": int(frame.prm),
        "comm_mode": frame.comm_mode,
        "seq": frame.seq,
        "afn": f"{frame.afn:02X}",
        "fn": frame.fn,
        "src": None if frame.src is None else frame.src.digits,
        "dst": None if frame.dst is None else frame.dst.digits,
        "relays": [r.digits for r in frame.relays],
        "control": f"{frame.control.byte:02X}",
        "R": _hex(frame.info.to_bytes()),
        "info": _plain(frame.info),
        "length": frame.length,
        "data": _hex(frame.data),
        "message": None,
        "deny": None,
        "fields": {},
        "inner": [],
    }
    try:
        message = from_frame(frame)
    except RemoteProtocolError as exc:
        out["payload_error"] = str(exc)
        return out
    if not isinstance(message, RawMessage):
        out["message"] = type(message).__name__
    if isinstance(message, Deny):
        out["deny"] = message.code
    out["fields"] = message_fields(message)
    carried = message.carried()
    edition = None if carried is None else carried.edition
    out["inner"] = [describe_645_event(e, edition) for e in inner_frames(message)]
    return out
