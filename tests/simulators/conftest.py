"""Fixtures: a small frozen fleet, served on a pty or TCP inside the test's loop, and a master
that talks to it with the codec from `protocols/`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import tty
from collections.abc import AsyncIterator
from typing import Any

import pytest

from protocols.dlt645 import (
    Address,
    Frame,
    FrameDecoder,
    Message,
    StreamEvent,
    from_frame,
    to_frame,
)
from protocols.dlt645.functions import Edition
from simulators import Fleet, parse_fleet, serve_fleet

START = dt.datetime(2026, 3, 10, 10, 0, 0)
MASTER_KEY = "00112233445566778899AABBCCDDEEFF"
PREPAID = "123456781012"
THREE_PHASE = "123456781013"
PLAIN = "000000000021"
T63 = "000000000063"
OLD = "000000000097"

FLEET = f"""
seed = 7
start = "{START.isoformat()}"
frozen = true
master_key = "{MASTER_KEY}"
[[district]]
name = "test"
[[district.bus]]
name = "b1"
  [[district.bus.meters]]
  first_address = "{PREPAID}"
  count = 2
  models = {{ DDZY666 = 1 }}
  balance_yuan = 100
  wakeup = [2, 2]
  [[district.bus.meters]]
  first_address = "{PLAIN}"
  models = {{ DTSD1352 = 1 }}
  [[district.bus.meters]]
  first_address = "{T63}"
  models = {{ "DTSD-T63" = 1 }}
  [[district.bus.meters]]
  first_address = "{OLD}"
  models = {{ DDS1997 = 1 }}
"""


REPLY_S = 5.0
"""how long a master waits for a reply it expects: an exchange returns as soon as the reply is
complete, so only a silent meter costs this long (250 ms was once too short on a loaded machine)"""
SILENCE_S = 0.25
"""how long a test that expects silence listens (a reply after it would go unnoticed, never
fail a correct simulator)"""


def make_fleet(text: str = FLEET) -> Fleet:
    return parse_fleet(text)


@pytest.fixture
def fleet() -> Fleet:
    return make_fleet()


class Master:
    """A DL/T 645 master on one line: sends frames, collects what comes back."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()

    async def _write(self, data: bytes) -> None:
        raise NotImplementedError

    async def _read(self) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def raw_exchange(self, data: bytes, *, quiet: float = REPLY_S) -> list[StreamEvent]:
        """Send bytes; return the events of the reply (empty = silence for `quiet` s)."""
        self.decoder.reset()
        await self._write(data)
        events: list[StreamEvent] = []
        while True:
            try:
                async with asyncio.timeout(quiet):
                    chunk = await self._read()
            except TimeoutError:
                return events + self.decoder.flush()
            events += self.decoder.feed(chunk)
            if events and not self.decoder.pending:
                return events

    async def ask(
        self,
        address: str | Address,
        message: Message,
        edition: Edition = Edition.V2007,
        *,
        quiet: float = REPLY_S,
    ) -> list[StreamEvent]:
        addr = address if isinstance(address, Address) else Address.parse(address)
        return await self.raw_exchange(to_frame(addr, message, edition).to_bytes(), quiet=quiet)

    async def one(
        self, address: str | Address, message: Message, edition: Edition = Edition.V2007
    ) -> tuple[Frame, Message]:
        events = await self.ask(address, message, edition)
        assert len(events) == 1, events
        frame = events[0]
        assert isinstance(frame, Frame), frame
        return frame, from_frame(frame)


class TcpMaster(Master):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _read(self) -> bytes:
        return await self.reader.read(4096)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class PtyMaster(Master):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.queue.put_nowait(os.read(self.fd, 4096))

    async def _write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def _read(self) -> bytes:
        return await self.queue.get()

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


class DirectMaster(Master):
    """A master wired straight to a bus's `exchange` (no pty, no socket): the meters' rules and
    the injected faults, byte for byte, without a line."""

    def __init__(self, bus: Any) -> None:
        super().__init__()
        self.bus = bus

    async def raw_exchange(self, data: bytes, *, quiet: float = REPLY_S) -> list[StreamEvent]:
        self.decoder.reset()
        events: list[StreamEvent] = []
        for frame in self.decoder.feed(data):
            if isinstance(frame, Frame):
                for tx in self.bus.exchange(frame):
                    events += FrameDecoder().feed(tx.data)
        return events

    async def close(self) -> None:
        return None


async def open_master(serving: Any, bus: str = "b1") -> Master:
    endpoint = serving.endpoint(bus)
    if endpoint.kind == "tcp":
        reader, writer = await asyncio.open_connection(*endpoint.address)
        return TcpMaster(reader, writer)
    return PtyMaster(endpoint.path)


@pytest.fixture(params=["pty", "tcp"])
async def line(request: pytest.FixtureRequest, fleet: Fleet) -> AsyncIterator[Master]:
    """A master on bus b1 of `fleet`, over a pty and over TCP."""
    async with serve_fleet(fleet, transport=request.param) as serving:
        master = await open_master(serving)
        try:
            yield master
        finally:
            await master.close()


@pytest.fixture
async def tcp_line(fleet: Fleet) -> AsyncIterator[Master]:
    async with serve_fleet(fleet, transport="tcp") as serving:
        master = await open_master(serving)
        try:
            yield master
        finally:
            await master.close()


@pytest.fixture
def direct(fleet: Fleet) -> Master:
    """A master on bus b1 of `fleet` without a line (`DirectMaster`)."""
    return DirectMaster(fleet.bus("b1"))
