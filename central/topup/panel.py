"""The operators' panel's 远程充值 section (`central.panel.registry`): the day's top-up
success rate on the overview, a meter's recent orders on its page, and a page of the day's
KPI with the orders that failed or need review and the meters whose top-ups failed.

Operator actions on those orders (issue 12; operator role, CSRF-checked and audited by the
panel): ``topup.retry`` puts a needs_review (or communication-failed) order back in its meter's
queue — its next attempt starts with a read-back, which decides, so it cannot credit twice —
and ``topup.close`` ends a needs_review order with a mandatory note (`OrderBook.retry`,
`OrderBook.close`). Their buttons are on the order rows of the section page and the meter page.

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
from central.panel.registry import Action, ActionContext, ActionResult, Figure, Forms, Registry
from central.store import Store
from central.topup.kpi import compute, rate_line
from central.topup.orders import SCHEMA, OrderBook, OrderError, State

__all__ = ["TopupSection", "register"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LABELS = {
    "zh-CN": {"order": "订单", "state": "状态", "reason": "原因", "amount": "金额(分)",
              "attempts": "尝试", "accepted": "受理时间", "failing": "充值失败的电表",
              "problems": "失败 / 待复核订单", "none": "无", "meter": "电表", "act": "操作",
              "retry": "重试", "close": "关闭", "note": "关闭说明(必填)",
              "retry_note": "说明(可选)"},
    "en": {"order": "order", "state": "state", "reason": "reason", "amount": "amount (fen)",
           "attempts": "attempts", "accepted": "accepted", "failing": "meters whose top-ups failed",
           "problems": "failed / needs-review orders", "none": "none", "meter": "meter",
           "act": "action", "retry": "Retry", "close": "Close", "note": "why (required)",
           "retry_note": "note (optional)"},
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

    def _table(self, orders: list[Any], lang: str, forms: Forms | None = None) -> str:
        t = self._labels(lang)
        if not orders:
            return f"<p>{_e(t['none'])}</p>"
        columns = ("order", "meter", "state", "reason", "amount", "attempts", "accepted")
        head = "".join(f"<th>{_e(t[c])}</th>" for c in columns)
        if forms is not None:
            head += f"<th>{_e(t['act'])}</th>"
        rows = []
        for o in orders:
            accepted = dt.datetime.fromtimestamp(o.accepted_at, self.tz).strftime("%m-%d %H:%M")
            cells = (o.order_id, o.meter, o.state.value, o.reason or "", o.amount_fen or o.action,
                     o.attempts, accepted)  # fmt: skip
            row = "".join(f"<td>{_e(c)}</td>" for c in cells)
            if forms is not None:
                row += f'<td class="order-actions">{self._buttons(o, forms, t)}</td>'
            rows.append(f'<tr data-order="{_e(o.order_id)}">{row}</tr>')
        body = "".join(rows)
        return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def _buttons(self, o: Any, forms: Forms, t: Mapping[str, str]) -> str:
        """Retry / close for the orders they apply to (the order book checks again)."""
        out = []
        ident = re.sub(r"[^A-Za-z0-9_-]", "_", o.order_id)
        if self.book.retryable(o):
            out.append(forms.button("topup.retry", t["retry"], {"order_id": o.order_id},
                                    element_id=f"retry-{ident}"))  # fmt: skip
        if o.state is State.NEEDS_REVIEW:
            out.append(forms.button("topup.close", t["close"], {"order_id": o.order_id},
                                    note=t["note"], note_required=True,
                                    element_id=f"close-{ident}"))  # fmt: skip
        return "".join(out)

    async def meter_block(
        self, concentrator: str, meter: str, lang: str, forms: Forms | None = None
    ) -> str | None:
        rows = await asyncio.to_thread(
            self.book.store.rows,
            "SELECT order_id FROM topup_order WHERE meter = ? ORDER BY seq DESC LIMIT 10",
            (meter,),
        )
        orders = [o for (oid,) in rows if (o := await asyncio.to_thread(self.book.get, oid))]
        if not orders:
            return None
        return self._table(orders, lang, forms)

    async def page(
        self, lang: str, query: Mapping[str, str], forms: Forms | None = None
    ) -> str | None:
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
            f"<h2>{_e(t['problems'])}</h2>{self._table(problems, lang, forms)}"
            f"<h2>{_e(t['failing'])}</h2>"
            + (f"<ul>{failing}</ul>" if failing else f"<p>{_e(t['none'])}</p>")
        )


def _book(ctx: ActionContext) -> tuple[OrderBook, float]:
    cfg = ctx.services.cfg.topup
    return OrderBook(ctx.services.store, zoneinfo.ZoneInfo(cfg.timezone)), cfg.default_deadline_s


async def retry(ctx: ActionContext, args: Mapping[str, str]) -> ActionResult:
    """Put a needs_review / communication-failed order back in its meter's queue (the
    executor's read-back decides before any send); the operator is named in its trail."""
    book, deadline_s = _book(ctx)
    order_id = args.get("order_id", "")
    note = args.get("note", "").strip()[:500]
    now = common.clock.current().time()
    try:
        order = await asyncio.to_thread(
            book.retry, order_id, operator=ctx.user, note=note, now=now, deadline=now + deadline_s,
            via="panel",
        )  # fmt: skip
    except OrderError as exc:
        return ActionResult(False, f"{order_id}: {exc}", {"code": exc.code})
    return ActionResult(
        True,
        f"{order_id}: {order.state.value}, read back before any send (deadline"
        f" {order.view(book.tz)['deadline']})",
        {"order_id": order_id, "state": order.state.value},
    )


async def close(ctx: ActionContext, args: Mapping[str, str]) -> ActionResult:
    """End a needs_review order with the operator's note (failed, or confirmed when a read-back
    had put its credit on the meter)."""
    book, _ = _book(ctx)
    order_id = args.get("order_id", "")
    note = args.get("note", "").strip()[:500]
    now = common.clock.current().time()
    try:
        order = await asyncio.to_thread(
            book.close, order_id, operator=ctx.user, note=note, now=now, via="panel"
        )
    except OrderError as exc:
        return ActionResult(False, f"{order_id}: {exc}", {"code": exc.code})
    return ActionResult(
        True,
        f"{order_id}: {order.state.value} ({order.reason}): {note}",
        {"order_id": order_id, "state": order.state.value},
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
    registry.action(
        Action(
            "topup.retry",
            {"zh-CN": "重试", "en": "Retry"},
            retry,
            section="topup",
            fields=("order_id", "note"),
            inline=True,
        )
    )
    registry.action(
        Action(
            "topup.close",
            {"zh-CN": "关闭", "en": "Close"},
            close,
            section="topup",
            fields=("order_id", "note"),
            inline=True,
        )
    )
