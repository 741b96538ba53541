"""`CarrierClient`: a DL/T 645 client whose meters sit behind a carrier module (Q/GDW 1376.2).

It is a `Dlt645Client`: `read`, `call` and `read_many` take a meter address and 645 messages
and give the meter's reply, as on RS-485; the difference is underneath.

* **Start-up** (before the first read, again after a module reset): AFN03 F10 (frame length,
  monitor timeout, node capacity; the same report the module sends on its own after a
  restart), AFN03 F4 the main-node address and AFN05 F1 when it differs from the configured
  one, then the archive sync: AFN10 F1/F2 pages → diff with the archive → AFN11 F2 deletes and
  F1 adds in batches the frame length allows, routing paused (AFN12 F2).
* **Reading** by mode: `hplc` — AFN F1 F1, a window of requests in flight (never above what
  the module accepts: learnt down from deny 109), several items of one meter in one request
  (learnt down from deny 110), one request per meter at a time; `point` — AFN13 F1, one at a
  time; `router` — the module asks for each meter's frame (AFN14, `agent.carrier.router`).
  Concentrator-led reads pause the module's own routing first (12F2) and resume it (12F3)
  after `idle_resume_s` without reads.
* **Denies drive it**: 109 shrinks the window, 110 the frames per request, 111 (our bug: a
  second frame to a meter) waits for that meter's outstanding reply, 9 (network forming) backs
  off module-wide, 7 / 12 ("not in module") re-sync the archive and retry once, 2 / 3 resend.
* **Timeouts** are the module's own monitor timeout (F10), not the 645 reply window.
* **Module frames**: every AFN06 report is confirmed (00F1, its SEQ), 06F5 meter events become
  agent events, a spontaneous 03F10 means the module restarted: requests in flight are sent
  again after the re-sync.

Failure reasons: docs/carrier.md and `agent.carrier.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import common.clock
from agent.carrier.errors import (
    ModuleDown,
    ModuleReset,
    ModuleStillBusy,
    ModuleTimeout,
    RouteFailure,
)
from agent.carrier.link import Answer, ModuleLink
from agent.dlt645 import Dlt645Client, FrameSink, ReadResult
from agent.transports import (
    BusError,
    BusUrl,
    NoReply,
    TraceHook,
    TransportError,
    open_byte_transport,
)
from protocols import dlt645
from protocols import q13762 as q
from protocols.errors import (
    AddressMismatch,
    ConcurrencyExceeded,
    DuplicateNode,
    FrameError,
    LocalProtocolError,
    MeterInFlight,
    ModuleBusy,
    ModuleRejection,
    NodeNoAnswer,
    NodeNotFound,
    NotSupported,
    PayloadError,
    RemoteProtocolError,
    RequestCorrupted,
    RequestRejected,
    TooManyMeterFrames,
)

__all__ = [
    "ArchivedNode",
    "CarrierClient",
    "SyncResult",
    "Window",
    "carrier_poller",
    "match_replies",
    "technician_client",
]

log = logging.getLogger(__name__)

#: a module that did not answer start-up is asked again after this long; meanwhile every read
#: fails at once with `bus_error` (a dead module must not cost each meter a timeout)
DOWN_RETRY_S = 30.0
#: AFN03 F10 is asked this many times (command timeout each) before the module counts as down
INFO_TRIES = 3
#: deny 9 (busy: network forming) backoff, module-wide: doubles from the first to the last
BUSY_BACKOFF_S = (0.25, 30.0)
#: added to the module's monitor timeout: the frames' wire time and the module's own latency
READ_SLACK_S = 2.0
#: resends of one read for denies that say "send it again" (109, 111, 2, 3, a reset)
MAX_RESENDS = 16
#: accepted requests per window slot before the learnt window tries one slot more
WINDOW_GROWTH = 64
#: nodes asked per AFN10 F2 page (a real CCO answered 25; fewer is fine: we go on from there)
NODE_PAGE = 32
#: a read denied "not in the module" re-syncs the archive, but not more often than this
RESYNC_MIN_S = 60.0
#: at most this long to resume the module's routing when the client stops
CLOSE_RESUME_S = 2.0
#: router mode: workers (requests waiting for the module's turn) per bus
ROUTER_WORKERS = 4096

_PROTOCOLS = {"dlt645-2007": q.Protocol.DLT645_2007, "dlt645-1997": q.Protocol.DLT645_1997}

M = TypeVar("M", bound=q.Message)
EventHook = Callable[[str, str | None, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ArchivedNode:
    """A meter of the archive as the module must know it."""

    address: str
    """12 digits, as printed"""
    protocol: int = q.Protocol.DLT645_2007
    meter_id: str = ""
    """the archive's meter id (events name it); default: the address"""

    @classmethod
    def of(cls, address: str, protocol: str, meter_id: str = "") -> ArchivedNode:
        return cls(address.rjust(12, "0"), _PROTOCOLS[protocol], meter_id or address.rjust(12, "0"))


ArchiveProvider = Callable[[], Sequence[ArchivedNode]]


@dataclass(frozen=True)
class SyncResult:
    archived: int
    module_before: int
    added: list[str]
    deleted: list[str]


