"""The concentrator side of the carrier tests: sends 1376.2 frames built with the codec to a
served CCO (pty or TCP) and collects what comes back, decoded, in order of arrival."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable
from typing import Any

from protocols import dlt645
from protocols import q13762 as q
from protocols.errors import FrameError
from simulators import Fleet, parse_fleet, serve_fleet
from simulators.server import Serving

MAIN = q.NodeAddress.parse("049999888888")
WAIT = 30.0  # generous bound for anything to arrive (never a speed threshold)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


#: a module ready at once (boots and forms without waiting, no power-up report racing the
#: client's connection), 100 times faster than the field
READY: dict[str, object] = {
    "time_scale": 0.01, "forming_s": 0, "reforming_s": 0, "boot_report_s": [0, 0],
    "boot_report": False,
}  # fmt: skip


def carrier_fleet(*, count: int = 6, meters: str = "", seed: int = 11, **carrier: object) -> Fleet:
    """A frozen fleet with one carrier bus "plc" of `count` DDZY666 meters from 000000000001
    (plus the `meters` rules), its carrier table `READY` updated with `carrier`."""
    table = "\n".join(f"  {k} = {_toml(v)}" for k, v in {**READY, **carrier}.items())
    text = f"""
seed = {seed}
start = "2026-03-10T10:00:00"
frozen = true
[[district]]
name = "d"
[[district.bus]]
name = "plc"
protocol = "carrier"
  [district.bus.carrier]
{table}
  [[district.bus.meters]]
  first_address = "000000000001"
  count = {count}
  models = {{ DDZY666 = 1 }}
  wakeup = [0, 4]
{meters}
"""
    return parse_fleet(text)


def read_645(
    address: str, *dis: int, edition: dlt645.Edition = dlt645.Edition.V2007
) -> list[dlt645.Frame]:
    meter = dlt645.Address.parse(address)
    return [dlt645.to_frame(meter, dlt645.ReadRequest(di), edition) for di in dis]


class Concentrator:
    """One line to the CCO: `send` frames, `next` / `expect` what comes back."""

    def __init__(self) -> None:
        self.decoder = q.FrameDecoder()
        self.queue: asyncio.Queue[q.Frame | FrameError] = asyncio.Queue()
        self.stash: list[q.Frame | FrameError] = []
        """arrived, not yet taken by `expect` (it takes frames in any order)"""
        self.seq = 0

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _received(self, chunk: bytes) -> None:
        for event in self.decoder.feed(chunk):
            self.queue.put_nowait(event)

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def frame(
        self, message: q.Message, meter: str | None = None, *, seq: int | None = None,
        comm_mode: int = q.CommMode.HPLC,
    ) -> q.Frame:  # fmt: skip
        info = q.DownInfo(seq=self.next_seq() if seq is None else seq)
        if meter is None:
            return q.to_frame(message, info, comm_mode=comm_mode)
        return q.to_frame(message, info, src=MAIN, dst=q.NodeAddress.parse(meter),
                          comm_mode=comm_mode)  # fmt: skip

    async def send(self, frame: q.Frame) -> q.Frame:
        await self.write(frame.to_bytes())
        return frame

    async def next(self) -> q.Frame | FrameError:
        """The first thing that arrived and was not taken yet."""
        if self.stash:
            return self.stash.pop(0)
        async with asyncio.timeout(WAIT):
            return await self.queue.get()

    async def expect(self, match: Callable[[q.Frame], bool]) -> tuple[q.Frame, q.Message]:
        """The first frame that matches, whenever it arrived (others stay for later)."""
        for i, event in enumerate(self.stash):
            if isinstance(event, q.Frame) and match(event):
                del self.stash[i]
                return event, q.from_frame(event)
        async with asyncio.timeout(WAIT):
            while True:
                event = await self.queue.get()
                if isinstance(event, q.Frame) and match(event):
                    return event, q.from_frame(event)
                self.stash.append(event)

    async def answer(self, request: q.Frame) -> tuple[q.Frame, q.Message]:
        """The reply to `request` (by SEQ and AFN/Fn, as a concentrator pairs them)."""
        return await self.expect(lambda f: q.is_answer(f, request))

    async def ask(self, message: q.Message, meter: str | None = None) -> tuple[q.Frame, q.Message]:
        request = await self.send(self.frame(message, meter))
        return await self.answer(request)

    def pending(self) -> list[q.Frame | FrameError]:
        """Everything arrived and not taken, and forget it."""
        out, self.stash = self.stash, []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


class TcpConcentrator(Concentrator):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.writer = writer
        self._task = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(4096):
            self._received(chunk)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class PtyConcentrator(Concentrator):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._received(os.read(self.fd, 4096))

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


async def open_concentrator(serving: Serving, bus: str = "plc") -> Concentrator:
    endpoint = serving.endpoint(bus)
    if endpoint.kind == "tcp":
        assert endpoint.address is not None
        reader, writer = await asyncio.open_connection(*endpoint.address)
        return TcpConcentrator(reader, writer)
    assert endpoint.path is not None
    return PtyConcentrator(endpoint.path)


@contextlib.asynccontextmanager
async def connected(
    fleet: Fleet, transport: str = "tcp", **kwargs: Any
) -> AsyncIterator[tuple[Serving, Concentrator]]:
    """Serve `fleet`, connect, wait until the CCO has booted and formed."""
    async with serve_fleet(fleet, transport=transport, **kwargs) as serving:
        client = await open_concentrator(serving)
        try:
            for module in serving.modules.values():
                async with asyncio.timeout(WAIT):
                    await module.wait_formed()
            yield serving, client
        finally:
            await client.close()
