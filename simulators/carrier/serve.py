"""Serving a CCO on a line: the module's serial side (a pty, a TCP serial server connection, a
real serial port). One loop per open line reads bytes, decodes 1376.2 frames with
`protocols.q13762.FrameDecoder` (it hunts through garbage and FE bytes, and never holds more
than one incomplete frame) and hands each frame or frame error to the module, which answers on
the same line. A frame left incomplete when the line goes quiet for `INTER_BYTE_GAP` is
reported as cut short (the module denies it with code 2 if its header was readable).
"""

from __future__ import annotations

import asyncio

from protocols import q13762 as q
from simulators.carrier.module import CarrierModule, Line
from simulators.line import INTER_BYTE_GAP, LineOptions, Port, wire_time

__all__ = ["serve_carrier_port"]


async def serve_carrier_port(module: CarrierModule, port: Port, options: LineOptions) -> None:
    """Answer the concentrator on one open line until it closes (or the task is cancelled)."""
    loop = asyncio.get_running_loop()
    decoder = q.FrameDecoder(max_length=module.config.max_frame_len)
    line = Line(port, timing=options.timing, baud=options.baud)
    module.attach(line)
    first_at: float | None = None
    received = 0
    try:
        while True:
            try:
                async with asyncio.timeout(INTER_BYTE_GAP if decoder.pending else None):
                    chunk = await port.read()
            except TimeoutError:
                for event in decoder.flush():
                    _hand(module, line, event, loop.time())
                first_at, received = None, 0
                continue
            if not chunk:
                return
            if first_at is None:
                first_at = loop.time()
            received += len(chunk)
            for event in decoder.feed(chunk):
                arrived = loop.time()
                if options.timing and first_at is not None:  # the last byte, at the baud
                    arrived = max(arrived, first_at + wire_time(received, options.baud))
                first_at, received = None, 0
                _hand(module, line, event, arrived)
            if not decoder.pending:
                first_at, received = None, 0
    finally:
        module.detach(line)


def _hand(module: CarrierModule, line: Line, event: q.StreamEvent, arrived: float) -> None:
    raw = event.to_bytes() if isinstance(event, q.Frame) else event.raw
    module.traced_request(raw, event)
    module.receive(event, line, arrived)
