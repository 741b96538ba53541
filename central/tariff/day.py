"""One data day of the tariff check for the whole archive, and its KPI.

电价执行正确率 = meters whose outcome is OK ÷ meters in the archive (the version in force that
day, as coverage counts it) that name a plan in force — unread meters count as not OK
(NOT_READ), mirroring 全口径. Broken down by concentrator, district, manufacturer and model.
A meter naming a plan the plan file does not have is not counted; the report lists it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from central.coverage import _version_in_force, commissioned, day_epoch
from central.ledger import Ledger, day_offset
from central.points import escape_tag, field_value
from central.tariff.check import (
    OUTCOMES,
    CheckSettings,
    EquivalenceCache,
    MeterFacts,
    check_meter,
    tou_digest,
)
from central.tariff.plans import PlanBook
from central.tariff.store import FreezeFact, Outcome, TariffStore
from protocols.tariff import TariffPayloadError, TariffSetup

__all__ = [
    "SCOPES",
    "TariffDay",
    "TariffScope",
    "check_day",
    "day_lines",
    "switch_read_candidates",
]

SCOPES = ("fleet", "concentrator", "district", "manufacturer", "model")


@dataclass
class TariffScope:
    scope: str
    key: str
    meters: int = 0
    ok: int = 0
    clock_suspect: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float | None:
        return round(100.0 * self.ok / self.meters, 4) if self.meters else None


@dataclass
class TariffDay:
    day: str
    scopes: list[TariffScope]
    outcomes: list[Outcome]
    #: (concentrator, meter, plan name) of meters naming a plan the file does not have
    unknown_plans: list[tuple[str, str, str]]
    #: meters in the archive without a plan (not counted)
    without_plan: int
    #: set-up payloads that could not be read (counted, skipped)
    bad_setups: int = 0

    def fleet(self) -> TariffScope:
        return self.scopes[0]


@dataclass(frozen=True)
class ArchivedMeter:
    concentrator: str
    meter: str
    district: str
    manufacturer: str
    model: str
    plan: str


def archive_in_force(ledger: Ledger, day: str) -> list[ArchivedMeter]:
    """Every meter of the archive versions in force on `day` (as coverage counts them)."""
    versions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for c, seq, day_from in ledger.rows(
        "SELECT concentrator, seq, day_from FROM archive_version ORDER BY concentrator, seq"
    ):
        versions[str(c)].append((int(seq), str(day_from)))
    since = commissioned(ledger, versions)
    out = []
    for c, known in sorted(versions.items()):
        if since[c] > day:
            continue
        seq = _version_in_force(known, day)
        out += [
            ArchivedMeter(
                c, str(m), str(d) or "unknown", str(f) or "unknown", str(mo) or "unknown", str(p)
            )
            for m, d, f, mo, p in ledger.rows(
                "SELECT meter, district, manufacturer, model, tariff_plan FROM archive_meter"
                " WHERE concentrator = ? AND seq = ? ORDER BY meter",
                (c, seq),
            )
        ]
    return out


def check_day(
    ledger: Ledger,
    tariffs: TariffStore,
    book: PlanBook,
    day: str,
    settings: CheckSettings,
    timezone: str,
    *,
    cache: EquivalenceCache | None = None,
    save: bool = True,
) -> TariffDay:
    tz = zoneinfo.ZoneInfo(timezone)
    date = dt.date.fromisoformat(day)
    day_end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tz)
    since = day_end - dt.timedelta(days=settings.max_setup_age_days + 31)
    jobs = tariffs.jobs(int(since.timestamp()))
    days = [day_offset(day, -2), day_offset(day, -1), day]
    loaded: str | None = None  # one concentrator's set-ups and freezes in memory at a time
    raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
    freezes: dict[tuple[str, str], dict[str, FreezeFact]] = {}
    cache = cache if cache is not None else EquivalenceCache()
    fleet = TariffScope("fleet", "all")
    groups: dict[tuple[str, str], TariffScope] = {}
    outcomes: list[Outcome] = []
    unknown: list[tuple[str, str, str]] = []
    without = bad = 0
    for a in archive_in_force(ledger, day):  # ordered by concentrator
        if a.concentrator != loaded:
            loaded = a.concentrator
            raw = tariffs.setups_until(int(day_end.timestamp()), int(since.timestamp()), loaded)
            freezes = tariffs.freezes(days, loaded)
        if not a.plan:
            without += 1
            continue
        plan = book.get(a.plan)
        if plan is None:
            unknown.append((a.concentrator, a.meter, a.plan))
            continue
        if plan.in_force(date) is None:
            continue  # the plan starts later: nothing to execute yet
        setups: list[TariffSetup] = []
        digest = None
        for payload in raw.get((a.concentrator, a.meter), []):
            try:
                setups.append(TariffSetup.from_payload(payload))
                digest = tou_digest(payload)
            except (TariffPayloadError, KeyError, TypeError):
                bad += 1
                digest = None
        facts = MeterFacts(
            a.concentrator,
            a.meter,
            plan,
            setups,
            freezes.get((a.concentrator, a.meter), {}),
            jobs.get((a.concentrator, a.meter), []),
            digest,
        )
        outcome = check_meter(facts, date, day_end, tz, settings, cache)
        outcomes.append(outcome)
        keys = [
            ("concentrator", a.concentrator),
            ("district", a.district),
            ("manufacturer", a.manufacturer),
            ("model", a.model),
        ]
        for s in (fleet, *(groups.setdefault(k, TariffScope(*k)) for k in keys)):
            s.meters += 1
            s.ok += outcome.outcome == "OK"
            s.clock_suspect += outcome.clock_suspect
            s.outcomes[outcome.outcome] += 1
    if save:
        tariffs.save_outcomes(day, outcomes)
    order = {s: i for i, s in enumerate(SCOPES)}
    scopes = [fleet, *sorted(groups.values(), key=lambda s: (order[s.scope], s.key))]
    return TariffDay(day, scopes, outcomes, unknown, without, bad)


def day_lines(result: TariffDay) -> list[str]:
    """Line protocol: ``tariff_execution`` per scope (rate and counts, one field per outcome)
    and ``tariff_outcome`` per meter (its outcome, plan, clock-suspect flag)."""
    at = day_epoch(result.day)
    lines = []
    for s in result.scopes:
        fields: dict[str, Any] = {
            "meters": s.meters,
            "ok": s.ok,
            "rate": s.rate,
            "clock_suspect": s.clock_suspect,
        }
        fields.update({code.lower(): s.outcomes[code] for code in OUTCOMES})
        body = ",".join(f"{k}={field_value(v)}" for k, v in fields.items() if v is not None)
        lines.append(f"tariff_execution,scope={s.scope},key={escape_tag(s.key)} {body} {at}")
    for o in result.outcomes:  # every meter, OK too: a re-check overwrites the day's point
        detail = {
            "outcome": o.outcome,
            "plan": o.detail.get("plan", ""),
            "clock_suspect": o.clock_suspect,
        }
        body = ",".join(f"{k}={field_value(v)}" for k, v in detail.items())
        lines.append(
            f"tariff_outcome,concentrator={escape_tag(o.concentrator)},meter={escape_tag(o.meter)}"
            f" {body} {at}"
        )
    return lines


def switch_read_candidates(
    ledger: Ledger, tariffs: TariffStore, book: PlanBook, today: dt.date, timezone: str
) -> list[tuple[str, str, str]]:
    """(concentrator, meter, plan effective date) of the meters whose plan took a new version
    today or yesterday and whose latest set-up was read before it: the centre asks their agents
    to read them now (the agent only knows the switch times a meter holds; a meter that missed
    its switch holds none). Unread meters (no set-up at all) are the agent's own business."""
    tz = zoneinfo.ZoneInfo(timezone)
    switched = {}
    for plan in book.plans.values():
        for v in plan.version[1:]:
            if 0 <= (today - v.effective).days <= 1:
                switched[plan.name] = v.effective
    if not switched:
        return []
    latest = {
        (str(c), str(m)): int(r)
        for c, m, r in tariffs.store.rows(
            "SELECT concentrator, meter, max(read_at) FROM tariff_setup"
            " GROUP BY concentrator, meter"
        )
    }
    out = []
    for a in archive_in_force(ledger, today.isoformat()):
        effective = switched.get(a.plan)
        if effective is None:
            continue
        since = int(dt.datetime.combine(effective, dt.time(), tz).timestamp())
        read = latest.get((a.concentrator, a.meter))
        if read is not None and read < since:
            out.append((a.concentrator, a.meter, effective.isoformat()))
    return out
