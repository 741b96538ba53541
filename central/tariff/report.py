"""The tariff check's report (table, csv, json) and the technicians' work orders (CSV)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from central.tariff.check import OUTCOMES
from central.tariff.day import TariffDay
from central.tariff.expect import to_write
from central.tariff.plans import PlanBook
from central.tariff.store import Outcome

__all__ = ["WORKORDER_COLUMNS", "render", "summary", "workorders"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def as_dict(result: TariffDay) -> dict[str, Any]:
    return {
        "day": result.day,
        "scopes": [
            {"scope": s.scope, "key": s.key, "meters": s.meters, "ok": s.ok, "rate": s.rate,
             "clock_suspect": s.clock_suspect, "outcomes": dict(sorted(s.outcomes.items()))}
            for s in result.scopes
        ],
        "meters": [
            {"concentrator": o.concentrator, "meter": o.meter, "outcome": o.outcome,
             "clock_suspect": o.clock_suspect, "detail": o.detail}
            for o in result.outcomes
        ],
        "unknown_plans": [list(u) for u in result.unknown_plans],
        "without_plan": result.without_plan,
        "bad_setups": result.bad_setups,
    }  # fmt: skip


def summary(result: TariffDay) -> str:
    """One line: 电价执行正确率 with its counts."""
    f = result.fleet()
    return f"tariff execution 电价执行正确率 {_pct(f.rate)}% ({f.ok}/{f.meters} meters OK)"


def _table(result: TariffDay) -> str:
    fleet = result.fleet()
    out = [
        f"Tariff execution rate 电价执行正确率, data day {result.day}",
        f"fleet: {fleet.ok}/{fleet.meters} OK = {_pct(fleet.rate)}%"
        f" (unread meters count as not OK); clock-suspect {fleet.clock_suspect}",
        "",
        f"{'scope':<13} {'key':<20} {'meters':>7} {'ok':>7} {'rate%':>7}  not OK by outcome",
    ]
    for s in result.scopes:
        codes = ", ".join(f"{k} {n}" for k, n in sorted(s.outcomes.items()) if k != "OK")
        out.append(
            f"{s.scope:<13} {s.key:<20} {s.meters:>7} {s.ok:>7} {_pct(s.rate):>7}  {codes or '-'}"
        )
    out += ["", "outcomes (fleet):"]
    for code in OUTCOMES:
        out.append(f"  {code:<24} {fleet.outcomes[code]:>7}")
    bad = [o for o in result.outcomes if o.outcome != "OK"]
    out += ["", f"meters not OK: {len(bad)}"]
    for o in bad[:50]:
        out.append(f"  {o.meter:<14} {o.concentrator:<14} {o.outcome:<24} {short(o)}")
    if len(bad) > 50:
        out.append(f"  … {len(bad) - 50} more (--format csv or json lists all)")
    if result.unknown_plans:
        out += ["", f"meters naming a plan the plan file lacks (not counted): "
                f"{len(result.unknown_plans)}"]  # fmt: skip
        out += [f"  {m} ({c}): {p!r}" for c, m, p in result.unknown_plans[:20]]
    if result.without_plan:
        out += ["", f"meters without a tariff plan in the archive (not counted): "
                f"{result.without_plan}"]  # fmt: skip
    if result.bad_setups:
        out += ["", f"tariff set-ups that could not be read (skipped): {result.bad_setups}"]
    return "\n".join(out) + "\n"


def short(o: Outcome) -> str:
    """A one-line explanation of an outcome for lists."""
    found = o.detail.get("findings", {}).get(o.outcome, {})
    match o.outcome:
        case "NOT_READ":
            return f"last set-up read {found.get('last_setup_read') or 'never'}"
        case "UNSUPPORTED_DI":
            return "meter denies " + " ".join(found.get("dis", []))
        case "CLOCK_DRIFT":
            return f"clock off by {found.get('clock_offset_s')} s"
        case "PROGRAMMED_OUTSIDE_PLAN":
            counters = found.get("counters", {})
            return "; ".join(f"{v['event']} {v['before']}→{v['after']}" for v in counters.values())
        case "PRICE_MISMATCH" | "SWITCH_PENDING" | "SWITCH_MISSED" if "what" in found:
            return (
                f"{found['what']}: expected {found.get('expected') or found.get('expected_switch')}"
                f", found {found.get('found') or found.get('found_switch')}"
            )
        case "PARAM_MISMATCH" | "SWITCH_PENDING" | "SWITCH_MISSED":
            parts = []
            if "holidays_missing" in found:
                parts.append("holidays missing " + " ".join(found["holidays_missing"]))
            for key, t in sorted(found.get("tables", {}).items()):
                parts.append(f"set {t['set']} table {key}: expected {' '.join(t['expected'])}"
                             f" found {' '.join(t['found'])}")  # fmt: skip
            if "zones" in found:
                z = found["zones"]
                parts.append(f"set {z['set']} zones: expected {' '.join(z['expected'])}"
                             f" found {' '.join(z['found'])}")  # fmt: skip
            days = found.get("first_days", [])
            if days and not parts:
                d = days[0]
                parts.append(f"{d['day']} from {d['from']}: T{d['expected_tariff']} expected,"
                             f" T{d['found_tariff']} found ({d['minutes']} min)")  # fmt: skip
            if "reason" in found:
                parts.append(str(found["reason"]))
            if "expected_switch" in found:
                parts.append(f"switch expected {found['expected_switch']}, found"
                             f" {found.get('found_switch')}")  # fmt: skip
            return "; ".join(parts)
        case "ENERGY_MISALLOCATED":
            parts = []
            for d in found.get("days", []):
                for p in d["problems"]:
                    if "register" in p:
                        runs = " ".join(f"T{t}" for t in p["plan_tariffs"])
                        parts.append(f"{d['day']}: {p['kwh']} kWh in {p['register']}"
                                     f" (the plan runs {runs})")  # fmt: skip
                    else:
                        parts.append(f"{d['day']}: T1..Tn sum {p['sum_of_tariffs']} kWh ≠"
                                     f" total {p['total']} kWh")  # fmt: skip
            return "; ".join(parts)
    return ""


def _csv(result: TariffDay) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["day", "scope", "key", "meters", "ok", "rate", *OUTCOMES])
    for s in result.scopes:
        w.writerow([result.day, s.scope, s.key, s.meters, s.ok, _pct(s.rate),
                    *(s.outcomes[c] for c in OUTCOMES)])  # fmt: skip
    w.writerow([])
    w.writerow(["day", "concentrator", "meter", "outcome", "clock_suspect", "detail"])
    for o in result.outcomes:
        w.writerow([result.day, o.concentrator, o.meter, o.outcome, int(o.clock_suspect),
                    json.dumps(o.detail, ensure_ascii=False, sort_keys=True)])  # fmt: skip
    return buf.getvalue()


def render(result: TariffDay, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(as_dict(result), ensure_ascii=False, indent=2, default=str) + "\n"
    if fmt == "csv":
        return _csv(result)
    return _table(result)


WORKORDER_COLUMNS = ("meter", "concentrator", "outcome", "detail", "to_write")
#: outcomes a technician (or a correction order) fixes by writing the meter
FIXABLE = ("PARAM_MISMATCH", "SWITCH_PENDING", "SWITCH_MISSED", "PRICE_MISMATCH",
           "PROGRAMMED_OUTSIDE_PLAN", "CLOCK_DRIFT")  # fmt: skip


def workorders(day: str, outcomes: list[Outcome], book: PlanBook) -> str:
    """CSV for technicians: every meter whose outcome is fixed by writing it, what is wrong and
    what to write (DI = value, as the meter shows them; CLOCK_DRIFT: set the clock)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(WORKORDER_COLUMNS)
    date = dt.date.fromisoformat(day)
    for o in outcomes:
        if o.outcome not in FIXABLE:
            continue
        plan = book.get(str(o.detail.get("plan", "")))
        what = ""
        if o.outcome == "CLOCK_DRIFT":
            what = "0400010C = the correct time (08H broadcast cannot fix > 5 min)"
        elif plan is not None:
            version = plan.in_force(date)
            items: dict[str, str] = {}
            if o.outcome in ("SWITCH_PENDING",):
                tou = plan.next_change(date, "tou")
                price = plan.next_change(date, "price")
                nxt = tou or price
                if nxt is not None:
                    items = {("040200" + k[6:] if k.startswith("040100") else k): v
                             for k, v in to_write(nxt, date).items()}  # fmt: skip
                    stamp = f"{nxt.effective:%y%m%d}0000"
                    if tou is not None:
                        items["04000106"] = items["04000107"] = stamp
                    if price is not None and price.prices is not None:
                        items["040502FF"] = items.pop("040501FF", "")
                        items["04000108"] = stamp
            elif version is not None:
                items = to_write(version, date)
            what = "; ".join(f"{k}={v}" for k, v in items.items())
        w.writerow([o.meter, o.concentrator, o.outcome, short(o), what])
    return buf.getvalue()
