"""The central store: every piece of state the central side shares between its instances and
hosts — the coverage ledger today, top-up orders, tariff checks and panel users as they come —
behind one small interface (`Store`) with two engines:

- SQLite (the default): one file on one host, nothing to set up; the instances of that host
  share it.
- PostgreSQL: one database for several hosts.

`open_store` picks the engine from `[store] url` (see `central.store.url`). A module declares
its tables as a `Schema` of numbered migrations for both engines and calls `Store.migrate` when
it opens; docs/coverage.md ("The store") says how to add one.
"""

from __future__ import annotations

from pathlib import Path

from central.store.base import (
    SQL,
    STORE_SCHEMA,
    Migration,
    Schema,
    Store,
    StoreError,
    StoreTooNew,
    StoreUnavailable,
    Tx,
)
from central.store.url import Dialect, StoreURL, parse_url
from common.config import Secret

__all__ = [
    "SQL",
    "Dialect",
    "Migration",
    "Schema",
    "Store",
    "StoreError",
    "StoreTooNew",
    "StoreURL",
    "StoreUnavailable",
    "Tx",
    "open_store",
    "parse_url",
]


def open_store(
    url: str | Path,
    *,
    password: Secret | None = None,
    connect_timeout_s: float = 10.0,
    name: str = "meterlink",
) -> Store:
    """Connect to the store at `url` (a `Path` is a SQLite file) and bring the store's own
    tables up to date. `name` says who this process is (leases, migration records, PostgreSQL's
    application_name). Raises `StoreUnavailable` when it cannot be reached."""
    where = StoreURL("sqlite", path=url) if isinstance(url, Path) else parse_url(url)
    store: Store
    if where.dialect == "sqlite":
        from central.store.sqlite import SqliteStore

        store = SqliteStore(where, name)
    else:
        from central.store.postgres import PostgresStore

        store = PostgresStore(where, name, password=password, connect_timeout_s=connect_timeout_s)
    try:
        store.migrate(STORE_SCHEMA)
    except BaseException:
        store.close()
        raise
    return store
