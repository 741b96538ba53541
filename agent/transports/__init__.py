"""Transports, selected by bus URL scheme through a lazily imported registry."""

from __future__ import annotations

import importlib

from agent.transports.base import ByteTransport, ReplySink, TraceHook
from agent.transports.errors import BusError, NoReply, TransportError, TruncatedReply
from agent.transports.url import BusUrl, BusUrlError

__all__ = [
    "BusError",
    "BusUrl",
    "BusUrlError",
    "ByteTransport",
    "NoReply",
    "ReplySink",
    "TraceHook",
    "TransportError",
    "TruncatedReply",
    "open_byte_transport",
]

#: byte-stream schemes -> "module:Class" (Modbus buses use agent.modbus instead)
REGISTRY = {
    "serial": "agent.transports.streams:SerialTransport",
    "tcp": "agent.transports.streams:TcpTransport",
    # a carrier module's line is a plain byte stream; agent.carrier speaks 1376.2 over it
    "carrier": "agent.transports.streams:SerialTransport",
    "carrier+tcp": "agent.transports.streams:TcpTransport",
}


def open_byte_transport(url: BusUrl | str, *, trace: TraceHook | None = None) -> ByteTransport:
    """A (not yet opened) transport for a DL/T 645 bus URL (for carrier:// URLs: the byte
    stream to the module, which `agent.carrier` drives)."""
    if isinstance(url, str):
        url = BusUrl.parse(url)
    target = REGISTRY.get(url.scheme)
    if target is None:
        raise BusUrlError(f"{url}: {url.scheme} is not a byte-stream bus")
    module_name, _, class_name = target.partition(":")
    cls: type[ByteTransport] = getattr(importlib.import_module(module_name), class_name)
    return cls(url, trace=trace)
