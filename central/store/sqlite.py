"""The SQLite store: one file in WAL mode shared by the instances of one host (the default:
nothing to set up). One writer at a time per file (``BEGIN IMMEDIATE``); readers never wait."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from central.store.base import SQLITE, Kind, Store, StoreError, StoreUnavailable
from central.store.url import StoreURL

__all__ = ["SqliteStore"]

#: how long a statement waits for another process's write lock before the store is "busy"
BUSY_TIMEOUT_S = 30.0


class SqliteStore(Store):
    dialect = "sqlite"
    sql = SQLITE

    def __init__(self, url: StoreURL, name: str) -> None:
        assert url.path is not None
        super().__init__(url, name)
        self.path = url.path

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"store {self}: cannot open: {exc}") from exc
        try:
            self._wal(db)
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            db.close()
            cls = StoreUnavailable if self._kind(exc) == "unavailable" else StoreError
            raise cls(f"store {self}: cannot open: {exc}") from exc
        return db

    def _wal(self, db: sqlite3.Connection) -> None:
        """WAL mode (once per file). Instances opening a new file together can be refused at
        once, busy timeout or not (SQLite does not wait there): try again, as long as it would
        have waited."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if self._kind(exc) != "unavailable" or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _kind(self, exc: BaseException) -> Kind | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return "unavailable"
        return "error"

    def _broken(self, conn: Any) -> bool:
        return False

    def _query(self, sql: str) -> str:
        return sql

    def _executemany(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)

    def _upsert(
        self,
        conn: Any,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None:
        marks = ", ".join("?" * len(columns))
        # table, columns and clause are the calling module's constants, never input
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {conflict}"  # noqa: S608
        conn.executemany(sql, rows)

    def _lock_key(self, conn: Any, key: str) -> None:
        """The transaction already holds the file's write lock."""

    def _table_exists(self, conn: Any, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None
