"""The store interface every piece of central state goes through, and what both engines share.

A `Store` is one database connection (SQLite file or PostgreSQL) used from any thread, one
call at a time. Modules write SQL with ``?`` placeholders (translated for psycopg), mostly in
the subset both engines accept; where they differ a module picks its text by `Store.dialect`,
and `Dialect` gives the few expressions that differ (the database's clock, least/greatest).

- `Store.write(fn)` runs ``fn(tx)`` in one transaction and commits it. SQLite takes the write
  lock at the start (``BEGIN IMMEDIATE``: one writer per file); PostgreSQL runs at READ
  COMMITTED, and a module serialises what must be (``tx.lock(key)``: a transaction-scoped
  advisory lock). A transaction the engine aborted for another (deadlock, serialisation) and
  one cut by a lost connection are tried again, so ``fn`` must be idempotent — or look at what
  an earlier try committed.
- `Tx.upsert(...)`: rows in bulk, as fast as each engine takes them (SQLite: one prepared
  statement per row; PostgreSQL: one statement over arrays in the binary format, where a
  statement per row would cost the client ~40 µs of CPU each — bench/store.py).
- `Store.migrate(schema)`: a module's tables come as numbered migrations (`Schema`), applied in
  order, each recorded in the ``store_migration`` table, all under one lock so that instances
  starting together apply each once. A store migrated by a newer meterlink is refused.
- `Store.take_lease` / `release_lease`: one-at-a-time jobs across every instance and host, with
  an expiry on the database's clock (never the hosts' clocks, which differ).

Errors are typed: `StoreUnavailable` (down, unreachable, busy past the timeout: try again
later), `StoreTooNew`, and `StoreError` for the rest.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import common.clock
from central.store.url import Dialect, StoreURL

__all__ = [
    "SQL",
    "Migration",
    "Schema",
    "Store",
    "StoreError",
    "StoreTooNew",
    "StoreUnavailable",
    "Tx",
    "statements",
]

log = logging.getLogger("central.store")
T = TypeVar("T")
#: how a database error is handled: tried again (conflict), reported as unavailable, or an error
Kind = Literal["conflict", "unavailable", "error"]
#: tries of a transaction aborted for a concurrent one (deadlock, serialisation failure)
CONFLICT_TRIES = 8


class StoreError(Exception):
    """The store refused or could not do something; the message names the store."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or is busy right now (down, connection lost, locked past
    the timeout). Nothing of the failed call is committed, or it is and a retry changes
    nothing (writes are idempotent). Try again later."""


class StoreTooNew(StoreError):
    """The store's tables were migrated by a newer meterlink than this one."""


@dataclass(frozen=True)
class SQL:
    """The expressions that differ between the engines."""

    name: Dialect
    #: unix seconds (a float) on the database's clock
    now: str

    def least(self, a: str, b: str) -> str:
        return f"min({a}, {b})" if self.name == "sqlite" else f"LEAST({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})" if self.name == "sqlite" else f"GREATEST({a}, {b})"


SQLITE = SQL("sqlite", now="((julianday('now') - 2440587.5) * 86400.0)")
POSTGRESQL = SQL("postgresql", now="extract(epoch from clock_timestamp())::float8")

#: a migration step: SQL for both engines, SQL per engine, or Python (which may run SQL itself)
Step = str | Mapping[Dialect, str] | Callable[["Tx"], None]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Step


@dataclass(frozen=True)
class Schema:
    """A module's tables: its migrations, versions 1, 2, ... in order. Released migrations are
    never edited; a change is a new migration, written for both engines."""

    component: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.component}: migrations must be numbered 1..n, got {versions}")

    @property
    def latest(self) -> int:
        return len(self.migrations)


