"""Per-instance durable store: batches InfluxDB has not accepted yet, and dead letters.

SQLite in WAL mode with ``synchronous=FULL``: once `put` returns, the batch survives a crash
or power loss, so the MQTT messages it came from may be acknowledged. Dead letters keep what
was refused (a payload that failed its schema, lines InfluxDB answered 4xx to) with the reason,
so nothing is dropped silently and an operator can look at or replay them.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import common.clock

__all__ = ["DeadLetter", "Spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    lines INTEGER NOT NULL,
    body BLOB NOT NULL              -- zlib of newline-joined line protocol
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,             -- 'schema' (payload refused) or 'influx' (lines refused)
    source TEXT NOT NULL,           -- topic, or the writer's name
    status INTEGER,                 -- HTTP status for 'influx'
    error TEXT NOT NULL,
    body BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    at: float
    kind: str
    source: str
    status: int | None
    error: str
    body: bytes


class Spool:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"{path}: SQLite integrity check failed: {check}")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- batches waiting for InfluxDB -----------------------------------------------------
    def put(self, lines: list[str]) -> None:
        body = zlib.compress("\n".join(lines).encode(), 1)
        with self._lock:
            self._db.execute(
                "INSERT INTO pending (created, lines, body) VALUES (?, ?, ?)",
                (common.clock.current().time(), len(lines), body),
            )

    def oldest(self) -> tuple[int, list[str]] | None:
        with self._lock:
            row = self._db.execute("SELECT id, body FROM pending ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), zlib.decompress(row[1]).decode().split("\n")

    def done(self, batch_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE id = ?", (batch_id,))

    def pending(self) -> tuple[int, int]:
        """(batches, lines) waiting."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*), coalesce(sum(lines), 0) FROM pending"
            ).fetchone()
        return int(row[0]), int(row[1])

    # --- dead letters ------------------------------------------------------------------------
    def dead(
        self, kind: str, source: str, error: str, body: bytes, status: int | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO dead_letter (at, kind, source, status, error, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (common.clock.current().time(), kind, source, status, error, body),
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, kind, source, status, error, body FROM dead_letter"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT kind, count(*) FROM dead_letter GROUP BY kind")
            return {str(k): int(n) for k, n in rows}

    def revive_dead(self, kind: str = "influx") -> tuple[int, int]:
        """Move the dead letters of `kind` back to the batches waiting for InfluxDB, for another
        attempt once their cause is fixed (a refusal that was the set-up's, not the lines').
        Only lines can go back: a refused payload (`schema`) is not line protocol. Returns
        (letters, lines) moved."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, body FROM dead_letter WHERE kind = ? ORDER BY id", (kind,)
                ).fetchall()
                moved = 0
                for _, body in rows:
                    n = body.count(b"\n") + 1
                    self._db.execute(
                        "INSERT INTO pending (created, lines, body) VALUES (?, ?, ?)",
                        (common.clock.current().time(), n, zlib.compress(body, 1)),
                    )
                    moved += n
                self._db.executemany(
                    "DELETE FROM dead_letter WHERE id = ?", [(row[0],) for row in rows]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows), moved
