"""The storage watch (agent/storage.py) and what the stores do with a disk that has no room.
The real thing — a tmpfs filled under the real agent — is tests/agent/test_disk_full.py."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.nonces import PersistentNonces
from agent.state import PlanState
from agent.storage import StorageFull, StorageWatch, storage_problem
from protocols.commands import CommandRejected

FULL = sqlite3.OperationalError("database or disk is full")


def test_disk_trouble_is_recognised_and_nothing_else() -> None:
    assert storage_problem(OSError(errno.ENOSPC, "No space left on device")) == (
        "No space left on device"
    )
    assert storage_problem(OSError(errno.EROFS, "Read-only file system")) is not None
    assert storage_problem(FULL) == "database or disk is full"
    assert storage_problem(sqlite3.OperationalError("disk I/O error")) is not None
    wrapped = RuntimeError("outbox write")
    wrapped.__cause__ = FULL
    assert storage_problem(wrapped) == "database or disk is full"  # through the cause
    assert storage_problem(sqlite3.OperationalError("database is locked")) is None
    assert storage_problem(OSError(errno.ECONNREFUSED, "refused")) is None
    assert storage_problem(ValueError("bad")) is None


def test_one_line_per_episode_every_failure_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watch = StorageWatch()
    watch.state_dir = tmp_path
    caplog.set_level(logging.INFO, logger="agent.storage")
    assert watch.failed("outbox readings", ValueError("not the disk")) is None
    for _ in range(3):
        full = watch.failed("outbox readings", FULL)
        assert isinstance(full, StorageFull)
    assert (watch.write_errors, watch.full) == (3, True)
    watch.ok()
    watch.ok()
    assert watch.failed("plan state", FULL) is not None
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["ERROR", "WARNING", "ERROR"]
    assert lines[0][1].startswith(f"state directory {tmp_path}: no room to store outbox readings")
    assert "bytes free of" in lines[0][1]
    assert "writes succeed again (3 failed" in lines[1][1]
    assert watch.write_errors == 4


class _FullOnCommit:
    """A connection whose disk fills up: every COMMIT fails as SQLite says it then."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.strip().upper() == "COMMIT" or sql.lstrip().upper().startswith("INSERT"):
            raise FULL
        return self.conn.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


def test_a_nonce_that_cannot_be_stored_refuses_the_command(tmp_path: Path) -> None:
    nonces = PersistentNonces(tmp_path / "nonces.sqlite")
    try:
        nonces.check_and_remember("n-1", now=1000.0)
        nonces._db = _FullOnCommit(nonces._db)  # type: ignore[assignment]
        with pytest.raises(CommandRejected, match="cannot remember the nonce, so not run"):
            nonces.check_and_remember("n-2", now=1001.0)
        with pytest.raises(CommandRejected, match="nonce already used"):
            nonces.check_and_remember("n-1", now=1002.0)  # a replay is still a replay
    finally:
        nonces.close()


def test_the_plan_state_lags_when_the_disk_is_full(tmp_path: Path) -> None:
    state = PlanState(tmp_path / "state.sqlite")
    day, at = dt.date(2026, 12, 3), dt.datetime(2026, 12, 3, 1, 0)
    try:
        state.record(day, "m1", ok=True, at=at)
        state._db = _FullOnCommit(state._db)  # type: ignore[assignment]
        state.record(day, "m2", ok=True, at=at)  # dropped, said by the watch: no exception
        state.set_mark("daily_final", day.isoformat())
        assert {m: s.status for m, s in state.day(day).items()} == {"m1": "read"}
        assert state.mark("daily_final") is None  # m2 is read again; the final report again
    finally:
        state.close()
