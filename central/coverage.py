"""The daily full-coverage success rate (全口径抄表成功率), computed from the ledger.

For a data day D and each concentrator: *expected* is every meter of the archive version in
force on D (the newest version published on or before D, in the meter's local calendar; days
before the first version known use that first version, back to the concentrator's
commissioning) — no exclusions. A meter is *read* when
a daily freeze stamped D was collected, *timely* (及时) when the first such read came before
`timely_by` on D, *complete* (完整) when a read carried every required value. Every unread meter
is explained by the reason of the latest daily round that listed it, or ``unexplained`` when no
round did. Rates are shares of *expected*, in percent. docs/coverage.md has the reasoning.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from central.config import CoverageConfig, parse_hhmm
from central.ledger import Ledger, day_offset
from central.points import escape_tag, field_value
from protocols.payloads import FailureReason

__all__ = [
    "SCOPES",
    "UNEXPLAINED",
    "DayCoverage",
    "ScopeCoverage",
    "Streak",
    "affected_days",
    "compute_day",
    "day_lines",
]

UNEXPLAINED = "unexplained"
#: the closed set of the payload contract, plus meters no round report explained
REASONS = (*(r.value for r in FailureReason), UNEXPLAINED)
SCOPES = ("fleet", "concentrator", "district", "manufacturer")
#: how far back a consecutive-failure streak is followed (meters keep 62 daily freezes)
STREAK_HORIZON_DAYS = 62


def affected_days(dirty: Iterable[str], known: list[str]) -> list[str]:
    """The days (of `known`, sorted) whose coverage a change of facts on the `dirty` days can
    move: each dirty day itself and the `STREAK_HORIZON_DAYS` after it, as far back as a
    consecutive-failure count looks. Dirty days without data have nothing to publish."""
    marks = sorted(set(dirty).intersection(known))
    ends = [day_offset(m, STREAK_HORIZON_DAYS) for m in marks]  # sorted as marks are
    out = []
    for day in known:
        i = bisect_right(marks, day)
        if i and day <= ends[i - 1]:
            out.append(day)
    return out


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 4) if whole else None


@dataclass
class ScopeCoverage:
    scope: str
    key: str
    expected: int = 0
    read: int = 0
    timely: int = 0
    complete: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.expected - self.read

    @property
    def rate(self) -> float | None:
        return _rate(self.read, self.expected)

    @property
    def timeliness_rate(self) -> float | None:
        return _rate(self.timely, self.expected)

    @property
    def completeness_rate(self) -> float | None:
        return _rate(self.complete, self.expected)


@dataclass(frozen=True)
class Streak:
    """A meter failing on D and the days before it (连续失败明细)."""

    meter: str
    concentrator: str
    district: str
    manufacturer: str
    days: int
    last_reason: str
    last_detail: str
    last_success: str | None  # the latest data day read, None if never


@dataclass
class DayCoverage:
    day: str
    scopes: list[ScopeCoverage]
    streaks: list[Streak]
    unarchived_reads: int  # freezes of meters not in the archive: reported, never counted

    def fleet(self) -> ScopeCoverage:
        return self.scopes[0]

    def by(self, scope: str) -> list[ScopeCoverage]:
        return [s for s in self.scopes if s.scope == scope]


def _version_in_force(versions: list[tuple[int, str]], day: str) -> int:
    """`versions` = (seq, day_from) in the order seen (docs/coverage.md): the newest whose
    day_from is on or before `day`, else the first."""
    in_force = [seq for seq, day_from in versions if day_from <= day]
    return in_force[-1] if in_force else versions[0][0]


def commissioned(ledger: Ledger, versions: Mapping[str, list[tuple[int, str]]]) -> dict[str, str]:
    """The first data day each concentrator counts for: the date of its first archive, or its
    first read or failure report if earlier (backfilled days). Before it, its meters were not
    yet the utility's to read — a concentrator installed today is not 0 % on last month."""
    first_data = {
        str(c): str(d)
        for c, d in ledger.rows(
            "SELECT concentrator, min(day) FROM (SELECT concentrator, day FROM daily_read"
            " UNION ALL SELECT concentrator, day FROM daily_failure) AS facts GROUP BY concentrator"
        )
    }
    out = {}
    for c, known in versions.items():
        first_archive = known[0][1]
        out[c] = min(first_archive, first_data.get(c, first_archive))
    return out


