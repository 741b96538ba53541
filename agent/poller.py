"""One poller per bus: it owns the bus's transport and runs jobs in priority order.

Commands from the centre (priority 0) overtake plan work; within a priority, first come first
served. RS-485 runs one job at a time; a client that pairs replies with requests (a carrier
module) says how many jobs it takes at once (`client.workers`) and may run an upkeep task of
its own beside them (`client.service()`: the module's start-up and archive sync). A job is an
async function of the bus's protocol client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from agent.transports import BusError, ByteTransport, TraceHook, open_byte_transport
from agent.transports.url import BusUrl

__all__ = ["PRIORITY_COMMAND", "PRIORITY_DAILY", "PRIORITY_INTERVAL", "BusClosed", "BusPoller"]

log = logging.getLogger(__name__)

PRIORITY_COMMAND = 0
PRIORITY_CLOCK = 4
PRIORITY_DAILY = 5
PRIORITY_BACKFILL = 7
PRIORITY_INTERVAL = 8
PRIORITY_TARIFF = 9
"""the tariff plan yields to every other plan between its (short) jobs"""

C = TypeVar("C")
T = TypeVar("T")


class BusClosed(RuntimeError):
    """The poller is shutting down and takes no more work."""


class BusPoller(Generic[C]):
    def __init__(self, name: str, url: BusUrl, client: C, transport: Any) -> None:
        self.name = name
        self.url = url
        self.client = client
        self.transport = transport
        self._queue: asyncio.PriorityQueue[
            tuple[int, int, Callable[[C], Awaitable[Any]], asyncio.Future[Any]]
        ]
        self._queue = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._closing = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.bus_down = False
        """the last exchange failed on the bus itself (BusError), not on a meter"""

    @property
    def busy_seconds(self) -> float:
        return float(getattr(self.transport, "busy_seconds", 0.0))

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def submit(self, job: Callable[[C], Awaitable[T]], *, priority: int) -> T:
        """Queue `job` and wait for its result (exceptions propagate to the caller)."""
        if self._closing:
            raise BusClosed(f"bus {self.name} is shutting down")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((priority, next(self._seq), job, future))
        return await future

    @property
    def workers(self) -> int:
        return int(getattr(self.client, "workers", self.url.in_flight))

    async def run(self) -> None:
        """The poller's long-lived task: as many workers as the bus allows in flight."""
        try:
            async with asyncio.TaskGroup() as group:
                service = getattr(self.client, "service", None)
                if service is not None:
                    group.create_task(service(), name=f"bus:{self.name}:service")
                for i in range(self.workers):
                    group.create_task(self._worker(), name=f"bus:{self.name}:worker{i}")
        finally:
            await self._close_transport()

    async def _worker(self) -> None:
        while True:
            _prio, _seq, job, future = await self._queue.get()
            if future.done():
                continue
            self._active += 1
            self._idle.clear()
            try:
                result = await job(self.client)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                self._bus_health(exc)
                if not future.done():  # the submitter may be gone (plan reloaded or stopped)
                    future.set_exception(exc)
            else:
                self._bus_health(None)
                if not future.done():
                    future.set_result(result)
            finally:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()

    def _bus_health(self, exc: Exception | None) -> None:
        """One log line when the bus itself starts failing (cannot open, connection lost) and
        one when it works again — not one per exchange. A meter that does not answer is not
        the bus failing."""
        if isinstance(exc, BusError):
            if not self.bus_down:
                log.warning(
                    "bus %s: %s (every exchange on this bus fails until it is fixed; retrying)",
                    self.name,
                    exc,
                    extra={"bus": self.name},
                )
            self.bus_down = True
        elif self.bus_down:
            log.info("bus %s: working again", self.name, extra={"bus": self.name})
            self.bus_down = False

    async def drain(self, within: float) -> bool:
        """Stop taking work, refuse what is queued, let the running job finish (bounded)."""
        self._closing = True
        while not self._queue.empty():
            *_, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BusClosed(f"bus {self.name} is shutting down"))
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _close_transport(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            with contextlib.suppress(OSError):
                await close()


def dlt645_poller(name: str, url: BusUrl, *, trace: TraceHook | None = None) -> BusPoller[Any]:
    from agent.dlt645 import Dlt645Client

    if url.is_carrier:
        from agent.carrier.client import carrier_poller

        poller: BusPoller[Any] = carrier_poller(name, url, trace=trace)
        return poller
    transport: ByteTransport = open_byte_transport(url, trace=trace)
    return BusPoller(name, url, Dlt645Client(transport), transport)
