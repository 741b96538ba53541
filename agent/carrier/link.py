"""The line to a carrier module: one reader task owns the stream, SEQ pairs replies.

Requests are written whole (one writer at a time) with a SEQ no other outstanding request
holds; one task reads everything the module sends and dispatches it:

* a reply (the other direction, its request's SEQ, the same AFN/Fn or AFN00, A1 = the
  request's A3: `q.is_answer`) completes its request, in whatever order replies come;
* a frame the module starts (PRM 1: AFN03 F10 after a reset, AFN06 reports, AFN14 asks) goes to
  the owner's callback;
* the late reply to a request we stopped waiting for releases that request's "late" mark (the
  module had still been working on it: its meter and its slot were still taken);
* line noise and strays are counted, never raised.

A broken line (BusError) fails every outstanding request with it; the next request reopens the
line and restarts the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.carrier.errors import ModuleTimeout
from agent.transports import BusError, ByteTransport
from protocols import q13762 as q
from protocols.errors import FrameError, PayloadError

__all__ = ["Answer", "ModuleLink"]

log = logging.getLogger(__name__)

#: a SEQ whose request timed out is not reused for this long (its late reply would be taken for
#: the new request's) unless the late reply comes first
LATE_HORIZON_S = 300.0
#: a module that reports a smaller "max frame length" is taken to mean this (no real module
#: reports less than 1103; a read request with one 645 frame is ~47 bytes)
SMALLEST_MAX_FRAME = 128


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply and what the module had in hand when it sent it."""

    frame: q.Frame
    message: q.Message
    accepted_before: int
    """requests sent before this one and still unanswered when it was sent: what the module
    held when it arrived (a deny 109 says its limit is this number; counted at the send, not
    at the deny: replies that overtake a slow deny would make it too small)"""


@dataclass(slots=True)
class _Pending:
    request: q.Frame
    future: asyncio.Future[Answer]
    order: int
    sent_at: float = 0.0
    held: int = 0
    """earlier requests outstanding when this one was written"""


@dataclass(slots=True)
class _Late:
    request: q.Frame
    since: float
    done: asyncio.Event = field(default_factory=asyncio.Event)


ModuleFrameHook = Callable[[q.Frame, q.Message], None]


