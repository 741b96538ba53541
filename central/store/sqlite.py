"""The SQLite store: one file in WAL mode shared by the instances of one host (the default:
nothing to set up). One writer at a time per file (``BEGIN IMMEDIATE``); readers never wait."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from central.store.base import SQLITE, Kind, Store
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            db.close()
            raise
        return db

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
