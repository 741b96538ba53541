"""The tariff check's tables in the central store (SQLite or PostgreSQL, `central.store`).

- ``tariff_plans``: every plan file ever put in force, the newest is the one in force (who
  replaced it and when: an audit of its own).
- ``tariff_setup``: each tariff set-up an agent read (the ``tariff`` payload, as JSON), keyed
  by (concentrator, meter, read_at): replays change nothing, history stays for the
  programming-event comparison.
- ``tariff_freeze``: each daily freeze's total and per-tariff forward energy, for the energy
  allocation step.
- ``tariff_outcome``: one outcome per meter per data day, with its details (JSON).
- ``tariff_job``: programming meterlink (or billing) did on a meter — a correction order, a
  planned switch — so a programming-event counter that moved inside one is not "outside plan".
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import common.clock
from central.points import Converted
from central.store import Migration, Schema, Store, Tx
from central.tariff.plans import PlanBook, parse_plans

__all__ = ["SCHEMA", "FreezeFact", "Outcome", "SetupFact", "TariffStore"]

_V1_SQLITE = """
CREATE TABLE IF NOT EXISTS tariff_plans (
    seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, text TEXT NOT NULL,
    replaced_at TEXT NOT NULL, replaced_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tariff_setup (
    concentrator TEXT NOT NULL, meter TEXT NOT NULL, read_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (concentrator, meter, read_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tariff_freeze (
    concentrator TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL,
    total REAL NOT NULL, registers TEXT NOT NULL,   -- JSON [T1, T2, ...] kWh
    clock_offset_s REAL,                            -- the reading's, when the agent gave it
    PRIMARY KEY (concentrator, meter, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tariff_outcome (
    day TEXT NOT NULL, concentrator TEXT NOT NULL, meter TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL, clock_suspect INTEGER NOT NULL,
    checked_at TEXT NOT NULL,
    PRIMARY KEY (day, concentrator, meter)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tariff_job (
    id INTEGER PRIMARY KEY AUTOINCREMENT, concentrator TEXT NOT NULL, meter TEXT NOT NULL,
    kind TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER,
    state TEXT NOT NULL, by_whom TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tariff_job_meter ON tariff_job (concentrator, meter);
"""
_V1_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS tariff_plans (
    seq INTEGER PRIMARY KEY, digest TEXT COLLATE "C" NOT NULL, text TEXT NOT NULL,
    replaced_at TEXT NOT NULL, replaced_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tariff_setup (
    concentrator TEXT COLLATE "C" NOT NULL, meter TEXT COLLATE "C" NOT NULL,
    read_at BIGINT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (concentrator, meter, read_at)
);
CREATE TABLE IF NOT EXISTS tariff_freeze (
    concentrator TEXT COLLATE "C" NOT NULL, meter TEXT COLLATE "C" NOT NULL,
    day TEXT COLLATE "C" NOT NULL, total DOUBLE PRECISION NOT NULL, registers TEXT NOT NULL,
    clock_offset_s DOUBLE PRECISION,
    PRIMARY KEY (concentrator, meter, day)
);
CREATE TABLE IF NOT EXISTS tariff_outcome (
    day TEXT COLLATE "C" NOT NULL, concentrator TEXT COLLATE "C" NOT NULL,
    meter TEXT COLLATE "C" NOT NULL, outcome TEXT COLLATE "C" NOT NULL, detail TEXT NOT NULL,
    clock_suspect SMALLINT NOT NULL, checked_at TEXT NOT NULL,
    PRIMARY KEY (day, concentrator, meter)
);
CREATE TABLE IF NOT EXISTS tariff_job (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, concentrator TEXT COLLATE "C" NOT NULL,
    meter TEXT COLLATE "C" NOT NULL, kind TEXT NOT NULL, started_at BIGINT NOT NULL,
    ended_at BIGINT, state TEXT NOT NULL, by_whom TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tariff_job_meter ON tariff_job (concentrator, meter);
"""

_V2_SQLITE = """
CREATE TABLE IF NOT EXISTS tariff_correction (
    id INTEGER PRIMARY KEY AUTOINCREMENT, concentrator TEXT NOT NULL, meter TEXT NOT NULL,
    day TEXT NOT NULL, state TEXT NOT NULL, outcome_before TEXT NOT NULL,
    outcome_after TEXT, reason TEXT NOT NULL, items TEXT NOT NULL, attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL, ended_at INTEGER, by_whom TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tariff_correction_meter ON tariff_correction (concentrator, meter);
CREATE TABLE IF NOT EXISTS tariff_correction_audit (
    correction INTEGER NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (correction, seq)
) WITHOUT ROWID;
"""
_V2_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS tariff_correction (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, concentrator TEXT COLLATE "C" NOT NULL,
    meter TEXT COLLATE "C" NOT NULL, day TEXT COLLATE "C" NOT NULL, state TEXT NOT NULL,
    outcome_before TEXT NOT NULL, outcome_after TEXT, reason TEXT NOT NULL, items TEXT NOT NULL,
    attempts INTEGER NOT NULL, created_at BIGINT NOT NULL, ended_at BIGINT,
    by_whom TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tariff_correction_meter ON tariff_correction (concentrator, meter);
CREATE TABLE IF NOT EXISTS tariff_correction_audit (
    correction BIGINT NOT NULL, seq INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (correction, seq)
);
"""

SCHEMA = Schema(
    "tariff",
    (
        Migration(
            1,
            "tariff check: plans, set-ups read, daily per-tariff energy, outcomes, jobs",
            {"sqlite": _V1_SQLITE, "postgresql": _V1_POSTGRESQL},
        ),
        Migration(
            2,
            "tariff correction orders and their audit trail (every exchange, raw frames)",
            {"sqlite": _V2_SQLITE, "postgresql": _V2_POSTGRESQL},
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class SetupFact:
    """A tariff set-up an agent read (the ``tariff`` payload's set-up, JSON-safe)."""

    concentrator: str
    meter: str
    read_at: int  # unix seconds, the agent's clock
    setup: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FreezeFact:
    """A daily freeze's forward energy: total and T1..Tn (kWh)."""

    concentrator: str
    meter: str
    day: str
    total: float
    registers: tuple[float, ...]
    clock_offset_s: float | None


@dataclass(frozen=True)
class Outcome:
    """One meter's verdict for one data day."""

    concentrator: str
    meter: str
    outcome: str
    detail: dict[str, Any]
    clock_suspect: bool = False


_SETUP = ("concentrator", "meter", "read_at", "payload")
_SETUP_TYPES = ("text", "text", "bigint", "text")
_FREEZE = ("concentrator", "meter", "day", "total", "registers", "clock_offset_s")
_FREEZE_TYPES = ("text", "text", "text", "double precision", "text", "double precision")
_OUTCOME = ("day", "concentrator", "meter", "outcome", "detail", "clock_suspect", "checked_at")
_OUTCOME_TYPES = ("text", "text", "text", "text", "text", "smallint", "text")


class _CorrectionStore:
    """Correction orders (`central.tariff.correct`) and their audit trail."""

    store: Store

    def start_correction(self, concentrator: str, meter: str, day: str, by: str) -> int:
        def write(tx: Tx) -> int:
            now = int(common.clock.current().time())
            row = tx.one(
                "INSERT INTO tariff_correction (concentrator, meter, day, state, outcome_before,"
                " outcome_after, reason, items, attempts, created_at, ended_at, by_whom)"
                " VALUES (?, ?, ?, 'running', '', NULL, '', '[]', 0, ?, NULL, ?) RETURNING id",
                (concentrator, meter, day, now, by),
            )
            assert row is not None
            return int(row[0])

        return self.store.write(write)

    def update_correction(
        self, order: int, *, items: list[str] | None = None, attempts: int | None = None
    ) -> None:
        if items is not None:
            self.store.execute(
                "UPDATE tariff_correction SET items = ? WHERE id = ?", (json.dumps(items), order)
            )
        if attempts is not None:
            self.store.execute(
                "UPDATE tariff_correction SET attempts = ? WHERE id = ?", (attempts, order)
            )

    def audit_correction(self, order: int, kind: str, body: dict[str, Any]) -> None:
        text = json.dumps(body, ensure_ascii=False, sort_keys=True, default=str)

        def write(tx: Tx) -> None:
            row = tx.one(
                "SELECT coalesce(max(seq), 0) FROM tariff_correction_audit WHERE correction = ?",
                (order,),
            )
            seq = int(row[0]) + 1 if row is not None else 1
            tx.execute(
                "INSERT INTO tariff_correction_audit (correction, seq, at, kind, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (order, seq, common.clock.current().time(), kind, text),
            )

        self.store.write(write)

    def finish_correction(self, order: int, result: Any) -> None:
        self.store.execute(
            "UPDATE tariff_correction SET state = ?, outcome_before = ?, outcome_after = ?,"
            " reason = ?, items = ?, attempts = ?, ended_at = ? WHERE id = ?",
            (
                result.state,
                result.outcome_before,
                result.outcome_after,
                result.reason,
                json.dumps(result.items),
                result.attempts,
                int(common.clock.current().time()),
                order,
            ),
        )

    def corrections(self, meter: str | None = None) -> list[tuple[Any, ...]]:
        """(id, concentrator, meter, day, state, outcome_before, outcome_after, reason, items,
        attempts, created_at, ended_at, by_whom), newest first."""
        return self.store.rows(
            "SELECT id, concentrator, meter, day, state, outcome_before, outcome_after, reason,"
            " items, attempts, created_at, ended_at, by_whom FROM tariff_correction"
            " WHERE meter = coalesce(?, meter) ORDER BY id DESC",
            (meter,),
        )

    def correction_audit(self, order: int) -> list[tuple[int, float, str, dict[str, Any]]]:
        return [
            (int(seq), float(at), str(kind), json.loads(body))
            for seq, at, kind, body in self.store.rows(
                "SELECT seq, at, kind, body FROM tariff_correction_audit WHERE correction = ?"
                " ORDER BY seq",
                (order,),
            )
        ]


class TariffStore(_CorrectionStore):
    """The tariff tables of a `Store` (migrated on open)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate(SCHEMA)

    # --- plans ---------------------------------------------------------------------------------
    def plans(self) -> PlanBook | None:
        """The plan file in force (None: never set)."""
        rows = self.store.rows("SELECT text FROM tariff_plans ORDER BY seq DESC LIMIT 1")
        return parse_plans(str(rows[0][0]), "stored tariff plans") if rows else None

    def replace_plans(self, text: str, by: str) -> PlanBook:
        """Check `text` strictly (raises `ConfigError`, nothing stored) and put it in force."""
        book = parse_plans(text)

        def write(tx: Tx) -> None:
            tx.lock("tariff.plans")
            row = tx.one("SELECT max(seq) FROM tariff_plans")
            seq = int(row[0]) + 1 if row and row[0] is not None else 1
            tx.execute(
                "INSERT INTO tariff_plans (seq, digest, text, replaced_at, replaced_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (seq, book.digest, text, _now_iso(), by),
            )

        self.store.write(write)
        return book

    def plan_history(self) -> list[tuple[int, str, str, str]]:
        """(seq, digest, replaced_at, replaced_by), newest first."""
        return [
            (int(s), str(d), str(a), str(b))
            for s, d, a, b in self.store.rows(
                "SELECT seq, digest, replaced_at, replaced_by FROM tariff_plans ORDER BY seq DESC"
            )
        ]

    # --- facts in ------------------------------------------------------------------------------
    def apply(self, setups: Sequence[SetupFact], freezes: Sequence[FreezeFact]) -> None:
        """Record a batch's set-ups and freezes in one transaction (idempotent)."""
        if not setups and not freezes:
            return
        s_rows = {
            (s.concentrator, s.meter, s.read_at): (
                s.concentrator, s.meter, s.read_at, json.dumps(s.setup, sort_keys=True)
            )
            for s in setups
        }  # fmt: skip
        f_rows = {
            (f.concentrator, f.meter, f.day): (
                f.concentrator, f.meter, f.day, f.total, json.dumps(list(f.registers)),
                f.clock_offset_s,
            )
            for f in freezes
        }  # fmt: skip

        def write(tx: Tx) -> None:
            tx.upsert("tariff_setup", _SETUP, _SETUP_TYPES, [s_rows[k] for k in sorted(s_rows)],
                      "ON CONFLICT (concentrator, meter, read_at) DO NOTHING")  # fmt: skip
            tx.upsert(
                "tariff_freeze", _FREEZE, _FREEZE_TYPES, [f_rows[k] for k in sorted(f_rows)],
                "ON CONFLICT (concentrator, meter, day) DO UPDATE SET total = excluded.total,"
                " registers = excluded.registers, clock_offset_s = excluded.clock_offset_s",
            )  # fmt: skip

        self.store.write(write)

    def apply_converted(self, facts: Converted) -> None:
        """The freezes and set-ups of a consumer batch (`central.points.convert`)."""
        self.apply(
            [SetupFact(t.concentrator, t.meter, t.read_at, t.setup) for t in facts.tariffs],
            [FreezeFact(*f) for f in facts.freezes],
        )

    # --- what the check reads ------------------------------------------------------------------
    def setups_until(
        self, until: int, since: int, concentrator: str | None = None
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Per meter (of `concentrator`, or all), its set-ups read in [since, until], oldest
        first."""
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c, m, payload in self.store.rows(
            "SELECT concentrator, meter, payload FROM tariff_setup"
            " WHERE read_at <= ? AND read_at >= ? AND concentrator = coalesce(?, concentrator)"
            " ORDER BY concentrator, meter, read_at",
            (until, since, concentrator),
        ):
            out.setdefault((str(c), str(m)), []).append(json.loads(payload))
        return out

    def freezes(
        self, days: Iterable[str], concentrator: str | None = None
    ) -> dict[tuple[str, str], dict[str, FreezeFact]]:
        wanted = sorted(set(days))
        out: dict[tuple[str, str], dict[str, FreezeFact]] = {}
        if not wanted:
            return out
        for c, m, d, total, registers, offset in self.store.rows(
            "SELECT concentrator, meter, day, total, registers, clock_offset_s FROM tariff_freeze"
            " WHERE day >= ? AND day <= ? AND concentrator = coalesce(?, concentrator)",
            (wanted[0], wanted[-1], concentrator),
        ):
            if str(d) in wanted:
                out.setdefault((str(c), str(m)), {})[str(d)] = FreezeFact(
                    str(c), str(m), str(d), float(total), tuple(json.loads(registers)),
                    None if offset is None else float(offset),
                )  # fmt: skip
        return out

    def jobs(self, since: int) -> dict[tuple[str, str], list[tuple[int, int | None]]]:
        """Per meter, the (started_at, ended_at) of its programming jobs since `since`."""
        out: dict[tuple[str, str], list[tuple[int, int | None]]] = {}
        for c, m, s, e in self.store.rows(
            "SELECT concentrator, meter, started_at, ended_at FROM tariff_job"
            " WHERE ended_at IS NULL OR ended_at >= ?",
            (since,),
        ):
            out.setdefault((str(c), str(m)), []).append((int(s), None if e is None else int(e)))
        return out

    def start_job(self, concentrator: str, meter: str, kind: str, by: str, detail: str) -> int:
        def write(tx: Tx) -> int:
            now = int(common.clock.current().time())
            row = tx.one(
                "INSERT INTO tariff_job (concentrator, meter, kind, started_at, ended_at, state,"
                " by_whom, detail) VALUES (?, ?, ?, ?, NULL, 'running', ?, ?) RETURNING id",
                (concentrator, meter, kind, now, by, detail),
            )
            assert row is not None
            return int(row[0])

        return self.store.write(write)

    def record_job(self, concentrator: str, meter: str, kind: str, started_at: int,
                   ended_at: int, by: str, detail: str) -> int:  # fmt: skip
        """A programming job done outside meterlink (a technician's work order, billing's own
        system), so the programming-event counters it moved are not "outside plan"."""

        def write(tx: Tx) -> int:
            row = tx.one(
                "INSERT INTO tariff_job (concentrator, meter, kind, started_at, ended_at, state,"
                " by_whom, detail) VALUES (?, ?, ?, ?, ?, 'done', ?, ?) RETURNING id",
                (concentrator, meter, kind, started_at, ended_at, by, detail),
            )
            assert row is not None
            return int(row[0])

        return self.store.write(write)

    def end_job(self, job: int, state: str, detail: str) -> None:
        now = int(common.clock.current().time())
        self.store.execute(
            "UPDATE tariff_job SET ended_at = ?, state = ?, detail = ? WHERE id = ?",
            (now, state, detail, job),
        )

    def job_rows(self, meter: str | None = None) -> list[tuple[Any, ...]]:
        return self.store.rows(
            "SELECT id, concentrator, meter, kind, started_at, ended_at, state, by_whom, detail"
            " FROM tariff_job WHERE meter = coalesce(?, meter) ORDER BY id",
            (meter,),
        )

    def marker(self, day: str) -> tuple[Any, ...]:
        """What a day's check depends on, cheaply: when it is unchanged the check would give
        the same outcomes (the consumer's job then skips the day)."""
        first = (dt.date.fromisoformat(day) - dt.timedelta(days=2)).isoformat()
        row = self.store.rows(
            "SELECT (SELECT count(*) FROM tariff_setup), (SELECT max(read_at) FROM tariff_setup),"
            " (SELECT count(*) FROM tariff_freeze WHERE day >= ? AND day <= ?),"
            " (SELECT max(seq) FROM tariff_plans), (SELECT count(*) FROM tariff_job),"
            " (SELECT max(ended_at) FROM tariff_job), (SELECT count(*) FROM archive_version)",
            (first, day),
        )
        return tuple(row[0])

    # --- outcomes ------------------------------------------------------------------------------
    def save_outcomes(self, day: str, outcomes: Sequence[Outcome]) -> None:
        """Replace the day's outcomes (a recomputation gives the whole day)."""
        now = _now_iso()
        rows = sorted(
            (day, o.concentrator, o.meter, o.outcome,
             json.dumps(o.detail, sort_keys=True, ensure_ascii=False, default=str),
             int(o.clock_suspect), now)
            for o in outcomes
        )  # fmt: skip

        def write(tx: Tx) -> None:
            tx.lock(f"tariff.outcome:{day}")
            tx.execute("DELETE FROM tariff_outcome WHERE day = ?", (day,))
            tx.upsert("tariff_outcome", _OUTCOME, _OUTCOME_TYPES, rows)

        self.store.write(write)

    def outcomes(self, day: str, meter: str | None = None) -> list[Outcome]:
        return [
            Outcome(str(c), str(m), str(o), json.loads(d), bool(s))
            for c, m, o, d, s in self.store.rows(
                "SELECT concentrator, meter, outcome, detail, clock_suspect FROM tariff_outcome"
                " WHERE day = ? AND meter = coalesce(?, meter) ORDER BY concentrator, meter",
                (day, meter),
            )
        ]

    def outcome_days(self) -> list[str]:
        return [
            str(r[0]) for r in self.store.rows("SELECT DISTINCT day FROM tariff_outcome ORDER BY 1")
        ]


def _now_iso() -> str:
    return common.clock.current().now().isoformat(timespec="seconds")
