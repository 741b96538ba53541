"""The PostgreSQL store: one database shared by every central host (psycopg 3, libpq).

Statements run in autocommit; `Store.write` opens an explicit transaction at READ COMMITTED.
What must be serialised across hosts takes a transaction-scoped advisory lock (`Tx.lock`). A
connection the server dropped (restart, failover, network) is opened again on the next call;
libpq's TCP keepalives notice a peer that vanished within about a minute. Text columns are
declared ``COLLATE "C"``: ordering and comparisons are bytewise, as in SQLite, whatever the
database's locale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from central.store.base import POSTGRESQL, Kind, Store, StoreError, StoreUnavailable
from central.store.url import StoreURL
from common.config import Secret

__all__ = ["PostgresStore"]

#: libpq settings this store chooses unless the URL sets them
_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` -> ``%s`` (the store's SQL has no ``?`` inside literals), a literal ``%`` doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


def advisory_key(key: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_xact_lock`."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), signed=True)


class PostgresStore(Store):
    dialect = "postgresql"
    sql = POSTGRESQL

    def __init__(
        self, url: StoreURL, name: str, *, password: Secret | None, connect_timeout_s: float
    ) -> None:
        super().__init__(url, name)
        self._password = password
        self._connect_timeout_s = connect_timeout_s

    def _connect(self) -> Any:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as exc:  # psycopg without a libpq to load
            raise StoreError(
                f"store {self}: the PostgreSQL driver cannot load ({exc}): install libpq"
                " (Debian: apt-get install libpq5) or pip install 'psycopg[binary]'"
            ) from exc
        given = conninfo_to_dict(self.url.conninfo)
        extra: dict[str, Any] = {k: v for k, v in _DEFAULTS.items() if k not in given}
        extra.setdefault("application_name", self.name[:63])
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(2, round(self._connect_timeout_s))
        if self._password is not None:
            extra["password"] = self._password.reveal()
        if "application_name" in given:
            del extra["application_name"]
        try:
            return psycopg.connect(self.url.conninfo, autocommit=True, **extra)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"store {self}: cannot connect: {exc}".strip()) from exc

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def _kind(self, exc: BaseException) -> Kind | None:
        import psycopg
        from psycopg import errors

        if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
            return "conflict"
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return "unavailable"
        if isinstance(exc, psycopg.Error):
            return "error"
        return None

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _query(self, sql: str) -> str:
        return _placeholders(sql)

    def _executemany(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(_placeholders(sql), rows)

    def _upsert(
        self,
        conn: Any,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None:
        """One statement: the columns as arrays (binary format), unnested into rows."""
        if len(types) != len(columns):
            raise ValueError(f"{table}: {len(columns)} columns but {len(types)} types")
        arrays = ", ".join(f"%b::{t}[]" for t in types)
        # table, columns, types and clause are the calling module's constants, never input
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"  # noqa: S608
            f" {conflict.replace('%', '%%')}"
        )
        conn.execute(sql, [list(column) for column in zip(*rows, strict=True)])

    def _lock_key(self, conn: Any, key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(key),))

    def _table_exists(self, conn: Any, name: str) -> bool:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row[0])
