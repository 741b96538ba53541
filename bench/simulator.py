"""Simulator benchmark: how fast it answers, and how true its line timing is.

1. Requests per second the simulator answers over TCP without line timing (one master,
   request/reply in turn), against a baseline measured in the same run: a TCP echo server on
   the same loop answering the same bytes (the cost of the loopback round trip alone).
2. Line timing on a pty at 2400 and 9600 baud: wire time of a long reply measured at the
   master (first to last byte) against the computed (bytes - 1) x 11 / baud, and the reply
   delay after the request's computed end, which must fall in the standard's 20-500 ms.

    .venv/bin/python bench/simulator.py [--requests 2000] [--replies 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.dlt645 import Address, FrameDecoder, ReadRequest, to_frame
from simulators import parse_fleet, serve_fleet

FLEET = """
seed = 1
start = "2026-03-10T10:00:00"
frozen = true
[[district]]
[[district.bus]]
name = "b1"
baud = {baud}
[[district.bus.meters]]
first_address = "000000000001"
count = 32
models = {{ DDZY666 = 1 }}
[[district.bus.meters]]
first_address = "000000000063"
models = {{ "DTSD-T63" = 1 }}
"""


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    writer.write(data)
    await writer.drain()
    decoder = FrameDecoder()
    while not decoder.feed(await reader.read(4096)):
        pass


async def tcp_rate(requests: int) -> None:
    fleet = parse_fleet(FLEET.format(baud=2400))
    frames = [
        to_frame(Address.parse(f"{i % 32 + 1:012d}"), ReadRequest(0x00010000)).to_bytes()
        for i in range(requests)
    ]
    async with serve_fleet(fleet, transport="tcp") as serving:
        reader, writer = await asyncio.open_connection(*serving.endpoint("b1").address)
        start = time.perf_counter()
        for data in frames:
            await _exchange(reader, writer, data)
        sim = requests / (time.perf_counter() - start)
        writer.close()
    reply = to_frame(Address.parse("000000000001"), ReadRequest(0x00010000)).to_bytes()

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(4096):
            w.write(reply)  # answer with a frame of the same size class
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    start = time.perf_counter()
    for data in frames:
        await _exchange(reader, writer, data)
    base = requests / (time.perf_counter() - start)
    writer.close()
    server.close()
    await server.wait_closed()
    print(f"TCP, no line timing, {requests} reads (00010000) over 32 meters:")
    print(f"  simulator        {sim:9.0f} requests/s")
    print(f"  echo baseline    {base:9.0f} requests/s (loopback round trip, no meter work)")
    print(f"  ratio            {sim / base:9.2f} of the baseline")


async def timing(baud: int, replies: int) -> None:
    fleet = parse_fleet(FLEET.format(baud=baud))
    request = to_frame(Address.parse("000000000063"), ReadRequest(0x0001FF00)).to_bytes()
    loop = asyncio.get_running_loop()
    wire_ratios, delays, sizes = [], [], []
    async with serve_fleet(fleet, transport="pty", timing=True) as serving:
        path = serving.endpoint("b1").path
        assert path is not None
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop.add_reader(fd, lambda: queue.put_nowait((loop.time(), os.read(fd, 4096))))
        try:
            for _ in range(replies):
                sent = loop.time()
                os.write(fd, request)
                decoder = FrameDecoder()
                first = last = 0.0
                size = 0
                events: list[object] = []
                while not events:
                    at, chunk = await queue.get()
                    first = first or at
                    last, size = at, size + len(chunk)
                    events = list(decoder.feed(chunk))
                computed_wire = (size - 1) * 11 / baud
                wire_ratios.append((last - first) / computed_wire)
                request_end = sent + len(request) * 11 / baud
                delays.append(first - 11 / baud - request_end)
                sizes.append(size)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    sized = f"{min(sizes)}-{max(sizes)} bytes"
    print(f"line timing on a pty at {baud} baud, {replies} replies of {sized}:")
    print(
        f"  reply wire time  measured / computed = {statistics.mean(wire_ratios):.3f} "
        f"(min {min(wire_ratios):.3f}, max {max(wire_ratios):.3f})"
    )
    print(
        f"  reply delay      {min(delays) * 1000:.0f}-{max(delays) * 1000:.0f} ms after the "
        "request's computed end (standard window 20-500 ms)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--replies", type=int, default=10)
    args = parser.parse_args()
    await tcp_rate(args.requests)
    for baud in (2400, 9600):
        await timing(baud, args.replies)


if __name__ == "__main__":
    asyncio.run(main())