class ModuleLink:
    def __init__(
        self,
        transport: ByteTransport,
        on_module_frame: ModuleFrameHook,
        *,
        comm_mode: int = q.CommMode.HPLC,
    ) -> None:
        self.transport = transport
        self.comm_mode = comm_mode
        self.max_frame_len = q.DEFAULT_MAX_FRAME
        self._on_module_frame = on_module_frame
        self._decoder = q.FrameDecoder()
        self._pending: dict[int, _Pending] = {}
        self._late: dict[int, _Late] = {}
        self._next_seq = 0
        self._order = 0
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self.stats: Counter[str] = Counter()
        self.last_rx = 0.0
        """monotonic time of the last frame received from the module"""
        self._busy_since: float | None = None
        self.busy_seconds = 0.0
        """time with at least one request outstanding at the module"""

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the line and start the reader (again, after a broken line)."""
        if self._reader is not None and not self._reader.done():
            return
        async with self._start_lock:
            if self._reader is not None and not self._reader.done():
                return
            await self.transport.open()
            self._decoder.reset()
            self._reader = asyncio.create_task(
                self._read_loop(), name=f"carrier-rx:{self.transport.url}"
            )

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, BusError):
                await reader
        self.fail_all(BusError(f"{self.transport.url}: closed"))
        with contextlib.suppress(OSError):
            await self.transport.close()

    def set_max_frame_len(self, length: int) -> None:
        """The module's AFN03 F10 "max frame length": the longest frame sent or accepted."""
        self.max_frame_len = max(SMALLEST_MAX_FRAME, min(length, q.MAX_FRAME))
        self._decoder.max_length = max(self._decoder.max_length, self.max_frame_len)

    # --- requests --------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def _allocate_seq(self) -> int:
        now = time.monotonic()
        for seq, late in list(self._late.items()):
            if now - late.since > LATE_HORIZON_S:
                late.done.set()
                del self._late[seq]
        for _ in range(256):
            seq, self._next_seq = self._next_seq, (self._next_seq + 1) & 0xFF
            if seq not in self._pending and seq not in self._late:
                return seq
        raise RuntimeError("no free SEQ: 256 requests outstanding or late")  # window ≤ 255

    async def request(
        self,
        message: q.Message,
        *,
        wait_s: float,
        src: q.NodeAddress | None = None,
        dst: q.NodeAddress | None = None,
    ) -> Answer:
        """Send `message` and return its reply (a `Deny` is a reply like any other).

        Raises ModuleTimeout when nothing answers it within `wait_s` seconds of being written
        (the request is then marked late: see `late_for`), BusError when the line fails,
        LocalProtocolError when the frame does not fit the module's frame length.
        """
        await self.start()
        seq = self._allocate_seq()
        frame = q.to_frame(message, q.DownInfo(seq=seq), src=src, dst=dst, comm_mode=self.comm_mode)
        raw = frame.to_bytes(max_length=self.max_frame_len)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._order += 1
        pending = _Pending(frame, future, self._order)
        self._pending[seq] = pending
        self._busy_start()
        try:
            await self.write(raw)
            pending.sent_at = time.monotonic()
            pending.held = sum(
                1 for p in self._pending.values() if p.order < pending.order and not p.future.done()
            )
            try:
                async with asyncio.timeout(wait_s):
                    return await future
            except TimeoutError:
                if future.done() and not future.cancelled() and future.exception() is None:
                    return future.result()  # answered in the same tick the timer fired
                self._late[seq] = _Late(frame, time.monotonic())
                self.stats["timeouts"] += 1
                raise ModuleTimeout(
                    f"the module did not answer AFN{frame.afn:02X} F{frame.fn} (SEQ {seq})"
                    + (f" for {dst}" if dst is not None else "")
                    + f" within {wait_s:.1f} s"
                ) from None
        finally:
            if self._pending.get(seq) is pending:
                del self._pending[seq]
            self._busy_end()

    async def send(self, frame: q.Frame) -> None:
        """Send a frame that expects no reply (an answer to the module: confirm, AFN14 answer)."""
        await self.start()
        await self.write(frame.to_bytes(max_length=self.max_frame_len))

    async def write(self, raw: bytes) -> None:
        async with self._write_lock:
            await self.transport.write_raw(raw)

    def late_for(self, dst: q.NodeAddress) -> asyncio.Event | None:
        """The "answered at last" event of a timed-out request to `dst` the module may still be
        working on (a second frame to that meter would be denied 111), None if there is none."""
        for late in self._late.values():
            if late.request.dst == dst and not late.done.is_set():
                return late.done
        return None

    def fail_all(self, exc: BaseException) -> int:
        """Fail every outstanding request with `exc` (the line broke, the module restarted);
        forget the late ones (their answers will never come). Returns how many were failed."""
        failed = 0
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(exc)
                failed += 1
        for late in self._late.values():
            late.done.set()
        self._late.clear()
        return failed

    def _busy_start(self) -> None:
        if self._busy_since is None:
            self._busy_since = time.monotonic()

    def _busy_end(self) -> None:
        if not self._pending and self._busy_since is not None:
            self.busy_seconds += time.monotonic() - self._busy_since
            self._busy_since = None

    # --- the reader ------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                chunk = await self.transport.read_raw(3600.0)
                if not chunk:
                    continue
                for event in self._decoder.feed(chunk):
                    self._dispatch(event)
        except BusError as exc:
            log.warning("%s: line failed: %s", self.transport.url, exc)
            self.fail_all(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: never leave requests hanging on a dead reader
            log.exception("%s: reader failed", self.transport.url)
            self.fail_all(BusError(f"{self.transport.url}: reader failed: {exc}"))

    def _dispatch(self, event: q.StreamEvent) -> None:
        if isinstance(event, FrameError):
            self.stats["line_errors"] += 1
            log.debug("%s: line error %s", self.transport.url, event)
            return
        frame = event
        if frame.direction is q.Direction.DOWN:
            return  # our own frame echoed by an adapter
        self.last_rx = time.monotonic()
        pending = self._pending.get(frame.seq)
        answers = (
            pending is not None
            and not pending.future.done()
            and q.is_answer(frame, pending.request)
            and not (frame.prm and frame.afn in (0x06, 0x14))
        )
        try:
            message = q.from_frame(frame)
        except PayloadError as exc:
            self.stats["payload_errors"] += 1
            if answers:
                assert pending is not None
                pending.future.set_exception(exc)
            else:
                log.warning("%s: %s", self.transport.url, exc)
            return
        if answers:
            assert pending is not None
            pending.future.set_result(Answer(frame, message, pending.held))
            return
        if frame.prm:
            self._on_module_frame(frame, message)
            return
        late = self._late.pop(frame.seq, None)
        if late is not None and q.is_answer(frame, late.request):
            self.stats["late_replies"] += 1
            late.done.set()
            return
        if late is not None:
            self._late[frame.seq] = late
        self.stats["strays"] += 1
        log.debug(
            "%s: stray frame AFN%02X F%d SEQ %d", self.transport.url, frame.afn, frame.fn, frame.seq
        )
