"""The panel's "tariff" section (电价执行): the overview figure (电价执行正确率 of the day as last
checked), the outcome on a meter's page, and a page listing the meters not OK. Read from the
store's outcomes (what the consumer's tariff job or `meterlink central report --tariff` left)."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from collections.abc import Mapping
from html import escape
from typing import Any

from central.panel.registry import Action, ActionContext, ActionResult, Figure, Registry
from central.store import Store
from central.tariff.report import short
from central.tariff.store import TariffStore

__all__ = ["TariffSection", "register"]

_TITLE = {"zh-CN": "电价执行核查", "en": "Tariff check"}


class TariffSection:
    """The section's provider; the panel binds it to its store when it starts (`bind`)."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._tariffs: TariffStore | None = None

    def bind(self, store: Store) -> None:
        self.store, self._tariffs = store, None

    def _t(self) -> TariffStore:
        if self._tariffs is None:
            if self.store is None:
                raise RuntimeError("the tariff section is not bound to a store")
            self._tariffs = TariffStore(self.store)
        return self._tariffs

    async def figure(self, day: str) -> Figure | None:
        outcomes = await asyncio.to_thread(lambda: self._t().outcomes(day))
        if not outcomes:
            return None
        ok = sum(o.outcome == "OK" for o in outcomes)
        return Figure(round(100.0 * ok / len(outcomes), 4), ok, len(outcomes))

    async def meter_block(self, concentrator: str, meter: str, lang: str) -> str | None:
        def latest() -> tuple[str, Any] | None:
            t = self._t()
            for day in reversed(t.outcome_days()[-7:]):
                for o in t.outcomes(day, meter):
                    if o.concentrator == concentrator:
                        return day, o
            return None

        found = await asyncio.to_thread(latest)
        if found is None:
            return None
        day, o = found
        suspect = " (clock-suspect)" if o.clock_suspect else ""
        return (
            f'<p class="tariff-outcome"><b>{escape(o.outcome)}</b>{suspect} · {escape(day)}'
            f" · {escape(str(o.detail.get('plan', '')))}</p><p>{escape(short(o))}</p>"
        )

    async def page(self, lang: str, query: Mapping[str, str]) -> str | None:
        def rows() -> tuple[str, list[Any]] | None:
            t = self._t()
            days = t.outcome_days()
            if not days:
                return None
            day = query.get("day", days[-1])
            try:
                dt.date.fromisoformat(day)
            except ValueError:
                day = days[-1]
            return day, [o for o in t.outcomes(day) if o.outcome != "OK"]

        got = await asyncio.to_thread(rows)
        if got is None:
            return None
        day, bad = got
        zh = lang != "en"
        cols = ("电能表", "集中器", "核查结果", "说明") if zh else ("meter", "concentrator",
                                                          "outcome", "detail")  # fmt: skip
        head = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
        body = "".join(
            f"<tr><td>{escape(o.meter)}</td><td>{escape(o.concentrator)}</td>"
            f"<td>{escape(o.outcome)}</td><td>{escape(short(o))}</td></tr>"
            for o in bad
        )
        return (
            f"<h2>{escape(_TITLE.get(lang, _TITLE['en']))} · {escape(day)}</h2>"
            f"<p>{len(bad)} {'块电表未通过' if zh else 'meters not OK'} (work orders: meterlink"
            f" central tariff workorders --day {escape(day)})</p><table>{head}{body}</table>"
        )


async def recheck(ctx: ActionContext, args: Mapping[str, str]) -> ActionResult:
    """Re-run the tariff check of a data day now (operator; audited by the panel)."""
    from central.ledger import Ledger
    from central.tariff.day import check_day
    from central.tariff.report import summary

    svc = ctx.services
    day = args.get("day", "")
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        return ActionResult(False, f"day {day!r} is not YYYY-MM-DD")

    def run() -> ActionResult:
        tariffs = TariffStore(svc.store)
        book = tariffs.plans()
        if book is None:
            return ActionResult(False, "no tariff plans yet (admin: PUT /api/tariff/plans)")
        t = svc.cfg.tariff
        result = check_day(Ledger(svc.store), tariffs, book, day, t.settings(), t.timezone)
        counts = dict(sorted(result.fleet().outcomes.items()))
        return ActionResult(True, f"{day}: {summary(result)}", {"outcomes": counts})

    return await asyncio.to_thread(run)


