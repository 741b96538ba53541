"""The narrow transport base class: it owns the bus discipline, backends own only the bytes.

The base class does, for every backend: the bus lock (one exchange at a time on RS-485, up to
`in_flight` where the medium allows more), the quiet gap between frames, discarding stale input
(a late reply to an earlier request), echo suppression, the reply window (20-500 ms after our
last byte left the wire) and the inter-byte gap, tracing, and bus busy-time accounting.

It never parses frames: the caller passes a `ReplySink` (the protocol layer's stream decoder)
that says when the reply is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol, Self

from agent.transports.errors import BusError, NoReply, TruncatedReply
from agent.transports.url import BusUrl

__all__ = ["REPLY_SLACK_S", "ByteTransport", "ReplySink", "TraceHook"]

REPLY_SLACK_S = 0.03
"""added to the reply window: a reply byte is only complete one byte time after the meter starts
sending it, and the OS / USB adapter adds milliseconds; without it, meters that answer at the
edge of the standard's 500 ms are counted as silent"""

TraceHook = Callable[[str, bytes], None]
"""called with ("->", bytes sent) and ("<-", bytes received)"""


class ReplySink(Protocol):
    """Decides when a reply is complete; lives in the protocol layer."""

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once the reply is complete."""
        ...

    @property
    def started(self) -> bool:
        """Whether anything that looks like the start of a reply has arrived (vs. noise)."""
        ...


class ByteTransport(ABC):
    """Base of byte-stream transports (RS-485 serial, TCP serial servers, carrier modules)."""

    def __init__(self, url: BusUrl, *, trace: TraceHook | None = None) -> None:
        self.url = url
        self.trace = trace
        self._slots = asyncio.Semaphore(url.in_flight)
        self._opened = False
        self._quiet_since = 0.0
        self.busy_seconds = 0.0
        """time the bus spent in exchanges (request on the wire through the end of the reply)"""
        self.exchanges = 0

    # --- backend interface ----------------------------------------------------------------
    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _write(self, data: bytes) -> None: ...

    @abstractmethod
    async def _read(self, wait: float) -> bytes:
        """Some bytes, or b"" when `wait` seconds pass without any. BusError on failure."""

    # --- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        if not self._opened:
            await self._open()
            self._opened = True

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- raw stream access --------------------------------------------------------------------
    # For a medium that pairs replies with requests itself (a carrier module: 1376.2 SEQ), the
    # protocol layer owns the stream: one reader task reads everything, writers send whole
    # frames. No bus lock, reply window or stale-input discarding here: none of them apply.
    async def write_raw(self, data: bytes) -> None:
        """Write `data` (opening the line if needed). BusError on failure (the line is reset)."""
        if not self._opened:
            await self.open()
        try:
            await self._write(data)
        except BusError:
            await self._reset()
            raise
        if self.trace:
            self.trace("->", data)

    async def read_raw(self, wait: float) -> bytes:
        """Whatever arrives within `wait` seconds (b"" if nothing). BusError on failure."""
        if not self._opened:
            await self.open()
        try:
            data = await self._read(wait)
        except BusError:
            await self._reset()
            raise
        if data and self.trace:
            self.trace("<-", data)
        return data

    # --- the exchange -------------------------------------------------------------------------
    async def send(self, request: bytes) -> None:
        """Send without expecting a reply (broadcast); waits until it has left the wire."""
        async with self._slots:
            started = await self._begin(request)
            await asyncio.sleep(self.url.wire_time(len(request)))
            self._end(started)

    async def exchange(
        self, request: bytes, sink: ReplySink, *, reply_timeout: float | None = None
    ) -> bytes:
        """Send `request` and return the reply bytes once `sink` says the reply is complete.

        Raises NoReply (silence, or only line noise, for the whole window), TruncatedReply (a
        reply started but stopped for longer than the inter-byte gap), BusError.
        """
        async with self._slots:
            started = await self._begin(request)
            try:
                return await self._collect(request, sink, started, reply_timeout)
            finally:
                self._end(started)

    async def _begin(self, request: bytes) -> float:
        if not self._opened:
            await self.open()
        gap = self.url.frame_gap_ms / 1000 - (time.monotonic() - self._quiet_since)
        if gap > 0:
            await asyncio.sleep(gap)
        await self._discard_stale()
        started = time.monotonic()
        try:
            await self._write(request)
        except BusError:
            await self._reset()
            raise
        if self.trace:
            self.trace("->", request)
        self.exchanges += 1
        return started

    def _end(self, started: float) -> None:
        now = time.monotonic()
        self.busy_seconds += now - started
        self._quiet_since = now

    async def _collect(
        self, request: bytes, sink: ReplySink, started: float, reply_timeout: float | None
    ) -> bytes:
        window = self.url.reply_timeout_ms / 1000 if reply_timeout is None else reply_timeout
        deadline = started + self.url.wire_time(len(request) + 1) + window + REPLY_SLACK_S
        byte_gap = self.url.byte_gap_ms / 1000
        echo = request if self.url.echo else b""
        received = bytearray()
        while True:
            wait = byte_gap if sink.started else deadline - time.monotonic()
            try:
                chunk = await self._read(max(wait, 0.0))
            except BusError:
                await self._reset()
                raise
            if echo and chunk:
                n = _common_prefix(echo, chunk)
                echo, chunk = echo[n:], chunk[n:]
                if not chunk:
                    continue  # all of it was our own echo
                echo = b""  # the rest is the reply (or the adapter does not echo after all)
            if not chunk:
                self._trace_rx(received)
                if sink.started:
                    raise TruncatedReply(
                        f"reply stopped after {len(received)} bytes for over {byte_gap:.3f} s",
                        bytes(received),
                    )
                raise NoReply(
                    f"no reply within {window:.3f} s" + (" (line noise only)" if received else "")
                )
            received += chunk
            if sink.feed(chunk):
                self._trace_rx(received)
                return bytes(received)
            if not sink.started and time.monotonic() >= deadline:
                self._trace_rx(received)
                raise NoReply(f"no reply within {window:.3f} s (line noise only)")

    def _trace_rx(self, received: bytearray) -> None:
        if self.trace and received:
            self.trace("<-", bytes(received))

    async def _discard_stale(self) -> None:
        """Drop bytes that arrived between exchanges (late replies, noise)."""
        while True:
            try:
                stale = await self._read(0.0)
            except BusError:
                await self._reset()
                raise
            if not stale:
                return
            if self.trace:
                self.trace("<-", stale)

    async def _reset(self) -> None:
        """Forget a broken connection; the next exchange reopens it."""
        self._opened = False
        with contextlib.suppress(OSError):
            await self._close()


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
