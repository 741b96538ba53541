"""The nonces of accepted commands, on disk: a command cannot be replayed after an agent restart.

The freshness rule (`protocols.commands`) accepts a command whose `issued_at` is within ±300 s of
the agent's clock, and the nonce memory refuses one whose nonce was seen in the last 600 s. Kept
in RAM only, that memory was empty after a restart (a power cut, an update), so a captured
command could be replayed once within those 5 minutes. Here it lives in a small SQLite file in
the state directory, written (synchronously, FULL) before the command runs.

Time is the wall clock (epoch seconds): a monotonic clock restarts with the process. A clock
that jumps back keeps nonces longer (safe); one that jumps forward forgets them early, but then
the same jump makes their commands stale for the freshness check.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.storage import WATCH
from protocols.commands import NONCE_TTL_S, CommandRejected

__all__ = ["PersistentNonces"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonce (nonce TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonce_seen_at ON nonce (seen_at);
"""


class PersistentNonces:
    """Same contract as `protocols.commands.NonceCache` (`check_and_remember`), durable.

    Bounded: when `capacity` live nonces are held, new commands are refused (fail closed)."""

    def __init__(self, path: Path, *, ttl_s: float = NONCE_TTL_S, capacity: int = 65536) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # remembered before the command runs
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM nonce").fetchone()[0])

    def check_and_remember(self, nonce: object, *, now: float) -> None:
        """Raise `CommandRejected` if `nonce` was seen within the TTL; remember it otherwise.
        `now`: epoch seconds."""
        if not isinstance(nonce, str) or not nonce:
            raise CommandRejected("nonce missing")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM nonce WHERE seen_at <= ?", (now - self.ttl_s,))
            if db.execute("SELECT 1 FROM nonce WHERE nonce = ?", (nonce,)).fetchone():
                raise CommandRejected("nonce already used")
            if len(self) >= self.capacity:
                raise CommandRejected("too many recent commands to track their nonces")
            db.execute("INSERT INTO nonce (nonce, seen_at) VALUES (?, ?)", (nonce, now))
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            full = WATCH.failed("a command's nonce", exc)
            if full is None:
                raise
            # fail closed: a nonce not on disk could be replayed after a restart
            raise CommandRejected(f"cannot remember the nonce, so not run: {full}") from exc
        WATCH.ok()