def statements(script: str) -> list[str]:
    """Split a script of SQL statements (no procedural bodies) at the semicolons that end them,
    as SQLite's own parser tells them (quotes and comments respected)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip().strip(";").strip():
                out.append(pending.strip())
            pending = ""
    if pending.strip():
        out.append(pending.strip())
    return [s for s in out if not all(ln.strip().startswith("--") for ln in s.splitlines())]


class Tx:
    """What a transaction's function gets: statements on the transaction's connection."""

    def __init__(self, store: Store, conn: Any) -> None:
        self._store = store
        self._conn = conn
        self.dialect: Dialect = store.dialect
        self.sql = store.sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        rowcount: int = self._store._execute(self._conn, sql, params).rowcount
        return rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._store._executemany(self._conn, sql, rows)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        result: list[tuple[Any, ...]] = self._store._execute(self._conn, sql, params).fetchall()
        return result

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._store._execute(self._conn, sql, params).fetchone()
        return row

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
    ) -> None:
        """Insert `rows` into `table` in bulk, with an optional ``ON CONFLICT ...`` clause (no
        parameters in it). No two rows may share a conflict key: merge them first. `types` are
        the columns' SQL types (``text``, ``bigint``, ``integer``, ``smallint``, ``double
        precision``), which PostgreSQL needs for its one-statement form."""
        if rows:
            self._store._upsert(self._conn, table, columns, types, rows, conflict)

    def script(self, sql: str) -> None:
        """Several statements without parameters (DDL), in this transaction."""
        for statement in statements(sql):
            self._store._execute(self._conn, statement, ())

    def lock(self, key: str) -> None:
        """Serialise the transactions that lock `key` until this one ends. (SQLite has one
        writer per file anyway: nothing to do there.)"""
        self._store._lock_key(self._conn, key)

    def table_exists(self, name: str) -> bool:
        return self._store._table_exists(self._conn, name)


_MIGRATION_TABLE = """
CREATE TABLE IF NOT EXISTS store_migration (
    component TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL,
    applied_at TEXT NOT NULL,  -- UTC, ISO 8601, the applying host's clock (a record only)
    applied_by TEXT NOT NULL,  -- the instance that applied it
    PRIMARY KEY (component, version)
)
"""

#: the store's own tables; every module's come through `Store.migrate` the same way
STORE_SCHEMA = Schema(
    "store",
    (
        Migration(
            1,
            "leases: one-at-a-time jobs across instances and hosts",
            {
                "sqlite": "CREATE TABLE IF NOT EXISTS store_lease (name TEXT PRIMARY KEY,"
                " holder TEXT NOT NULL, expires_at REAL NOT NULL)",
                "postgresql": 'CREATE TABLE IF NOT EXISTS store_lease (name TEXT COLLATE "C"'
                ' PRIMARY KEY, holder TEXT COLLATE "C" NOT NULL,'
                " expires_at DOUBLE PRECISION NOT NULL)",
            },
        ),
    ),
)


class Store(ABC):
    """One connection to the central store, shared by the threads of one process."""

    dialect: Dialect
    sql: SQL

    def __init__(self, url: StoreURL, name: str) -> None:
        self.url = url
        #: who this process is (leases, migration records, PostgreSQL's application_name)
        self.name = name
        self._lock = threading.RLock()
        self._conn: Any = None

    def __str__(self) -> str:
        return str(self.url)

    # --- engine hooks --------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _begin(self, conn: Any) -> None: ...

    @abstractmethod
    def _kind(self, exc: BaseException) -> Kind | None:
        """How to handle `exc`; None when it is no database error."""

    @abstractmethod
    def _broken(self, conn: Any) -> bool: ...

    @abstractmethod
    def _query(self, sql: str) -> str:
        """The statement as the driver takes it (placeholders)."""

    @abstractmethod
    def _executemany(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def _lock_key(self, conn: Any, key: str) -> None: ...

    @abstractmethod
    def _upsert(
        self,
        conn: Any,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None: ...

    @abstractmethod
    def _table_exists(self, conn: Any, name: str) -> bool: ...

    def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        return conn.execute(self._query(sql), tuple(params))

    # --- connection and errors -----------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to learn
                conn.close()

    def _run(self, fn: Callable[[Any], T], *, transaction: bool) -> T:
        """`fn(connection)`, in a transaction if asked; a connection found broken is opened
        again once, a transaction aborted for another is tried again."""
        with self._lock:
            conflicts = 0
            reconnected = False
            while True:
                fresh = self._conn is None
                conn = self._connection()
                try:
                    if not transaction:
                        return fn(conn)
                    self._begin(conn)
                    try:
                        result = fn(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if not self._broken(conn):
                            try:
                                conn.execute("ROLLBACK")
                            except Exception:
                                self._drop()
                        raise
                    return result
                except Exception as exc:
                    kind = self._kind(exc)
                    if kind is None:
                        raise
                    broken = self._conn is not None and self._broken(self._conn)
                    if broken:
                        self._drop()
                    if kind == "conflict" and conflicts < CONFLICT_TRIES:
                        conflicts += 1
                        time.sleep(random.uniform(0.005, 0.05) * conflicts)
                        continue
                    if broken and not fresh and not reconnected:
                        reconnected = True  # the server restarted since our last statement?
                        continue
                    cls = StoreUnavailable if kind in ("unavailable", "conflict") else StoreError
                    raise cls(f"store {self}: {type(exc).__name__}: {exc}") from exc

    # --- the interface -------------------------------------------------------------------------
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement on its own (a read, or a single-statement write)."""
        return self._run(lambda c: self._execute(c, sql, params).fetchall(), transaction=False)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement on its own; returns the number of rows it changed."""
        return self._run(lambda c: int(self._execute(c, sql, params).rowcount), transaction=False)

    def write(self, fn: Callable[[Tx], T]) -> T:
        """``fn(tx)`` in one transaction, committed when it returns (see the module's notes:
        it may run more than once)."""
        return self._run(lambda c: fn(Tx(self, c)), transaction=True)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- migrations ----------------------------------------------------------------------------
    def versions(self) -> dict[str, int]:
        """The version of every component's tables in this store."""

        def read(conn: Any) -> dict[str, int]:
            if not self._table_exists(conn, "store_migration"):
                return {}
            rows = self._execute(
                conn, "SELECT component, max(version) FROM store_migration GROUP BY component", ()
            ).fetchall()
            return {str(c): int(v) for c, v in rows}

        return self._run(read, transaction=False)

    def migrate(self, schema: Schema) -> None:
        """Bring `schema`'s tables to its latest version (nothing to do: one read, no lock)."""
        current = self.versions().get(schema.component, 0)
        self._check_not_newer(schema, current)
        if current == schema.latest:
            return

        def apply(tx: Tx) -> None:
            tx.lock("meterlink.store.migrate")
            tx.script(_MIGRATION_TABLE)
            row = tx.one(
                "SELECT max(version) FROM store_migration WHERE component = ?",
                (schema.component,),
            )
            done = int(row[0]) if row and row[0] is not None else 0
            self._check_not_newer(schema, done)
            for m in schema.migrations[done:]:
                if callable(m.apply):
                    m.apply(tx)
                else:
                    tx.script(m.apply if isinstance(m.apply, str) else m.apply[self.dialect])
                tx.execute(
                    "INSERT INTO store_migration"
                    " (component, version, description, applied_at, applied_by)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        schema.component,
                        m.version,
                        m.description,
                        common.clock.current().now().isoformat(timespec="seconds"),
                        self.name,
                    ),
                )
                log.info(
                    "store %s: %s tables at version %d: %s",
                    self,
                    schema.component,
                    m.version,
                    m.description,
                )

        self.write(apply)

    def _check_not_newer(self, schema: Schema, version: int) -> None:
        if version > schema.latest:
            raise StoreTooNew(
                f"store {self}: its {schema.component} tables are at version {version}, this"
                f" meterlink knows up to {schema.latest}: run the newer meterlink that migrated it"
            )

    # --- leases --------------------------------------------------------------------------------
    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold `name` for `seconds` (from now, on the database's clock) unless another
        holder's lease is still running; the holder renews by taking it again."""
        now = self.sql.now  # a constant expression of the dialect, never input
        changed = self.execute(
            "INSERT INTO store_lease (name, holder, expires_at)"  # noqa: S608
            f" VALUES (?, ?, {now} + ?) ON CONFLICT (name) DO UPDATE SET"
            " holder = excluded.holder, expires_at = excluded.expires_at"
            f" WHERE store_lease.holder = excluded.holder OR store_lease.expires_at < {now}",
            (name, holder, float(seconds)),
        )
        return bool(changed)

    def release_lease(self, name: str, holder: str) -> None:
        self.execute("DELETE FROM store_lease WHERE name = ? AND holder = ?", (name, holder))

    def lease_holder(self, name: str) -> str | None:
        """Who holds `name` now (None when nobody does or the lease ran out)."""
        rows = self.rows(
            f"SELECT holder FROM store_lease WHERE name = ? AND expires_at >= {self.sql.now}",  # noqa: S608
            (name,),
        )
        return str(rows[0][0]) if rows else None
