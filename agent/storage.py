"""Trouble with the state directory's disk — full, over quota, read-only, failing — recognised in
one place, said once per episode, counted.

A concentrator's flash fills up (logs of another program, a huge outbox after weeks without a
broker). The agent must not die of it: a reading it cannot commit is not taken as read, so the
plans read it again once there is room, and nothing committed before is touched. `WATCH` is the
agent's one record of it: the first failed write of an episode is one error line naming the
directory and its free space, the next ones only count (`meterlink_storage_write_errors_total`),
and the first write that succeeds again ends the episode with one line.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
_SQLITE = ("database or disk is full", "disk i/o error", "readonly database")
HINT = "free space there, or point agent.state_dir at a disk with room"


class StorageFull(RuntimeError):
    """A write to the state directory failed for lack of room (or a read-only / failing disk).
    What the write carried is not stored; the caller treats it as not done."""


def storage_problem(exc: BaseException) -> str | None:
    """What `exc` (or an error that caused it) says about the disk, or None if it is not about
    the disk: no space, no quota, read-only, I/O error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _ERRNOS:
            return seen.strerror or str(seen)
        if isinstance(seen, sqlite3.Error) and any(m in str(seen).lower() for m in _SQLITE):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def free_space(path: Path) -> str:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return f"free space unknown: {exc.strerror}"
    return f"{st.f_bavail * st.f_frsize} bytes free of {st.f_blocks * st.f_frsize}"


class StorageWatch:
    """Failed and recovered writes to the state directory (thread-safe: the outbox writes from
    its own thread)."""

    def __init__(self) -> None:
        self.state_dir = Path(".")
        self.write_errors = 0
        self.full = False
        self._failed_in_episode = 0
        self._lock = threading.Lock()

    def failed(self, what: str, exc: BaseException) -> StorageFull | None:
        """Record a failed write of `what` if `exc` is disk trouble; returns the error to raise
        instead (None: not disk trouble, let `exc` go on)."""
        problem = storage_problem(exc)
        if problem is None:
            return None
        with self._lock:
            self.write_errors += 1
            self._failed_in_episode += 1
            first = not self.full
            self.full = True
        message = f"state directory {self.state_dir}: no room to store {what}: {problem}"
        if first:
            log.error(
                "%s (%s); what is not stored is not taken as read and is read again once there"
                " is room; %s",
                message,
                free_space(self.state_dir),
                HINT,
            )
        return StorageFull(message)

    def ok(self) -> None:
        """A write succeeded: ends an episode of failures."""
        if not self.full:
            return
        with self._lock:
            failed, self._failed_in_episode, self.full = self._failed_in_episode, 0, False
        log.warning(
            "state directory %s: writes succeed again (%d failed while it had no room; %s)",
            self.state_dir,
            failed,
            free_space(self.state_dir),
        )


WATCH = StorageWatch()
"""The agent's one record (the daemon points it at its state directory)."""