async def read_setup(ctx: ActionContext, args: Mapping[str, str]) -> ActionResult:
    """Ask the meter's agent to read its tariff set-up now (the ``tariff`` command; operator,
    audited). The agent publishes it as usual; it is also stored here at once, so a re-check
    right after sees it."""
    from central.commands import CommandTimeout
    from central.points import Converted, convert

    svc = ctx.services
    c, m = args.get("concentrator", ""), args.get("meter", "")
    if not c or not m:
        return ActionResult(False, "concentrator and meter are needed")
    if svc.key is None:
        return ActionResult(False, "no command key (METERLINK_MQTT_COMMAND_KEY)")
    try:
        reply = await svc.command(c, "tariff", m, {})
    except CommandTimeout as exc:
        return ActionResult(False, str(exc))
    if not reply.ok:
        detail = reply.payload.get("detail", "")
        return ActionResult(
            False, f"{reply.reason}: {detail}".strip(": "), {"reply": reply.payload}
        )
    result = reply.payload.get("result")
    if not isinstance(result, dict):
        return ActionResult(False, "the agent's reply carries no set-up", {"reply": reply.payload})
    facts = Converted()
    try:
        convert("tariff", {"concentrator": c, **result}, facts)
    except ValueError as exc:
        return ActionResult(False, f"the set-up read cannot be used: {exc}")
    await asyncio.to_thread(TariffStore(svc.store).apply_converted, facts)
    setup = result.get("setup", {})
    denied = len(setup.get("unsupported") or ())
    offset = result.get("clock_offset_s")
    return ActionResult(
        True,
        f"{m}: set-up read at {result.get('read_at')}, clock offset {offset} s,"
        f" {denied} items denied ({reply.seconds:.1f} s)",
    )


class _PanelChannel:
    """The correction's channel over the panel's command sender."""

    def __init__(self, services: Any) -> None:
        self.services = services

    async def command(
        self, concentrator: str, name: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]:
        reply = await self.services.command(concentrator, name, meter, dict(args))
        return dict(reply.payload)


async def correct(ctx: ActionContext, args: Mapping[str, str]) -> ActionResult:
    """A correction order for one meter (operator, audited): its tariff items written back to
    its plan through the encryption machine of ``[topup]``, verified by read-back and a
    re-check — or a work order when it cannot be written remotely (docs/tariff.md)."""
    from central.ledger import Ledger
    from central.tariff.correct import Corrector
    from central.tariff.day import archive_in_force
    from central.topup.hsm import load_security_module

    svc = ctx.services
    c, m = args.get("concentrator", ""), args.get("meter", "")
    if not c or not m:
        return ActionResult(False, "concentrator and meter are needed")
    if svc.key is None:
        return ActionResult(False, "no command key (METERLINK_MQTT_COMMAND_KEY)")
    t = svc.cfg.tariff
    day = dt.datetime.now(zoneinfo.ZoneInfo(t.timezone)).date()

    def lookup() -> tuple[Any, Any] | str:
        book = TariffStore(svc.store).plans()
        if book is None:
            return "no tariff plans yet (admin: PUT /api/tariff/plans)"
        meters = archive_in_force(Ledger(svc.store), str(day))
        found = next((a for a in meters if a.concentrator == c and a.meter == m), None)
        if found is None or not found.plan:
            return f"{m} is not in {c}'s archive with a tariff plan"
        plan = book.get(found.plan)
        if plan is None:
            return f"plan {found.plan!r} is not in the plan file"
        return found, plan

    looked = await asyncio.to_thread(lookup)
    if isinstance(looked, str):
        return ActionResult(False, looked)
    archived, plan = looked
    tu = svc.cfg.topup
    hsm = load_security_module(tu.hsm, {"url": tu.hsm_url, "timeout_s": tu.hsm_timeout_s})
    async with hsm:
        corrector = Corrector(svc.store, hsm, _PanelChannel(svc), t.settings(), t.timezone,
                              wait_s=svc.cfg.panel.command_timeout_s, by=ctx.user)  # fmt: skip
        r = await corrector.correct(c, m, plan, model=archived.model, day=day)
    after = f" -> {r.outcome_after}" if r.outcome_after else ""
    summary = (f"order {r.id} {m}: {r.state} [{r.outcome_before}{after}]"
               f"{': ' + r.reason if r.reason else ''}")  # fmt: skip
    ok = r.state in ("verified", "nothing", "workorder")
    return ActionResult(ok, summary, {"order": r.id, "state": r.state, "items": r.items,
                                      "workorder": r.workorder})  # fmt: skip


def register(registry: Registry) -> None:
    registry.provide("tariff", TariffSection())
    registry.action(
        Action(
            "tariff.recheck",
            {"zh-CN": "重新核查", "en": "Re-check"},
            recheck,
            section="tariff",
            fields=("day",),
        )
    )
    registry.action(
        Action(
            "tariff.read",
            {"zh-CN": "立即读取电价参数", "en": "Read the set-up now"},
            read_setup,
            section="tariff",
            fields=("concentrator", "meter"),
        )
    )
    registry.action(
        Action(
            "tariff.correct",
            {"zh-CN": "远程纠正电价参数", "en": "Correct the set-up remotely"},
            correct,
            section="tariff",
            fields=("concentrator", "meter"),
        )
    )
