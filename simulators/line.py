"""Serving a bus on a line: a pseudo-terminal, a TCP transparent serial server, a serial port.

One loop per open line reads bytes, decodes requests with `protocols.dlt645.FrameDecoder`,
lets the bus answer, and writes the replies back — at once, or with line timing: the reply
delay drawn from the standard's 20-500 ms window after the request's last byte would have
arrived, and bytes paced at 11 bits per byte (8E1) at the configured baud. A pty cannot do even
parity, so the pty line is 8N1 and the timing is emulated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from protocols.dlt645 import FrameDecoder
from protocols.dlt645.describe import TRACE_RX, TRACE_TX, trace_line
from protocols.errors import FrameError
from simulators.bus import Bus

__all__ = [
    "BITS_PER_BYTE",
    "INTER_BYTE_GAP",
    "LineOptions",
    "Port",
    "Pty",
    "serve_port",
    "wire_time",
]

BITS_PER_BYTE = 11  # start + 8 data + parity + stop
INTER_BYTE_GAP = 0.5  # DL/T 645: a silence this long inside a frame ends it
Trace = Callable[[str], None]


def wire_time(nbytes: int, baud: int) -> float:
    return nbytes * BITS_PER_BYTE / baud


@dataclass
class LineOptions:
    timing: bool = False
    baud: int = 2400
    trace: Trace | None = None


class Port(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class StreamPort:
    """A line reached through asyncio streams (a TCP connection, a pyserial-asyncio port)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(4096)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()


@dataclass
class Pty:
    """A raw pseudo-terminal pair; the simulator holds the master, clients open `path`.

    The slave stays open here too, so a client may close and reopen the path at will.
    `link` (optional) is a symlink to `path` with a stable name.
    """

    link: Path | None = None
    master: int = field(init=False)
    slave: int = field(init=False)
    path: str = field(init=False)
    _queue: asyncio.Queue[bytes] = field(init=False, default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    @property
    def name(self) -> str:
        return str(self.link) if self.link is not None else self.path

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._queue.put_nowait(data)

    async def read(self) -> bytes:
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
                await asyncio.sleep(0.002)  # nobody is reading the slave: the buffer is full
                continue
            view = view[n:]

    def close(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()


async def send_paced(port: Port, data: bytes, baud: int) -> None:
    """Write `data` as a line at `baud` would deliver it: byte k arrives (k+1)*11/baud after
    the start."""
    loop = asyncio.get_running_loop()
    per_byte = BITS_PER_BYTE / baud
    start = loop.time()
    sent = 0
    while sent < len(data):
        complete = min(len(data), int((loop.time() - start) / per_byte))
        if complete > sent:
            await port.write(data[sent:complete])
            sent = complete
            continue
        await asyncio.sleep(start + (sent + 1) * per_byte - loop.time())


async def serve_port(bus: Bus, port: Port, options: LineOptions) -> None:
    """Answer requests on one open line until it closes (or the task is cancelled)."""
    loop = asyncio.get_running_loop()
    decoder = FrameDecoder()
    raw = bytearray()
    first_at: float | None = None
    while True:
        try:
            async with asyncio.timeout(INTER_BYTE_GAP if decoder.pending else None):
                chunk = await port.read()
        except TimeoutError:
            for event in decoder.flush():
                if isinstance(event, FrameError):
                    bus.bad_bytes(event)
            _trace(options, TRACE_TX, bytes(raw))
            raw.clear()
            first_at = None
            continue
        if not chunk:
            return
        if first_at is None:
            first_at = loop.time()
        raw += chunk
        for event in decoder.feed(chunk):
            if isinstance(event, FrameError):
                bus.bad_bytes(event)
                continue
            request = bytes(raw)
            raw.clear()
            _trace(options, TRACE_TX, request)
            started = first_at if first_at is not None else loop.time()
            end_at = started + wire_time(len(request), options.baud)
            first_at = None
            for tx in bus.exchange(event):
                if options.timing or tx.delay > INTER_BYTE_GAP:
                    base = end_at if options.timing else loop.time()
                    await asyncio.sleep(max(0.0, base + tx.delay - loop.time()))
                if options.timing:
                    await send_paced(port, tx.data, options.baud)
                else:
                    await port.write(tx.data)
                _trace(options, TRACE_RX, tx.data)
        if not decoder.pending and not raw:
            first_at = None


def _trace(options: LineOptions, direction: str, data: bytes) -> None:
    if options.trace is not None and data:
        options.trace(trace_line(direction, data))
