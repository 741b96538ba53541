"""The store-and-forward outbox: every reading, round report and event is committed here before
anything tries to publish it, and deleted only after the broker's PUBACK.

One SQLite file in WAL mode, owned by one writer: a dedicated single-thread executor holds the
only connection, and every public method is a coroutine that runs its work there, so writes are
serialised without locks and the event loop never blocks on disk.

Durability: ``synchronous=FULL``. In WAL mode ``NORMAL`` keeps the file consistent but may roll
back the last transactions on power loss (the WAL is not fsynced per commit); a reading whose
`put` returned must survive power loss, so every commit is fsynced. Readings arrive in batches
(`put_many`), so this costs one fsync per batch, not per reading.

Opening: ``PRAGMA integrity_check``; a file that fails it (or is not a database at all) is
renamed aside with a timestamp, logged, counted, and a fresh outbox is created whose first
``events`` row (``outbox_corrupt``) tells the centre. A file written by a newer schema version
is refused (not moved): it is not corrupt, this build is just too old for it.

Disk budget: `bytes_used` counts the stored payload bytes plus `ROW_OVERHEAD` per row (so it is
deterministic; the file itself is larger by SQLite's page overhead and the WAL, whose size after
a checkpoint is capped by ``journal_size_limit``). When a put takes it above `max_bytes`, rows
are evicted down to `LOW_WATER` x `max_bytes` (hysteresis: one eviction frees room for many puts
and yields one event, not one per put) by the chosen policy:

``oldest_readings`` (default)
    oldest readings first; then tariff set-ups (read again within a week), round reports, then
    events, only once no reading is left. Readings are
    nearly all of the volume and the newest are the most useful; a daily frozen value can be read
    again from the meter's own frozen history (backfill) -- but only if the agent learns that it
    was dropped, see `on_evicted`. A round report is the only record of *why* meters are missing,
    and events are few and small.
``oldest``
    strictly oldest row first, whatever its kind.

Rows written by the put that triggered the eviction are never evicted by it. Every evicted row is
counted in `evicted` and reported by an ``outbox_eviction`` row in ``events``. The evicted payloads
themselves go to the owner's `on_evicted` callback, ``on_evicted(kind, payloads)``, once per kind
and eviction, oldest first, called on the event loop (scheduled by the writer thread with
``call_soon_threadsafe`` once the eviction is committed, so it runs before the `put` that caused it
returns, and even if that `put` was cancelled meanwhile). The outbox only reports: marking those
(meter, data day) pairs unread so that backfill visits them again is the owner's job (without
that, backfill skips days the plan state says were read, and the evicted values are lost).
The report survives a power cut: with a listener, the eviction's transaction also keeps the
evicted payloads in ``evicted_unreported``; a row leaves it (in a later write) once `on_evicted`
returned for it, and what is still there at `open` is reported again then (at least once: a
report repeated after a crash costs a second read of that day, never a lost reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Self, TypeVar

import common.clock
from agent.storage import WATCH

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EVICTION_POLICIES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STORED_KINDS",
    "EvictedCallback",
    "Outbox",
    "OutboxError",
    "OutboxRow",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

STORED_KINDS: Final = ("readings", "rounds", "events", "tariff")
EVICTION_POLICIES: Final = ("oldest_readings", "oldest")
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
ROW_OVERHEAD: Final = 64
"""bytes charged per row on top of its payload (rowid, columns, index entry)"""
LOW_WATER: Final = 0.9
MAX_DEAD_LETTERS: Final = 1000
"""dead letters kept for inspection; older ones are dropped (and counted) beyond this"""
_EVICTION_ORDER: Final = {
    "oldest_readings": (("readings",), ("tariff",), ("rounds",), ("events",)),
    "oldest": (STORED_KINDS,),
}

# Each step moves the schema from version i to i+1 (index i). Append, never edit: a file at
# any older version is brought up to date by running the steps it has not seen, in order.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # 0 -> 1: the queue
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('readings', 'rounds', 'events')),
            payload TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX outbox_kind_id ON outbox (kind, id)",
    ),
    (  # 1 -> 2: rows that can never validate are parked here instead of blocking the queue;
        # the epoch makes batch ids unique across a rebuilt file (AUTOINCREMENT restarts at 1)
        """CREATE TABLE dead_letter (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            failed_at REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(4))))",
    ),
    (  # 2 -> 3: a fourth kind, the tariff set-ups (its CHECK constraint means a new table)
        """CREATE TABLE outbox_v3 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('readings', 'rounds', 'events', 'tariff')),
            payload TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        "INSERT INTO outbox_v3 (id, kind, payload, size, created_at)"
        " SELECT id, kind, payload, size, created_at FROM outbox",
        # ids keep counting from where the old table stopped (batch ids stay unique)
        "DELETE FROM sqlite_sequence WHERE name = 'outbox_v3'",
        "INSERT INTO sqlite_sequence (name, seq)"
        " SELECT 'outbox_v3', seq FROM sqlite_sequence WHERE name = 'outbox'",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v3 RENAME TO outbox",
        "CREATE INDEX outbox_kind_id ON outbox (kind, id)",
    ),
    (  # 3 -> 4: evicted rows the owner has not been told of yet, written with the eviction (a
        # power cut between the eviction and `on_evicted` lost the readings' "read it again")
        """CREATE TABLE evicted_unreported (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL
        )""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

EvictedCallback = Callable[[str, list[dict[str, Any]]], None]
"""``on_evicted(kind, payloads)``: the payloads (as put, oldest first) of the rows of one kind that
one eviction removed; called on the event loop. Exceptions are logged, never raised into `put`."""


class OutboxError(RuntimeError):
    """The outbox cannot be used (newer schema, closed, unusable file)."""


class OutboxRow(NamedTuple):
    id: int
    payload: dict[str, Any]
    created_at: float
    """wall-clock time of the put (seconds since the epoch), for put-to-PUBACK latency"""


@dataclass
class _Eviction:
    counts: dict[str, int]
    freed: int
    payloads: dict[str, list[dict[str, Any]]]
    """by kind, oldest first; only collected when there is an `Outbox.on_evicted`"""
    unreported_upto: int = 0
    """the highest ``evicted_unreported`` id the eviction wrote (0: none)"""

    def __bool__(self) -> bool:
        return bool(self.counts)


def _now_iso() -> str:
    return common.clock.current().now().isoformat(timespec="milliseconds")


def _encode(payload: dict[str, Any]) -> str:
    if not isinstance(payload, dict):
        raise TypeError(f"outbox payloads are dicts, not {type(payload).__name__}")
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # NaN / infinity cannot be sent as JSON
        raise ValueError(f"payload cannot be encoded as JSON: {exc}") from None


def _row_size(text: str) -> int:
    return len(text.encode("utf-8")) + ROW_OVERHEAD


class Outbox:
    """Open with ``await Outbox.open(path)``; see the module docstring for the guarantees."""

    def __init__(self, path: Path, *, max_bytes: int, eviction: str) -> None:
        """Use `open`; this only sets up state, the file is opened on the writer thread."""
        if eviction not in EVICTION_POLICIES:
            raise ValueError(f"eviction policy {eviction!r} is not one of {EVICTION_POLICIES}")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self.eviction = eviction
        self.evicted: dict[str, int] = dict.fromkeys(STORED_KINDS, 0)
        """rows evicted by the disk budget since open, by kind"""
        self.evictions = 0
        """eviction episodes since open (each wrote one outbox_eviction event)"""
        self.dead_lettered = 0
        """rows moved to the dead-letter table since open"""
        self.dead_letters_dropped = 0
        self.dead_letter_rows = 0
        """rows in the dead-letter table now"""
        self.moved_aside: Path | None = None
        """where a corrupt file found at open was moved (None if the file was sound)"""
        self.put_count = 0
        """puts completed since open (rows, not calls); see `wait_for_put`"""
        self.epoch = ""
        """random id of this outbox file; part of batch ids"""
        self._bytes_used = 0
        self._depth: dict[str, int] = dict.fromkeys(STORED_KINDS, 0)
        self._evicted_upto: dict[str, int] = {}
        """per kind, the highest row id an eviction deleted up to (see `was_evicted`)"""
        self._reported_upto = 0
        """``evicted_unreported`` ids up to this one have been reported (set on the loop)"""
        self._settled_upto = 0
        """... and deleted (on the writer thread, in the next write's transaction)"""
        self._report_failed = False
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="outbox-writer"
        )
        self._put_event = asyncio.Event()
        self.on_evicted: EvictedCallback | None = None
        """told which payloads an eviction removed (see `EvictedCallback`); settable any time"""
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        eviction: str = "oldest_readings",
        on_evicted: EvictedCallback | None = None,
    ) -> Self:
        outbox = cls(Path(path), max_bytes=max_bytes, eviction=eviction)
        outbox.on_evicted = on_evicted
        try:
            payloads, upto = await outbox._run(outbox._open_sync)
        except BaseException:
            await outbox.close()
            raise
        if payloads:  # evicted by an earlier run that stopped before telling its owner
            log.warning(
                "outbox %s: reporting %s evicted before the last stop and not yet reported",
                outbox.path,
                {kind: len(rows) for kind, rows in payloads.items()},
            )
            outbox._report_evicted(payloads, upto)
        return outbox

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- public API ---------------------------------------------------------------------------
    @property
    def bytes_used(self) -> int:
        """Stored payload bytes plus `ROW_OVERHEAD` per row, over the outbox rows."""
        return self._bytes_used

    def was_evicted(self, kind: str, row_id: int) -> bool:
        """Whether row `row_id` of `kind` may have been evicted by the disk budget (every row
        of its kind up to an eviction's cutoff is gone; a row delivered before that counts too:
        asking again costs a read, not a reading)."""
        return row_id <= self._evicted_upto.get(kind, 0)

    async def put(self, kind: str, payload: dict[str, Any]) -> int:
        """Commit one row; returns its id once it is durable."""
        (row_id,) = await self.put_many(kind, [payload])
        return row_id

    async def put_many(self, kind: str, payloads: list[dict[str, Any]]) -> list[int]:
        """Commit rows of one kind in one transaction; returns their ids once durable."""
        if kind not in STORED_KINDS:
            raise ValueError(f"the outbox stores {STORED_KINDS}, not {kind!r}")
        texts = [_encode(p) for p in payloads]
        if not texts:
            return []
        ids = await self._write(functools.partial(self._put_sync, kind, texts), kind)
        self.put_count += len(ids)
        self._put_event.set()
        return ids

    async def peek(self, kind: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest `limit` rows of `kind` as (id, payload), oldest first; nothing is removed."""
        return [(row.id, row.payload) for row in await self.peek_rows(kind, limit)]

    async def peek_rows(self, kind: str, limit: int) -> list[OutboxRow]:
        """Like `peek`, with each row's put time."""
        if kind not in STORED_KINDS:
            raise ValueError(f"the outbox stores {STORED_KINDS}, not {kind!r}")
        return await self._run(functools.partial(self._peek_sync, kind, limit))

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete rows the broker has acknowledged. Unknown ids are ignored (already evicted)."""
        if ids:
            await self._write(functools.partial(self._delete_sync, list(ids)), "acknowledgements")

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None:
        """Move rows that can never be published out of the queue, keeping them for inspection."""
        if ids:
            await self._write(
                functools.partial(self._dead_letter_sync, list(ids), reason), "dead letters"
            )

    async def dead_letters(self, limit: int = 100) -> list[tuple[int, str, str, dict[str, Any]]]:
        """The newest dead letters as (id, kind, reason, payload)."""
        return await self._run(functools.partial(self._dead_letters_sync, limit))

    async def depth(self) -> dict[str, int]:
        """Rows waiting for the broker, by kind (every stored kind present), counted in the file."""
        return await self._run(self._depth_sync)

    def depth_now(self) -> dict[str, int]:
        """`depth` as kept in memory by the writer: no I/O, for metrics and status payloads."""
        return dict(self._depth)

    async def wait_for_put(self, seen: int) -> None:
        """Return once `put_count` exceeds `seen` (bound it with ``asyncio.timeout``)."""
        while self.put_count <= seen:
            self._put_event.clear()
            await self._put_event.wait()

    # --- writer thread ------------------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise OutboxError(f"outbox {self.path} is closed")
        self._loop = asyncio.get_running_loop()  # where the writer reports evictions
        return await self._loop.run_in_executor(self._executor, fn)

    async def _write(self, fn: Callable[[], T], what: str) -> T:
        """`_run` for a write: no room on the disk (full, read-only, failing) is `StorageFull`,
        said once per episode by the agent's storage watch; a write that succeeds ends it."""
        try:
            result = await self._run(fn)
        except (sqlite3.Error, OSError) as exc:
            full = WATCH.failed(f"outbox {what}", exc)
            if full is None:
                raise
            raise full from exc
        WATCH.ok()
        return result

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self.path} is not open")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O)
                conn.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        return sqlite3.connect(self.path, isolation_level=None, timeout=5.0)

    def _open_sync(self) -> tuple[dict[str, list[dict[str, Any]]], int]:
        """Open (moving a corrupt file aside) and migrate; returns the evicted payloads an earlier
        run did not report (``evicted_unreported``) by kind, and the highest id there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem: str | None = None
        conn = self._connect()
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            if rows != [("ok",)]:
                problem = "; ".join(str(r[0]) for r in rows[:5])
        except sqlite3.DatabaseError as exc:
            if not _means_corrupt(exc):  # locked, unreadable, read-only: not ours to move
                conn.close()
                raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
            problem = str(exc)
        if problem is not None:
            conn.close()
            self.moved_aside = self._move_aside()
            log.error(
                "outbox %s failed its integrity check (%s); moved it to %s and started empty",
                self.path,
                problem,
                self.moved_aside,
                extra={"outbox": str(self.path), "moved_to": str(self.moved_aside)},
            )
            conn = self._connect()
        self._conn = conn
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._close_sync()
            raise
        (self.epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        (used,) = conn.execute("SELECT coalesce(sum(size), 0) FROM outbox").fetchone()
        self._bytes_used = int(used)
        self._depth = self._depth_sync()
        (self.dead_letter_rows,) = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
        unreported: dict[str, list[dict[str, Any]]] = {}
        upto = 0
        for row_id, kind, text in conn.execute(
            "SELECT id, kind, payload FROM evicted_unreported ORDER BY id"
        ):
            upto = row_id
            with contextlib.suppress(ValueError):  # put() stores JSON only
                unreported.setdefault(kind, []).append(json.loads(text))
        if self.moved_aside is not None:
            self._insert_event(
                "outbox_corrupt",
                {"moved_to": str(self.moved_aside), "problem": problem or ""},
            )
        return unreported, upto

    def _move_aside(self) -> Path:
        stamp = common.clock.current().now().strftime("%Y%m%dT%H%M%SZ")
        for n in range(1000):
            suffix = f".corrupt-{stamp}" + (f"-{n}" if n else "")
            target = self.path.with_name(self.path.name + suffix)
            if not target.exists():
                break
        else:
            raise OutboxError(f"too many corrupt copies of {self.path}")
        self.path.rename(target)
        for side in ("-wal", "-shm"):
            sibling = self.path.with_name(self.path.name + side)
            if sibling.exists():
                sibling.rename(target.with_name(target.name + side))
        return target

    def _configure(self) -> None:
        conn = self._db
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise OutboxError(f"cannot put {self.path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 4194304")

    def _migrate(self) -> None:
        conn = self._db
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.path} has schema version {version}, newer than this agent's "
                f"{SCHEMA_VERSION}; refusing to touch it"
            )
        for step in range(version, SCHEMA_VERSION):
            with self._transaction():
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")
            log.info("outbox %s migrated to schema version %d", self.path, step + 1)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _insert(self, kind: str, text: str, now: float) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (kind, payload, size, created_at) VALUES (?, ?, ?, ?)",
            (kind, text, _row_size(text), now),
        )
        self._bytes_used += _row_size(text)
        self._depth[kind] += 1
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _insert_event(self, event: str, detail: dict[str, Any]) -> None:
        payload = {"at": _now_iso(), "event": event, "detail": detail}
        with self._transaction():
            self._insert("events", _encode(payload), common.clock.current().time())

    def _settle_reported(self) -> None:
        """In a write's transaction: drop the eviction reports the owner has had."""
        upto = self._reported_upto
        if upto > self._settled_upto:
            self._db.execute("DELETE FROM evicted_unreported WHERE id <= ?", (upto,))
            self._settled_upto = upto

    def _put_sync(self, kind: str, texts: list[str]) -> list[int]:
        now = common.clock.current().time()
        before = self._bytes_used, dict(self._depth)
        try:
            with self._transaction():
                ids = [self._insert(kind, text, now) for text in texts]
                eviction = None
                if self._bytes_used > self.max_bytes:
                    eviction = self._evict(below_id=ids[0]) or None
                    if eviction is not None:
                        self._insert("events", _encode(self._eviction_event(eviction)), now)
                self._settle_reported()
        except BaseException:
            self._bytes_used, self._depth = before
            raise
        if eviction is not None:
            self.evictions += 1
            for evicted_kind, n in eviction.counts.items():
                self.evicted[evicted_kind] += n
            if eviction.payloads and self._loop is not None:
                # after the commit: the owner hears only of rows that are really gone
                self._loop.call_soon_threadsafe(
                    self._report_evicted, eviction.payloads, eviction.unreported_upto
                )
            log.warning(
                "outbox over its %d byte budget: evicted %s (%d bytes) by policy %s",
                self.max_bytes,
                eviction.counts,
                eviction.freed,
                self.eviction,
                extra={"evicted": eviction.counts, "policy": self.eviction},
            )
        return ids

    def _report_evicted(self, payloads: dict[str, list[dict[str, Any]]], upto: int) -> None:
        """On the event loop: hand each kind's evicted payloads to `on_evicted`; once it has
        returned for all of them, their ``evicted_unreported`` rows (ids up to `upto`) may go."""
        callback = self.on_evicted
        if callback is None:
            return
        told = True
        for kind, rows in payloads.items():
            try:
                callback(kind, rows)
            except Exception:
                told = False
                log.exception("outbox: on_evicted failed for %d %s row(s)", len(rows), kind)
        if not told:  # kept, with every later one, and made again at the next open
            self._report_failed = True
        elif not self._report_failed:
            self._reported_upto = max(self._reported_upto, upto)

    def _eviction_event(self, eviction: _Eviction) -> dict[str, Any]:
        return {
            "at": _now_iso(),
            "event": "outbox_eviction",
            "detail": {
                "evicted": eviction.counts,
                "freed_bytes": eviction.freed,
                "policy": self.eviction,
                "max_bytes": self.max_bytes,
                "evicted_total": {
                    k: self.evicted[k] + eviction.counts.get(k, 0) for k in STORED_KINDS
                },
            },
        }

    def _evict(self, *, below_id: int) -> _Eviction:
        """Delete rows older than `below_id` by policy until at or below the low-water mark."""
        conn = self._db
        target = math.floor(self.max_bytes * LOW_WATER)
        counts: dict[str, int] = {}
        payloads: dict[str, list[dict[str, Any]]] = {}
        freed = 0
        # the payloads are read (and parsed, here on the writer thread) only for a listener
        text_column = "payload" if self.on_evicted is not None else "NULL"
        for kinds in _EVICTION_ORDER[self.eviction]:
            if self._bytes_used <= target:
                break
            kinds_json = json.dumps(kinds)
            rows = conn.execute(
                f"SELECT id, kind, size, {text_column} FROM outbox "  # noqa: S608 - a constant
                "WHERE kind IN (SELECT value FROM json_each(?)) AND id < ? ORDER BY id",
                (kinds_json, below_id),
            )
            cutoff = None
            stage: dict[str, int] = {}
            unreported: list[tuple[str, str]] = []
            for row_id, kind, size, text in rows:
                cutoff = row_id
                stage[kind] = stage.get(kind, 0) + 1
                self._bytes_used -= size
                freed += size
                if text is not None:
                    unreported.append((kind, text))
                    with contextlib.suppress(ValueError):  # put() stores JSON only
                        payloads.setdefault(kind, []).append(json.loads(text))
                if self._bytes_used <= target:
                    break
            if cutoff is not None:
                conn.execute(
                    "DELETE FROM outbox WHERE kind IN (SELECT value FROM json_each(?)) AND id <= ?",
                    (kinds_json, cutoff),
                )
                # kept until the owner has heard of them; written after the delete, into the
                # pages it freed (an eviction on a nearly full disk must not need more room)
                conn.executemany(
                    "INSERT INTO evicted_unreported (kind, payload) VALUES (?, ?)", unreported
                )
                for kind in kinds:
                    self._evicted_upto[kind] = max(self._evicted_upto.get(kind, 0), cutoff)
                for kind, n in stage.items():
                    counts[kind] = counts.get(kind, 0) + n
                    self._depth[kind] -= n
        upto = 0
        if payloads:
            (upto,) = conn.execute("SELECT coalesce(max(id), 0) FROM evicted_unreported").fetchone()
        return _Eviction(counts, freed, payloads, upto)

    def _peek_sync(self, kind: str, limit: int) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, payload, created_at FROM outbox WHERE kind = ? ORDER BY id LIMIT ?",
            (kind, limit),
        ).fetchall()
        out: list[OutboxRow] = []
        unreadable: list[int] = []
        for row_id, text, created_at in rows:
            try:
                payload = json.loads(text)
            except ValueError:
                unreadable.append(row_id)
                continue
            out.append(OutboxRow(row_id, payload, created_at))
        if unreadable:  # cannot happen through put(); a damaged row must not block the queue
            self._dead_letter_sync(unreadable, "payload is not JSON")
        return out

    def _delete_sync(self, ids: list[int]) -> None:
        with self._transaction() as conn:
            self._settle_reported()
            removed = self._tally(ids)
            conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
        self._forget(removed)

    def _tally(self, ids: list[int]) -> list[tuple[str, int, int]]:
        """(kind, rows, bytes) of the given rows that are still in the outbox."""
        rows = self._db.execute(
            "SELECT kind, count(*), sum(size) FROM outbox "
            "WHERE id IN (SELECT value FROM json_each(?)) GROUP BY kind",
            (json.dumps(ids),),
        ).fetchall()
        return [(kind, int(n), int(size)) for kind, n, size in rows]

    def _forget(self, removed: list[tuple[str, int, int]]) -> None:
        for kind, n, size in removed:
            self._depth[kind] -= n
            self._bytes_used -= size

    def _dead_letter_sync(self, ids: list[int], reason: str) -> int:
        ids_json = json.dumps(ids)
        with self._transaction() as conn:
            removed = self._tally(ids)
            cur = conn.execute(
                "INSERT INTO dead_letter (id, kind, payload, created_at, failed_at, reason) "
                "SELECT id, kind, payload, created_at, ?, ? FROM outbox "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (common.clock.current().time(), reason, ids_json),
            )
            moved = cur.rowcount
            conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (ids_json,)
            )
            (count,) = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
            dropped = max(0, count - MAX_DEAD_LETTERS)
            conn.execute(
                "DELETE FROM dead_letter WHERE id IN "
                "(SELECT id FROM dead_letter ORDER BY id LIMIT ?)",
                (dropped,),
            )
        self._forget(removed)
        self.dead_letter_rows = count - dropped
        self.dead_letters_dropped += dropped
        self.dead_lettered += moved
        log.error(
            "outbox: %d row(s) moved to the dead-letter table: %s",
            moved,
            reason,
            extra={"dead_letter_ids": ids[:20], "reason": reason},
        )
        return moved

    def _dead_letters_sync(self, limit: int) -> list[tuple[int, str, str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT id, kind, reason, payload FROM dead_letter ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        out = []
        for row_id, kind, reason, text in rows:
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {"unparsed": text}
            out.append((row_id, kind, reason, payload))
        return out

    def _depth_sync(self) -> dict[str, int]:
        depth = dict.fromkeys(STORED_KINDS, 0)
        for kind, n in self._db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind"):
            depth[kind] = n
        return depth


def _means_corrupt(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
