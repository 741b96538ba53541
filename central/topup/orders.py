"""Top-up and relay orders in the central store: acceptance with idempotency, the durable
state machine, the per-meter queue, the audit trail of every meter exchange, the webhook
outbox and the per-meter daily ESAM-failure count.

States (docs/topup.md "The order service")::

    accepted → queued → authenticating → crediting → verifying → confirmed
                  ↑            │               │            │    ↘ failed(reason, class)
                  └────────────┴───────────────┴────────────┘    ↘ needs_review
    accepted | queued (nothing sent to the meter yet) → cancelled
    needs_review | failed(communication) → queued        (an operator's retry: read back first)
    needs_review → failed(closed_by_operator) | confirmed (an operator's close, with a note)

Every state change is one store transaction; an order being executed is held by one instance
(a lease on the row, `lease_s`), so an instance that dies mid-attempt leaves the order to
another (or to itself after a restart), which starts with a read-back. One order in flight per
meter: only the first non-terminal order of a meter (lowest purchase count, then acceptance)
may run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from central.store import Migration, Schema, Store, Tx

__all__ = [
    "ACTIVE",
    "IN_PROGRESS",
    "SCHEMA",
    "TERMINAL",
    "WAITING",
    "Acceptance",
    "ArchiveMeter",
    "Exchange",
    "FailureClass",
    "Order",
    "OrderBook",
    "OrderCancelled",
    "OrderError",
    "State",
    "load_archive",
]

log = logging.getLogger(__name__)


class State(StrEnum):
    ACCEPTED = "accepted"
    QUEUED = "queued"
    AUTHENTICATING = "authenticating"
    CREDITING = "crediting"
    VERIFYING = "verifying"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"
    CANCELLED = "cancelled"


class FailureClass(StrEnum):
    COMMUNICATION = "communication"
    BUSINESS = "business"
    ARCHIVE = "archive"


TERMINAL = frozenset({State.CONFIRMED, State.FAILED, State.NEEDS_REVIEW, State.CANCELLED})
WAITING = frozenset({State.ACCEPTED, State.QUEUED})
IN_PROGRESS = frozenset({State.AUTHENTICATING, State.CREDITING, State.VERIFYING})
ACTIVE = WAITING | IN_PROGRESS

SCHEMA = Schema(
    "topup",
    (
        Migration(
            1,
            "top-up: orders, meter exchanges, archive, per-meter daily ESAM failures",
            """
CREATE TABLE IF NOT EXISTS topup_order (
    order_id TEXT PRIMARY KEY, kind TEXT NOT NULL, seq BIGINT NOT NULL,
    meter TEXT NOT NULL, concentrator TEXT NOT NULL, address TEXT NOT NULL, mode TEXT NOT NULL,
    district TEXT NOT NULL, manufacturer TEXT NOT NULL, model TEXT NOT NULL,
    install_year BIGINT,
    customer TEXT, amount_fen BIGINT, purchase_count BIGINT, count_assigned BIGINT NOT NULL,
    action TEXT, body TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, reason_class TEXT, detail TEXT NOT NULL,
    day TEXT NOT NULL, accepted_at DOUBLE PRECISION NOT NULL,
    deadline DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION, next_at DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL, esam_failures BIGINT NOT NULL, rechecks BIGINT NOT NULL,
    relay_tries BIGINT NOT NULL, touched BIGINT NOT NULL, uncertain BIGINT NOT NULL,
    credited BIGINT NOT NULL, result TEXT NOT NULL,
    lease_holder TEXT, lease_until DOUBLE PRECISION,
    notify_state TEXT NOT NULL, notify_attempts BIGINT NOT NULL,
    notify_next_at DOUBLE PRECISION, notify_error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS topup_order_active ON topup_order (meter, state);
CREATE INDEX IF NOT EXISTS topup_order_queue ON topup_order (seq)
    WHERE state IN ('accepted', 'queued', 'authenticating', 'crediting', 'verifying');
CREATE INDEX IF NOT EXISTS topup_order_day ON topup_order (day, state);
CREATE INDEX IF NOT EXISTS topup_order_meter_count ON topup_order (meter, purchase_count);
CREATE INDEX IF NOT EXISTS topup_order_notify ON topup_order (notify_state, notify_next_at);
CREATE TABLE IF NOT EXISTS topup_exchange (
    order_id TEXT NOT NULL, n BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
    attempt BIGINT NOT NULL, what TEXT NOT NULL, ok BIGINT NOT NULL, reason TEXT,
    detail TEXT NOT NULL, request TEXT NOT NULL, reply TEXT NOT NULL,
    PRIMARY KEY (order_id, n)
);
CREATE TABLE IF NOT EXISTS topup_meter (
    meter TEXT PRIMARY KEY, concentrator TEXT NOT NULL, address TEXT NOT NULL,
    mode TEXT NOT NULL, district TEXT NOT NULL, manufacturer TEXT NOT NULL,
    model TEXT NOT NULL, install_year BIGINT
);
CREATE TABLE IF NOT EXISTS topup_meter_day (
    meter TEXT NOT NULL, day TEXT NOT NULL, esam_failures BIGINT NOT NULL,
    PRIMARY KEY (meter, day)
);
""",
        ),
    ),
)


class OrderCancelled(Exception):
    """The order was cancelled meanwhile: the executor's change was not made (and it sends
    nothing more for it)."""


class OrderError(ValueError):
    """A request the API refuses: `status` is its HTTP status, `code` a stable word."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ArchiveMeter:
    meter: str
    concentrator: str
    address: str
    """the meter number (表号) the encryption machine diversifies with"""
    mode: str
    """local (本地费控: 03H top-up) | remote (远程费控: credit notice + relay)"""
    district: str = ""
    manufacturer: str = ""
    model: str = ""
    install_year: int | None = None


