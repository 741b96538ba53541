"""Where the central store lives: `[store] url`, parsed and checked (no I/O, no driver).

- ``sqlite:///var/lib/meterlink/coverage.sqlite3`` (three slashes and an absolute path, as in
  ``file:`` URLs), ``sqlite:relative/path.sqlite3``, or a bare path: one SQLite file shared by the
  instances of one host.
- ``postgresql://user@host:5432/meterlink`` (or ``postgres://``): a PostgreSQL database shared
  by every host. libpq's query parameters pass through (``?sslmode=verify-full&sslrootcert=...``,
  ``?host=/run/postgresql`` for a Unix socket). The password never goes in the URL (a URL ends up
  in logs and process listings): it comes from ``[store] password``, better from the environment
  (``METERLINK_STORE_PASSWORD``), or from libpq's own ``PGPASSFILE`` / ``~/.pgpass``.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Dialect", "StoreURL", "parse_url"]

Dialect = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class StoreURL:
    dialect: Dialect
    #: SQLite: the file
    path: Path | None = None
    #: PostgreSQL: the URL as libpq takes it
    conninfo: str = ""

    def __str__(self) -> str:
        return f"sqlite:{self.path}" if self.dialect == "sqlite" else self.conninfo


def parse_url(url: str) -> StoreURL:
    """Raises `ValueError` saying what is wrong."""
    text = url.strip()
    if not text:
        raise ValueError("store url is empty")
    scheme, sep, rest = text.partition(":")
    if not sep or "/" in scheme or scheme.lower() not in ("sqlite", "postgresql", "postgres"):
        if "://" in text:
            raise ValueError(
                f"store url {url!r}: unknown scheme {scheme!r} (sqlite: or postgresql://)"
            )
        return StoreURL("sqlite", path=Path(text))  # a bare path: a SQLite file
    if scheme.lower() == "sqlite":
        if rest.startswith("//"):
            host, _, path = rest[2:].partition("/")
            if host:
                raise ValueError(
                    f"store url {url!r}: a SQLite file is local (sqlite:///absolute/path)"
                )
            path = "/" + path
        else:
            path = rest
        path = urllib.parse.unquote(path.split("?", 1)[0])
        if path in ("", "/"):
            raise ValueError(f"store url {url!r} names no file")
        return StoreURL("sqlite", path=Path(path))
    parts = urllib.parse.urlsplit(text)
    if parts.password is not None:
        raise ValueError(
            "store url: no password in the URL (it would be logged); set METERLINK_STORE_PASSWORD"
            " or [store] password, or use a ~/.pgpass file"
        )
    try:
        parts.port  # noqa: B018 (it checks the port)
    except ValueError:
        raise ValueError(f"store url {url!r}: the port is not a number 1..65535") from None
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ValueError(f"store url {url!r} names no database (postgresql://user@host:port/DB)")
    return StoreURL("postgresql", conninfo=text)
