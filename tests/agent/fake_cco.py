"""A small scripted carrier module (CCO) for the carrier client's unit tests.

It speaks Q/GDW 1376.2 through the project's codec (`reply_to`, `Deny`, …) on a TCP socket,
and its meters are the simulator's (`simulators.behaviour.respond`), so every 645 answer is a
real meter's. Tests script it: the concurrency cap (deny 109), the frames per request (110),
the network (in the archive but not joined: 12; not in the archive: 7), forming (9 until
`form()`), a reset (spontaneous AFN03 F10), bad inner checksums, silent meters, router-led
passes. Replies can be held and released in a chosen order, so "out of order" is exact, not
a matter of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from protocols import dlt645
from protocols import q13762 as q
from simulators import parse_fleet
from simulators.behaviour import respond
from simulators.meter import Meter

FLEET = """
seed = 3
start = "2026-03-11T00:10:00"
frozen = true
[[district]]
name = "d"
  [[district.bus]]
  name = "plc"
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 1 }}
"""


def meters(count: int) -> dict[str, Meter]:
    fleet = parse_fleet(FLEET.format(count=count))
    return {m.identity.address.rjust(12, "0"): m for m in fleet.meters()}


@dataclass
class FakeCco:
    meters: dict[str, Meter]
    concurrency: int = 16
    max_frames: int = 6
    max_frame_len: int = 2048
    monitor_timeout_s: int = 5
    comm_type: int = 2
    main_node: q.NodeAddress = field(default_factory=lambda: q.NodeAddress.parse("BEBEBEBEBE01"))
    archive: dict[str, int] = field(default_factory=dict)
    """the module's node list (address → protocol)"""
    joined: set[str] | None = None
    """nodes in the network (None: every archived node)"""
    forming: bool = False
    """deny 9 to every read until `form()`"""
    form_on_change: bool = False
    """an archive change starts forming again"""
    silent: set[str] = field(default_factory=set)
    """meters whose reads come back empty (length 0)"""
    bad_inner: set[str] = field(default_factory=set)
    """meters whose replies carry a wrong 645 checksum"""
    deny_script: dict[str, list[int]] = field(default_factory=dict)
    """meter → deny codes to answer its next reads with, in order"""
    hold: bool = False
    """keep read replies until `release()`"""
    router_led: bool = False
    ask_twice: bool = False
    """router-led: send each ask twice at once (the module repeats an ask it thinks unanswered)"""
    vanish: bool = False
    """answer nothing at all (a dead module)"""
    received: list[q.Frame] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    in_flight: dict[int, str] = field(default_factory=dict)
    held: list[tuple[q.Frame, q.Message]] = field(default_factory=list)
    max_seen_in_flight: int = 0
    meter_overlaps: int = 0
    confirms: list[int] = field(default_factory=list)
    events_allowed: bool = False
    broadcast_delay_s: int = 3
    broadcasts: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._writer: asyncio.StreamWriter | None = None
        self._changed = asyncio.Condition()
        self._seq = 0x80
        self._router_answers: asyncio.Queue[tuple[q.Frame, q.Message]] = asyncio.Queue()
        self._router_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    # --- serving --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a loopback port; yields the `carrier+tcp://` base URL."""
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        try:
            yield f"carrier+tcp://127.0.0.1:{port}"
        finally:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._router_task is not None:
                self._router_task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._writer is not None:
                self._writer.close()
            await self.server.wait_closed()

    def unplug(self) -> None:
        """The serial server goes away: the connection closes and no new one is accepted."""
        assert self.server is not None
        self.server.close()
        if self._writer is not None:
            self._writer.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        decoder = q.FrameDecoder()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(4096):
                for event in decoder.feed(data):
                    if isinstance(event, q.Frame):
                        await self._frame(event)
        writer.close()

    async def _send(self, frame: q.Frame, times: int = 1) -> None:
        assert self._writer is not None
        self._writer.write(frame.to_bytes() * times)
        await self._writer.drain()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 20.0) -> None:
        """Wait until the module's state satisfies `predicate` (tests synchronise on this)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the module -------------------------------------------------------------------------------
    def info(self) -> q.ModuleInfo:
        return q.ModuleInfo(
            comm_type=self.comm_type,
            max_frame_len=self.max_frame_len,
            monitor_max_timeout_s=self.monitor_timeout_s,
            max_nodes=2040,
            node_count=len(self.archive),
            main_node_addr=self.main_node,
            vendor=q.VendorInfo("TC", "01"),
        )

    def in_network(self, address: str) -> bool:
        return address in self.archive and (self.joined is None or address in self.joined)

    async def form(self) -> None:
        self.forming = False
        await self._notify()

    async def reset(self) -> None:
        """Restart: in-flight reads are lost, a spontaneous AFN03 F10 follows."""
        self.in_flight.clear()
        self.held.clear()
        self.counts["resets"] += 1
        self._seq = (self._seq + 1) & 0xFF
        await self._send(q.to_frame(self.info(), q.UpInfo(seq=self._seq), prm=True))

    async def report_event(self, address: str) -> None:
        """An AFN06 F5 meter event (the meter's 645 reply to 04000503, a status word)."""
        assert self.events_allowed, "the concentrator never allowed event reports (05F2)"
        meter = self.meters[address]
        frame = dlt645.to_frame(
            dlt645.Address.parse(address), dlt645.ReadRequest(0x04000503), dlt645.Edition.V2007
        )
        reply = respond(meter, frame, broadcast=False, wildcard=False)
        raw = b"".join(f.to_bytes(wakeup=0) for f in reply.frames)
        self._seq = (self._seq + 1) & 0xFF
        await self._send(q.to_frame(q.ReportEvent(1, 2, raw), q.UpInfo(seq=self._seq), prm=True))

    async def release(self, order: list[int] | None = None) -> None:
        """Send the held replies, in `order` (indexes into `held`, default as held)."""
        held, self.held = self.held, []
        for i in order if order is not None else range(len(held)):
            request, message = held[i]
            await self._reply_read(request, message)

    async def _frame(self, frame: q.Frame) -> None:
        self.received.append(frame)
        message = q.from_frame(frame)
        self.counts[type(message).__name__] += 1
        await self._notify()
        if self.vanish:
            return
        if frame.afn == 0x00 and frame.direction is q.Direction.DOWN:
            self.confirms.append(frame.seq)
            await self._notify()
            return
        if isinstance(message, q.RouterReadAnswer):
            await self._router_answers.put((frame, message))
            return
        answer = await self._answer(frame, message)
        if answer is not None:
            await self._send(q.reply_to(frame, answer, q.UpInfo()))

    async def _answer(self, frame: q.Frame, message: q.Message) -> q.Message | None:
        match message:
            case q.QueryModuleInfo():
                return self.info()
            case q.QueryMainNode():
                return q.MainNode(self.main_node)
            case q.SetMainNode():
                self.main_node = message.main_node_addr
                return q.Confirm()
            case q.QueryNodeCount():
                return q.NodeCount(len(self.archive), 2040)
            case q.QueryNodes():
                nodes = list(self.archive.items())[message.start_seq - 1 :][
                    : min(message.count, 25)
                ]
                return q.NodeList(
                    len(self.archive),
                    tuple(
                        q.NodeInfo(q.NodeAddress.parse(a), p, phase=1, signal_quality=12)
                        if self.in_network(a)
                        else q.NodeInfo(q.NodeAddress.parse(a), p)  # never heard from
                        for a, p in nodes
                    ),
                )
            case q.AddNodes():
                if all(n.addr.digits in self.archive for n in message.nodes):
                    return q.Deny(6)
                for n in message.nodes:
                    self.archive[n.addr.digits] = n.protocol
                self.forming = self.forming or self.form_on_change
                return q.Confirm()
            case q.DeleteNodes():
                for a in message.addresses:
                    self.archive.pop(a.digits, None)
                self.forming = self.forming or self.form_on_change
                return q.Confirm()
            case q.SetEventReporting():
                self.events_allowed = message.enabled
                return q.Confirm()
            case q.RouterPause() | q.RouterResume():
                return q.Confirm()
            case q.RouterRestart():
                idle = self._router_task is None or self._router_task.done()
                if self.router_led and idle:
                    self._router_task = asyncio.create_task(self._router_pass())
                return q.Confirm()
            case q.QueryBroadcastDelay():
                return q.BroadcastDelay(self.broadcast_delay_s, message.protocol, message.frame)
            case q.StartBroadcast():
                self.broadcasts.append(message.frame)
                return q.Confirm()
            case q.ConcurrentRead() | q.MonitorRequest():
                return self._read(frame, message)
        return q.Deny(4)

    def _read(self, frame: q.Frame, message: q.Message) -> q.Message | None:
        assert frame.dst is not None
        address = frame.dst.digits
        script = self.deny_script.get(address)
        if script:
            return q.Deny(script.pop(0))
        if address not in self.archive:
            return q.Deny(7)
        if not self.in_network(address):
            return q.Deny(12)
        if self.forming:
            return q.Deny(9)
        if address in self.in_flight.values():
            self.meter_overlaps += 1
            return q.Deny(111)
        limit = 1 if isinstance(message, q.MonitorRequest) else self.concurrency
        if len(self.in_flight) >= limit:
            return q.Deny(109)
        frames = [e for e in q.inner_frames(message) if isinstance(e, dlt645.Frame)]
        if len(frames) > self.max_frames:
            return q.Deny(110)
        self.in_flight[frame.seq] = address
        self.max_seen_in_flight = max(self.max_seen_in_flight, len(self.in_flight))
        if self.hold:
            self.held.append((frame, message))
        else:
            self._spawn(self._reply_read(frame, message))
        return None

    def _meter_bytes(self, address: str, message: q.Message) -> bytes:
        if address in self.silent:
            return b""
        meter = self.meters[address]
        out = b""
        for inner in q.inner_frames(message):
            if isinstance(inner, dlt645.Frame):
                reply = respond(meter, inner, broadcast=False, wildcard=False)
                out += b"".join(f.to_bytes(wakeup=4) for f in reply.frames)
        if address in self.bad_inner and out:
            damaged = bytearray(out)
            damaged[-2] ^= 0x01
            out = bytes(damaged)
        return out

    async def _reply_read(self, frame: q.Frame, message: q.Message) -> None:
        if self.in_flight.pop(frame.seq, None) is None:
            return  # lost in a reset
        assert frame.dst is not None
        raw = self._meter_bytes(frame.dst.digits, message)
        answer: q.Message
        if isinstance(message, q.MonitorRequest):
            answer = q.MonitorReply(2, raw, duration_s=1)
        else:
            answer = q.ConcurrentReply(2, raw)
        await self._send(q.reply_to(frame, answer, q.UpInfo(phase=1)))
        await self._notify()

    # --- router-led ----------------------------------------------------------------------------
    async def _router_pass(self) -> None:
        """Walk the archive: ask for each node until the concentrator says done (or fails)."""
        for seq_no, address in enumerate(list(self.archive), start=1):
            if not self.in_network(address):
                continue
            node = q.NodeAddress.parse(address)
            while True:
                self._seq = (self._seq + 1) & 0xFF
                ask = q.to_frame(
                    q.RouterReadRequest(1, node, seq_no),
                    q.UpInfo(seq=self._seq),
                    comm_mode=q.CommMode.NARROWBAND,
                    prm=True,
                )
                await self._send(ask, times=2 if self.ask_twice else 1)
                frame, answer = await self._router_answers.get()
                while frame.seq != ask.seq:  # an answer to an earlier ask: a real module drops it
                    self.counts["stale_router_answers"] += 1
                    frame, answer = await self._router_answers.get()
                if answer.read_flag != q.ReadFlag.READ:
                    break
                carried = q.RouterReadAnswer(2, answer.frame)
                raw = self._meter_bytes(address, carried) if address not in self.silent else b""
                self._seq = (self._seq + 1) & 0xFF
                report = q.to_frame(
                    q.ReportReadData(seq_no, 2, raw, duration_s=1),
                    q.UpInfo(seq=self._seq),
                    comm_mode=q.CommMode.NARROWBAND,
                    prm=True,
                )
                await self._send(report)
                self.counts["router_reads"] += 1
                await self.wait_for(lambda s=report.seq: s in self.confirms)  # type: ignore[misc]
        self._seq = (self._seq + 1) & 0xFF
        done = q.to_frame(q.ReportRouteChange(1), q.UpInfo(seq=self._seq), prm=True)
        await self._send(done)
        self.counts["passes"] += 1
        await self._notify()


def now() -> dt.datetime:
    return dt.datetime(2026, 3, 11, 10, 0)