def compute_day(
    ledger: Ledger, day: str, cfg: CoverageConfig, *, concentrator: str | None = None
) -> DayCoverage:
    timely_s = _seconds(parse_hhmm(cfg.timely_by))
    versions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for c, v, day_from in ledger.rows(
        "SELECT concentrator, seq, day_from FROM archive_version"
        " WHERE concentrator = coalesce(?, concentrator) ORDER BY concentrator, seq",
        (concentrator,),
    ):
        versions[c].append((int(v), str(day_from)))
    since = commissioned(ledger, versions)
    versions = defaultdict(list, {c: v for c, v in versions.items() if since[c] <= day})

    fleet = ScopeCoverage("fleet", concentrator or "all")
    groups: dict[tuple[str, str], ScopeCoverage] = {}
    failing: list[tuple[str, str, str, str, str, str]] = []
    unarchived = 0
    for c, known in sorted(versions.items()):
        version = _version_in_force(known, day)
        reads = {
            str(m): (int(read_at) <= int(start) + timely_s, bool(complete))
            for m, read_at, start, complete in ledger.rows(
                "SELECT meter, read_at, day_start, complete FROM daily_read"
                " WHERE concentrator = ? AND day = ?",
                (c, day),
            )
        }
        failures = {
            str(m): (str(reason), str(detail))
            for m, reason, detail in ledger.rows(
                "SELECT meter, reason, detail FROM daily_failure"
                " WHERE concentrator = ? AND day = ?",
                (c, day),
            )
        }
        expected = ledger.rows(
            "SELECT meter, district, manufacturer FROM archive_meter"
            " WHERE concentrator = ? AND seq = ? ORDER BY meter",
            (c, version),
        )
        archived = set()
        for meter, district, manufacturer in expected:
            archived.add(meter)
            keys = [
                ("concentrator", c),
                ("district", district or "unknown"),
                ("manufacturer", manufacturer or "unknown"),
            ]
            scopes = [fleet, *(groups.setdefault(k, ScopeCoverage(*k)) for k in keys)]
            got = reads.get(meter)
            if got is not None:
                timely, complete = got
                for s in scopes:
                    s.expected += 1
                    s.read += 1
                    s.timely += timely
                    s.complete += complete
            else:
                reason, detail = failures.get(meter, (UNEXPLAINED, ""))
                for s in scopes:
                    s.expected += 1
                    s.reasons[reason] += 1
                failing.append((c, meter, district, manufacturer, reason, detail))
        unarchived += len(set(reads) - archived)

    order = {s: i for i, s in enumerate(SCOPES)}
    scopes = [fleet, *sorted(groups.values(), key=lambda s: (order[s.scope], s.key))]
    return DayCoverage(day, scopes, _streaks(ledger, day, failing, versions, since), unarchived)


