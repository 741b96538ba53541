"""The coverage ledger: the durable facts coverage is computed from, shared by every instance.

Kept in the central store (`central.store`): a SQLite file the instances of one host share, or
one PostgreSQL database for several hosts. Each consumer applies the facts of a batch in one
transaction *before* it acknowledges the batch's MQTT messages, so the ledger never misses a
fact the broker forgot. Every write is an idempotent upsert keyed by what the fact is about, so
duplicates, replays and two instances seeing the same archive change nothing. See
docs/coverage.md for why a ledger and not one process's memory.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from central.points import FIRST_DAY, LAST_DAY, ArchiveFact, Converted, archive_digest
from central.store import Migration, Schema, Store, Tx, open_store

__all__ = ["SCHEMA", "Ledger", "day_offset"]

log = logging.getLogger(__name__)

# --- tables --------------------------------------------------------------------------------------
_V1_SQLITE = """
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
"""
#: the same tables; text compares bytewise (COLLATE "C") as in SQLite, whatever the locale
_V1_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS archive_version (
    concentrator TEXT COLLATE "C" NOT NULL, seq INTEGER NOT NULL,
    version BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    day_from TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (concentrator, seq)
);
CREATE TABLE IF NOT EXISTS archive_meter (
    concentrator TEXT COLLATE "C" NOT NULL, seq INTEGER NOT NULL, meter TEXT COLLATE "C" NOT NULL,
    district TEXT COLLATE "C" NOT NULL, manufacturer TEXT COLLATE "C" NOT NULL,
    bus TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (concentrator, seq, meter)
);
CREATE TABLE IF NOT EXISTS daily_read (
    concentrator TEXT COLLATE "C" NOT NULL, meter TEXT COLLATE "C" NOT NULL,
    day TEXT COLLATE "C" NOT NULL, day_start BIGINT NOT NULL, read_at BIGINT NOT NULL,
    complete SMALLINT NOT NULL, backfill SMALLINT NOT NULL,
    PRIMARY KEY (concentrator, meter, day)
);
CREATE INDEX IF NOT EXISTS daily_read_day ON daily_read (day);
CREATE TABLE IF NOT EXISTS daily_failure (
    concentrator TEXT COLLATE "C" NOT NULL, meter TEXT COLLATE "C" NOT NULL,
    day TEXT COLLATE "C" NOT NULL, reason TEXT COLLATE "C" NOT NULL,
    detail TEXT COLLATE "C" NOT NULL, reported_at BIGINT NOT NULL,
    PRIMARY KEY (concentrator, meter, day)
);
CREATE INDEX IF NOT EXISTS daily_failure_day ON daily_failure (day);
CREATE TABLE IF NOT EXISTS dirty_day (day TEXT COLLATE "C" PRIMARY KEY, gen BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS published (
    day TEXT COLLATE "C" NOT NULL, measurement TEXT COLLATE "C" NOT NULL,
    series TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (day, measurement, series)
);
"""


def _v1(tx: Tx) -> None:
    """The ledger as 0.1 kept it. A SQLite ledger from before the store (no version table)
    already has these tables and keeps them with its data (``IF NOT EXISTS``); one from before
    archives were kept in the order seen has its archives numbered first; the ledger's own
    lease table goes (leases are the store's now)."""
    if tx.dialect == "sqlite":
        _number_archives_in_order_seen(tx)
        tx.script(_V1_SQLITE)
        tx.execute("DROP TABLE IF EXISTS lease")
    else:
        tx.script(_V1_POSTGRESQL)


def _number_archives_in_order_seen(tx: Tx) -> None:
    """Ledgers written before archives were kept in the order seen (they were keyed by their
    version, so a concentrator restarting at version 1 went unnoticed): number them in version
    order, which leaves every day the version it had."""
    columns = {r[1] for r in tx.rows("PRAGMA table_info(archive_version)")}
    if not columns or "seq" in columns:
        return
    tx.execute("ALTER TABLE archive_version RENAME TO archive_version_0")
    tx.execute("ALTER TABLE archive_meter RENAME TO archive_meter_0")
    tx.script(_V1_SQLITE.split("CREATE TABLE IF NOT EXISTS daily_read")[0])
    versions = tx.rows(
        "SELECT concentrator, version, updated_at, day_from FROM archive_version_0"
        " ORDER BY concentrator, version"
    )
    seqs: dict[str, int] = {}
    for c, version, updated_at, day_from in versions:
        seq = seqs[c] = seqs.get(c, 0) + 1
        meters = tuple(
            (str(m), str(d), str(f), str(b))
            for m, d, f, b in tx.rows(
                "SELECT meter, district, manufacturer, bus FROM archive_meter_0"
                " WHERE concentrator = ? AND version = ?",
                (c, version),
            )
        )
        tx.execute(
            _INSERT_ARCHIVE,
            (c, seq, version, updated_at, day_from, archive_digest(meters)),
        )
        tx.executemany(
            _INSERT_METER,
            [(c, seq, *m) for m in meters],
        )
    tx.execute("DROP TABLE archive_meter_0")
    tx.execute("DROP TABLE archive_version_0")
    log.info("ledger: %d archive versions numbered in the order seen", len(versions))


