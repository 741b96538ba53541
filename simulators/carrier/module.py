"""The CCO (main node) of a carrier network, speaking Q/GDW 1376.2 on its serial side.

`CarrierModule` keeps the module's state — node list (archive), main-node address, router,
exchanges in flight — and answers the decoded down frames the serving loop hands it
(`receive`). Replies to reads come after a drawn latency (see `latency`), so they leave in any
order, matched by SEQ; the module speaks first after a reset (AFN03 F10), in router-led reading
(AFN14 F1/F2, AFN06 F2/F3) and with meter events (AFN06 F5).

What it refuses, and when (docs/simulator.md, "Carrier (CCO) buses"):

* a frame it can delimit but not accept: 3 (checksum), 2 (length: end byte not where L says,
  cut short), 5 (format: a data unit that does not fit, a read without a target), 4 (an
  AFN/Fn it does not know), 10 (a command it does not support: F1 F1 on narrowband …);
* reads (AFN F1 F1, AFN13 F1, AFN02 F1), checked in this order: 9 while the network forms
  (after power-up / reset / archive change), 12 (or 7) for a node not in its list, 110 for
  more 645 frames in one F1 F1 than it takes, 111 for a node already in flight, 109 beyond its
  concurrency;
* accepted reads that fail: 12 after 10–12 s for a node out of the network, 11 (or a length-0
  reply) after 10–12 s for a route that fails, a length-0 reply when the meter is silent or the
  monitor timeout passes.

Times: drawn in the field's seconds, waited × `time_scale`. Randomness: one generator seeded
by the fleet's seed and the bus name, drawn in the order requests arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from protocols import dlt645
from protocols import q13762 as q
from protocols.dlt645.describe import TRACE_RX, TRACE_TX, trace_line
from protocols.errors import ChecksumError, FrameError, PayloadError, TruncatedFrame
from protocols.q13762.frame import address_field_len
from simulators.bus import Bus
from simulators.carrier import latency
from simulators.carrier.network import Network, Node
from simulators.carrier.station import carried_frames, dis_of, visit
from simulators.faults import rng_for
from simulators.line import Port, send_paced
from simulators.record import CarrierRecord

__all__ = ["FAILURE_DELAY_S", "CarrierModule", "Line"]

Trace = Callable[[str], None]

#: how long a module takes to give up on a node that is gone or a route that fails: 00F2 with
#: 11/12 came 10–12 s after the request in the captures
FAILURE_DELAY_S = (10.0, 12.0)
#: 01F1 / 01F2 are confirmed in 0.8–1.1 s (captures)
INIT_CONFIRM_S = (0.8, 1.1)
#: the event a node reports (AFN06 F5): its meter's reply to the active-report status word
EVENT_DI = 0x04001501
#: AFN03 F1 / F10 vendor block: a simulator's own codes, not a real vendor's
VENDOR = q.VendorInfo("ML", "SM", bytes.fromhex("150126"), "0100")


class Line:
    """One open line to the concentrator: frames go out whole, one at a time, paced at the
    baud when line timing is on."""

    def __init__(self, port: Port, *, timing: bool = False, baud: int = 9600) -> None:
        self.port = port
        self.timing = timing
        self.baud = baud
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._lock:
            if self.timing:
                await send_paced(self.port, data, self.baud)
            else:
                await self.port.write(data)


@dataclass
class _Exchange:
    """A read in flight (from the concentrator, or the router's own)."""

    node: Node
    task: asyncio.Task[None] | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class RouterState:
    """Router-led reading (AFN14): where it stands."""

    paused: bool = False
    running: bool = False
    round_done: bool = False
    nodes_read: int = 0
    current: q.NodeAddress | None = None


_READS = (q.ConcurrentRead, q.MonitorRequest, q.Forward)
_COMMAND_AFNS_WITHOUT_ADDRESS = (0x10, 0x11)


class CarrierModule:
    """A CCO serving one carrier bus. Create it inside the running loop, `start()` it (the
    power-up), `attach()` lines, feed it with `receive()`, `close()` it at the end."""

    def __init__(
        self,
        bus: Bus,
        *,
        time_scale: float | None = None,
        trace: Trace | None = None,
    ) -> None:
        if bus.carrier is None or bus.network is None:
            raise ValueError(f"bus {bus.name} is not a carrier bus")
        config = bus.carrier
        if time_scale is not None:
            config = dataclasses.replace(config, time_scale=time_scale)
            config.check()
        self.bus = bus
        self.config = config
        self.network: Network = bus.network
        self.trace = trace
        self._rng = rng_for(bus.seed, "cco", bus.name)
        self._loop = asyncio.get_running_loop()
        self._lines: list[Line] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._epoch_tasks: set[asyncio.Task[Any]] = set()
        self.archive: dict[q.NodeAddress, int] = {}
        """the module's node list: address → protocol, in the order nodes were added"""
        self.main_node = config.main_node_address
        self.monitor_timeout_s = config.monitor_timeout_s
        self.events_enabled = False
        self.in_flight: dict[q.NodeAddress, _Exchange] = {}
        self.router = RouterState()
        self.resets = 0
        self._t0 = self._loop.time()
        self._awake = False
        self._formed_at = math.inf
        self._formed_event = asyncio.Event()
        self._awake_event = asyncio.Event()
        self._form_timer: asyncio.TimerHandle | None = None
        self._seq = self._rng.randrange(256)
        self._awaiting: dict[int, tuple[tuple[type[q.Message], ...], asyncio.Future[Any]]] = {}
        self._slots = asyncio.Condition()
        self._resumed = asyncio.Event()
        self._events_on = asyncio.Event()
        self._forced: dict[q.NodeAddress, bool] = {}
        self._stale: dict[q.NodeAddress, Node] = {}

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Power-up: the node list as the plan has it, then boot (F10 report, forming)."""
        self.archive = {e.addr: e.protocol for e in self.network.initial}
        self._reboot()

    async def close(self) -> None:
        if self._form_timer is not None:
            self._form_timer.cancel()
        tasks = self._tasks | self._epoch_tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._epoch_tasks.clear()

    def attach(self, line: Line) -> None:
        self._lines.append(line)

    def detach(self, line: Line) -> None:
        with contextlib.suppress(ValueError):
            self._lines.remove(line)

    def reset(self) -> None:
        """A hardware reset now (what 01F1 does after its confirm, or a power cut): exchanges
        in flight are never answered, the module is deaf until its AFN03 F10 report, then the
        network forms again. The node list is kept."""
        self._reboot()

    # --- test hooks ------------------------------------------------------------------------
    def drop(self, address: str | q.NodeAddress) -> None:
        """Take a node out of the network now (until `restore`), whatever its schedule."""
        self._forced[q.NodeAddress.of(address)] = True

    def restore(self, address: str | q.NodeAddress) -> None:
        """Bring a dropped node back (its seeded schedule applies again); with event
        reporting on, it reports an event (AFN06 F5) as nodes back from an outage do."""
        node_address = q.NodeAddress.of(address)
        if self._forced.pop(node_address, None) and self.events_enabled and self._awake:
            self._spawn(self._event(self._node(node_address), "back in the network"))

    def absent(self, address: str | q.NodeAddress) -> bool:
        node = self._node(q.NodeAddress.of(address))
        return self._absent(node)

    # --- clocks ----------------------------------------------------------------------------
    def now(self) -> float:
        """Module time: the field's seconds since power-up (loop time ÷ time scale)."""
        return (self._loop.time() - self._t0) / self.config.time_scale

    @property
    def awake(self) -> bool:
        return self._awake

    @property
    def formed(self) -> bool:
        return self._awake and self._loop.time() >= self._formed_at

    async def wait_awake(self) -> None:
        """Until the module has booted (its AFN03 F10 report is out)."""
        await self._awake_event.wait()

    async def wait_formed(self) -> None:
        """Until the network has formed (reads are no longer denied 9)."""
        await self._awake_event.wait()
        await self._until_formed()

    @property
    def comm_mode(self) -> int:
        return q.CommMode.NARROWBAND if self.config.narrowband else q.CommMode.HPLC

    def _scaled(self, seconds: float) -> float:
        return seconds * self.config.time_scale

    def _uniform(self, bounds: tuple[float, float]) -> float:
        return self._rng.uniform(*bounds)

    # --- tasks -----------------------------------------------------------------------------
    def _spawn(
        self, coro: Coroutine[Any, Any, Any], *, epoch: bool = True, name: str | None = None
    ) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro, name=name)
        bag = self._epoch_tasks if epoch else self._tasks
        bag.add(task)
        task.add_done_callback(bag.discard)
        return task

    def _reboot(self) -> None:
        self.resets += 1
        for task in list(self._epoch_tasks):
            task.cancel()
        self._epoch_tasks.clear()
        now = self._loop.time()
        for address, exchange in list(self.in_flight.items()):
            if exchange.record:
                self._write(outcome="reset", detail="the module reset before answering",
                            **exchange.record)  # fmt: skip
            del self.in_flight[address]
        for _, future in self._awaiting.values():
            future.cancel()
        self._awaiting.clear()
        self._awake = False
        self._awake_event.clear()
        self.router = RouterState()
        self._resumed.set()
        self._form_until(now + self._scaled(self.config.forming_s))
        self._spawn(self._boot())

    async def _boot(self) -> None:
        await asyncio.sleep(self._scaled(self._uniform(self.config.boot_report_s)))
        self._awake = True
        self._awake_event.set()
        if self.config.boot_report:
            frame = q.to_frame(
                self._module_info(), q.UpInfo(seq=self._next_seq()),
                comm_mode=self.comm_mode, prm=True,
            )  # fmt: skip
            await self._broadcast(frame)
            self._write(dir="up", seq=frame.seq, afn=0x03, fn=10, outcome="sent",
                        reply_bytes=frame.length, t_reply=self._t(), attempts=1,
                        detail="running-mode report after reset")  # fmt: skip
        if self.config.reading != "concentrator":
            self._spawn(self._router(), name="router")
        if self.config.events_per_hour > 0 or self.network.dropping():
            self._spawn(self._events())

    # --- the line --------------------------------------------------------------------------
    def _t(self) -> float:
        return round(self._loop.time() - self._t0, 6)

    async def _send(self, frame: q.Frame, line: Line | None) -> None:
        data = frame.to_bytes()
        self._trace(TRACE_RX, data, frame)
        lines = [line] if line is not None else list(self._lines)
        for target in lines:
            with contextlib.suppress(OSError, ConnectionError):
                await target.send(data)

    async def _broadcast(self, frame: q.Frame) -> None:
        await self._send(frame, None)

    def _trace(self, mark: str, data: bytes, frame: q.Frame | None) -> None:
        if self.trace is None:
            return
        self.trace(trace_line(mark, data))
        if frame is None:
            return
        try:
            message = q.from_frame(frame)
        except PayloadError:
            return
        for inner in q.inner_frames(message):
            raw = inner.raw if isinstance(inner, FrameError) else inner.to_bytes(wakeup=0)
            self.trace("  " + trace_line(mark, raw))

    def traced_request(self, raw: bytes, event: q.Frame | FrameError) -> None:
        """Trace what arrived (the serving loop calls this with the raw bytes)."""
        self._trace(TRACE_TX, raw, event if isinstance(event, q.Frame) else None)

    # --- records ---------------------------------------------------------------------------
    def _write(self, **fields: Any) -> None:
        fields.setdefault("dir", "down")
        afn = fields.pop("afn")
        record = CarrierRecord(
            wall_time=self.bus.world.now().replace(microsecond=0).isoformat(),
            bus=self.bus.name,
            afn=f"{afn:02X}",
            time_scale=self.config.time_scale,
            **fields,
        )
        self.bus.recorder.add(record)

    # --- receiving -------------------------------------------------------------------------
    def receive(self, event: q.Frame | FrameError, line: Line, arrived_at: float) -> None:
        """One decoded event from the line (`arrived_at`: loop time its last byte arrived)."""
        if isinstance(event, FrameError):
            self._bad_frame(event, line, arrived_at)
            return
        frame = event
        base: dict[str, Any] = {
            "seq": frame.seq, "afn": frame.afn, "fn": frame.fn,
            "t_request": round(arrived_at - self._t0, 6), "request_bytes": frame.length,
        }  # fmt: skip
        if frame.direction is q.Direction.UP:
            self._write(outcome="ignored", detail="an up frame from the concentrator", **base)
            return
        if not self._awake:
            self._write(outcome="ignored", detail="rebooting", **base)
            return
        if frame.afn in _COMMAND_AFNS_WITHOUT_ADDRESS and frame.addressed:
            # a real CCO silently ignored AFN10 / AFN11 frames that carried an address field
            self._write(outcome="ignored", detail="AFN10/11 with an address field", **base)
            return
        try:
            message = q.from_frame(frame)
        except PayloadError as exc:
            self._deny(frame, line, arrived_at, 5, base, f"format: {exc}")
            return
        if frame.seq in self._awaiting and isinstance(message, self._awaiting[frame.seq][0]):
            _, future = self._awaiting.pop(frame.seq)
            if not future.done():
                future.set_result(message)
            return
        if isinstance(message, q.Confirm | q.Deny | q.RouterReadAnswer | q.ClockAnswer):
            self._write(outcome="ignored", detail="an answer to nothing outstanding", **base)
            return
        if isinstance(message, q.CorrectionAnswer):
            self._write(outcome="ignored", detail="an answer to nothing outstanding", **base)
            return
        if isinstance(message, _READS):
            self._read(frame, message, line, arrived_at, base)
            return
        handled = self._command(frame, message, line, arrived_at, base)
        if not handled:
            code = 4 if isinstance(message, q.RawMessage) else 10
            self._deny(frame, line, arrived_at, code, base, type(message).__name__)

    def _bad_frame(self, error: FrameError, line: Line, arrived_at: float) -> None:
        raw = error.raw
        base: dict[str, Any] = {
            "seq": None, "afn": 0, "fn": 0, "t_request": round(arrived_at - self._t0, 6),
            "request_bytes": len(raw),
        }  # fmt: skip
        detail = f"{type(error).__name__}: {error}"
        if len(raw) < 10 or raw[0] != 0x68 or raw[3] & 0x80 or not self._awake:
            self._write(outcome="bad_frame", detail=detail, **base)
            return
        length = raw[1] | raw[2] << 8
        if isinstance(error, ChecksumError):
            code = 3
        elif (
            isinstance(error, TruncatedFrame)
            or len(raw) != length
            or raw[-1] != 0x16
            or 15 + address_field_len(raw[3], raw[4]) > length
        ):
            code = 2
        else:
            code = 5  # delimited and summed right, but DT1 names no single Fn
        base["seq"] = raw[9]
        reply = q.to_frame(q.Deny(code), q.UpInfo(seq=raw[9]), comm_mode=raw[3] & 0x3F)
        self._answer_later(reply, line, arrived_at, latency.COMMAND, base,
                           outcome="denied", deny=code, detail=detail)  # fmt: skip

    # --- answering -------------------------------------------------------------------------
    def _up_info(self, node: Node | None = None) -> q.UpInfo:
        pending = any(q.Confirm in kinds for kinds, _ in self._awaiting.values())
        if node is None:
            return q.UpInfo(event_flag=pending)
        quality = max(0, min(15, node.quality))
        return q.UpInfo(
            relay_level=max(0, min(15, node.hops - 1)),
            phase=node.phase,
            channel_characteristic=node.channel_characteristic,
            command_quality=quality,
            reply_quality=quality,
            event_flag=pending,
        )

    def _answer_later(
        self,
        reply: q.Frame,
        line: Line,
        arrived_at: float,
        model: latency.Mixture,
        base: dict[str, Any],
        **fields: Any,
    ) -> None:
        drawn = model.draw(self._rng, 1)
        self._spawn(self._answer_at(reply, line, arrived_at, drawn, {**base, **fields}))

    async def _answer_at(
        self, reply: q.Frame, line: Line, arrived_at: float, drawn: float, fields: dict[str, Any]
    ) -> None:
        applied = self._scaled(drawn)
        await asyncio.sleep(max(0.0, arrived_at + applied - self._loop.time()))
        await self._send(reply, line)
        self._write(latency_s=round(drawn, 6), applied_s=round(applied, 6), t_reply=self._t(),
                    reply_bytes=reply.length, **fields)  # fmt: skip

    def _reply(
        self,
        frame: q.Frame,
        message: q.Message,
        line: Line,
        arrived_at: float,
        base: dict[str, Any],
        *,
        model: latency.Mixture = latency.COMMAND,
        outcome: str = "answered",
        detail: str = "",
    ) -> None:
        reply = q.reply_to(frame, message, self._up_info())
        self._answer_later(reply, line, arrived_at, model, base, outcome=outcome, detail=detail)

    def _deny(
        self,
        frame: q.Frame,
        line: Line,
        arrived_at: float,
        code: int,
        base: dict[str, Any],
        detail: str = "",
        **fields: Any,
    ) -> None:
        reply = q.reply_to(frame, q.Deny(code), self._up_info())
        self._answer_later(reply, line, arrived_at, latency.COMMAND, {**base, **fields},
                           outcome="denied", deny=code, detail=detail)  # fmt: skip

    # --- commands to the module itself ----------------------------------------------------
    def _command(
        self,
        frame: q.Frame,
        message: q.Message,
        line: Line,
        arrived_at: float,
        base: dict[str, Any],
    ) -> bool:
        reply: q.Message | None = None
        model = latency.COMMAND
        detail = ""
        match message:
            case q.HardwareInit() | q.ParameterInit():
                clear = isinstance(message, q.ParameterInit)
                self._spawn(self._init(frame, line, arrived_at, base, clear=clear), epoch=False)
                return True
            case q.DataInit():
                self.router = RouterState(paused=self.router.paused)
                reply, detail = q.Confirm(), "data area cleared: router round starts over"
            case q.QueryVendor():
                reply = q.VendorReply(VENDOR)
            case q.QueryMainNode():
                reply = q.MainNode(self.main_node)
            case q.QueryModuleInfo():
                reply = self._module_info()
            case q.QueryBroadcastDelay():
                reply = q.BroadcastDelay(self._broadcast_delay(), message.protocol, message.frame)
            case q.SetMainNode():
                self.main_node = message.main_node_addr
                reply, detail = q.Confirm(), f"main node {message.main_node_addr}"
            case q.SetEventReporting():
                self.events_enabled = message.enabled
                if message.enabled:
                    self._events_on.set()
                else:
                    self._events_on.clear()
                reply, detail = q.Confirm(), f"event reporting {'on' if message.enabled else 'off'}"
            case q.SetMonitorTimeout():
                if message.seconds < 1:
                    self._deny(frame, line, arrived_at, 1, base, "monitor timeout 0")
                    return True
                self.monitor_timeout_s = message.seconds
                reply, detail = q.Confirm(), f"monitor timeout {message.seconds} s"
            case q.StartBroadcast():
                detail = self._start_broadcast(message)
                reply = q.Confirm()
            case q.QueryNodeCount():
                reply = q.NodeCount(len(self.archive), self.config.max_nodes)
            case q.QueryNodes():
                reply = self._node_page(message.start_seq, message.count)
            case q.QueryRouterStatus():
                reply = self._router_status()
            case q.AddNodes():
                self._add_nodes(frame, message, line, arrived_at, base)
                return True
            case q.DeleteNodes():
                gone = [a for a in message.addresses if a in self.archive]
                for address in gone:
                    del self.archive[address]
                if gone:
                    self._archive_changed()
                reply, model = q.Confirm(), latency.ARCHIVE_COMMAND
                detail = f"{len(gone)} deleted, {len(message.addresses) - len(gone)} not there"
            case q.RouterRestart():
                reply, detail = q.Confirm(), self._router_restart()
            case q.RouterPause():
                self.router.paused = True
                self._resumed.clear()
                reply, detail = q.Confirm(), "router paused"
            case q.RouterResume():
                self.router.paused = False
                self._resumed.set()
                reply, detail = q.Confirm(), "router resumed"
            case _:
                return False
        self._reply(frame, reply, line, arrived_at, base, model=model, detail=detail)
        return True

    async def _init(
        self, frame: q.Frame, line: Line, arrived_at: float, base: dict[str, Any], *, clear: bool
    ) -> None:
        drawn = self._uniform(INIT_CONFIRM_S)
        reply = q.reply_to(frame, q.Confirm(), self._up_info())
        detail = "parameter init: archive cleared, rebooting" if clear else "rebooting"
        await self._answer_at(reply, line, arrived_at, drawn,
                              {**base, "outcome": "answered", "detail": detail})  # fmt: skip
        if clear:
            self.archive.clear()
        self._reboot()

    def _module_info(self) -> q.ModuleInfo:
        c = self.config
        mode = {"concentrator": q.ReadingMode.CONCENTRATOR_LED, "router": q.ReadingMode.ROUTER_LED}
        return q.ModuleInfo(
            comm_type=1 if c.narrowband else 2,
            route_mgmt=True,
            node_info_mode=True,
            reading_mode=mode.get(
                c.reading, q.ReadingMode.CONCENTRATOR_LED | q.ReadingMode.ROUTER_LED
            ),
            delay_params=7,
            monitor_max_timeout_s=self.monitor_timeout_s,
            broadcast_max_timeout_s=50 if c.narrowband else 20,
            max_frame_len=c.max_frame_len,
            max_file_packet=min(1024, c.max_frame_len),
            upgrade_wait_s=12,
            main_node_addr=self.main_node,
            max_nodes=c.max_nodes,
            node_count=len(self.archive),
            protocol_release_date=bytes.fromhex("280616"),
            protocol_record_date=bytes.fromhex("101013"),
            vendor=VENDOR,
            rates=(q.Rate(1200),) if c.narrowband else (q.Rate(100, kbps=True),),
        )

    def _broadcast_delay(self) -> int:
        deepest = max((self._node(a).hops for a in self.archive), default=1)
        return 2 * deepest if not self.config.narrowband else 5 * deepest

    def _start_broadcast(self, message: q.StartBroadcast) -> str:
        """The frame goes to every meter in the network (a 645 time sync, typically)."""
        if message.control not in (1, 2):
            return f"broadcast control {message.control}: nothing a meter acts on"
        edition = dlt645.Edition.V1997 if message.control == 1 else dlt645.Edition.V2007
        events = carried_frames(message.frame, edition)
        reached = 0
        for address in list(self.archive):
            node = self._node(address)
            if node.meter is None or self._absent(node):
                continue
            reached += 1
            for event in events:
                if isinstance(event, dlt645.Frame) and event.edition is node.meter.identity.edition:
                    self.bus.answer(node.meter, event, broadcast=event.address.is_broadcast,
                                    wildcard=event.address.is_wildcard)  # fmt: skip
        return f"broadcast to {reached} meters"

    def _node_page(self, start: int, count: int) -> q.NodeList:
        addresses = list(self.archive)
        first = max(start, 1) - 1
        count = min(count, self.config.node_page_max, (self.config.max_frame_len - 24) // 8)
        nodes = []
        for address in addresses[first : first + count]:
            node = self._node(address)
            joined = node.meter is not None
            nodes.append(
                q.NodeInfo(
                    address,
                    protocol=min(7, self.archive[address]),
                    phase=node.phase if joined else 0,
                    relay_level=max(0, min(15, node.hops - 1)) if joined else 0,
                    signal_quality=max(0, min(15, node.quality)) if joined else 0,
                )
            )
        return q.NodeList(len(addresses), tuple(nodes))

    def _router_status(self) -> q.RouterStatus:
        hplc = not self.config.narrowband
        relayed = sum(1 for a in self.archive if self._node(a).hops > 1)
        deepest = max((self._node(a).hops for a in self.archive), default=1)
        router_led = self.config.reading != "concentrator"
        if not self.formed:
            step = 1  # init / forming
        elif self.router.running and not self.router.paused:
            step = 3 if deepest > 1 else 2
        else:
            step = 8  # idle
        done = self.router.round_done if router_led else self.formed
        return q.RouterStatus(
            route_done=done,
            working=self.router.running and not self.router.paused,
            event_pending=self._up_info().event_flag,
            node_total=len(self.archive),
            nodes_read=self.router.nodes_read,
            nodes_via_relay=relayed,
            work_switch=int(router_led),
            rate=100 if hplc else 1200,
            relay_levels=(deepest - 1,) * 3,
            work_steps=(step,) * 3,
        )

    def _add_nodes(
        self,
        frame: q.Frame,
        message: q.AddNodes,
        line: Line,
        arrived_at: float,
        base: dict[str, Any],
    ) -> None:
        new = []
        seen = set()
        for entry in message.nodes:
            if entry.addr in self.archive or entry.addr in seen:
                continue
            seen.add(entry.addr)
            new.append(entry)
        duplicates = len(message.nodes) - len(new)
        if len(self.archive) + len(new) > self.config.max_nodes:
            self._deny(frame, line, arrived_at, 1, base,
                       f"archive full: {len(self.archive)} of {self.config.max_nodes}")  # fmt: skip
            return
        for entry in new:
            self.archive[entry.addr] = entry.protocol
        if new:
            self._archive_changed()
        detail = f"{len(new)} added" + (f", {duplicates} already there" if duplicates else "")
        if duplicates:
            self._deny(frame, line, arrived_at, 6, base, detail)
            return
        reply = q.reply_to(frame, q.Confirm(), self._up_info())
        self._answer_later(reply, line, arrived_at, latency.ARCHIVE_COMMAND, base,
                           outcome="answered", detail=detail)  # fmt: skip

    def _archive_changed(self) -> None:
        until = self._loop.time() + self._scaled(self.config.reforming_s)
        if until > self._formed_at:
            self._form_until(until)

    # --- nodes -----------------------------------------------------------------------------
    def _node(self, address: q.NodeAddress) -> Node:
        node = self.network.node(address)
        if node is not None:
            return node
        stale = self._stale.get(address)
        if stale is None:
            stale = Node(address, None, self.archive.get(address, 2), quality=0, phase=0)
            self._stale[address] = stale
        return stale

    def _absent(self, node: Node) -> bool:
        forced = self._forced.get(node.address)
        if forced is not None:
            return forced
        return node.absent(self.now())

    # --- reads -----------------------------------------------------------------------------
    def _read(
        self,
        frame: q.Frame,
        message: q.Message,
        line: Line,
        arrived_at: float,
        base: dict[str, Any],
    ) -> None:
        carried = message.carried()
        assert carried is not None
        events = carried_frames(carried.frame, carried.edition) if carried.frame else []
        base.update(frames=len(events), dis=dis_of(events))
        concurrent = isinstance(message, q.ConcurrentRead)
        if concurrent and self.config.narrowband:
            self._deny(frame, line, arrived_at, 10, base, "no concurrent reading on narrowband")
            return
        address = frame.dst
        if address is None and isinstance(message, q.Forward):
            first = next((e for e in events if isinstance(e, dlt645.Frame)), None)
            address = q.NodeAddress.of(first.address) if first is not None else None
        if address is None or not carried.frame:
            self._deny(frame, line, arrived_at, 5, base, "a read needs a target node and a frame")
            return
        node = self._node(address)
        base.update(node=address.digits, meter=node.meter_id)
        if not self.formed:
            self._deny(frame, line, arrived_at, 9, base, "network forming")
            return
        if address not in self.archive:
            code = self.config.unknown_node_deny
            self._deny(frame, line, arrived_at, code, base, "not in the module's node list")
            return
        if concurrent and len(events) > self.config.max_frames:
            what = f"{len(events)} frames, {self.config.max_frames} allowed"
            self._deny(frame, line, arrived_at, 110, base, what)
            return
        if address in self.in_flight:
            self._deny(frame, line, arrived_at, 111, base, "a frame to this node is in flight")
            return
        if len(self.in_flight) >= self.config.concurrency:
            what = f"{len(self.in_flight)} in flight, {self.config.concurrency} allowed"
            self._deny(frame, line, arrived_at, 109, base, what)
            return
        exchange = _Exchange(node)
        self.in_flight[address] = exchange
        base.update(in_flight=len(self.in_flight), hops=node.hops,
                    quality=node.quality if node.meter is not None else None)  # fmt: skip
        exchange.record = base
        plan = self._plan(node, events, self._model(concurrent))
        exchange.task = self._spawn(
            self._finish_read(frame, message, line, arrived_at, plan, exchange)
        )

    def _model(self, concurrent: bool) -> latency.Mixture | latency.PerHop:
        if self.config.narrowband:
            return latency.NARROWBAND
        return latency.HPLC_READ if concurrent else latency.HPLC_POINT

    def _plan(
        self,
        node: Node,
        events: list[dlt645.Frame | FrameError],
        model: latency.Mixture | latency.PerHop,
    ) -> _Plan:
        """Decide now (draws in arrival order) how this exchange ends and when. The meter is
        asked now: what it does (a top-up, a clock write) happens even if the reply is lost."""
        fail_draw = self._rng.random()
        drawn = model.draw(self._rng, node.hops)
        timeout = float(self.monitor_timeout_s)
        if node.meter is None or self._absent(node):
            return _Plan(min(timeout, self._uniform(FAILURE_DELAY_S)), "denied", deny=12,
                         detail="the node is not in the network")  # fmt: skip
        hour = self.bus.world.now().hour
        p_fail = self.config.route_failure * node.failure_weight + self.bus.faults.noise_rate(hour)
        if fail_draw < p_fail:
            as_deny = self._rng.random() < self.config.route_failure_deny
            return _Plan(min(timeout, self._uniform(FAILURE_DELAY_S)), "route_failure",
                         deny=11 if as_deny else None, detail="the route failed")  # fmt: skip
        seen = visit(self.bus, node, events)
        detail = "; ".join(seen.details) or ("" if seen.reply else "the meter did not answer")
        plan = _Plan(drawn + seen.extra_s, "answered" if seen.reply else "no_answer",
                     reply=seen.reply, detail=detail)  # fmt: skip
        if plan.latency_s > timeout:
            plan.latency_s, plan.reply, plan.outcome = timeout, b"", "no_answer"
            plan.detail = f"module timeout ({self.monitor_timeout_s} s)"
        return plan

    async def _finish_read(
        self,
        frame: q.Frame,
        message: q.Message,
        line: Line,
        arrived_at: float,
        plan: _Plan,
        exchange: _Exchange,
    ) -> None:
        node = exchange.node
        applied = self._scaled(plan.latency_s)
        await asyncio.sleep(max(0.0, arrived_at + applied - self._loop.time()))
        reply_message: q.Message
        if plan.deny is not None:
            reply_message = q.Deny(plan.deny)
        elif isinstance(message, q.ConcurrentRead):
            reply_message = q.ConcurrentReply(message.protocol, plan.reply)
        elif isinstance(message, q.MonitorRequest):
            duration = min(0xFFFF, round(plan.latency_s))
            reply_message = q.MonitorReply(message.protocol, plan.reply, duration)
        else:
            assert isinstance(message, q.Forward)
            reply_message = q.Forward(message.protocol, plan.reply)
        reply = q.reply_to(frame, reply_message, self._up_info(node))
        base, exchange.record = exchange.record, {}
        self.in_flight.pop(node.address, None)
        self._write(outcome=plan.outcome, deny=plan.deny, latency_s=round(plan.latency_s, 6),
                    applied_s=round(applied, 6), t_reply=self._t(), reply_bytes=reply.length,
                    detail=plan.detail, **base)  # fmt: skip
        await self._release()
        await self._send(reply, line)

    async def _release(self) -> None:
        async with self._slots:
            self._slots.notify_all()

    # --- the module's own frames ----------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _own(self, message: q.Message) -> q.Frame:
        info = dataclasses.replace(self._up_info(), seq=self._next_seq())
        return q.to_frame(message, info, comm_mode=self.comm_mode, prm=True)

    async def _until_answered(
        self,
        frame: q.Frame,
        kinds: tuple[type[q.Message], ...],
        repeat_s: float,
        retries: int,
    ) -> tuple[q.Message | None, int, float]:
        """Send a module frame and wait for the concentrator's answer (same SEQ), sending it
        again every `repeat_s` up to `retries` times. → (answer or None, attempts, first t)."""
        future: asyncio.Future[q.Message] = self._loop.create_future()
        self._awaiting[frame.seq] = (kinds, future)
        first = self._t()
        attempts = 0
        try:
            for attempts in range(1, retries + 2):
                await self._broadcast(frame)
                if attempts == 1:
                    first = self._t()
                done, _ = await asyncio.wait({future}, timeout=self._scaled(repeat_s))
                if done:
                    return future.result(), attempts, first
            return None, attempts, first
        finally:
            if self._awaiting.get(frame.seq, (None, None))[1] is future:
                del self._awaiting[frame.seq]
            if not future.done():
                future.cancel()

    async def _report(self, message: q.Message) -> tuple[q.Frame, bool, int, float]:
        """An AFN06 report, repeated until the concentrator confirms it (00F1, its SEQ)."""
        frame = self._own(message)
        answer, attempts, first = await self._until_answered(
            frame, (q.Confirm, q.Deny), self.config.report_repeat_s, self.config.report_retries
        )
        return frame, answer is not None, attempts, first

    def _form_until(self, when: float) -> None:
        """The network is forming until loop time `when`."""
        self._formed_at = when
        self._formed_event.clear()
        if self._form_timer is not None:
            self._form_timer.cancel()
        self._form_timer = self._loop.call_at(when, self._formed_event.set)

    async def _until_formed(self) -> None:
        while not self.formed:
            await self._formed_event.wait()

    # --- router-led reading (AFN14) --------------------------------------------------------
    def _router_restart(self) -> str:
        if self.config.reading == "concentrator":
            return "no router-led reading on this module"
        self.router = RouterState()
        self._resumed.set()
        for task in list(self._epoch_tasks):
            if task.get_name() == "router":
                task.cancel()
        self._spawn(self._router(), name="router")
        return "router restarted: a new round from the first node"

    async def _router(self) -> None:
        state = self.router
        await self._until_formed()
        await self._resumed.wait()
        state.running = True
        ask = self._own(q.ClockRequest())
        answer, attempts, first = await self._until_answered(
            ask, (q.ClockAnswer,), self.config.ask_repeat_s, self.config.ask_retries
        )
        clock = answer.time.isoformat() if isinstance(answer, q.ClockAnswer) else ""
        self._write(dir="up", seq=ask.seq, afn=0x14, fn=2, attempts=attempts, t_request=first,
                    outcome="answered" if answer else "unanswered",
                    detail=f"concentrator clock {clock}" if clock else "")  # fmt: skip
        for index, address in enumerate(list(self.archive), start=1):
            if address not in self.archive:
                continue  # deleted meanwhile
            node = self._node(address)
            if node.meter is None:
                continue  # a stale node never joined: nothing to ask about
            state.current = address
            await self._read_node(node, index)
        state.current = None
        state.running = False
        state.round_done = True
        frame, confirmed, attempts, first = await self._report(q.ReportRouteChange(1))
        self._write(dir="up", seq=frame.seq, afn=0x06, fn=3, outcome="sent", attempts=attempts,
                    t_reply=first, confirmed=confirmed, reply_bytes=frame.length,
                    detail="reading task done")  # fmt: skip

    async def _read_node(self, node: Node, index: int) -> None:
        """Ask the concentrator what to read at `node` until it says done or failed."""
        while True:
            await self._resumed.wait()
            await self._until_formed()
            ask = self._own(q.RouterReadRequest(max(node.phase, 1), node.address, index))
            answer, attempts, first = await self._until_answered(
                ask, (q.RouterReadAnswer,), self.config.ask_repeat_s, self.config.ask_retries
            )
            fields: dict[str, Any] = {
                "dir": "up", "seq": ask.seq, "afn": 0x14, "fn": 1, "attempts": attempts,
                "t_request": first, "node": node.address.digits, "meter": node.meter_id,
            }  # fmt: skip
            if not isinstance(answer, q.RouterReadAnswer):
                self._write(outcome="unanswered", detail="node skipped", **fields)
                return
            if answer.read_flag == q.ReadFlag.READ:
                protocol = self.archive.get(node.address, q.Protocol.DLT645_2007)
                edition = q.Protocol(protocol).edition if protocol in (1, 2) else None
                events = carried_frames(answer.frame, edition) if answer.frame else []
                self._write(outcome="read", frames=len(events), dis=dis_of(events), **fields)
                await self._router_exchange(node, index, protocol, events)
                continue
            if answer.read_flag == q.ReadFlag.DONE:
                self.router.nodes_read += 1
                self._write(outcome="done", **fields)
            else:
                self._write(outcome="failed", detail=f"read flag {answer.read_flag}", **fields)
            return

    async def _router_exchange(
        self, node: Node, index: int, protocol: int, events: list[dlt645.Frame | FrameError]
    ) -> None:
        """The router reads the frame at the node, then reports it (AFN06 F2)."""
        async with self._slots:
            await self._slots.wait_for(
                lambda: (
                    len(self.in_flight) < self.config.concurrency
                    and node.address not in self.in_flight
                )
            )
            exchange = _Exchange(node)
            self.in_flight[node.address] = exchange
        started = self._loop.time()
        exchange.record = {
            "dir": "up", "seq": None, "afn": 0x06, "fn": 2, "node": node.address.digits,
            "meter": node.meter_id, "frames": len(events), "dis": dis_of(events),
            "hops": node.hops, "quality": node.quality, "in_flight": len(self.in_flight),
            "t_request": round(started - self._t0, 6),
        }  # fmt: skip
        plan = self._plan(node, events, self._model(False))
        if plan.outcome == "denied":  # a node gone: the router finds no route to it
            plan.outcome, plan.deny = "no_answer", None
        plan.deny = None
        applied = self._scaled(plan.latency_s)
        try:
            await asyncio.sleep(max(0.0, started + applied - self._loop.time()))
        finally:
            base, exchange.record = exchange.record, {}
            self.in_flight.pop(node.address, None)
        await self._release()
        report = q.ReportReadData(index, protocol, plan.reply, min(0xFFFF, round(plan.latency_s)))
        frame, confirmed, attempts, first = await self._report(report)
        base.update(seq=frame.seq)
        self._write(outcome=plan.outcome, latency_s=round(plan.latency_s, 6),
                    applied_s=round(applied, 6), t_reply=first, attempts=attempts,
                    confirmed=confirmed, reply_bytes=frame.length, detail=plan.detail,
                    **base)  # fmt: skip

    # --- events (AFN06 F5) -----------------------------------------------------------------
    async def _events(self) -> None:
        """Meter events: nodes back from an outage, and `events_per_hour` random ones."""
        rate = self.config.events_per_hour
        rng = rng_for(self.bus.seed, "cco-events", self.bus.name)
        next_random = self.now() + rng.expovariate(rate / 3600) if rate > 0 else math.inf
        checked = self.now()  # returns up to here are dealt with
        while True:
            if not self._events_on.is_set():
                await self._events_on.wait()
                checked = self.now()  # what came back while reports were off is not reported
            await self._until_formed()
            returning = sorted(
                (n.outages.next_return(checked), n.address.digits, n)
                for n in self.network.dropping()
                if n.outages is not None and n.address in self.archive
            )
            back_at = returning[0][0] if returning else math.inf
            when = min(next_random, back_at)
            if when == math.inf:
                return
            await asyncio.sleep(self._scaled(max(0.0, when - self.now())))
            checked = max(checked, when)
            nodes: list[tuple[Node, str]] = []
            if when == back_at:
                why = "back in the network after an outage"
                nodes = [(n, why) for t, _, n in returning if t == back_at]
            else:
                next_random = when + rng.expovariate(rate / 3600)
                candidates = [
                    n for n in map(self._node, self.archive)
                    if n.meter is not None and not self._absent(n)
                ]  # fmt: skip
                if candidates:
                    nodes = [(rng.choice(candidates), "meter event")]
            if self.events_enabled:
                for node, why in nodes:
                    self._spawn(self._event(node, why))

    async def _event(self, node: Node, why: str) -> None:
        meter = node.meter
        if meter is None or meter.identity.edition is not dlt645.Edition.V2007:
            return
        word = bytearray(12)
        word[0] = 0x01
        inner = dlt645.to_frame(
            dlt645.Address.parse(meter.identity.address),
            dlt645.ReadReply(EVENT_DI, bytes(word)),
            dlt645.Edition.V2007,
        ).to_bytes(wakeup=4)
        report = q.ReportEvent(1, q.Protocol.DLT645_2007, inner)
        frame, confirmed, attempts, first = await self._report(report)
        self._write(dir="up", seq=frame.seq, afn=0x06, fn=5, outcome="sent",
                    node=node.address.digits, meter=node.meter_id, dis=["04001501"], frames=1,
                    attempts=attempts, t_reply=first, confirmed=confirmed,
                    reply_bytes=frame.length, detail=why)  # fmt: skip


@dataclass
class _Plan:
    """How an accepted read ends: after `latency_s` (field seconds), with this outcome."""

    latency_s: float
    outcome: str
    deny: int | None = None
    reply: bytes = b""
    detail: str = ""