def load_archive(doc: Any, where: str = "archive") -> list[ArchiveMeter]:
    """The top-up archive from its JSON form (a list of objects); `ValueError` names the entry."""
    if not isinstance(doc, list):
        raise ValueError(f"{where}: expected a JSON list of meters")
    out: list[ArchiveMeter] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{at}: expected an object")
        unknown = set(entry) - {
            "meter", "concentrator", "address", "mode", "district", "manufacturer", "model",
            "install_year",
        }  # fmt: skip
        if unknown:
            raise ValueError(f"{at}: unknown keys {sorted(unknown)}")
        for key in ("meter", "concentrator", "address", "mode"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ValueError(f"{at}.{key}: required text")
        if entry["mode"] not in ("local", "remote"):
            raise ValueError(f"{at}.mode: 'local' or 'remote', not {entry['mode']!r}")
        address = entry["address"]
        if len(address) != 12 or not address.isdigit():
            raise ValueError(f"{at}.address: the 12-digit meter number, not {address!r}")
        year = entry.get("install_year")
        if year is not None and (not isinstance(year, int) or not 1980 <= year <= 2100):
            raise ValueError(f"{at}.install_year: a year 1980..2100")
        for key in ("district", "manufacturer", "model"):
            if not isinstance(entry.get(key, ""), str):
                raise ValueError(f"{at}.{key}: text")
        if entry["meter"] in seen:
            raise ValueError(f"{at}.meter: {entry['meter']!r} listed twice")
        seen.add(entry["meter"])
        out.append(
            ArchiveMeter(
                entry["meter"], entry["concentrator"], address, entry["mode"],
                entry.get("district", ""), entry.get("manufacturer", ""), entry.get("model", ""),
                year,
            )
        )  # fmt: skip
    return out


@dataclass
class Order:
    order_id: str
    kind: str
    """topup | relay"""
    seq: int
    meter: str
    concentrator: str
    address: str
    mode: str
    district: str
    manufacturer: str
    model: str
    install_year: int | None
    customer: str | None
    amount_fen: int | None
    purchase_count: int | None
    count_assigned: bool
    """the service assigned the count (billing gave none): the meter's count + 1 at the first
    read-back"""
    action: str | None
    body: str
    state: State
    reason: str | None
    reason_class: str | None
    detail: str
    day: str
    accepted_at: float
    deadline: float
    updated_at: float
    finished_at: float | None
    next_at: float
    attempts: int
    esam_failures: int
    rechecks: int
    relay_tries: int
    touched: bool
    """a command for this order went to the agent: no cancelling any more"""
    uncertain: bool
    """a state-changing send whose effect no read-back has settled yet"""
    credited: bool
    """the purchase is on the meter (local) / in the ledger (remote)"""
    result: dict[str, Any]
    lease_holder: str | None
    lease_until: float | None
    notify_state: str
    notify_attempts: int
    notify_next_at: float | None
    notify_error: str

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def view(self, tz: dt.tzinfo, exchanges: Sequence[Exchange] | None = None) -> dict[str, Any]:
        """The order as the API returns it."""

        def iso(t: float | None) -> str | None:
            if t is None:
                return None
            return dt.datetime.fromtimestamp(t, tz).isoformat(timespec="seconds")

        out: dict[str, Any] = {"order_id": self.order_id, "meter": self.meter}
        if self.kind == "topup":
            out.update(
                customer=self.customer,
                amount_fen=self.amount_fen,
                purchase_count=self.purchase_count,
                purchase_count_assigned=self.count_assigned,
            )
        else:
            out["action"] = self.action
        out.update(
            kind=self.kind,
            mode=self.mode,
            concentrator=self.concentrator,
            state=self.state.value,
            reason=self.reason,
            reason_class=self.reason_class,
            detail=self.detail,
            attempts=self.attempts,
            credited=self.credited,
            accepted_at=iso(self.accepted_at),
            deadline=iso(self.deadline),
            updated_at=iso(self.updated_at),
            finished_at=iso(self.finished_at),
            day=self.day,
            result=self.result,
        )
        if exchanges is not None:
            out["exchanges"] = [e.view(tz) for e in exchanges]
        return out


_ORDER_COLUMNS = (
    "order_id", "kind", "seq", "meter", "concentrator", "address", "mode", "district",
    "manufacturer", "model", "install_year", "customer", "amount_fen", "purchase_count",
    "count_assigned", "action", "body", "state", "reason", "reason_class", "detail", "day",
    "accepted_at", "deadline", "updated_at", "finished_at", "next_at", "attempts",
    "esam_failures", "rechecks", "relay_tries", "touched", "uncertain", "credited", "result",
    "lease_holder", "lease_until", "notify_state", "notify_attempts", "notify_next_at",
    "notify_error",
)  # fmt: skip
_SELECT = f"SELECT {', '.join(_ORDER_COLUMNS)} FROM topup_order"  # noqa: S608 - constants
_ACTIVE_SQL = "('accepted', 'queued', 'authenticating', 'crediting', 'verifying')"
_NO_COUNT = 4294967296  # an order without a count yet sorts after every counted one
_BOOLS = {"count_assigned", "touched", "uncertain", "credited"}


def _order(row: Sequence[Any]) -> Order:
    values = dict(zip(_ORDER_COLUMNS, row, strict=True))
    for name in _BOOLS:
        values[name] = bool(values[name])
    values["state"] = State(values["state"])
    values["result"] = json.loads(values["result"] or "{}")
    return Order(**values)


@dataclass(frozen=True)
class Exchange:
    """One security command (or encryption-machine call) of an order, with what went out and
    what came back (the agent's reply carries every frame, tx and rx)."""

    order_id: str
    n: int
    at: float
    attempt: int
    what: str
    ok: bool
    reason: str | None
    detail: str
    request: dict[str, Any]
    reply: dict[str, Any]

    def view(self, tz: dt.tzinfo) -> dict[str, Any]:
        return {
            "n": self.n,
            "at": dt.datetime.fromtimestamp(self.at, tz).isoformat(timespec="milliseconds"),
            "attempt": self.attempt,
            "what": self.what,
            "ok": self.ok,
            "reason": self.reason,
            "detail": self.detail,
            "request": self.request,
            "reply": self.reply,
            "frames": self.reply.get("frames", []),
        }


@dataclass(frozen=True)
class Acceptance:
    order: Order
    created: bool
    """False: the same order_id with the same body was accepted before (HTTP 200)"""


def _canonical(body: Mapping[str, Any]) -> str:
    return json.dumps(dict(body), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class OrderBook:
    store: Store
    tz: dt.tzinfo
    holder: str = "meterlink-topup"
    #: how long a claim holds an order (another instance takes over after it)
    lease_s: float = 900.0
    #: called after each committed change of an order (webhook wake-up, tests)
    listeners: list[Any] = field(default_factory=list)

    def migrate(self) -> None:
        self.store.migrate(SCHEMA)

    def day_of(self, t: float) -> str:
        return dt.datetime.fromtimestamp(t, self.tz).date().isoformat()

    # --- archive -------------------------------------------------------------------------------
    def set_archive(self, meters: Iterable[ArchiveMeter]) -> int:
        rows = [
            (m.meter, m.concentrator, m.address, m.mode, m.district, m.manufacturer, m.model,
             m.install_year)
            for m in meters
        ]  # fmt: skip

        def write(tx: Tx) -> None:
            tx.upsert(
                "topup_meter",
                ("meter", "concentrator", "address", "mode", "district", "manufacturer", "model",
                 "install_year"),
                ("text", "text", "text", "text", "text", "text", "text", "bigint"),
                rows,
                "ON CONFLICT (meter) DO UPDATE SET concentrator = excluded.concentrator,"
                " address = excluded.address, mode = excluded.mode, district = excluded.district,"
                " manufacturer = excluded.manufacturer, model = excluded.model,"
                " install_year = excluded.install_year",
            )  # fmt: skip

        self.store.write(write)
        return len(rows)

    def archive_meter(self, meter: str, tx: Tx | None = None) -> ArchiveMeter | None:
        sql = (
            "SELECT meter, concentrator, address, mode, district, manufacturer, model,"
            " install_year FROM topup_meter WHERE meter = ?"
        )
        row = (
            tx.one(sql, (meter,))
            if tx is not None
            else next(iter(self.store.rows(sql, (meter,))), None)
        )
        if row is None:
            return None
        year = int(row[7]) if row[7] is not None else None
        return ArchiveMeter(row[0], row[1], row[2], row[3], row[4], row[5], row[6], year)

    # --- acceptance ----------------------------------------------------------------------------
    def accept(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        now: float,
        deadline: float,
    ) -> Acceptance:
        """Store a new order, or return the one with the same id and body (`OrderError` 409
        for the same id with another body, or another order for the same (meter, count))."""
        canonical = _canonical(body)
        order_id = str(body["order_id"])
        meter_id = str(body["meter"])

        def write(tx: Tx) -> Acceptance:
            tx.lock("topup.accept")
            row = tx.one(f"{_SELECT} WHERE order_id = ?", (order_id,))
            if row is not None:
                existing = _order(row)
                if existing.kind == kind and existing.body == canonical:
                    return Acceptance(existing, created=False)
                raise OrderError(
                    409, "order_id_conflict",
                    f"order {order_id} exists with another body (or is a {existing.kind} order)",
                )  # fmt: skip
            meter = self.archive_meter(meter_id, tx)
            if meter is None:
                raise OrderError(
                    422, "unknown_meter", f"meter {meter_id} is not in the top-up archive"
                )
            count = body.get("purchase_count")
            if kind == "topup" and count is not None:
                other = tx.one(
                    "SELECT order_id FROM topup_order WHERE meter = ? AND purchase_count = ?"
                    " AND kind = 'topup' AND state NOT IN ('failed', 'cancelled')",
                    (meter_id, count),
                )
                if other is not None:
                    raise OrderError(
                        409, "purchase_count_taken",
                        f"meter {meter_id} purchase count {count} belongs to order {other[0]}",
                    )  # fmt: skip
            seq_row = tx.one("SELECT coalesce(max(seq), 0) + 1 FROM topup_order")
            seq = int(seq_row[0]) if seq_row else 1
            order = Order(
                order_id=order_id, kind=kind, seq=seq, meter=meter_id,
                concentrator=meter.concentrator, address=meter.address, mode=meter.mode,
                district=meter.district, manufacturer=meter.manufacturer, model=meter.model,
                install_year=meter.install_year,
                customer=body.get("customer"), amount_fen=body.get("amount_fen"),
                purchase_count=count, count_assigned=False, action=body.get("action"),
                body=canonical, state=State.ACCEPTED, reason=None, reason_class=None, detail="",
                day=self.day_of(now), accepted_at=now, deadline=deadline, updated_at=now,
                finished_at=None, next_at=now, attempts=0, esam_failures=0, rechecks=0,
                relay_tries=0, touched=False, uncertain=False, credited=False, result={},
                lease_holder=None, lease_until=None, notify_state="none", notify_attempts=0,
                notify_next_at=None, notify_error="",
            )  # fmt: skip
            self._insert(tx, order)
            return Acceptance(order, created=True)

        acceptance = self.store.write(write)
        if acceptance.created:
            self._changed(acceptance.order)
        return acceptance

    def _insert(self, tx: Tx, order: Order) -> None:
        values = [getattr(order, c) for c in _ORDER_COLUMNS]
        values = [
            int(v) if isinstance(v, bool) else v.value if isinstance(v, StrEnum) else v
            for v in values
        ]
        values[_ORDER_COLUMNS.index("result")] = json.dumps(order.result, ensure_ascii=False)
        marks = ", ".join("?" * len(_ORDER_COLUMNS))
        tx.execute(
            f"INSERT INTO topup_order ({', '.join(_ORDER_COLUMNS)}) VALUES ({marks})",  # noqa: S608
            values,
        )

    def insert_many(self, orders: Sequence[Order]) -> None:
        """Orders as they are (benchmarks and tests that build a book's history)."""

        def write(tx: Tx) -> None:
            for o in orders:
                self._insert(tx, o)

        self.store.write(write)

    # --- reading -------------------------------------------------------------------------------
    def get(self, order_id: str) -> Order | None:
        rows = self.store.rows(f"{_SELECT} WHERE order_id = ?", (order_id,))
        return _order(rows[0]) if rows else None

    def exchanges(self, order_id: str) -> list[Exchange]:
        rows = self.store.rows(
            "SELECT order_id, n, at, attempt, what, ok, reason, detail, request, reply"
            " FROM topup_exchange WHERE order_id = ? ORDER BY n",
            (order_id,),
        )
        return [
            Exchange(r[0], int(r[1]), float(r[2]), int(r[3]), r[4], bool(r[5]), r[6], r[7],
                     json.loads(r[8]), json.loads(r[9]))
            for r in rows
        ]  # fmt: skip

    def query(
        self,
        *,
        kind: str | None = None,
        day: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Order]:
        where, params = [], []
        for column, value in (("kind", kind), ("day", day), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if after is not None:
            where.append("order_id > ?")
            params.append(after)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.store.rows(
            f"{_SELECT}{clause} ORDER BY order_id LIMIT ?",
            (*params, int(limit)),
        )
        return [_order(r) for r in rows]

    def orders_of_days(self, days: Sequence[str], kind: str | None = None) -> list[Order]:
        if not days:
            return []
        marks = ", ".join("?" * len(days))
        sql = f"{_SELECT} WHERE day IN ({marks})"
        params: list[Any] = list(days)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [_order(r) for r in self.store.rows(sql + " ORDER BY seq, order_id", params)]

    def days(self) -> list[str]:
        return [
            str(r[0]) for r in self.store.rows("SELECT DISTINCT day FROM topup_order ORDER BY day")
        ]

    # --- cancelling ----------------------------------------------------------------------------
    def cancel(self, order_id: str, *, now: float) -> Order:
        def write(tx: Tx) -> Order:
            row = tx.one(f"{_SELECT} WHERE order_id = ?", (order_id,))
            if row is None:
                raise OrderError(404, "not_found", f"no order {order_id}")
            order = _order(row)
            if order.state is State.CANCELLED:
                return order
            if order.terminal or order.touched:
                raise OrderError(
                    409, "not_cancellable",
                    f"order {order_id} is {order.state.value}"
                    + (" and has reached the meter" if order.touched else "")
                    + ": only an order nothing was sent for can be cancelled",
                )  # fmt: skip
            self._set(tx, order, now, state=State.CANCELLED, reason="cancelled", finished_at=now)
            return order

        order = self.store.write(write)
        self._changed(order)
        return order

    # --- operator actions ----------------------------------------------------------------------
    def retryable(self, order: Order) -> bool:
        """An order an operator may put back in the queue: needs_review, or failed for a
        communication reason (docs/topup.md "Operator actions")."""
        return order.state is State.NEEDS_REVIEW or (
            order.state is State.FAILED and order.reason_class == FailureClass.COMMUNICATION.value
        )

    def retry(
        self,
        order_id: str,
        *,
        operator: str,
        note: str = "",
        now: float,
        deadline: float,
        via: str = "api",
    ) -> Order:
        """Put a needs_review (or communication-failed) order back in its meter's queue, named
        after `operator` in its audit trail. Nothing of what the executor decides on is
        changed: the order keeps its purchase count, `touched`, `uncertain` and `credited`,
        so its next attempt starts, like every attempt, with an identity authentication and a
        read-back before anything is sent, and the read-back rule decides (count = target and
        the last purchase is this order's → confirmed without resending). The per-order ESAM,
        re-check and relay counts start again (the per-meter daily ESAM cap stays); the
        deadline becomes `deadline`. A failed order is not retried when another order took
        its (meter, purchase count) since (acceptance frees the count of a failed order); no
        order is retried while another order of its meter is held by an executor."""
        if not operator:
            raise OrderError(400, "invalid", "operator: who retries the order")

        def write(tx: Tx) -> Order:
            tx.lock("topup.accept")  # against an acceptance taking a failed order's count
            order = self._locked(tx, order_id)
            if not self.retryable(order):
                raise OrderError(
                    409, "not_retryable",
                    f"order {order_id} is {order.state.value}"
                    + (f" ({order.reason_class})" if order.reason_class else "")
                    + ": only needs_review or a communication failure can be retried",
                )  # fmt: skip
            if order.kind == "topup" and order.purchase_count is not None:
                other = tx.one(
                    "SELECT order_id FROM topup_order WHERE meter = ? AND purchase_count = ?"
                    " AND kind = 'topup' AND order_id <> ?"
                    " AND state NOT IN ('failed', 'cancelled')",
                    (order.meter, order.purchase_count, order.order_id),
                )
                if other is not None:
                    raise OrderError(
                        409, "purchase_count_taken",
                        f"meter {order.meter} purchase count {order.purchase_count} belongs"
                        f" to order {other[0]} now",
                    )  # fmt: skip
            busy = tx.one(
                "SELECT order_id FROM topup_order WHERE meter = ? AND order_id <> ?"  # noqa: S608
                f" AND state IN {_ACTIVE_SQL} AND lease_holder IS NOT NULL"
                " AND lease_until > ?",
                (order.meter, order.order_id, now),
            )
            if busy is not None:  # one order in flight per meter, across instances too
                raise OrderError(
                    409, "meter_busy",
                    f"order {busy[0]} of meter {order.meter} is being executed: retry after it",
                )  # fmt: skip
            was = {"state": order.state.value, "reason": order.reason,
                   "reason_class": order.reason_class, "detail": order.detail}  # fmt: skip
            result = {k: v for k, v in order.result.items() if k != "comm_failures"}
            self._set(
                tx, order, now, state=State.QUEUED, reason=None, reason_class=None,
                detail=f"retried by {operator}" + (f": {note}" if note else ""),
                finished_at=None, next_at=now, deadline=deadline, lease_holder=None,
                lease_until=None, esam_failures=0, rechecks=0, relay_tries=0, result=result,
                notify_state="none", notify_next_at=None,
            )  # fmt: skip
            self._append(
                tx, order, at=now, what="operator:retry", ok=True, reason=None,
                detail=f"by {operator}" + (f": {note}" if note else ""),
                request={"operator": operator, "via": via, "note": note, "deadline": deadline},
                reply={"was": was},
            )  # fmt: skip
            return order

        order = self.store.write(write)
        self._changed(order)
        return order

    def close(
        self, order_id: str, *, operator: str, note: str, now: float, via: str = "api"
    ) -> Order:
        """End a needs_review order for good (an operator's decision, with a mandatory note).
        It ends as **failed** (`closed_by_operator`, business class) unless a read-back already
        put its credit on the meter (`credited`: e.g. restore_pending, the relay not restored
        by the deadline) — then **confirmed**, since billing must never refund a credit the
        meter holds. An operator's word never confirms a credit: to settle an order the
        operator believes credited, retry it (its read-back confirms without resending)."""
        if not operator:
            raise OrderError(400, "invalid", "operator: who closes the order")
        if not note.strip():
            raise OrderError(400, "invalid", "note: why the order is closed (mandatory)")

        def write(tx: Tx) -> Order:
            order = self._locked(tx, order_id)
            if order.state is not State.NEEDS_REVIEW:
                raise OrderError(
                    409, "not_closable",
                    f"order {order_id} is {order.state.value}: only needs_review can be closed",
                )  # fmt: skip
            was = {"state": order.state.value, "reason": order.reason,
                   "reason_class": order.reason_class, "detail": order.detail}  # fmt: skip
            closed = {"by": operator, "via": via, "note": note, "at": now, "was": was,
                      "uncertain": order.uncertain}  # fmt: skip
            if order.credited:
                state, reason, cls = State.CONFIRMED, "closed_by_operator", None
            else:
                state, reason, cls = State.FAILED, "closed_by_operator", "business"
            self._set(
                tx, order, now, state=state, reason=reason, reason_class=cls,
                detail=f"closed by {operator}: {note}", result={**order.result, "closed": closed},
            )  # fmt: skip
            self._append(
                tx, order, at=now, what="operator:close", ok=True, reason=reason,
                detail=f"by {operator}: {note}",
                request={"operator": operator, "via": via, "note": note},
                reply={"was": was, "state": state.value},
            )  # fmt: skip
            return order

        order = self.store.write(write)
        self._changed(order)
        return order

    def _locked(self, tx: Tx, order_id: str) -> Order:
        """The order read in `tx`, its row locked against a concurrent change (PostgreSQL:
        FOR UPDATE; SQLite writes one at a time)."""
        suffix = " FOR UPDATE" if tx.dialect == "postgresql" else ""
        row = tx.one(f"{_SELECT} WHERE order_id = ?{suffix}", (order_id,))
        if row is None:
            raise OrderError(404, "not_found", f"no order {order_id}")
        return _order(row)

    # --- execution -----------------------------------------------------------------------------
    def claim(self, *, now: float, limit: int, busy_meters: Iterable[str] = ()) -> list[Order]:
        """Up to `limit` orders to execute now, one per meter (the head of each meter's queue),
        held by this instance until `release` or the lease runs out. Orders past their deadline
        are left to `expire`."""
        busy = set(busy_meters)

        def write(tx: Tx) -> list[Order]:
            tx.lock("topup.claim")
            # the head of each meter's queue (no active order of the meter before it by
            # (purchase count, acceptance)), runnable now, in acceptance order
            rows = tx.rows(
                f"{_SELECT} o WHERE o.state IN {_ACTIVE_SQL}"  # noqa: S608 - constants
                " AND o.next_at <= ? AND o.deadline > ?"
                " AND (o.lease_holder IS NULL OR o.lease_until <= ?)"
                f" AND NOT EXISTS (SELECT 1 FROM topup_order p WHERE p.meter = o.meter"
                f" AND p.state IN {_ACTIVE_SQL} AND (coalesce(p.purchase_count, {_NO_COUNT})"
                f" < coalesce(o.purchase_count, {_NO_COUNT}) OR (coalesce(p.purchase_count,"
                f" {_NO_COUNT}) = coalesce(o.purchase_count, {_NO_COUNT}) AND p.seq < o.seq)))"
                " ORDER BY o.seq LIMIT ?",
                (now, now, now, limit + len(busy)),
            )
            out = [o for o in map(_order, rows) if o.meter not in busy][:limit]
            for order in out:
                order.lease_holder, order.lease_until = self.holder, now + self.lease_s
                if order.state is State.ACCEPTED:
                    order.state = State.QUEUED
                tx.execute(
                    "UPDATE topup_order SET lease_holder = ?, lease_until = ?, state = ?"
                    " WHERE order_id = ?",
                    (order.lease_holder, order.lease_until, order.state.value, order.order_id),
                )
            return out

        return self.store.write(write)

    def release_own(self) -> int:
        """At start: let go of what this instance held before it stopped (or was killed); the
        orders are taken up again, each with a read-back first."""
        return self.store.execute(
            "UPDATE topup_order SET lease_holder = NULL, lease_until = NULL WHERE lease_holder = ?",
            (self.holder,),
        )

    def update(self, order: Order, *, now: float, **changes: Any) -> Order:
        """Change the order (held by this instance) and commit; `order` is updated in place."""

        def write(tx: Tx) -> None:
            self._set(tx, order, now, **changes)

        self.store.write(write)
        self._changed(order)
        return order

    def _set(self, tx: Tx, order: Order, now: float, **changes: Any) -> None:
        changes.setdefault("updated_at", now)
        state = changes.get("state")
        if state is not None and State(state) in TERMINAL:
            changes.setdefault("finished_at", now)
            changes.setdefault("lease_holder", None)
            changes.setdefault("lease_until", None)
            changes.setdefault("notify_state", "pending")  # the webhook's outbox
            changes.setdefault("notify_next_at", now)
        for name, value in changes.items():
            if name not in _ORDER_COLUMNS:
                raise KeyError(name)
            setattr(order, name, value)
        columns = list(changes)
        values: list[Any] = []
        for name in columns:
            v = getattr(order, name)
            if name == "result":
                v = json.dumps(v, ensure_ascii=False)
            elif isinstance(v, bool):
                v = int(v)
            elif isinstance(v, StrEnum):
                v = v.value
            values.append(v)
        assignments = ", ".join(f"{c} = ?" for c in columns)
        guard = "" if state is State.CANCELLED else " AND state <> 'cancelled'"
        changed = tx.execute(
            f"UPDATE topup_order SET {assignments} WHERE order_id = ?{guard}",  # noqa: S608
            (*values, order.order_id),
        )
        if not changed:
            raise OrderCancelled(order.order_id)

    def release(self, order: Order, *, now: float, **changes: Any) -> Order:
        """Let go of an order this instance held (with last changes)."""
        changes.setdefault("lease_holder", None)
        changes.setdefault("lease_until", None)
        return self.update(order, now=now, **changes)

    def record(
        self,
        order: Order,
        *,
        at: float,
        what: str,
        ok: bool,
        reason: str | None,
        detail: str,
        request: Mapping[str, Any],
        reply: Mapping[str, Any],
        changes: Mapping[str, Any] | None = None,
    ) -> Exchange:
        """Append one exchange to the order's audit trail (before acting on it), with
        `changes` of the order in the same transaction."""

        def write(tx: Tx) -> Exchange:
            if changes:
                self._set(tx, order, at, **changes)
            return self._append(tx, order, at=at, what=what, ok=ok, reason=reason,
                                detail=detail, request=request, reply=reply)  # fmt: skip

        exchange = self.store.write(write)
        if changes:
            self._changed(order)
        return exchange

    def _append(
        self,
        tx: Tx,
        order: Order,
        *,
        at: float,
        what: str,
        ok: bool,
        reason: str | None,
        detail: str,
        request: Mapping[str, Any],
        reply: Mapping[str, Any],
    ) -> Exchange:
        row = tx.one(
            "SELECT coalesce(max(n), 0) + 1 FROM topup_exchange WHERE order_id = ?",
            (order.order_id,),
        )
        n = int(row[0]) if row else 1
        tx.execute(
            "INSERT INTO topup_exchange (order_id, n, at, attempt, what, ok, reason, detail,"
            " request, reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order.order_id, n, at, order.attempts, what, int(ok), reason, detail,
             json.dumps(dict(request), ensure_ascii=False),
             json.dumps(dict(reply), ensure_ascii=False)),
        )  # fmt: skip
        return Exchange(order.order_id, n, at, order.attempts, what, ok, reason, detail,
                        dict(request), dict(reply))  # fmt: skip

    def expired(self, *, now: float) -> list[Order]:
        """Active orders past their deadline that no instance holds (the caller ends them)."""
        rows = self.store.rows(
            f"{_SELECT} WHERE state IN ('accepted', 'queued', 'authenticating', 'crediting',"
            " 'verifying') AND deadline <= ? AND (lease_holder IS NULL OR lease_until <= ?)",
            (now, now),
        )
        return [_order(r) for r in rows]

    def take_expired(self, order: Order, *, now: float) -> bool:
        """Hold an expired order to end it (False: another instance took it)."""

        def write(tx: Tx) -> bool:
            changed = tx.execute(
                "UPDATE topup_order SET lease_holder = ?, lease_until = ? WHERE order_id = ?"
                " AND (lease_holder IS NULL OR lease_until <= ?)",
                (self.holder, now + self.lease_s, order.order_id, now),
            )
            return changed == 1

        return self.store.write(write)

    def next_wake(self) -> float | None:
        """The earliest next_at or deadline of an active order (the scheduler's next look)."""
        rows = self.store.rows(
            "SELECT min(next_at), min(deadline) FROM topup_order WHERE state IN ('accepted',"
            " 'queued', 'authenticating', 'crediting', 'verifying')"
        )
        values = [v for v in (rows[0] if rows else ()) if v is not None]
        return float(min(values)) if values else None

    def active_count(self) -> int:
        rows = self.store.rows(
            "SELECT count(*) FROM topup_order WHERE state IN ('accepted', 'queued',"
            " 'authenticating', 'crediting', 'verifying')"
        )
        return int(rows[0][0])

    # --- per-meter daily ESAM failures ---------------------------------------------------------
    def esam_failure(self, meter: str, day: str) -> int:
        """Count one ESAM failure of `meter` on `day`; the day's total."""

        def write(tx: Tx) -> int:
            tx.execute(
                "INSERT INTO topup_meter_day (meter, day, esam_failures) VALUES (?, ?, 1)"
                " ON CONFLICT (meter, day) DO UPDATE SET"
                " esam_failures = topup_meter_day.esam_failures + 1",
                (meter, day),
            )
            row = tx.one(
                "SELECT esam_failures FROM topup_meter_day WHERE meter = ? AND day = ?",
                (meter, day),
            )
            return int(row[0]) if row else 1

        return self.store.write(write)

    def esam_failures_on(self, meter: str, day: str) -> int:
        rows = self.store.rows(
            "SELECT esam_failures FROM topup_meter_day WHERE meter = ? AND day = ?", (meter, day)
        )
        return int(rows[0][0]) if rows else 0

    # --- webhook outbox ------------------------------------------------------------------------
    def due_notifications(self, *, now: float, limit: int = 50) -> list[Order]:
        rows = self.store.rows(
            f"{_SELECT} WHERE notify_state = 'pending' AND notify_next_at <= ?"
            " ORDER BY notify_next_at LIMIT ?",
            (now, limit),
        )
        return [_order(r) for r in rows]

    def notified(
        self, order: Order, *, now: float, ok: bool, error: str = "", next_at: float | None = None
    ) -> None:
        changes: dict[str, Any] = {
            "notify_attempts": order.notify_attempts + 1,
            "notify_error": error[:500],
        }
        if ok:
            changes.update(notify_state="done", notify_next_at=None)
        else:
            changes.update(notify_next_at=next_at)

        def write(tx: Tx) -> None:
            for name, value in changes.items():
                setattr(order, name, value)
            assignments = ", ".join(f"{c} = ?" for c in changes)
            tx.execute(
                f"UPDATE topup_order SET {assignments} WHERE order_id = ?",  # noqa: S608
                (*changes.values(), order.order_id),
            )

        self.store.write(write)

    def next_notification(self) -> float | None:
        rows = self.store.rows(
            "SELECT min(notify_next_at) FROM topup_order WHERE notify_state = 'pending'"
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    # --- listeners -----------------------------------------------------------------------------
    def _changed(self, order: Order) -> None:
        for listener in list(self.listeners):
            try:
                listener(order)
            except Exception:  # a listener's bug must not undo a committed change
                log.exception("order listener failed")
