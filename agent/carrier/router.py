"""Router-led reading (AFN14): the module walks its nodes and asks, for each, what to send.

The plans' requests wait in a queue per meter. The module asks (14F1 up: a node, its SEQ); the
agent answers with that meter's next queued 645 frame (read flag 02), or "this node is done"
(01) when nothing waits for it. The module reads the meter and reports the reply (06F2), which
the client confirms (00F1, same SEQ) and which completes the request; then it asks again for
the same node (the meter's next item) or moves on.

A pass is started with 12F1 when requests wait and the router is idle; the module reports the
end of its pass (06F3, status 1). A request queued before a pass began and not asked for by its
end fails as a route failure (the module did not visit the meter: not in its network); one the
module started and never reported (it asked for the same node again, or moved on) fails as a
route failure too. A request the module never gets to within `router_wait_s` fails as
`module_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.carrier.errors import ModuleTimeout, RouteFailure
from agent.transports import TransportError
from protocols import dlt645
from protocols import q13762 as q
from protocols.errors import ModuleBusy, ModuleRejection, PayloadError

if TYPE_CHECKING:
    from agent.carrier.client import CarrierClient

__all__ = ["RouterReader"]

log = logging.getLogger(__name__)

#: event-loop turns the answer to an ask waits for the plan to queue that meter's next item
#: (its previous reply was just delivered): the plan's code between two reads never blocks
LINGER_TURNS = 8


@dataclass(eq=False)
class _Job:
    meter: str
    frame: bytes
    future: asyncio.Future[bytes]
    birth: int
    """passes started when it was queued: it has seen a whole pass once a later one ends"""
    ask_seq: int | None = None
    answer: q.Frame | None = None
    queued_at: float = field(default_factory=time.monotonic)


class RouterReader:
    def __init__(self, client: CarrierClient) -> None:
        self.client = client
        self._pending: dict[str, deque[_Job]] = {}
        self._current: dict[str, _Job] = {}
        self._node_seq: dict[int, str] = {}
        self._answering: set[tuple[str, int]] = set()
        """asks (meter, SEQ) whose answer is being chosen or sent"""
        self._passes = 0
        self._running = False
        self._starting = False
        self._busy_since: float | None = None
        self.busy_seconds_done = 0.0

    @property
    def busy_seconds(self) -> float:
        extra = 0.0 if self._busy_since is None else time.monotonic() - self._busy_since
        return self.busy_seconds_done + extra

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._pending.values()) + len(self._current)

    def _busy(self) -> None:
        if self.waiting and self._busy_since is None:
            self._busy_since = time.monotonic()
        elif not self.waiting and self._busy_since is not None:
            self.busy_seconds_done += time.monotonic() - self._busy_since
            self._busy_since = None

    # --- the plan side ---------------------------------------------------------------------------
    async def read(self, dst: q.NodeAddress, frames: list[bytes]) -> list[bytes | Exception]:
        """Queue the frames for `dst` and wait for the module to read them, in order."""
        loop = asyncio.get_running_loop()
        meter = dst.digits
        jobs = [_Job(meter, f, loop.create_future(), self._passes) for f in frames]
        self._pending.setdefault(meter, deque()).extend(jobs)
        self._busy()
        if not self._running:
            self.client._spawn(self._start_pass())
        out: list[bytes | Exception] = []
        deadline = loop.time() + self.client.url.router_wait_s
        for job in jobs:
            try:
                async with asyncio.timeout_at(deadline):
                    out.append(await job.future)
            except TimeoutError:
                self._drop(job)
                out.append(
                    ModuleTimeout(
                        f"the module did not read meter {meter} within router_wait_s ="
                        f" {self.client.url.router_wait_s} s"
                    )
                )
            except (TransportError, ModuleRejection, PayloadError) as exc:
                out.append(exc)
            except asyncio.CancelledError:
                for j in jobs:
                    self._drop(j)
                raise
        return out

    def _drop(self, job: _Job) -> None:
        queue = self._pending.get(job.meter)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(job)
            if not queue:
                del self._pending[job.meter]
        if self._current.get(job.meter) is job:
            del self._current[job.meter]
        if not job.future.done():
            job.future.cancel()
        self._busy()

    async def _start_pass(self) -> None:
        if self._running or self._starting:
            return
        self._starting = True
        try:
            while self._pending and not self._running:
                try:
                    await self.client._ready()
                    self._passes += 1
                    await self.client._command(q.RouterRestart(), q.Confirm)
                    self._running = True
                    log.debug("bus %s: router pass %d started", self.client.name, self._passes)
                except ModuleBusy:
                    self.client._note_busy(probe=True)
                    await asyncio.sleep(max(0.0, self.client._busy_until - time.monotonic()))
                except (TransportError, ModuleRejection, PayloadError) as exc:
                    self._fail_pending(exc)
                    return
        finally:
            self._starting = False

    def _fail_pending(self, exc: Exception) -> None:
        for queue in self._pending.values():
            for job in queue:
                if not job.future.done():
                    job.future.set_exception(exc)
        self._pending.clear()
        self._busy()

    # --- the module side -------------------------------------------------------------------------
    def on_ask(self, frame: q.Frame, ask: q.RouterReadRequest) -> None:
        """14F1: the module asks what to send to a node."""
        self._running = True
        meter = ask.node_addr.digits
        self._node_seq[ask.node_seq] = meter
        current = self._current.get(meter)
        if current is not None and current.ask_seq == frame.seq and current.answer is not None:
            self.client._spawn(self.client.link.send(current.answer))  # our answer was lost
            return
        if (meter, frame.seq) in self._answering:
            return  # asked again before our answer left: it is on its way, one answer per ask
        # the module moved on (or asks this node afresh): what it started and never reported
        # has failed behind it
        for other, job in list(self._current.items()):
            del self._current[other]
            if not job.future.done():
                job.future.set_exception(
                    RouteFailure(f"the module read meter {other} and reported nothing (router-led)")
                )
        self._answering.add((meter, frame.seq))
        self.client._spawn(self._answer(frame, ask))

    async def _answer(self, frame: q.Frame, ask: q.RouterReadRequest) -> None:
        try:
            await self._choose_and_send(frame, ask)
        finally:
            self._answering.discard((ask.node_addr.digits, frame.seq))

    async def _choose_and_send(self, frame: q.Frame, ask: q.RouterReadRequest) -> None:
        meter = ask.node_addr.digits
        for _ in range(LINGER_TURNS):
            if self._pending.get(meter):
                break
            await asyncio.sleep(0)  # the plan may be about to queue this meter's next item
        job = None
        queue = self._pending.get(meter)
        while queue:
            candidate = queue.popleft()
            if not candidate.future.done():
                job = candidate
                break
        if queue is not None and not queue:
            del self._pending[meter]
        if job is None:
            message = q.RouterReadAnswer(q.ReadFlag.DONE)
        else:
            message = q.RouterReadAnswer(q.ReadFlag.READ, job.frame)
        out = q.to_frame(
            message,
            q.DownInfo(seq=frame.seq),
            src=self.client.main_node,
            dst=ask.node_addr,
            comm_mode=frame.comm_mode,
            prm=False,
        )
        if job is not None:
            job.ask_seq, job.answer = frame.seq, out
            self._current[meter] = job
        await self.client.link.send(out)

    def on_report(self, frame: q.Frame, report: q.ReportReadData) -> None:
        """06F2: the module read a node (the client has confirmed it)."""
        meter = self._node_seq.get(report.node_seq)
        for inner in q.inner_frames(report):
            if isinstance(inner, dlt645.Frame):
                meter = inner.address.digits
                break
        if meter is None or meter not in self._current:
            meter = next(iter(self._current), None) if len(self._current) == 1 else meter
        job = self._current.pop(meter, None) if meter is not None else None
        if job is None:
            log.info(
                "bus %s: a router-led report nobody waits for (node %d)",
                self.client.name,
                report.node_seq,
            )
            return
        if not job.future.done():
            if report.frame:
                job.future.set_result(report.frame)
            else:
                job.future.set_exception(
                    RouteFailure(f"the module got no answer from meter {meter} (empty 06F2)")
                )
        self._busy()

    def on_route_change(self, status: int) -> None:
        """06F3: status 1 = the reading pass is over."""
        if status != 1:
            return
        self._running = False
        ended = self._passes
        for meter, job in list(self._current.items()):
            del self._current[meter]
            if not job.future.done():
                job.future.set_exception(
                    RouteFailure(f"the module ended its pass without reporting meter {meter}")
                )
        for meter, queue in list(self._pending.items()):
            for job in list(queue):
                if job.birth < ended and not job.future.done():
                    queue.remove(job)
                    job.future.set_exception(
                        RouteFailure(
                            f"the module finished a reading pass without asking for meter {meter}"
                            " (not in its network?)"
                        )
                    )
            if not queue:
                del self._pending[meter]
        self._busy()
        if self._pending:
            self.client._spawn(self._start_pass())

    def on_reset(self) -> None:
        """The module restarted: what it was reading is lost; queue it again, first."""
        self._running = False
        for meter, job in list(self._current.items()):
            del self._current[meter]
            if not job.future.done():
                job.ask_seq = job.answer = None
                self._pending.setdefault(meter, deque()).appendleft(job)
        if self._pending:
            self.client._spawn(self._start_pass())
