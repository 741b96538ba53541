"""Where the panel's figures come from.

- **Coverage** (the store's ledger): `central.coverage.compute_day`, the very function
  `meterlink central report` prints, so the panel shows the report's numbers. It costs seconds
  for a large fleet (bench/panel.py), so it runs in a worker process (the server's event loop
  keeps answering), and its results are cached per day: a day is recomputed when the ledger
  changed (SQLite: ``PRAGMA data_version``; PostgreSQL: the ledger tables' change counters),
  at most every `refresh_s` (and no more often than three times the last computation took),
  and at the latest after `max_age_s`.
- **Trend and reading history** (InfluxDB, InfluxQL ``/query``): the ``coverage`` points the
  coverage job publishes (the same computation, one point per day) and the ``reading`` points.
- **Agent status** (MQTT): the retained ``meterlink/v1/+/status`` of every concentrator, on a
  subscription of the panel's own (a consumer's shared subscription sees only its share).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiomqtt

from central.config import CentralConfig, CoverageConfig, InfluxConfig, MqttConfig
from central.coverage import DayCoverage, compute_day
from central.ledger import Ledger, day_offset
from central.store import Store, open_store
from common.aio import raise_if_cancelled
from common.config import Secret
from common.mqtt import Client, client_arguments
from protocols.payloads import TOPIC_ROOT

__all__ = [
    "AgentStatus",
    "CoverageCache",
    "InfluxReader",
    "MeterFacts",
    "StatusWatcher",
    "TrendPoint",
    "ledger_stamp",
    "meter_facts",
]

log = logging.getLogger(__name__)

# --- coverage in a worker process ----------------------------------------------------------------
_worker_ledger: Ledger | None = None


def _worker_init(url: str, password: str | None, timeout_s: float) -> None:
    global _worker_ledger
    secret = Secret(password, "METERLINK_STORE_PASSWORD") if password else None
    store = open_store(url, password=secret, connect_timeout_s=timeout_s,
                       name="meterlink central panel (coverage)")  # fmt: skip
    _worker_ledger = Ledger(store)


def _worker_compute(day: str, cfg: CoverageConfig, concentrator: str | None) -> DayCoverage:
    assert _worker_ledger is not None
    return compute_day(_worker_ledger, day, cfg, concentrator=concentrator)


def _worker_known_days(until: str) -> list[str]:
    assert _worker_ledger is not None
    return _worker_ledger.known_days(until)


_STAMP_TABLES = ("archive_version", "archive_meter", "daily_read", "daily_failure")


def ledger_stamp(store: Store) -> tuple[Any, ...]:
    """Changes whenever another connection changed the ledger (SQLite: any commit to the file
    by another connection; PostgreSQL: the ledger tables' row counters, which the server
    updates within about a second of a commit)."""
    if store.dialect == "sqlite":
        return tuple(store.rows("PRAGMA data_version")[0])
    names = ", ".join(f"'{t}'" for t in _STAMP_TABLES)
    return tuple(
        store.rows(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"  # noqa: S608
            f" WHERE relname IN ({names})"
        )[0]
    )


@dataclass
class _Entry:
    cov: DayCoverage
    stamp: tuple[Any, ...]
    computed_at: float  # time.time()
    seconds: float


@dataclass
class CoverageCache:
    """Coverage per day (and per concentrator and day), computed in one worker process."""

    cfg: CentralConfig
    #: the request-side store (the stamp is read there)
    store: Store
    max_entries: int = 64
    _pool: concurrent.futures.ProcessPoolExecutor | None = None
    _entries: OrderedDict[tuple[str, str | None], _Entry] = field(default_factory=OrderedDict)
    _locks: dict[tuple[str, str | None], asyncio.Lock] = field(default_factory=dict)
    #: bumped whenever a fleet day's figures changed (the live page listens)
    version: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    last_checked: float = 0.0

    def start(self) -> None:
        s = self.cfg.store
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(s.url, s.password.reveal() if s.password else None, s.connect_timeout_s),
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._pool is not None, "CoverageCache.start() first"
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def stamp(self) -> tuple[Any, ...]:
        return await asyncio.to_thread(ledger_stamp, self.store)

    async def get(self, day: str, concentrator: str | None = None) -> _Entry:
        """The day's coverage: cached, or computed now (the first time, or when the cached
        one is older than the ledger and may be recomputed)."""
        key = (day, concentrator)
        entry = self._entries.get(key)
        if entry is not None and not await self._due(entry):
            self._entries.move_to_end(key)
            return entry
        return await self._compute(key)

    def cached(self, day: str, concentrator: str | None = None) -> _Entry | None:
        return self._entries.get((day, concentrator))

    async def _due(self, entry: _Entry) -> bool:
        age = time.time() - entry.computed_at
        if age > self.cfg.panel.max_age_s:
            return True
        if age < max(self.cfg.panel.refresh_s, 3 * entry.seconds):
            return False
        return await self.stamp() != entry.stamp

    async def _compute(self, key: tuple[str, str | None]) -> _Entry:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            old = self._entries.get(key)
            if old is not None and old.computed_at > time.time() - 0.5 and not await self._due(old):
                return old  # another request computed it while this one waited
            stamp = await self.stamp()  # before: a change during the computation shows next time
            started = time.monotonic()
            cov: DayCoverage = await self._run(_worker_compute, key[0], self.cfg.coverage, key[1])
            entry = _Entry(cov, stamp, time.time(), time.monotonic() - started)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            if key[1] is None and (old is None or _figures(old.cov) != _figures(cov)):
                async with self.changed:
                    self.version += 1
                    self.changed.notify_all()
            return entry

    async def refresh(self, days: list[str]) -> None:
        """Recompute those of `days` that are due (the refresher's loop calls this)."""
        self.last_checked = time.time()
        for day in days:
            entry = self._entries.get((day, None))
            if entry is None or await self._due(entry):
                await self._compute((day, None))

    async def known_days(self, until: str) -> list[str]:
        days: list[str] = await self._run(_worker_known_days, until)
        return days


def _figures(cov: DayCoverage) -> tuple[Any, ...]:
    return tuple(
        (s.scope, s.key, s.expected, s.read, s.timely, s.complete, sorted(s.reasons.items()))
        for s in cov.scopes
    ) + tuple(dataclasses.astuple(st) for st in cov.streaks)


# --- one meter's facts from the ledger -----------------------------------------------------------
@dataclass(frozen=True)
class MeterFacts:
    concentrator: str
    meter: str
    district: str
    manufacturer: str
    bus: str
    #: (day, read_at unix s, complete) for the days read, newest first
    reads: list[tuple[str, int, bool]]
    #: (day, reason, detail) for the days a round reported it failing, newest first
    failures: list[tuple[str, str, str]]

    @property
    def last_read(self) -> str | None:
        return self.reads[0][0] if self.reads else None


def meter_facts(
    store: Store, concentrator: str, meter: str, day: str, days: int
) -> MeterFacts | None:
    """What the ledger knows of a meter over the `days` up to `day`; None when no archive of
    the concentrator ever listed it."""
    attrs = store.rows(
        "SELECT district, manufacturer, bus FROM archive_meter WHERE concentrator = ?"
        " AND meter = ? ORDER BY seq DESC LIMIT 1",
        (concentrator, meter),
    )
    if not attrs:
        return None
    since = day_offset(day, -(days - 1))
    reads = store.rows(
        "SELECT day, read_at, complete FROM daily_read WHERE concentrator = ? AND meter = ?"
        " AND day BETWEEN ? AND ? ORDER BY day DESC",
        (concentrator, meter, since, day),
    )
    failures = store.rows(
        "SELECT day, reason, detail FROM daily_failure WHERE concentrator = ? AND meter = ?"
        " AND day BETWEEN ? AND ? ORDER BY day DESC",
        (concentrator, meter, since, day),
    )
    district, manufacturer, bus = (str(v) for v in attrs[0])
    return MeterFacts(
        concentrator, meter, district, manufacturer, bus,
        [(str(d), int(r), bool(c)) for d, r, c in reads],
        [(str(d), str(r), str(x)) for d, r, x in failures],
    )  # fmt: skip


def last_reads(store: Store, concentrator: str, day: str) -> dict[str, str]:
    """Each meter's latest data day read, up to `day` (all of the ledger's history)."""
    return {
        str(m): str(d)
        for m, d in store.rows(
            "SELECT meter, max(day) FROM daily_read WHERE concentrator = ? AND day <= ?"
            " GROUP BY meter",
            (concentrator, day),
        )
    }


def archive_meters(store: Store, concentrator: str, day: str) -> list[tuple[str, str, str, str]]:
    """The meters of the archive in force on `day` (docs/coverage.md: the newest version seen
    whose day_from is on or before it, else the first): (meter, district, manufacturer, bus)."""
    versions = store.rows(
        "SELECT seq, day_from FROM archive_version WHERE concentrator = ? ORDER BY seq",
        (concentrator,),
    )
    if not versions:
        return []
    in_force = [int(s) for s, d in versions if str(d) <= day]
    seq = in_force[-1] if in_force else int(versions[0][0])
    return [
        (str(m), str(d), str(f), str(b))
        for m, d, f, b in store.rows(
            "SELECT meter, district, manufacturer, bus FROM archive_meter"
            " WHERE concentrator = ? AND seq = ? ORDER BY meter",
            (concentrator, seq),
        )
    ]


# --- InfluxDB ------------------------------------------------------------------------------------
class InfluxUnavailable(Exception):
    """InfluxDB did not answer the query (down, refused, misconfigured); the message says."""


@dataclass(frozen=True)
class TrendPoint:
    day: str
    rate: float | None
    timeliness_rate: float | None
    completeness_rate: float | None
    expected: int
    read: int
    #: "ledger" (computed here, as the report) or "influx" (the coverage job's point)
    source: str


def _q(text: str) -> str:
    """An InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class InfluxReader:
    cfg: InfluxConfig
    _session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def query(self, q: str) -> list[dict[str, Any]]:
        """Rows of the first series (InfluxQL over /query, InfluxDB 1.x and 2.x/3.x through
        their v1 compatibility API)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            )
        c = self.cfg
        params = {"db": c.database if c.api == "v1" else c.bucket.split("/")[0], "q": q,
                  "epoch": "s"}  # fmt: skip
        headers = {}
        if c.api == "v1" and c.username:
            params["u"] = c.username
            params["p"] = c.password.reveal() if c.password else ""
        if c.api == "v2" and c.token is not None:
            headers["Authorization"] = f"Token {c.token.reveal()}"
        try:
            async with self._session.get(
                f"{c.url.rstrip('/')}/query", params=params, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise InfluxUnavailable(f"InfluxDB {c.url}: HTTP {resp.status}: {text[:200]}")
                body = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise InfluxUnavailable(f"InfluxDB {c.url}: {type(exc).__name__}: {exc}") from exc
        result = (body.get("results") or [{}])[0]
        if "error" in result:
            raise InfluxUnavailable(f"InfluxDB {c.url}: {result['error']}")
        series = result.get("series") or []
        if not series:
            return []
        cols = series[0]["columns"]
        return [dict(zip(cols, values, strict=True)) for values in series[0]["values"]]

    async def trend(self, first: str, last: str) -> list[TrendPoint]:
        rows = await self.query(  # InfluxQL, every value quoted by _q
            "SELECT expected, collected, rate, timeliness_rate, completeness_rate FROM coverage"  # noqa: S608
            f" WHERE scope = 'fleet' AND \"key\" = 'all' AND time >= {_q(first + 'T00:00:00Z')}"
            f" AND time <= {_q(last + 'T00:00:00Z')}"
        )
        return [
            TrendPoint(
                dt.datetime.fromtimestamp(int(r["time"]), dt.UTC).date().isoformat(),
                r.get("rate"),
                r.get("timeliness_rate"),
                r.get("completeness_rate"),
                int(r.get("expected") or 0),
                int(r.get("collected") or 0),
                "influx",
            )
            for r in rows
        ]

    async def history(
        self, concentrator: str, meter: str, since_s: int, field_name: str
    ) -> list[tuple[int, float, str]]:
        """(time, value, quality) of the meter's daily freezes since `since_s`."""
        rows = await self.query(
            f'SELECT "{field_name}", quality FROM reading WHERE concentrator = {_q(concentrator)}'  # noqa: S608
            f" AND meter = {_q(meter)} AND item = 'daily_freeze' AND time >= {int(since_s)}s"
        )
        return [
            (int(r["time"]), float(r[field_name]), str(r.get("quality") or ""))
            for r in rows
            if isinstance(r.get(field_name), int | float)
        ]


# --- agent status --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentStatus:
    state: str  # "online" | "offline"
    at: str  # the agent's stamp (for a last will: when that connection was made)
    received: float  # when the panel got it (dates an outage better than a will's `at`)
    payload: Mapping[str, Any]


@dataclass
class StatusWatcher:
    """Holds the retained status of every concentrator (a subscription of its own)."""

    mqtt: MqttConfig
    client_id: str
    statuses: dict[str, AgentStatus] = field(default_factory=dict)
    connected: bool = False
    error: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.mqtt.reconnect_min_s
        while not stop.is_set():
            try:
                args = await client_arguments(self.mqtt, self.client_id, SessionExpiryInterval=0)
                args["clean_start"] = True
                async with Client(**args) as client:
                    await client.subscribe(f"{TOPIC_ROOT}/+/status", qos=1)
                    self.connected, self.error = True, ""
                    delay = self.mqtt.reconnect_min_s
                    log.info("panel: status subscription on %s:%d", self.mqtt.host, self.mqtt.port)
                    reader = asyncio.create_task(self._read(client))
                    stopper = asyncio.create_task(stop.wait())
                    try:
                        done, _ = await asyncio.wait(
                            {reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:  # also when the panel cancels this task at its stop: the reader
                        # would end on the closed connection with nobody to take its error
                        for task in (reader, stopper):
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                                await task
                    if reader in done and reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
            except aiomqtt.MqttError as exc:
                raise_if_cancelled(exc)
                if self.connected or not self.error:
                    log.warning("panel: MQTT %s:%d: %s", self.mqtt.host, self.mqtt.port, exc)
                self.connected, self.error = False, str(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(random.uniform(delay / 2, delay)):
                        await stop.wait()
                delay = min(self.mqtt.reconnect_max_s, delay * 2)
        self.connected = False

    async def _read(self, client: Client) -> None:
        async for message in client.messages:
            parts = message.topic.value.split("/")
            try:
                body = json.loads(bytes(message.payload))
            except (TypeError, ValueError):
                continue
            if len(parts) != 4 or not isinstance(body, dict):
                continue
            self.statuses[parts[2]] = AgentStatus(
                str(body.get("state", "")), str(body.get("at", "")), time.time(), body
            )
            self.changed.set()