class Window:
    """The requests in flight at the module: at most `limit` (learnt), never above `max`.

    `denied(n)` (a 109 arrived while the module held n of ours) brings the limit down to n;
    after `WINDOW_GROWTH` × limit accepted requests the limit tries one more, up to `max`, so a
    109 caused by the module's own passing load does not cost capacity for ever.
    """

    def __init__(self, limit: int) -> None:
        self.max = limit
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._accepted = 0

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted, then cancelled before it could be used
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_use += 1
                future.set_result(None)

    def denied(self, held: int) -> bool:
        """A 109 while the module held `held` requests of ours: the limit is that. True when
        the limit went down."""
        new = max(1, held)
        self._accepted = 0
        if new < self.limit:
            self.limit = new
            return True
        return False

    def accepted(self) -> None:
        if self.limit >= self.max:
            return
        self._accepted += 1
        if self._accepted >= self.limit * WINDOW_GROWTH:
            self._accepted = 0
            self.limit += 1
            self._wake()

    def reset(self) -> None:
        self.limit = self.max
        self._accepted = 0
        self._wake()


class CarrierClient(Dlt645Client):
    def __init__(
        self,
        url: BusUrl | str,
        *,
        name: str = "",
        trace: TraceHook | None = None,
        events: EventHook | None = None,
        archive: ArchiveProvider | None = None,
    ) -> None:
        if isinstance(url, str):
            url = BusUrl.parse(url)
        if not url.is_carrier:
            raise ValueError(f"{url}: not a carrier:// bus")
        super().__init__(open_byte_transport(url, trace=trace))
        self.url = url
        self.name = name or str(url)
        self.mode = url.mode
        self.packs_reads = url.mode == "hplc"
        self.events: EventHook = events if events is not None else _no_events
        self.archive = archive
        """the meters the module must know (None: leave its archive alone — technician tools
        then add a meter the module does not know before reading it)"""
        comm = q.CommMode.HPLC if url.mode == "hplc" else q.CommMode.NARROWBAND
        self.link = ModuleLink(self.transport, self._on_module_frame, comm_mode=comm)
        self.info: q.ModuleInfo | None = None
        self.main_node = q.NodeAddress(bytes(6))
        self.nodes: dict[str, int] | None = None
        """the module's archive as last read or written (address → protocol)"""
        self.window = Window(url.in_flight)
        self.frames_per_request = url.frames_per_request
        self.stats: Counter[str] = Counter()
        self._state = "new"  # new | ready | probe | reset | down
        self._generation = 0
        self._startup_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self._pause_lock = asyncio.Lock()
        self._sync_needed = archive is not None
        self._last_sync_end = -1.0
        self._reported_info: q.ModuleInfo | None = None
        self._down: ModuleDown | None = None
        self._down_until = 0.0
        self._busy_until = 0.0
        self._busy_backoff = 0.0
        """0 while the module reads; else the current deny-9 backoff (s)"""
        self._probe = asyncio.Lock()
        self._formed = asyncio.Event()
        self._formed.set()
        self._paused: bool | None = None
        self._active = 0
        self._idle_generation = 0
        self._point = Window(1)
        self._meter_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kick = asyncio.Event()
        self.router: Any = None
        if url.mode == "router":
            from agent.carrier.router import RouterReader

            self.router = RouterReader(self)

    # --- what the poller and the plans see -------------------------------------------------------
    @property
    def workers(self) -> int:
        """How many jobs the bus poller runs at once: enough to keep the window full (a job
        is one meter), every request of a round in router mode (the module picks the order)."""
        if self.mode == "router":
            return ROUTER_WORKERS
        return 2 * self.url.in_flight + 1

    @property
    def busy_seconds(self) -> float:
        extra = self.router.busy_seconds if self.router is not None else 0.0
        return self.link.busy_seconds + extra

    async def close(self) -> None:
        """Stop: routing resumed if we paused it (the module goes on with its own work), the
        line closed."""
        if self._paused and self._state == "ready" and self.mode != "router":
            with contextlib.suppress(TransportError, ModuleRejection, PayloadError, TimeoutError):
                async with asyncio.timeout(CLOSE_RESUME_S):
                    await self._command(q.RouterResume(), q.Confirm)
            self._paused = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.close()

    async def __aenter__(self) -> CarrierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def archive_changed(self) -> None:
        """The archive changed (centre update, reload): re-sync the module now."""
        if self.archive is not None:
            self._sync_needed = True
            self._kick.set()

    async def service(self) -> None:
        """The bus's upkeep task (run by the poller): start the module up at once rather than at
        the first read, re-sync after a reset or an archive change, re-probe a module that is
        down. Never raises (but CancelledError)."""
        while True:
            self._kick.clear()
            try:
                await self._ready()
            except ModuleDown:
                delay = max(0.0, self._down_until - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._kick.wait()
                continue
            except (TransportError, RemoteProtocolError) as exc:
                log.warning("bus %s: carrier module upkeep: %s", self.name, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DOWN_RETRY_S):
                        await self._kick.wait()
                continue
            except Exception:  # a bug must not take the bus (and the agent) down
                log.exception("bus %s: carrier module upkeep failed", self.name)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DOWN_RETRY_S):
                        await self._kick.wait()
                continue
            await self._kick.wait()

    # --- 645 through the module ------------------------------------------------------------------
    async def call(
        self,
        address: dlt645.Address,
        message: dlt645.Message,
        edition: dlt645.Edition = dlt645.Edition.V2007,
        *,
        frames: list[tuple[str, bytes]] | None = None,
    ) -> tuple[dlt645.Frame, dlt645.Message] | None:
        request = dlt645.to_frame(address, message, edition)
        if frames is not None:
            frames.append(("tx", dlt645.encode_frame(request, wakeup=0)))
        if address.is_broadcast:
            await self._broadcast(request)
            return None
        (result,) = await self._exchange_645(address, [request], frames)
        if isinstance(result, BaseException):
            raise result
        answer = dlt645.from_frame(result)
        if isinstance(answer, dlt645.ErrorReply | dlt645.SecurityErrorReply):
            raise answer.error()
        return result, answer

    async def read_many(
        self,
        address: dlt645.Address,
        dis: Sequence[int],
        edition: dlt645.Edition = dlt645.Edition.V2007,
    ) -> list[ReadResult | Exception]:
        """Several items of one meter in as few exchanges as the module allows (hplc: one AFN F1
        F1 while the frame length and the learnt frames-per-request allow; router: queued
        together, read in one visit of the module)."""
        if self.mode == "point":
            return await super().read_many(address, dis, edition)
        requests = [dlt645.to_frame(address, dlt645.ReadRequest(di), edition) for di in dis]
        replies = await self._exchange_645(address, requests, None)
        out: list[ReadResult | Exception] = []
        for di, request, reply in zip(dis, requests, replies, strict=True):
            if isinstance(reply, Exception):
                out.append(reply)
                continue
            frames = [
                ("tx", dlt645.encode_frame(request, wakeup=0)),
                ("rx", dlt645.encode_frame(reply, wakeup=0)),
            ]
            try:
                answer = dlt645.from_frame(reply)
                if isinstance(answer, dlt645.ErrorReply | dlt645.SecurityErrorReply):
                    raise answer.error()
                out.append(await self._complete_read(address, di, edition, (reply, answer), frames))
            except (TransportError, RemoteProtocolError) as exc:
                out.append(exc)
        return out

    async def raw_exchange(self, raw: bytes) -> tuple[bytes, FrameSink]:
        """A technician's raw frame: one DL/T 645 request, carried to its meter through the
        module; the meter's reply bytes come back as on RS-485."""
        events = dlt645.FrameDecoder().feed(raw)
        requests = [e for e in events if isinstance(e, dlt645.Frame) and not e.control.reply]
        if len(requests) != 1 or not requests[0].address.is_specific:
            raise LocalProtocolError(
                "on a carrier bus, raw takes one DL/T 645 request to one meter (full address);"
                " the module carries it there"
            )
        (reply,) = await self._exchange_645(requests[0].address, requests, None)
        if isinstance(reply, BaseException):
            raise reply
        received = dlt645.encode_frame(reply, wakeup=0)
        sink = FrameSink(None)
        sink.feed(received)
        return received, sink

    async def _exchange_645(
        self,
        address: dlt645.Address,
        requests: list[dlt645.Frame],
        frames: list[tuple[str, bytes]] | None,
    ) -> list[dlt645.Frame | Exception]:
        """The meter's reply to each request (or that request's own failure). Failures of the
        module or the route raise."""
        if not address.is_specific:
            raise LocalProtocolError(
                f"{address}: a carrier module reaches a meter by its full address"
                " (no wildcard or shortened address; broadcast goes through AFN05 F3)"
            )
        dst = q.NodeAddress.of(address)
        edition = requests[0].edition
        await self._ready()  # start-up may change the mode (a narrowband module)
        if self.mode == "router":
            assert self.router is not None
            out: list[dlt645.Frame | Exception] = []
            payloads = [dlt645.encode_frame(r, wakeup=self.url.wakeup) for r in requests]
            for request, got in zip(requests, await self.router.read(dst, payloads), strict=True):
                if isinstance(got, Exception):
                    out.append(got)
                else:
                    out.extend(self._split([request], got, edition, frames))
            return out
        if self.mode == "point":
            out = []
            for request in requests:
                message = q.MonitorRequest.of_645(request, wakeup=self.url.wakeup)
                reply = await self._through_module(dst, message, q.MonitorReply)
                out.extend(self._split([request], reply.frame, _edition(reply, edition), frames))
            return out
        out = []
        i = 0
        while i < len(requests):
            n = self._fits(dst, requests[i:])
            chunk = requests[i : i + n]
            packed = q.ConcurrentRead.of_645(chunk, wakeup=self.url.wakeup)
            try:
                concurrent = await self._through_module(dst, packed, q.ConcurrentReply)
            except TooManyMeterFrames:
                if n == 1:
                    raise
                self.frames_per_request = n - 1
                log.info(
                    "bus %s: the module takes at most %d meter frames per request (deny 110)",
                    self.name,
                    n - 1,
                )
                self.events("carrier_frames_per_request", None, {"bus": self.name, "frames": n - 1})
                continue
            out.extend(self._split(chunk, concurrent.frame, _edition(concurrent, edition), frames))
            i += n
        return out

    def _fits(self, dst: q.NodeAddress, requests: list[dlt645.Frame]) -> int:
        """How many of `requests` go in one AFN F1 F1: the learnt frames-per-request, then as many
        as the module's frame length takes."""
        n = min(self.frames_per_request, len(requests))
        while n > 1:
            message = q.ConcurrentRead.of_645(requests[:n], wakeup=self.url.wakeup)
            frame = q.to_frame(message, q.DownInfo(), src=self.main_node, dst=dst)
            if frame.length <= self.link.max_frame_len:
                break
            n -= 1
        return n

    def _split(
        self,
        requests: list[dlt645.Frame],
        carried: bytes,
        edition: dlt645.Edition,
        frames: list[tuple[str, bytes]] | None,
    ) -> list[dlt645.Frame | Exception]:
        if frames is not None:
            frames.append(("rx", carried))
        return match_replies(requests, q.split_645(carried, edition))

    async def _broadcast(self, request: dlt645.Frame) -> None:
        """A broadcast (645 time sync) through AFN05 F3: every node of the network gets it. A
        time sync is corrected by the delay the module says the broadcast takes (AFN03 F9):
        the meters receive the time it will be when the frame reaches them."""
        await self._ready()
        control = 2 if request.edition is dlt645.Edition.V2007 else 1
        message = dlt645.from_frame(request)
        if isinstance(message, dlt645.BroadcastTimeRequest):
            raw = dlt645.encode_frame(request, wakeup=0)
            try:
                delay = await self._command(q.QueryBroadcastDelay(control, raw), q.BroadcastDelay)
            except (NotSupported, RequestRejected) as exc:
                log.info("bus %s: no broadcast delay from the module (%s)", self.name, exc)
            else:
                corrected = message.time + dt.timedelta(seconds=delay.delay_s)
                request = dlt645.to_frame(
                    request.address, dlt645.BroadcastTimeRequest(corrected), request.edition
                )
        confirm = await self._command(
            q.StartBroadcast(control, dlt645.encode_frame(request, wakeup=0)), q.Confirm
        )
        if confirm.wait_s:  # the module asks us to wait while it broadcasts
            bound = self.info.broadcast_max_timeout_s if self.info else 60
            await asyncio.sleep(min(confirm.wait_s, bound or 60))

    # --- one request through the module: the deny machine ----------------------------------------
    async def _through_module(self, dst: q.NodeAddress, message: q.Message, expect: type[M]) -> M:
        started = time.monotonic()
        resends = 0
        resynced = False
        self._active += 1
        try:
            async with self._meter(dst):
                while True:
                    await self._ready()
                    probe = await self._wait_not_busy(started)
                    try:
                        await self._ensure_paused()
                        late = self.link.late_for(dst)
                        if late is not None:  # the module may still be reading this meter
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(self._read_timeout()):
                                    await late.wait()
                        try:
                            answer = await self._send_read(dst, message)
                        except ModuleReset:
                            resends += 1
                            if resends > MAX_RESENDS:
                                raise
                            continue
                        reply = answer.message
                        if isinstance(reply, q.Deny):
                            resends += 1
                            resynced = await self._on_deny(
                                dst, reply, answer, resends, resynced, started, probe=probe
                            )
                            continue
                        self._note_ok()
                        if not isinstance(reply, expect):
                            raise PayloadError(
                                f"the module answered {type(reply).__name__} to"
                                f" AFN{answer.frame.afn:02X} F{answer.frame.fn} for {dst}"
                            )
                        carried = reply.carried()
                        if carried is not None and not carried.frame:
                            # "read failed": the module asked and the meter said nothing (or
                            # the module's own monitor timeout passed) — the meter's silence,
                            # as on RS-485; a route the module could not use is a deny (11, 12)
                            raise NoReply(
                                f"meter {dst} did not answer behind the module (empty"
                                f" AFN{answer.frame.afn:02X} F{answer.frame.fn} reply)"
                            )
                        return reply
                    finally:
                        if probe:
                            self._probe.release()
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle()

    async def _on_deny(
        self,
        dst: q.NodeAddress,
        deny: q.Deny,
        answer: Answer,
        resends: int,
        resynced: bool,
        started: float,
        *,
        probe: bool = False,
    ) -> bool:
        """Act on a deny of a read: return (to send again, with the "re-synced" flag) or raise."""
        error = deny.error()
        self.stats[f"deny_{deny.code}"] += 1
        if resends > MAX_RESENDS:
            raise error
        match error:
            case ConcurrencyExceeded():
                if self.window.denied(answer.accepted_before):
                    log.info(
                        "bus %s: the module takes %d requests at once (deny 109)",
                        self.name,
                        self.window.limit,
                    )
                    self.events(
                        "carrier_window", None, {"bus": self.name, "window": self.window.limit}
                    )
                return resynced
            case ModuleBusy():
                self._note_busy(probe=probe)
                return resynced
            case MeterInFlight():
                # one frame per meter is our rule: this is a bug on our side, or the module
                # still working on a request we gave up on
                log.warning(
                    "bus %s: deny 111 for %s: a second frame to a meter in flight", self.name, dst
                )
                late = self.link.late_for(dst)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._read_timeout()):
                        if late is not None:
                            await late.wait()
                        else:
                            await asyncio.sleep(BUSY_BACKOFF_S[0])
                return resynced
            case RequestCorrupted():
                if resends > 2:
                    raise error
                return resynced
            case NodeNotFound():
                if not resynced and await self._recover_node(dst, deny.code, started):
                    return True
                if deny.code == 12:
                    raise RouteFailure(
                        f"meter {dst} is in the module's archive but not in its network (deny 12)",
                        12,
                    )
                raise error
            case NodeNoAnswer():
                if deny.code == 8:
                    raise NoReply(f"meter {dst} did not answer behind the module (deny 8)")
                raise RouteFailure(
                    f"the module could not reach meter {dst} (deny {deny.code}: {deny.meaning})",
                    deny.code,
                )
        raise error

    async def _send_read(self, dst: q.NodeAddress, message: q.Message) -> Answer:
        slot = self.window if self.mode == "hplc" else self._point
        await slot.acquire()
        held = True
        sent = time.monotonic()
        try:
            answer = await self.link.request(
                message, wait_s=self._read_timeout(), src=self.main_node, dst=dst
            )
            if not isinstance(answer.message, q.Deny):
                slot.accepted()
            return answer
        except BusError as exc:
            # the line itself (port gone, serial server refusing): every meter behind it would
            # wait for the same failure — the module is down until start-up works again
            if isinstance(exc, ModuleDown):
                raise
            raise self._mark_down(exc) from exc
        except ModuleTimeout:
            self.stats["read_timeouts"] += 1
            late = self.link.late_for(dst)
            if late is not None:  # the module may still hold it: so does our window
                held = False
                self._spawn(_release_when(late, slot))
            if self.link.last_rx < sent:
                # not one frame from the module during a whole monitor timeout: ask it whether
                # it is still there before the next read
                log.warning(
                    "bus %s: the module said nothing for %.0f s", self.name, self._read_timeout()
                )
                if self._state == "ready":
                    self._state = "probe"
            raise
        finally:
            if held:
                slot.release()

    def _read_timeout(self) -> float:
        if self.url.read_timeout_ms:
            return self.url.read_timeout_ms / 1000
        monitor = (
            self.info.monitor_max_timeout_s if self.info and self.info.monitor_max_timeout_s else 60
        )
        return monitor + READ_SLACK_S

    @contextlib.asynccontextmanager
    async def _meter(self, dst: q.NodeAddress) -> AsyncIterator[None]:
        """Never two frames to one meter at once (the module would deny 111)."""
        key = dst.digits
        lock, users = self._meter_locks.get(key, (asyncio.Lock(), 0))
        self._meter_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._meter_locks[key]
            if users <= 1:
                del self._meter_locks[key]
            else:
                self._meter_locks[key] = (lock, users - 1)

    # --- busy / pause ----------------------------------------------------------------------------
    async def _wait_not_busy(self, started: float) -> bool:
        """While the module refuses reads as busy (deny 9), wait: the backoff, then one read
        at a time probes it (True: this read is the probe; release `_probe` after it). Raises
        ModuleStillBusy once the read has waited `busy_wait_s`."""
        deadline = started + self.url.busy_wait_s
        while self._busy_backoff:
            now = time.monotonic()
            if now >= deadline:
                raise ModuleStillBusy(
                    f"the module has refused reads as busy (deny 9: network forming or route"
                    f" optimisation) for over {self.url.busy_wait_s} s"
                )
            wait = self._busy_until - now
            if wait <= 0 and not self._probe.locked():
                await self._probe.acquire()
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    min(wait, deadline - now) if wait > 0 else deadline - now
                ):
                    await self._formed.wait()
        return False

    def _note_busy(self, *, probe: bool) -> None:
        """A deny 9. The first opens a busy period (backoff from its start); a probe denied
        again doubles the backoff; the others were sent before anyone knew: no change."""
        low, high = BUSY_BACKOFF_S
        if not self._busy_backoff:
            log.info("bus %s: the module is busy (deny 9: network forming); backing off", self.name)
            self.events("carrier_module_busy", None, {"bus": self.name})
            self._busy_backoff = low
            self._formed.clear()
        elif probe:
            self._busy_backoff = min(self._busy_backoff * 2, high)
        else:
            return
        self._busy_until = time.monotonic() + self._busy_backoff

    def _note_ok(self) -> None:
        if self._busy_backoff:
            log.info("bus %s: the module reads again (network formed)", self.name)
            self._busy_backoff = 0.0
            self._formed.set()

    async def _ensure_paused(self) -> None:
        """Pause the module's own routing before concentrator-led reads (12F2)."""
        if self.mode == "router" or self._paused:
            return
        async with self._pause_lock:
            if self._paused_now():  # paused by another read while this one waited
                return
            try:
                await self._command(q.RouterPause(), q.Confirm)
            except (NotSupported, RequestRejected) as exc:
                log.info(
                    "bus %s: the module does not pause its routing (%s); reading anyway",
                    self.name,
                    exc,
                )
            self._paused = True

    def _paused_now(self) -> bool:
        return bool(self._paused)

    def _idle(self) -> None:
        """No read in progress: resume the module's routing after `idle_resume_s`."""
        if self.mode == "router" or not self._paused:
            return
        self._idle_generation += 1
        self._spawn(self._resume_when_idle(self._idle_generation))

    async def _resume_when_idle(self, generation: int) -> None:
        await asyncio.sleep(self.url.idle_resume_s)
        if generation != self._idle_generation or self._active:
            return
        async with self._pause_lock:
            if not self._paused or self._active or self._state != "ready":
                return
            with contextlib.suppress(TransportError, ModuleRejection, PayloadError):
                await self._command(q.RouterResume(), q.Confirm)
                self._paused = False

    # --- start-up, reset, down -------------------------------------------------------------------
    async def _ready(self) -> None:
        if self._state == "ready" and not self._sync_needed:
            return
        async with self._startup_lock:
            while not (self._state == "ready" and not self._sync_needed):
                if self._down is not None and time.monotonic() < self._down_until:
                    raise self._down
                generation = self._generation
                try:
                    if self._state != "ready":
                        await self._start_up()
                    if self._sync_needed:
                        self._sync_needed = False
                        try:
                            await self._sync()
                        except BaseException:
                            self._sync_needed = True
                            raise
                except (ModuleTimeout, BusError) as exc:
                    raise self._mark_down(exc) from None
                if generation == self._generation:
                    self._state = "ready"

    async def _start_up(self) -> None:
        first = self._state in ("new", "reset")
        await self.link.start()
        info = self._reported_info or await self._query_info()
        self._reported_info = None
        self.info = info
        self.link.set_max_frame_len(info.max_frame_len)
        self.link.comm_mode = int(info.comm) if info.comm_type else self.link.comm_mode
        main = (await self._command(q.QueryMainNode(), q.MainNode)).main_node_addr
        wanted = (
            q.NodeAddress.parse(self.url.main_node.rjust(12, "0")) if self.url.main_node else None
        )
        if wanted is not None and wanted != main:
            await self._command(q.SetMainNode(wanted), q.Confirm)
            log.info("bus %s: main node address %s set (was %s)", self.name, wanted, main)
            main = wanted
        self.main_node = main
        if info.comm_type == 1 and self.mode == "hplc":  # narrowband: no AFN F1 F1 (deny 10)
            log.warning(
                "bus %s: the module is narrowband (AFN03 F10): reading with AFN13 F1,"
                " one at a time, instead of mode=hplc",
                self.name,
            )
            self.mode, self.packs_reads = "point", False
        try:  # meter events (06F5) reach us only once allowed
            await self._command(q.SetEventReporting(True), q.Confirm)
        except (NotSupported, RequestRejected) as exc:
            log.info("bus %s: the module refuses event reports: %s", self.name, exc)
        if first:
            self.window.reset()
            self.frames_per_request = self.url.frames_per_request
            self._paused = None
        was_down = self._down is not None
        self._down = None
        detail = {
            "bus": self.name,
            "mode": self.mode,
            "vendor": info.vendor.vendor_code,
            "max_frame_len": info.max_frame_len,
            "monitor_timeout_s": info.monitor_max_timeout_s,
            "max_nodes": info.max_nodes,
            "main_node": main.digits,
        }
        log.info("bus %s: carrier module ready %s", self.name, detail)
        if first or was_down:
            self.events("carrier_module_ready", None, detail)

    async def _query_info(self) -> q.ModuleInfo:
        last: Exception | None = None
        for _ in range(INFO_TRIES):
            try:
                return await self._command(q.QueryModuleInfo(), q.ModuleInfo)
            except ModuleTimeout as exc:
                last = exc
                if self._reported_info is not None:  # it restarted and reported on its own
                    return self._reported_info
        raise ModuleTimeout(f"the module did not answer AFN03 F10 ({INFO_TRIES} tries): {last}")

    def _mark_down(self, exc: Exception) -> ModuleDown:
        first = self._down is None
        self._down = ModuleDown(f"carrier module not answering: {exc}")
        self._down_until = time.monotonic() + DOWN_RETRY_S
        self._state = "down"
        if first:
            log.warning("bus %s: %s (every meter behind it fails as bus_error)", self.name, exc)
            self.events("carrier_module_down", None, {"bus": self.name, "detail": str(exc)})
        return self._down

    def _on_reset(self, info: q.ModuleInfo) -> None:
        """A spontaneous AFN03 F10: the module restarted. What it held is lost: requests in
        flight are sent again after the start-up and archive sync run again."""
        self._reported_info = info
        if self._state == "new":
            return  # its power-up report, before we started: start-up uses it
        self._generation += 1
        self._state = "reset"
        self._paused = None
        self._sync_needed = self.archive is not None
        lost = self.link.fail_all(ModuleReset("the module restarted"))
        if self.router is not None:
            self.router.on_reset()
        self.stats["resets"] += 1
        log.warning("bus %s: the carrier module restarted (%d requests in flight)", self.name, lost)
        self.events("carrier_module_reset", None, {"bus": self.name, "in_flight": lost})
        self._kick.set()

    # --- archive ---------------------------------------------------------------------------------
    async def node_list(self) -> list[q.NodeInfo]:
        """The module's archive: AFN10 F1 (count), then AFN10 F2 pages."""
        count = await self._command(q.QueryNodeCount(), q.NodeCount)
        nodes: list[q.NodeInfo] = []
        page = max(1, min(NODE_PAGE, (self.link.max_frame_len - 24) // 8))
        start = 1
        while len(nodes) < count.total:
            got = await self._command(
                q.QueryNodes(start, min(page, count.total - len(nodes))), q.NodeList
            )
            if not got.nodes:
                break  # the module says it has more than it gives: take what it gave
            nodes.extend(got.nodes)
            start += len(got.nodes)
        return nodes

    async def sync(self, wanted: Sequence[ArchivedNode] | None = None) -> SyncResult:
        """Make the module's archive the given one (default: the agent's archive of this bus)."""
        await self._ready()
        async with self._sync_lock:
            return await self._sync_locked(wanted)

    async def _sync(self) -> None:
        async with self._sync_lock:
            await self._sync_locked(None)

    async def _sync_locked(self, wanted_nodes: Sequence[ArchivedNode] | None) -> SyncResult:
        if wanted_nodes is None:
            wanted_nodes = self.archive() if self.archive is not None else []
        wanted = {n.address: n.protocol for n in wanted_nodes}
        present = {n.addr.digits: n.protocol for n in await self.node_list()}

        def differs(address: str, protocol: int) -> bool:
            # a module that keeps no protocol (0) or a non-645 one is left alone: deleting and
            # adding every node at every start would re-form the whole network
            return (
                protocol in (q.Protocol.DLT645_1997, q.Protocol.DLT645_2007)
                and protocol != wanted[address]
            )

        extra = [a for a, p in present.items() if a not in wanted or differs(a, p)]
        missing = [(a, p) for a, p in wanted.items() if a not in present or a in extra]
        nodes = {a: p for a, p in present.items() if a not in extra}
        nodes.update(dict(missing))
        if extra or missing:
            if self.mode != "router":
                await self._ensure_paused()
            try:
                await self._delete_nodes(extra)
                await self._add_nodes(missing)
            except ModuleRejection as exc:
                # e.g. deny 1 past its capacity: take what it has; the meters it lacks fail
                # as not in the module until the next sync (archive change, reset)
                log.warning("bus %s: archive sync refused: %s", self.name, exc)
                self.events("carrier_sync_failed", None, {"bus": self.name, "detail": str(exc)})
                nodes = {n.addr.digits: n.protocol for n in await self.node_list()}
                extra = [a for a in extra if a not in nodes]
                missing = [(a, p) for a, p in missing if a in nodes]
        self.nodes = nodes
        self._last_sync_end = time.monotonic()
        result = SyncResult(len(wanted), len(present), [a for a, _ in missing], extra)
        detail = {
            "bus": self.name,
            "archived": len(wanted),
            "module_before": len(present),
            "added": len(missing),
            "deleted": len(extra),
        }
        log.info("bus %s: module archive synced %s", self.name, detail)
        if extra or missing:
            self.events("carrier_sync", None, detail)
        return result

    def _batch(self, per_item: int) -> int:
        return max(1, min(255, (self.link.max_frame_len - 16) // per_item))

    async def _add_nodes(self, nodes: list[tuple[str, int]]) -> None:
        entries = [q.NodeEntry(q.NodeAddress.parse(a), p) for a, p in nodes]
        await self._in_batches(
            entries, self._batch(7), lambda b: q.AddNodes(tuple(b)), DuplicateNode
        )

    async def _delete_nodes(self, addresses: list[str]) -> None:
        nodes = [q.NodeAddress.parse(a) for a in addresses]
        await self._in_batches(
            nodes, self._batch(6), lambda b: q.DeleteNodes(tuple(b)), NodeNotFound
        )

    async def _in_batches(
        self,
        items: list[Any],
        size: int,
        build: Callable[[list[Any]], q.Message],
        done_already: type[ModuleRejection],
    ) -> None:
        """Send `items` in batches; a batch refused for its size (2 length, 5 format) is halved;
        one refused because an item is already as wanted is sent one by one, that deny ignored."""
        i = 0
        while i < len(items):
            batch = items[i : i + size]
            try:
                await self._command(build(batch), q.Confirm)
            except done_already:
                if len(batch) > 1:
                    for item in batch:
                        with contextlib.suppress(done_already):
                            await self._command(build([item]), q.Confirm)
            except (RequestRejected, RequestCorrupted):
                if size == 1:
                    raise
                size = max(1, size // 2)
                continue
            i += len(batch)

    async def _recover_node(self, dst: q.NodeAddress, code: int, since: float) -> bool:
        """A read denied 7 / 12 ("not in the module"): True when re-syncing may let it pass."""
        if code == 12 and self.nodes is not None and dst.digits in self.nodes:
            return False  # in its archive, not joined yet: a sync changes nothing
        if self.archive is None:  # technician tools: the meter asked for, added
            log.info("bus %s: adding meter %s to the module (deny %d)", self.name, dst, code)
            with contextlib.suppress(DuplicateNode):
                await self._command(
                    q.AddNodes((q.NodeEntry(dst, q.Protocol.DLT645_2007),)), q.Confirm
                )
            if self.nodes is not None:
                self.nodes[dst.digits] = q.Protocol.DLT645_2007
            return True
        async with self._sync_lock:
            if self._last_sync_end > since:
                return True  # synced since this read began: just try again
            known = self.nodes is not None and dst.digits in self.nodes
            if not known and time.monotonic() - self._last_sync_end < RESYNC_MIN_S:
                return False  # the last sync could not add it (capacity?): not again so soon
            log.info(
                "bus %s: meter %s not in the module (deny %d): re-syncing", self.name, dst, code
            )
            await self._sync_locked(None)
        return True

    # --- commands to the module itself -----------------------------------------------------------
    async def _command(self, message: q.Message, expect: type[M]) -> M:
        answer = await self.link.request(message, wait_s=self.url.command_timeout_ms / 1000)
        reply = answer.message
        if isinstance(reply, q.Deny):
            self.stats[f"deny_{reply.code}"] += 1
            raise reply.error()
        if not isinstance(reply, expect):
            raise PayloadError(
                f"the module answered {type(reply).__name__} to {type(message).__name__}"
                f" (expected {expect.__name__})"
            )
        return reply

    async def module_info(self) -> q.ModuleInfo:
        """Start the module up (no archive sync without an archive) and return its F10."""
        await self._ready()
        assert self.info is not None
        return self.info

    # --- frames the module starts ----------------------------------------------------------------
    def _on_module_frame(self, frame: q.Frame, message: q.Message) -> None:
        if isinstance(message, q.ModuleInfo):
            self._on_reset(message)
        elif isinstance(message, q.RouterReadRequest):
            if self.router is not None:
                self.router.on_ask(frame, message)
            else:  # a module in router-led mode while we lead: nothing to read from us
                self._answer(
                    frame, q.RouterReadAnswer(q.ReadFlag.DONE), addressed=message.node_addr
                )
        elif isinstance(message, q.ReportReadData):
            self._answer(frame, q.Confirm())
            if self.router is not None:
                self.router.on_report(frame, message)
        elif isinstance(message, q.ReportRouteChange):
            self._answer(frame, q.Confirm())
            if self.router is not None:
                self.router.on_route_change(message.status)
        elif isinstance(message, q.ReportEvent):
            self._answer(frame, q.Confirm())
            self._meter_event(message)
        elif frame.afn == 0x06:
            self._answer(frame, q.Confirm())  # every AFN06 report is confirmed, whatever it is
        elif isinstance(message, q.ClockRequest):
            now = dt.datetime.fromtimestamp(common.clock.current().time()).replace(microsecond=0)
            self._answer(frame, q.ClockAnswer(now))
        elif isinstance(message, q.CorrectionRequest):
            self._answer(frame, q.CorrectionAnswer(message.frame))
        else:
            log.debug("bus %s: module frame AFN%02X F%d ignored", self.name, frame.afn, frame.fn)

    def _answer(
        self, frame: q.Frame, message: q.Message, *, addressed: q.NodeAddress | None = None
    ) -> None:
        if addressed is not None:
            out = q.to_frame(
                message,
                q.DownInfo(seq=frame.seq),
                src=self.main_node,
                dst=addressed,
                comm_mode=frame.comm_mode,
                prm=False,
            )
        else:
            out = q.reply_to(frame, message)
        self._spawn(self.link.send(out))

    def _meter_event(self, report: q.ReportEvent) -> None:
        detail: dict[str, Any] = {
            "bus": self.name,
            "device_type": report.device_type,
            "protocol": report.protocol,
            "frame": dlt645.hex_spaced(report.frame),
        }
        meter: str | None = None
        for inner in q.inner_frames(report):
            if isinstance(inner, dlt645.Frame):
                meter = self._meter_id(inner.address.digits)
                detail["decoded"] = dlt645.describe(inner)
                break
        self.events("carrier_meter_event", meter, detail)

    def _meter_id(self, address: str) -> str:
        if self.archive is not None:
            for node in self.archive():
                if node.address == address:
                    return node.meter_id or address
        return address

    # --- tasks -----------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("bus %s: %s: %s", self.name, type(exc).__name__, exc)


async def _release_when(done: asyncio.Event, slot: Window) -> None:
    try:
        await done.wait()
    finally:
        slot.release()


def _edition(message: q.Message, default: dlt645.Edition) -> dlt645.Edition:
    carried = message.carried()
    edition = carried.edition if carried is not None else None
    return edition or default


def match_replies(
    requests: Sequence[dlt645.Frame], events: Sequence[dlt645.StreamEvent]
) -> list[dlt645.Frame | Exception]:
    """Pair the 645 frames of one carried reply with the requests packed together: a reply
    answers the request of its function (and DI, for reads), from its meter; frame errors
    (a bad inner checksum) take the place of the next request in order. A request no frame
    answers gets NoReply (the meter said nothing to that one)."""
    out: list[dlt645.Frame | Exception | None] = [None] * len(requests)
    pos = 0
    for event in events:
        if isinstance(event, FrameError):
            free = [i for i in range(pos, len(requests)) if out[i] is None]
            if free:
                out[free[0]] = event
                pos = free[0] + 1
            continue
        if not event.control.reply:
            continue
        candidates = [
            i
            for i in range(len(requests))
            if out[i] is None and requests[i].control.code == event.control.code
        ]
        if event.di is not None and not event.control.abnormal:
            candidates = [i for i in candidates if requests[i].di == event.di] or candidates
        if not candidates:
            continue
        i = next((c for c in candidates if c >= pos), candidates[0])
        if requests[i].address.reaches(event.address):
            out[i] = event
        else:
            out[i] = AddressMismatch(
                f"asked meter {requests[i].address}, the reply is from {event.address}"
            )
        pos = i + 1
    return [
        o if o is not None else NoReply("the module's reply carried no answer to this request")
        for o in out
    ]


@contextlib.asynccontextmanager
async def technician_client(
    url: BusUrl, *, trace: TraceHook | None = None
) -> AsyncIterator[CarrierClient]:
    """A client for a technician's one-off command (`meterlink read`, `meterlink carrier`): no
    archive (the module's is left alone; a meter it does not know is added before it is read),
    and a router-led module is read by point reads (routing paused, resumed after)."""
    if url.mode == "router":
        url = dataclasses.replace(url, mode="point", in_flight=1)
    client = CarrierClient(url, trace=trace)
    try:
        yield client
    finally:
        await client.close()


def carrier_poller(
    name: str,
    url: BusUrl,
    *,
    trace: TraceHook | None = None,
    events: EventHook | None = None,
    archive: ArchiveProvider | None = None,
) -> Any:
    """A bus poller whose client reads through a carrier module."""
    from agent.poller import BusPoller

    client = CarrierClient(url, name=name, trace=trace, events=events, archive=archive)
    return BusPoller(name, url, client, client)


def _no_events(_name: str, _meter: str | None, _detail: dict[str, Any]) -> None:
    pass
