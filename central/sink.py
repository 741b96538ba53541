"""The write path: InfluxDB if it takes the lines now, else the local spool; never neither.

`write()` returns only when the lines are durable: accepted by InfluxDB (2xx), held by the
spool, or — for lines InfluxDB refuses as bad (400, 422, ...) — recorded as dead letters. Such
a batch is split in halves until the refused lines are isolated, so one bad point does not take
its neighbours with it. 401/403/404 say nothing about the lines (a token, a grant, the
database): they are unavailability, and the lines wait in the spool like for a 5xx.
`drain()` is a long-lived task that replays the spool with exponential backoff and jitter;
while the spool is not empty new batches go straight to it, so a down database costs one
connection error per backoff period, not one per batch.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from central.config import InfluxConfig
from central.spool import Spool
from central.writers import WriteMisconfigured, Writer, WriteRejected, WriteUnavailable

__all__ = ["WRITE_BUCKETS", "Sink", "SinkStats"]

#: upper bounds (seconds) of the write-latency histogram's buckets
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    written_lines: int = 0
    spooled_lines: int = 0
    replayed_lines: int = 0
    dead_lines: int = 0
    write_errors: int = 0
    #: HTTP writes attempted, their total duration, and how many took at most each of
    #: `WRITE_BUCKETS` (cumulative, as a Prometheus histogram counts)
    writes: int = 0
    write_seconds: float = 0.0
    write_buckets: list[int] = field(default_factory=lambda: [0] * len(WRITE_BUCKETS))

    def timed(self, seconds: float) -> None:
        self.writes += 1
        self.write_seconds += seconds
        for i in range(bisect.bisect_left(WRITE_BUCKETS, seconds), len(WRITE_BUCKETS)):
            self.write_buckets[i] += 1


class Sink:
    def __init__(self, writer: Writer, spool: Spool, cfg: InfluxConfig) -> None:
        self.writer = writer
        self.spool = spool
        self.cfg = cfg
        self.stats = SinkStats()
        self._spool_nonempty = spool.pending()[0] > 0
        self._wake = asyncio.Event()
        #: the 401/403/404 of the set-up problem in progress: logged once, as an error
        self._misconfigured: WriteMisconfigured | None = None

    async def write(self, lines: list[str]) -> None:
        if not lines:
            return
        if not self._spool_nonempty:
            delay = self.cfg.retry_initial_s
            for attempt in range(1, self.cfg.attempts_before_spool + 1):
                try:
                    await self._write_chunks(lines)
                    return
                except _Remainder as rest:
                    lines = rest.lines
                    if attempt == self.cfg.attempts_before_spool:
                        log.warning(
                            "InfluxDB unavailable (%s); spooling %d lines", rest, len(lines)
                        )
                        break
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.cfg.retry_max_s)
        await asyncio.to_thread(self.spool.put, lines)
        self.stats.spooled_lines += len(lines)
        self._spool_nonempty = True
        self._wake.set()

    async def write_now(self, lines: list[str]) -> None:
        """Write without the spool (derived data that can be recomputed): raises
        `WriteUnavailable` when InfluxDB cannot take it now."""
        try:
            await self._write_chunks(lines)
        except _Remainder as rest:
            raise rest.cause from None

    async def _write_chunks(self, lines: list[str]) -> None:
        """Write in chunks; on unavailability raise `_Remainder` with what was not written."""
        step = self.cfg.max_lines_per_write
        for start in range(0, len(lines), step):
            chunk = lines[start : start + step]
            try:
                await self._write(chunk)
                self._written(len(chunk))
            except WriteRejected as exc:
                try:
                    await self._isolate(chunk, exc)
                except WriteUnavailable as lost:
                    self._unavailable(lost)
                    raise _Remainder(lines[start:], lost) from lost
            except WriteUnavailable as exc:
                self._unavailable(exc)
                raise _Remainder(lines[start:], exc) from exc

    async def _write(self, lines: list[str]) -> None:
        started = time.monotonic()
        try:
            await self.writer.write(lines)
        finally:
            self.stats.timed(time.monotonic() - started)

    def _written(self, n: int) -> None:
        self.stats.written_lines += n
        if self._misconfigured is not None:
            log.warning("InfluxDB takes writes again (after %s)", self._misconfigured)
            self._misconfigured = None

    def _unavailable(self, exc: WriteUnavailable) -> None:
        self.stats.write_errors += 1
        if isinstance(exc, WriteMisconfigured) and self._misconfigured is None:
            self._misconfigured = exc
            log.error(
                "InfluxDB refuses writes with %s: check the credentials, their rights and the"
                " database/bucket; the lines wait in the spool and are retried until it works",
                exc,
            )

    async def _isolate(self, lines: list[str], exc: WriteRejected) -> None:
        """Split a refused batch until each refused line is alone, and dead-letter those."""
        if len(lines) == 1:
            log.error("InfluxDB refused %d lines: %s", len(lines), exc)
            await asyncio.to_thread(
                self.spool.dead,
                "influx",
                self.writer.name,
                str(exc),
                "\n".join(lines).encode(),
                exc.status,
            )
            self.stats.dead_lines += len(lines)
            return
        half = len(lines) // 2
        for part in (lines[:half], lines[half:]):
            try:
                await self._write(part)
                self._written(len(part))
            except WriteRejected as inner:
                await self._isolate(part, inner)

    async def drain(self) -> None:
        """Replay spooled batches, oldest first, forever (cancel to stop)."""
        delay = self.cfg.retry_initial_s
        while True:
            batch = await asyncio.to_thread(self.spool.oldest)
            if batch is None:
                self._spool_nonempty = False
                self._wake.clear()
                # the timeout covers a put that finished between oldest() and clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
            batch_id, lines = batch
            try:
                await self._write_chunks(lines)
            except _Remainder as rest:
                log.info("InfluxDB still unavailable (%s); retry in %.1fs", rest, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.cfg.retry_max_s)
                continue
            await asyncio.to_thread(self.spool.done, batch_id)
            self.stats.replayed_lines += len(lines)
            delay = self.cfg.retry_initial_s


class _Remainder(Exception):
    def __init__(self, lines: list[str], cause: WriteUnavailable) -> None:
        super().__init__(str(cause))
        self.lines = lines
        self.cause = cause
