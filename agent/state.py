"""Plan state that must survive restarts: which meter was read for which data day, and the
last known clock offset of each meter. A small SQLite file (WAL) next to the outbox; the agent's
event loop is its only writer. Readings themselves never live here — they go to the outbox."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.storage import WATCH

__all__ = ["DayStatus", "PlanState"]

_SCHEMA = [
    # version 1
    """
    CREATE TABLE daily (
        day TEXT NOT NULL, meter TEXT NOT NULL, status TEXT NOT NULL,
        reason TEXT, detail TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt TEXT, PRIMARY KEY (day, meter)
    );
    CREATE TABLE clock (meter TEXT PRIMARY KEY, offset_s REAL NOT NULL, measured_at TEXT NOT NULL);
    CREATE TABLE marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # version 2: the newest daily forward energy of each meter, to catch a meter that lies
    """
    CREATE TABLE energy (meter TEXT PRIMARY KEY, data_time TEXT NOT NULL, total REAL NOT NULL);
    """,
    # version 3: a rejection that can never pass (e.g. "no such data" from a meter without
    # daily freezes) settles the meter's day: it is not tried again that day
    """
    ALTER TABLE daily ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
    """,
]


@dataclass(frozen=True)
class DayStatus:
    meter: str
    status: str  # "read" | "failed"
    reason: str | None
    detail: str | None
    attempts: int
    last_attempt: dt.datetime | None
    settled: bool = False
    """failed with a rejection that cannot pass: not tried again this day"""


class PlanState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for step, script in enumerate(_SCHEMA[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={step}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """One statement that changes the state. No room on the disk is said once by the
        storage watch and the change is dropped: the state only lags (a meter read again, a
        mark set again), nothing read is lost, and the plans go on."""
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            if WATCH.failed("plan state", exc) is None:
                raise
        else:
            WATCH.ok()

    def day(self, day: dt.date) -> dict[str, DayStatus]:
        rows = self._db.execute(
            "SELECT meter, status, reason, detail, attempts, last_attempt, settled FROM daily"
            " WHERE day=?",
            (day.isoformat(),),
        )
        return {
            r[0]: DayStatus(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                dt.datetime.fromisoformat(r[5]) if r[5] else None,
                bool(r[6]),
            )
            for r in rows
        }

    def read_days(self, meter_days: list[dt.date]) -> dict[dt.date, set[str]]:
        out: dict[dt.date, set[str]] = {d: set() for d in meter_days}
        for d in meter_days:
            out[d] = {
                r[0]
                for r in self._db.execute(
                    "SELECT meter FROM daily WHERE day=? AND status='read'", (d.isoformat(),)
                )
            }
        return out

    def record(
        self,
        day: dt.date,
        meter: str,
        *,
        ok: bool,
        at: dt.datetime,
        reason: str | None = None,
        detail: str | None = None,
        attempted: bool = True,
        settled: bool = False,
    ) -> None:
        self._write(
            """INSERT INTO daily (day, meter, status, reason, detail, attempts, last_attempt,
                                  settled)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (day, meter) DO UPDATE SET status=excluded.status,
                 reason=excluded.reason, detail=excluded.detail,
                 attempts=daily.attempts + excluded.attempts,
                 last_attempt=COALESCE(excluded.last_attempt, daily.last_attempt),
                 settled=excluded.settled
               WHERE daily.status != 'read'""",
            (
                day.isoformat(),
                meter,
                "read" if ok else "failed",
                reason,
                detail,
                int(attempted),
                at.isoformat() if attempted else None,
                int(settled),
            ),
        )

    def energy(self, meter: str) -> tuple[dt.datetime, float] | None:
        row = self._db.execute(
            "SELECT data_time, total FROM energy WHERE meter=?", (meter,)
        ).fetchone()
        return None if row is None else (dt.datetime.fromisoformat(row[0]), float(row[1]))

    def set_energy(self, meter: str, data_time: dt.datetime, total: float) -> None:
        """Keep the newest (by data time) daily forward energy total of a meter."""
        self._write(
            """INSERT INTO energy (meter, data_time, total) VALUES (?, ?, ?)
               ON CONFLICT (meter) DO UPDATE SET data_time=excluded.data_time, total=excluded.total
               WHERE excluded.data_time > energy.data_time""",
            (meter, data_time.isoformat(), total),
        )

    def forget_read(self, day: dt.date, meter: str) -> None:
        """A reading of this day left the outbox without being delivered (disk budget): make
        the day eligible for backfill again."""
        self._write(
            "UPDATE daily SET status='failed', reason='not_attempted',"
            " detail='evicted from the outbox', settled=0 WHERE day=? AND meter=?",
            (day.isoformat(), meter),
        )

    def prune(self, keep_after: dt.date) -> None:
        self._write("DELETE FROM daily WHERE day < ?", (keep_after.isoformat(),))

    def set_clock(self, meter: str, offset_s: float, at: dt.datetime) -> None:
        self._write(
            "INSERT OR REPLACE INTO clock (meter, offset_s, measured_at) VALUES (?, ?, ?)",
            (meter, offset_s, at.isoformat()),
        )

    def clock_offsets(self) -> dict[str, float]:
        return {r[0]: r[1] for r in self._db.execute("SELECT meter, offset_s FROM clock")}

    def mark(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM marks WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_mark(self, name: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)", (name, value))
