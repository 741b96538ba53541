"""The daily reconciliation export (对账): totals and one line per order of a day, as JSON or
CSV — `meterlink central topup reconcile --day D` and ``GET /v1/reconciliation?day=D``.

The day is the acceptance day in the meters' zone (`[topup] timezone`). Amounts in fen; only
confirmed top-ups count as credited (a remote meter's credit is the service's ledger entry).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from typing import Any

from central.topup.orders import OrderBook

__all__ = ["DETAIL_COLUMNS", "reconciliation", "render_csv"]

DETAIL_COLUMNS = (
    "order_id", "kind", "meter", "concentrator", "mode", "customer", "amount_fen",
    "purchase_count", "action", "state", "reason", "reason_class", "attempts", "credited",
    "readback_count", "readback_amount_fen", "readback_remaining_fen", "accepted_at",
    "finished_at",
)  # fmt: skip


def reconciliation(book: OrderBook, day: str) -> dict[str, Any]:
    orders = book.orders_of_days([day])
    tz = book.tz

    def iso(t: float | None) -> str | None:
        return None if t is None else dt.datetime.fromtimestamp(t, tz).isoformat(timespec="seconds")

    states: Counter[str] = Counter()
    credited_fen = 0
    credited_count = 0
    details = []
    for o in orders:
        states[f"{o.kind}:{o.state.value}"] += 1
        if o.kind == "topup" and o.state.value == "confirmed":
            credited_fen += o.amount_fen or 0
            credited_count += 1
        readback = o.result.get("readback") or {}
        details.append(
            {
                "order_id": o.order_id, "kind": o.kind, "meter": o.meter,
                "concentrator": o.concentrator, "mode": o.mode, "customer": o.customer,
                "amount_fen": o.amount_fen, "purchase_count": o.purchase_count,
                "action": o.action, "state": o.state.value, "reason": o.reason,
                "reason_class": o.reason_class, "attempts": o.attempts, "credited": o.credited,
                "readback_count": readback.get("purchase_count"),
                "readback_amount_fen": readback.get("last_amount_fen"),
                "readback_remaining_fen": readback.get("remaining_fen"),
                "accepted_at": iso(o.accepted_at), "finished_at": iso(o.finished_at),
            }
        )  # fmt: skip
    return {
        "day": day,
        "totals": {
            "orders": len(orders),
            "topups": sum(1 for o in orders if o.kind == "topup"),
            "relay_orders": sum(1 for o in orders if o.kind == "relay"),
            "confirmed_topups": credited_count,
            "credited_fen": credited_fen,
            "ordered_fen": sum(o.amount_fen or 0 for o in orders if o.kind == "topup"),
            "by_state": dict(sorted(states.items())),
        },
        "orders": details,
    }


def render_csv(doc: dict[str, Any]) -> str:
    """Totals as ``# key,value`` lines, then the per-order table with a header."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    totals = doc["totals"]
    writer.writerow(["# day", doc["day"]])
    for key in ("orders", "topups", "relay_orders", "confirmed_topups", "credited_fen",
                "ordered_fen"):  # fmt: skip
        writer.writerow([f"# {key}", totals[key]])
    for key, n in totals["by_state"].items():
        writer.writerow([f"# {key}", n])
    writer.writerow(DETAIL_COLUMNS)
    for row in doc["orders"]:
        writer.writerow(["" if row[c] is None else row[c] for c in DETAIL_COLUMNS])
    return out.getvalue()
