"""The remote top-up success rate (远程充值成功率) as master stations count it, and the figures
beside it, from the order book.

Per acceptance day (the meters' zone) and scope (fleet, concentrator, district, manufacturer,
model, install year), over the top-up orders billing did not cancel::

    rate = confirmed / (confirmed + failed + needs_review + in progress + waiting)

Pending orders (waiting: accepted, queued; in progress: authenticating, crediting, verifying)
count **against** the rate, as SEA's SUCC_RATIO does (topup-tariff.md §A.8); needs_review is
no success and is counted with the failures (shown apart). Beside it: first-attempt success
(confirmed after one attempt, of all), attempts per order, p50/p95 time from acceptance to
confirmation, failures by class and reason, the relay-order success rate (停复电成功率), and
the meters whose top-ups failed (the utility replaces them).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from central.coverage import day_epoch
from central.points import escape_tag, field_value
from central.topup.orders import IN_PROGRESS, WAITING, FailureClass, Order, State

__all__ = ["SCOPES", "DayKpi", "ScopeKpi", "compute", "day_lines", "render"]

SCOPES = ("fleet", "concentrator", "district", "manufacturer", "model", "install_year")


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.ceil(q * len(ordered)) - 1)  # nearest rank
    return round(ordered[k], 1)


@dataclass
class ScopeKpi:
    scope: str
    key: str
    orders: int = 0
    confirmed: int = 0
    failed: int = 0
    needs_review: int = 0
    in_progress: int = 0
    waiting: int = 0
    first_attempt: int = 0
    attempts: int = 0
    seconds_to_confirm: list[float] = field(default_factory=list)
    classes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    relay_orders: int = 0
    relay_confirmed: int = 0
    relay_pending: int = 0

    def add(self, o: Order) -> None:
        if o.state is State.CANCELLED:
            return
        if o.kind == "relay":
            self.relay_orders += 1
            self.relay_confirmed += o.state is State.CONFIRMED
            self.relay_pending += o.state in IN_PROGRESS or o.state in WAITING
            return
        self.orders += 1
        self.attempts += o.attempts
        if o.state is State.CONFIRMED:
            self.confirmed += 1
            self.first_attempt += o.attempts <= 1
            if o.finished_at is not None:
                self.seconds_to_confirm.append(o.finished_at - o.accepted_at)
        elif o.state is State.FAILED:
            self.failed += 1
        elif o.state is State.NEEDS_REVIEW:
            self.needs_review += 1
        elif o.state in IN_PROGRESS:
            self.in_progress += 1
        else:
            self.waiting += 1
        if o.state in (State.FAILED, State.NEEDS_REVIEW):
            self.classes[o.reason_class or FailureClass.COMMUNICATION.value] += 1
            self.reasons[o.reason or "unknown"] += 1

    @property
    def rate(self) -> float | None:
        return _rate(self.confirmed, self.orders)

    @property
    def first_attempt_rate(self) -> float | None:
        return _rate(self.first_attempt, self.orders)

    @property
    def attempts_per_order(self) -> float | None:
        return round(self.attempts / self.orders, 2) if self.orders else None

    @property
    def p50_s(self) -> float | None:
        return _percentile(self.seconds_to_confirm, 0.5)

    @property
    def p95_s(self) -> float | None:
        return _percentile(self.seconds_to_confirm, 0.95)

    @property
    def relay_rate(self) -> float | None:
        return _rate(self.relay_confirmed, self.relay_orders)


@dataclass(frozen=True)
class FailingMeter:
    meter: str
    concentrator: str
    district: str
    manufacturer: str
    model: str
    install_year: int | None
    failed: int
    orders: int
    reasons: str


@dataclass
class DayKpi:
    day: str
    scopes: list[ScopeKpi]
    failing: list[FailingMeter]

    def fleet(self) -> ScopeKpi:
        return self.scopes[0]

    def by(self, scope: str) -> list[ScopeKpi]:
        return [s for s in self.scopes if s.scope == scope]


def _keys(o: Order) -> Iterable[tuple[str, str]]:
    yield "fleet", "all"
    yield "concentrator", o.concentrator
    yield "district", o.district or "-"
    yield "manufacturer", o.manufacturer or "-"
    yield "model", o.model or "-"
    yield "install_year", str(o.install_year) if o.install_year is not None else "-"


def compute(day: str, orders: Iterable[Order]) -> DayKpi:
    scopes: dict[tuple[str, str], ScopeKpi] = {("fleet", "all"): ScopeKpi("fleet", "all")}
    per_meter: dict[str, list[Order]] = defaultdict(list)
    for o in orders:
        for scope, key in _keys(o):
            scopes.setdefault((scope, key), ScopeKpi(scope, key)).add(o)
        if o.kind == "topup" and o.state is not State.CANCELLED:
            per_meter[o.meter].append(o)
    failing = []
    for meter, mine in per_meter.items():
        bad = [o for o in mine if o.state in (State.FAILED, State.NEEDS_REVIEW)]
        if bad:
            o = bad[0]
            reasons = Counter(b.reason or "unknown" for b in bad)
            failing.append(
                FailingMeter(meter, o.concentrator, o.district, o.manufacturer, o.model,
                             o.install_year, len(bad), len(mine),
                             ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
            )  # fmt: skip
    failing.sort(key=lambda f: (-f.failed, f.meter))
    order = {s: i for i, s in enumerate(SCOPES)}
    ranked = sorted(scopes.values(), key=lambda s: (order[s.scope], s.key))
    return DayKpi(day, ranked, failing)


def rate_line(k: DayKpi) -> str:
    """The one line master stations print (远程充值成功率 with the count per final state)."""
    f = k.fleet()
    rate = "n/a" if f.rate is None else f"{f.rate:.2f} %"
    return (
        f"远程充值成功率 {k.day}: {rate} ({f.confirmed}/{f.orders}) — confirmed {f.confirmed},"
        f" failed {f.failed}, needs_review {f.needs_review}, in progress {f.in_progress},"
        f" waiting {f.waiting}; 停复电成功率 "
        + ("n/a" if f.relay_rate is None else f"{f.relay_rate:.2f} %")
        + f" ({f.relay_confirmed}/{f.relay_orders})"
    )


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:g}{unit}"


def render(k: DayKpi, fmt: str = "table") -> str:
    rows = [
            {
                "scope": s.scope, "key": s.key, "orders": s.orders, "confirmed": s.confirmed,
                "failed": s.failed, "needs_review": s.needs_review,
                "in_progress": s.in_progress, "waiting": s.waiting, "rate": s.rate,
                "first_attempt_rate": s.first_attempt_rate,
                "attempts_per_order": s.attempts_per_order, "p50_s": s.p50_s, "p95_s": s.p95_s,
                "communication": s.classes.get("communication", 0),
                "business": s.classes.get("business", 0),
                "archive": s.classes.get("archive", 0),
                "relay_orders": s.relay_orders, "relay_confirmed": s.relay_confirmed,
                "relay_rate": s.relay_rate,
            }
        for s in k.scopes
    ]  # fmt: skip
    failing = [f.__dict__ for f in k.failing]
    if fmt == "json":
        reasons = dict(k.fleet().reasons)
        return json.dumps(
            {"day": k.day, "scopes": rows, "reasons": reasons, "failing_meters": failing},
            ensure_ascii=False, indent=2,
        ) + "\n"  # fmt: skip
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return out.getvalue()
    f = k.fleet()
    lines = [
        rate_line(k),
        f"  first-attempt success {_fmt(f.first_attempt_rate, ' %')}, attempts per order"
        f" {_fmt(f.attempts_per_order)}, time to confirmation p50 {_fmt(f.p50_s, ' s')}"
        f" p95 {_fmt(f.p95_s, ' s')}",
        "  failures by class: "
        + (", ".join(f"{c} {n}" for c, n in sorted(f.classes.items())) or "none")
        + "; by reason: "
        + (", ".join(f"{r} {n}" for r, n in f.reasons.most_common()) or "none"),
        "",
        f"{'scope':<13} {'key':<22} {'orders':>6} {'conf':>5} {'fail':>5} {'review':>6}"
        f" {'pend':>5} {'rate %':>7} {'1st %':>6} {'att':>5} {'p95 s':>7} {'relay %':>8}",
    ]
    for s in k.scopes:
        if s.scope == "fleet":
            continue
        lines.append(
            f"{s.scope:<13} {s.key[:22]:<22} {s.orders:>6} {s.confirmed:>5} {s.failed:>5}"
            f" {s.needs_review:>6} {s.in_progress + s.waiting:>5} {_fmt(s.rate):>7}"
            f" {_fmt(s.first_attempt_rate):>6} {_fmt(s.attempts_per_order):>5}"
            f" {_fmt(s.p95_s):>7} {_fmt(s.relay_rate):>8}"
        )
    lines.append("")
    lines.append(f"meters whose top-ups failed ({len(k.failing)}):")
    lines.extend(
        f"  {m.meter} {m.concentrator} {m.district or '-'} {m.manufacturer or '-'}"
        f" {m.model or '-'} {m.install_year or '-'}: {m.failed} of {m.orders} ({m.reasons})"
        for m in k.failing
    )
    return "\n".join(lines) + "\n"


def day_lines(k: DayKpi, reasons: Sequence[str] = ()) -> list[str]:
    """Line protocol (seconds): `topup` per scope, `topup_reason` per class and reason of the
    fleet (the `reasons` given are written as zeros when absent), `topup_meter` per failing
    meter. Stamped with the day at 00:00 UTC, as coverage points are."""
    at = day_epoch(k.day)
    out = []
    for s in k.scopes:
        tags = f"scope={s.scope},key={escape_tag(s.key)}"
        values: dict[str, object] = {
            "orders": s.orders, "confirmed": s.confirmed, "failed": s.failed,
            "needs_review": s.needs_review, "in_progress": s.in_progress, "waiting": s.waiting,
            "rate": s.rate, "first_attempt_rate": s.first_attempt_rate,
            "attempts_per_order": s.attempts_per_order, "p50_s": s.p50_s, "p95_s": s.p95_s,
            "relay_orders": s.relay_orders, "relay_confirmed": s.relay_confirmed,
            "relay_rate": s.relay_rate,
        }  # fmt: skip
        fields = ",".join(f"{k_}={field_value(v)}" for k_, v in values.items() if v is not None)
        out.append(f"topup,{tags} {fields} {at}")
    fleet = k.fleet()
    out.extend(
        f"topup_reason,class={cls.value},reason=all"
        f" orders={field_value(fleet.classes.get(cls.value, 0))} {at}"
        for cls in FailureClass
    )
    out.extend(
        f"topup_reason,class=any,reason={escape_tag(reason)}"
        f" orders={field_value(fleet.reasons.get(reason, 0))} {at}"
        for reason in sorted(set(reasons) | set(fleet.reasons))
    )
    for m in k.failing:
        values = {
            "failed": m.failed, "orders": m.orders, "district": m.district,
            "manufacturer": m.manufacturer, "model": m.model,
            "install_year": m.install_year, "reasons": m.reasons,
        }  # fmt: skip
        fields = ",".join(f"{k_}={field_value(v)}" for k_, v in values.items() if v is not None)
        out.append(
            f"topup_meter,concentrator={escape_tag(m.concentrator)},meter={escape_tag(m.meter)}"
            f" {fields} {at}"
        )
    return out