def _seconds(t: dt.time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _streaks(
    ledger: Ledger,
    day: str,
    failing: list[tuple[str, str, str, str, str, str]],
    versions: Mapping[str, list[tuple[int, str]]],
    commissioned: Mapping[str, str],
) -> list[Streak]:
    """Count back over the data days the ledger knows (any concentrator's) until a read, a day
    the meter was not in its concentrator's archive in force, or a day before the concentrator
    was commissioned (it was not expected then)."""
    if not failing:
        return []
    since = day_offset(day, -STREAK_HORIZON_DAYS)
    days = [d for d in ledger.known_days(day) if d >= since]
    days.reverse()  # newest first, D itself included
    read_days: dict[tuple[str, str], set[str]] = defaultdict(set)
    #: (concentrator, day) -> the meters of the archive in force then, for the days another
    #: archive than D's was (every failing meter is in D's)
    archived: dict[tuple[str, str], frozenset[str]] = {}
    for c in {f[0] for f in failing}:
        for meter, d in ledger.rows(
            "SELECT meter, day FROM daily_read WHERE concentrator = ? AND day BETWEEN ? AND ?",
            (c, since, day),
        ):
            read_days[(c, str(meter))].add(str(d))
        today = _version_in_force(versions[c], day)
        members: dict[int, frozenset[str]] = {}
        for d in days:
            seq = _version_in_force(versions[c], d)
            if seq != today:
                if seq not in members:
                    members[seq] = frozenset(
                        str(m)
                        for (m,) in ledger.rows(
                            "SELECT meter FROM archive_meter WHERE concentrator = ? AND seq = ?",
                            (c, seq),
                        )
                    )
                archived[(c, d)] = members[seq]
    out = []
    for c, meter, district, manufacturer, reason, detail in failing:
        seen = read_days.get((c, meter), set())
        count = 0
        for d in days:
            if d in seen or d < commissioned[c] or meter not in archived.get((c, d), (meter,)):
                break
            count += 1
        last = max(seen, default=None)  # within the horizon, as the count
        out.append(Streak(meter, c, district, manufacturer, max(count, 1), reason, detail, last))
    out.sort(key=lambda s: (-s.days, s.concentrator, s.meter))
    return out


# --- to InfluxDB -------------------------------------------------------------------------------
def day_epoch(day: str) -> int:
    """Coverage points are stamped with the data day's date at 00:00 UTC: a label, not an
    instant (the day is each meter's local calendar day)."""
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.UTC).timestamp())


def _fields(pairs: Mapping[str, object]) -> str:
    return ",".join(f"{k}={field_value(v)}" for k, v in pairs.items() if v is not None)


def day_lines(
    cov: DayCoverage, published: dict[str, set[str]]
) -> tuple[list[str], dict[str, set[str]]]:
    """Line protocol for a day's coverage, plus zeroing points for series published before
    that no longer apply (a meter a backfill recovered).
    Returns the lines and the series now published, by measurement."""
    at = day_epoch(cov.day)
    lines: list[str] = []
    now: dict[str, set[str]] = {"coverage_streak": set()}
    for s in cov.scopes:
        tags = f"scope={s.scope},key={escape_tag(s.key)}"
        counts = {
            "expected": s.expected,
            "collected": s.read,  # not "read": READ is an InfluxQL keyword
            "failed": s.failed,
            "timely": s.timely,
            "complete": s.complete,
            "rate": s.rate,
            "timeliness_rate": s.timeliness_rate,
            "completeness_rate": s.completeness_rate,
        }
        if s.scope == "fleet":
            counts["unarchived_reads"] = cov.unarchived_reads
        lines.append(f"coverage,{tags} {_fields(counts)} {at}")
        # every reason, zeros too: a panel's last() over a range then never shows a count
        # from an older day for a reason that has gone
        lines += [
            f"coverage_reason,{tags},reason={reason} meters={field_value(s.reasons[reason])} {at}"
            for reason in REASONS
        ]
    for st in cov.streaks:
        series = f"concentrator={escape_tag(st.concentrator)},meter={escape_tag(st.meter)}"
        now["coverage_streak"].add(series)
        streak = {
            "days": st.days,
            "district": st.district,
            "manufacturer": st.manufacturer,
            "last_reason": st.last_reason,
            "last_detail": st.last_detail,
            "last_success": st.last_success or "never",
        }
        lines.append(f"coverage_streak,{series} {_fields(streak)} {at}")
    gone_streaks = published.get("coverage_streak", set()) - now["coverage_streak"]
    lines += [f'coverage_streak,{s} days=0.0,last_reason="" {at}' for s in sorted(gone_streaks)]
    return lines, now
