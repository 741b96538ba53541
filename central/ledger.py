"""The coverage ledger: the durable facts coverage is computed from, shared by every instance.

One SQLite file in WAL mode that all consumer instances on a host (and `meterlink central
report`) open. Each consumer applies the facts of a batch in one transaction *before* it
acknowledges the batch's MQTT messages, so the ledger never misses a fact the broker forgot.
Every write is an idempotent upsert keyed by what the fact is about, so duplicates, replays and
two instances seeing the same archive change nothing. See docs/coverage.md for why a ledger and
not one process's memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from central.points import FIRST_DAY, LAST_DAY, ArchiveFact, Converted, archive_digest

__all__ = ["Ledger", "day_offset"]

log = logging.getLogger(__name__)

_ARCHIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_version (
    concentrator TEXT NOT NULL,
    seq INTEGER NOT NULL,         -- 1, 2, ... in the order the centre first saw them: the newest
                                  -- is the highest, whatever its version (which may restart)
    version INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    day_from TEXT NOT NULL,       -- the first data day in force
    digest TEXT NOT NULL,         -- of the meters (points.archive_digest)
    PRIMARY KEY (concentrator, seq)
);
CREATE TABLE IF NOT EXISTS archive_meter (
    concentrator TEXT NOT NULL, seq INTEGER NOT NULL, meter TEXT NOT NULL,
    district TEXT NOT NULL, manufacturer TEXT NOT NULL, bus TEXT NOT NULL,
    PRIMARY KEY (concentrator, seq, meter)
) WITHOUT ROWID;
"""
_SCHEMA = (
    _ARCHIVE_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS daily_read (
    concentrator TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL,
    day_start INTEGER NOT NULL,   -- unix seconds of the data day's local midnight
    read_at INTEGER NOT NULL,     -- the earliest read of this freeze
    complete INTEGER NOT NULL,    -- 1 once a read carried every required value
    backfill INTEGER NOT NULL,    -- 1 while the only reads were backfill
    PRIMARY KEY (concentrator, meter, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS daily_read_day ON daily_read (day);
CREATE TABLE IF NOT EXISTS daily_failure (
    concentrator TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL,
    reported_at INTEGER NOT NULL, -- the round's end: the latest round's reason wins
    PRIMARY KEY (concentrator, meter, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS daily_failure_day ON daily_failure (day);
CREATE TABLE IF NOT EXISTS dirty_day (day TEXT PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS published (
    day TEXT NOT NULL, measurement TEXT NOT NULL, series TEXT NOT NULL,
    PRIMARY KEY (day, measurement, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
"""
)

_UPSERT_READ = """
INSERT INTO daily_read (concentrator, meter, day, day_start, read_at, complete, backfill)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (concentrator, meter, day) DO UPDATE SET
    read_at = min(read_at, excluded.read_at),
    complete = max(complete, excluded.complete),
    backfill = min(backfill, excluded.backfill)
"""
_UPSERT_FAILURE = """
INSERT INTO daily_failure (concentrator, meter, day, reason, detail, reported_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (concentrator, meter, day) DO UPDATE SET
    reason = excluded.reason, detail = excluded.detail, reported_at = excluded.reported_at
WHERE excluded.reported_at >= daily_failure.reported_at
"""
_MARK_DIRTY = """
INSERT INTO dirty_day (day, gen) VALUES (?, 1)
ON CONFLICT (day) DO UPDATE SET gen = gen + 1
"""
#: every day with data from ? on (the days a new archive version can change)
_MARK_DIRTY_FROM = """
INSERT INTO dirty_day (day, gen)
SELECT day, 1 FROM (
    SELECT day FROM daily_read WHERE day >= ?1 UNION SELECT day FROM daily_failure WHERE day >= ?1
) WHERE true
ON CONFLICT (day) DO UPDATE SET gen = gen + 1
"""


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            self._db.executescript(_SCHEMA)

    def _migrate(self) -> None:
        """Ledgers written before archives were kept in the order seen (they were keyed by their
        version, so a concentrator restarting at version 1 went unnoticed): number them in
        version order, which leaves every day the version it had."""

        def old() -> bool:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(archive_version)")}
            return bool(columns) and "seq" not in columns

        if not old():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if old():  # still: another instance may have migrated it meanwhile
                self._db.execute("ALTER TABLE archive_version RENAME TO archive_version_0")
                self._db.execute("ALTER TABLE archive_meter RENAME TO archive_meter_0")
                for statement in _ARCHIVE_SCHEMA.split(";")[:2]:
                    self._db.execute(statement)
                versions = self._db.execute(
                    "SELECT concentrator, version, updated_at, day_from FROM archive_version_0"
                    " ORDER BY concentrator, version"
                ).fetchall()
                seqs: dict[str, int] = {}
                for c, version, updated_at, day_from in versions:
                    seq = seqs[c] = seqs.get(c, 0) + 1
                    meters = tuple(
                        (str(m), str(d), str(f), str(b))
                        for m, d, f, b in self._db.execute(
                            "SELECT meter, district, manufacturer, bus FROM archive_meter_0"
                            " WHERE concentrator = ? AND version = ?",
                            (c, version),
                        )
                    )
                    self._db.execute(
                        "INSERT INTO archive_version VALUES (?, ?, ?, ?, ?, ?)",
                        (c, seq, version, updated_at, day_from, archive_digest(meters)),
                    )
                    self._db.executemany(
                        "INSERT INTO archive_meter VALUES (?, ?, ?, ?, ?, ?)",
                        [(c, seq, *m) for m in meters],
                    )
                self._db.execute("DROP TABLE archive_meter_0")
                self._db.execute("DROP TABLE archive_version_0")
                log.info(
                    "%s: %d archive versions numbered in the order seen", self.path, len(versions)
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- facts in ------------------------------------------------------------------------------
    def apply(self, facts: Converted, required_values: Iterable[str]) -> None:
        """Record the coverage facts of a batch in one transaction (idempotent)."""
        if not (facts.reads or facts.failures or facts.archives):
            return
        required = frozenset(required_values)
        dirty = {r.day for r in facts.reads} | {f.day for f in facts.failures}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for a in facts.archives:
                    self._archive(a)
                self._db.executemany(
                    _UPSERT_READ,
                    [
                        (
                            r.concentrator,
                            r.meter,
                            r.day,
                            r.day_start,
                            r.read_at,
                            int(required <= r.values),
                            int(r.backfill),
                        )
                        for r in facts.reads
                    ],
                )
                self._db.executemany(
                    _UPSERT_FAILURE,
                    [
                        (f.concentrator, f.meter, f.day, f.reason, f.detail, f.reported_at)
                        for f in facts.failures
                    ],
                )
                self._db.executemany(_MARK_DIRTY, [(d,) for d in dirty])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _archive(self, a: ArchiveFact) -> None:
        """Record an archive unless it is one already seen (same version, stamp and meters: a
        retained or redelivered copy). Anything else is the concentrator's newest archive —
        also a version number that went back or came again with other meters (its state was
        wiped, or restored): that is logged, and the new content is in force from its day."""
        seen = self._db.execute(
            "SELECT 1 FROM archive_version"
            " WHERE concentrator = ? AND version = ? AND updated_at = ? AND digest = ?",
            (a.concentrator, a.version, a.updated_at, a.digest),
        ).fetchone()
        if seen:
            return
        newest = self._db.execute(
            "SELECT seq, version, day_from, digest FROM archive_version WHERE concentrator = ?"
            " ORDER BY seq DESC LIMIT 1",
            (a.concentrator,),
        ).fetchone()
        seq, day_from = 1, a.day_from
        if newest is not None:
            seq = newest[0] + 1
            # a stamp before the version it replaces (a clock set back) does not rewrite the
            # days that version judged
            day_from = max(a.day_from, newest[2])
            if a.version <= newest[1]:
                log.warning(
                    "archive of %s: version %d after version %d, %s meters: the concentrator's"
                    " archive was reset or restored? Taken as its newest, in force from %s",
                    a.concentrator,
                    a.version,
                    newest[1],
                    "same" if a.digest == newest[3] else "other",
                    day_from,
                )
        self._db.execute(
            "INSERT INTO archive_version VALUES (?, ?, ?, ?, ?, ?)",
            (a.concentrator, seq, a.version, a.updated_at, day_from, a.digest),
        )
        self._db.executemany(
            "INSERT INTO archive_meter VALUES (?, ?, ?, ?, ?, ?)",
            [(a.concentrator, seq, *m) for m in a.meters],
        )
        # in force from its day on; a concentrator's first archive also stands for every day
        # before it
        self._db.execute(_MARK_DIRTY_FROM, ("" if seq == 1 else day_from,))

    # --- days to recompute ---------------------------------------------------------------------
    def dirty_days(self) -> dict[str, int]:
        return {str(d): int(g) for d, g in self.rows("SELECT day, gen FROM dirty_day")}

    def clean(self, day: str, gen: int) -> None:
        """Forget a dirty mark unless the day changed again since `gen` was read."""
        with self._lock:
            self._db.execute("DELETE FROM dirty_day WHERE day = ? AND gen = ?", (day, gen))

    def known_days(self, until: str | None = None) -> list[str]:
        """Every data day the ledger has a read or a failure for, oldest first."""
        rows = self.rows(
            "SELECT day FROM daily_read WHERE day <= coalesce(?, day)"
            " UNION SELECT day FROM daily_failure WHERE day <= coalesce(?, day) ORDER BY 1",
            (until, until),
        )
        return [str(r[0]) for r in rows if _is_day(str(r[0]))]

    # --- published series (so a recomputation can zero what no longer applies) ---------------
    def published(self, day: str, measurement: str) -> set[str]:
        rows = self.rows(
            "SELECT series FROM published WHERE day = ? AND measurement = ?", (day, measurement)
        )
        return {str(r[0]) for r in rows}

    def set_published(self, day: str, measurement: str, series: Iterable[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "DELETE FROM published WHERE day = ? AND measurement = ?", (day, measurement)
            )
            self._db.executemany(
                "INSERT INTO published VALUES (?, ?, ?)", [(day, measurement, s) for s in series]
            )
            self._db.execute("COMMIT")

    # --- one coverage worker at a time ---------------------------------------------------------
    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold `name` for `seconds` unless another holder's lease is still running."""
        now = time.time()
        with self._lock:
            changed = self._db.execute(
                "INSERT INTO lease VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " holder = excluded.holder, until = excluded.until"
                " WHERE lease.holder = excluded.holder OR lease.until < ?",
                (name, holder, now + seconds, now),
            ).rowcount
        return bool(changed)

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (name, holder))


def _is_day(day: str) -> bool:
    """A calendar date coverage can work with. The consumer refuses anything else since it
    checks conversions, but a ledger written before may hold a `data_day` like 2026-02-30."""
    try:
        return FIRST_DAY <= dt.date.fromisoformat(day).isoformat() <= LAST_DAY
    except ValueError:
        return False


def day_offset(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()
