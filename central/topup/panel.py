"""The operators' panel's 远程充值 section (`central.panel.registry`): the day's top-up
success rate on the overview, a meter's recent orders on its page, and a page of the day's
KPI with the orders that failed or need review and the meters whose top-ups failed.

Configured when the panel's store holds the order service's tables (the service ran on it);
otherwise the slot stays "not configured".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

import common.clock
from central.panel.registry import Figure, Registry
from central.store import Store
from central.topup.kpi import compute, rate_line
from central.topup.orders import SCHEMA, OrderBook, State

__all__ = ["TopupSection", "register"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LABELS = {
    "zh-CN": {"order": "订单", "state": "状态", "reason": "原因", "amount": "金额(分)",
              "attempts": "尝试", "accepted": "受理时间", "failing": "充值失败的电表",
              "problems": "失败 / 待复核订单", "none": "无", "meter": "电表"},
    "en": {"order": "order", "state": "state", "reason": "reason", "amount": "amount (fen)",
           "attempts": "attempts", "accepted": "accepted", "failing": "meters whose top-ups failed",
           "problems": "failed / needs-review orders", "none": "none", "meter": "meter"},
}  # fmt: skip


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


class TopupSection:
    def __init__(self, store: Store, tz: dt.tzinfo) -> None:
        self.book = OrderBook(store, tz)
        self.tz = tz

    def _labels(self, lang: str) -> Mapping[str, str]:
        return _LABELS.get(lang, _LABELS["en"])

    async def figure(self, day: str) -> Figure | None:
        orders = await asyncio.to_thread(self.book.orders_of_days, [day], "topup")
        k = compute(day, orders).fleet()
        if not k.orders:
            return None
        return Figure(k.rate, k.confirmed, k.orders, target=None)

    def _table(self, orders: list[Any], lang: str) -> str:
        t = self._labels(lang)
        if not orders:
            return f"<p>{_e(t['none'])}</p>"
        columns = ("order", "meter", "state", "reason", "amount", "attempts", "accepted")
        head = "".join(f"<th>{_e(t[c])}</th>" for c in columns)
        rows = []
        for o in orders:
            accepted = dt.datetime.fromtimestamp(o.accepted_at, self.tz).strftime("%m-%d %H:%M")
            cells = (o.order_id, o.meter, o.state.value, o.reason or "", o.amount_fen or o.action,
                     o.attempts, accepted)  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

    async def meter_block(self, concentrator: str, meter: str, lang: str) -> str | None:
        rows = await asyncio.to_thread(
            self.book.store.rows,
            "SELECT order_id FROM topup_order WHERE meter = ? ORDER BY seq DESC LIMIT 10",
            (meter,),
        )
        orders = [o for (oid,) in rows if (o := await asyncio.to_thread(self.book.get, oid))]
        if not orders:
            return None
        return self._table(orders, lang)

    async def page(self, lang: str, query: Mapping[str, str]) -> str | None:
        day = query.get("day", "")
        if not _DAY.match(day):
            day = common.clock.current().now(self.tz).date().isoformat()
        orders = await asyncio.to_thread(self.book.orders_of_days, [day])
        k = compute(day, orders)
        t = self._labels(lang)
        problems = [o for o in orders if o.state in (State.FAILED, State.NEEDS_REVIEW)]
        failing = "".join(
            f"<li>{_e(m.meter)} {_e(m.concentrator)} {_e(m.district)} {_e(m.manufacturer)}"
            f" {_e(m.model)} {_e(m.install_year)}: {_e(m.reasons)}</li>"
            for m in k.failing
        )
        return (
            f'<p id="topup-rate">{_e(rate_line(k))}</p>'
            f"<h2>{_e(t['problems'])}</h2>{self._table(problems, lang)}"
            f"<h2>{_e(t['failing'])}</h2>"
            + (f"<ul>{failing}</ul>" if failing else f"<p>{_e(t['none'])}</p>")
        )


def register(registry: Registry) -> None:
    """Provide the section when the panel's store holds the order service's tables."""
    store = registry.context.get("store")
    cfg = registry.context.get("cfg")
    if not isinstance(store, Store) or cfg is None:
        return
    if store.versions().get(SCHEMA.component, 0) < 1:
        return
    registry.provide("topup", TopupSection(store, zoneinfo.ZoneInfo(cfg.topup.timezone)))