def _v2(tx: Tx) -> None:
    """Each archived meter's model and tariff plan (both "" where the archive has none)."""
    if tx.dialect == "sqlite":
        columns = {r[1] for r in tx.rows("PRAGMA table_info(archive_meter)")}
        for column in ("model", "tariff_plan"):
            if column not in columns:
                tx.execute(
                    f"ALTER TABLE archive_meter ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                )
    else:
        tx.script(
            """ALTER TABLE archive_meter ADD COLUMN IF NOT EXISTS model TEXT COLLATE "C" NOT NULL
            DEFAULT '';
            ALTER TABLE archive_meter ADD COLUMN IF NOT EXISTS tariff_plan TEXT COLLATE "C"
            NOT NULL DEFAULT '';"""
        )


#: the coverage ledger's tables in the store; a change is a new migration, for both engines
SCHEMA = Schema(
    "coverage",
    (
        Migration(
            1,
            "coverage ledger: archives in the order seen, daily reads and failures, dirty days,"
            " published series",
            _v1,
        ),
        Migration(2, "archive: each meter's model and tariff plan", _v2),
    ),
)

_INSERT_ARCHIVE = """
INSERT INTO archive_version (concentrator, seq, version, updated_at, day_from, digest)
VALUES (?, ?, ?, ?, ?, ?)
"""
_INSERT_METER = """
INSERT INTO archive_meter (concentrator, seq, meter, district, manufacturer, bus)
VALUES (?, ?, ?, ?, ?, ?)
"""
_READ = ("concentrator", "meter", "day", "day_start", "read_at", "complete", "backfill")
_READ_TYPES = ("text", "text", "text", "bigint", "bigint", "smallint", "smallint")
_READ_CONFLICT = """
ON CONFLICT (concentrator, meter, day) DO UPDATE SET
    read_at = {earliest},
    complete = {complete},
    backfill = {backfill}
"""
_FAILURE = ("concentrator", "meter", "day", "reason", "detail", "reported_at")
_FAILURE_TYPES = ("text", "text", "text", "text", "text", "bigint")
_FAILURE_CONFLICT = """
ON CONFLICT (concentrator, meter, day) DO UPDATE SET
    reason = excluded.reason, detail = excluded.detail, reported_at = excluded.reported_at
WHERE excluded.reported_at >= daily_failure.reported_at
"""
_DIRTY_CONFLICT = "ON CONFLICT (day) DO UPDATE SET gen = dirty_day.gen + 1"
_METER = ("concentrator", "seq", "meter", "district", "manufacturer", "bus", "model",
          "tariff_plan")  # fmt: skip
_METER_TYPES = ("text", "integer", "text", "text", "text", "text", "text", "text")
#: every day with data from ? on (the days a new archive version can change)
_MARK_DIRTY_FROM = """
INSERT INTO dirty_day (day, gen)
SELECT day, 1 FROM (
    SELECT day FROM daily_read WHERE day >= ? UNION SELECT day FROM daily_failure WHERE day >= ?
) AS changed WHERE true
ON CONFLICT (day) DO UPDATE SET gen = dirty_day.gen + 1
"""


class Ledger:
    """The coverage facts in a `Store`. Given a `Path`, it opens (and on `close` closes) a
    SQLite store of its own there."""

    def __init__(self, store: Store | Path) -> None:
        self._owned = isinstance(store, Path)
        self.store = open_store(store) if isinstance(store, Path) else store
        try:
            self.store.migrate(SCHEMA)
        except BaseException:
            if self._owned:
                self.store.close()
            raise
        sql = self.store.sql
        self._read_conflict = _READ_CONFLICT.format(
            earliest=sql.least("daily_read.read_at", "excluded.read_at"),
            complete=sql.greatest("daily_read.complete", "excluded.complete"),
            backfill=sql.least("daily_read.backfill", "excluded.backfill"),
        )

    def close(self) -> None:
        if self._owned:
            self.store.close()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store.rows(sql, params)

    # --- facts in ------------------------------------------------------------------------------
    def apply(self, facts: Converted, required_values: Iterable[str]) -> None:
        """Record the coverage facts of a batch in one transaction (idempotent)."""
        if not (facts.reads or facts.failures or facts.archives):
            return
        required = frozenset(required_values)
        # one row per key, as the upserts one after the other would leave it (a bulk upsert
        # takes a key once); in key order, so two hosts lock overlapping rows in one order
        reads: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        row: tuple[Any, ...]
        for r in facts.reads:
            row = (r.concentrator, r.meter, r.day, r.day_start, r.read_at,
                   int(required <= r.values), int(r.backfill))  # fmt: skip
            old = reads.get(row[:3])
            reads[row[:3]] = row if old is None else (
                *old[:4], min(old[4], row[4]), max(old[5], row[5]), min(old[6], row[6])
            )  # fmt: skip
        failures: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        for f in facts.failures:
            row = (f.concentrator, f.meter, f.day, f.reason, f.detail, f.reported_at)
            old = failures.get(row[:3])
            if old is None or row[5] >= old[5]:  # the latest round's reason
                failures[row[:3]] = row
        dirty = sorted({r.day for r in facts.reads} | {f.day for f in facts.failures})
        concentrators = sorted({a.concentrator for a in facts.archives})

        def write(tx: Tx) -> None:
            for c in concentrators:  # one archive decision per concentrator at a time
                tx.lock(f"ledger.archive:{c}")
            changed_from = [self._archive(tx, a) for a in facts.archives]
            tx.upsert("daily_read", _READ, _READ_TYPES, [reads[k] for k in sorted(reads)],
                      self._read_conflict)  # fmt: skip
            tx.upsert("daily_failure", _FAILURE, _FAILURE_TYPES,
                      [failures[k] for k in sorted(failures)], _FAILURE_CONFLICT)  # fmt: skip
            tx.upsert("dirty_day", ("day", "gen"), ("text", "bigint"), [(d, 1) for d in dirty],
                      _DIRTY_CONFLICT)  # fmt: skip
            for day_from in changed_from:
                if day_from is not None:
                    tx.execute(_MARK_DIRTY_FROM, (day_from, day_from))

        self.store.write(write)

    def _archive(self, tx: Tx, a: ArchiveFact) -> str | None:
        """Record an archive unless it is one already seen (same version, stamp and meters: a
        retained or redelivered copy). Anything else is the concentrator's newest archive —
        also a version number that went back or came again with other meters (its state was
        wiped, or restored): that is logged, and the new content is in force from its day.
        Returns the first day whose coverage it can change (None: nothing recorded)."""
        seen = tx.one(
            "SELECT 1 FROM archive_version"
            " WHERE concentrator = ? AND version = ? AND updated_at = ? AND digest = ?",
            (a.concentrator, a.version, a.updated_at, a.digest),
        )
        if seen:
            return None
        newest = tx.one(
            "SELECT seq, version, day_from, digest FROM archive_version WHERE concentrator = ?"
            " ORDER BY seq DESC LIMIT 1",
            (a.concentrator,),
        )
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
        tx.execute(
            _INSERT_ARCHIVE,
            (a.concentrator, seq, a.version, a.updated_at, day_from, a.digest),
        )
        extras = a.extras or (("", ""),) * len(a.meters)
        tx.upsert(
            "archive_meter",
            _METER,
            _METER_TYPES,
            [(a.concentrator, seq, *m, *e) for m, e in zip(a.meters, extras, strict=True)],
        )
        # in force from its day on; a concentrator's first archive also stands for every day
        # before it
        return "" if seq == 1 else day_from

    # --- days to recompute ---------------------------------------------------------------------
    def dirty_days(self) -> dict[str, int]:
        return {str(d): int(g) for d, g in self.rows("SELECT day, gen FROM dirty_day")}

    def clean(self, day: str, gen: int) -> None:
        """Forget a dirty mark unless the day changed again since `gen` was read."""
        self.store.execute("DELETE FROM dirty_day WHERE day = ? AND gen = ?", (day, gen))

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
        rows = [(day, measurement, s) for s in sorted(series)]

        def write(tx: Tx) -> None:
            tx.execute(
                "DELETE FROM published WHERE day = ? AND measurement = ?", (day, measurement)
            )
            tx.executemany(
                "INSERT INTO published (day, measurement, series) VALUES (?, ?, ?)", rows
            )

        self.store.write(write)

    # --- one coverage worker at a time (the store's leases) ------------------------------------
    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold `name` for `seconds` unless another holder's lease is still running."""
        return self.store.take_lease(name, holder, seconds)

    def release_lease(self, name: str, holder: str) -> None:
        self.store.release_lease(name, holder)


def _is_day(day: str) -> bool:
    """A calendar date coverage can work with. The consumer refuses anything else since it
    checks conversions, but a ledger written before may hold a `data_day` like 2026-02-30."""
    try:
        return FIRST_DAY <= dt.date.fromisoformat(day).isoformat() <= LAST_DAY
    except ValueError:
        return False


def day_offset(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()
