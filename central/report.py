"""Coverage report rendering: table (for a terminal), csv, json."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from central.coverage import DayCoverage, ScopeCoverage

__all__ = ["render"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _scope_dict(s: ScopeCoverage) -> dict[str, Any]:
    return {
        "scope": s.scope,
        "key": s.key,
        "expected": s.expected,
        "read": s.read,
        "failed": s.failed,
        "rate": s.rate,
        "timely": s.timely,
        "timeliness_rate": s.timeliness_rate,
        "complete": s.complete,
        "completeness_rate": s.completeness_rate,
        "failed_by_reason": dict(sorted(s.reasons.items())),
    }


def as_dict(cov: DayCoverage, min_days: int, threshold: float) -> dict[str, Any]:
    fleet = cov.fleet()
    return {
        "day": cov.day,
        "threshold": threshold,
        "meets_threshold": fleet.rate is not None and fleet.rate >= threshold,
        "unarchived_reads": cov.unarchived_reads,
        "scopes": [_scope_dict(s) for s in cov.scopes],
        "consecutive_failures": [
            {
                "meter": st.meter,
                "concentrator": st.concentrator,
                "district": st.district,
                "manufacturer": st.manufacturer,
                "days": st.days,
                "last_reason": st.last_reason,
                "last_detail": st.last_detail,
                "last_success": st.last_success,
            }
            for st in cov.streaks
            if st.days >= min_days
        ],
    }


def _table(cov: DayCoverage, min_days: int, threshold: float) -> str:
    fleet = cov.fleet()
    verdict = (
        "no meters expected"
        if fleet.rate is None
        else ("meets" if fleet.rate >= threshold else "BELOW") + f" the {threshold:g}% target"
    )
    out = [
        f"Full-coverage reading success rate 全口径抄表成功率, data day {cov.day}",
        f"fleet: {fleet.read}/{fleet.expected} read = {_pct(fleet.rate)}% ({verdict});"
        f" timely {_pct(fleet.timeliness_rate)}%, complete {_pct(fleet.completeness_rate)}%",
        "",
        f"{'scope':<13} {'key':<20} {'expected':>8} {'read':>8} {'rate%':>7} {'timely%':>8}"
        f" {'complete%':>9} {'failed':>7}",
    ]
    out += [
        f"{s.scope:<13} {s.key:<20} {s.expected:>8} {s.read:>8} {_pct(s.rate):>7}"
        f" {_pct(s.timeliness_rate):>8} {_pct(s.completeness_rate):>9} {s.failed:>7}"
        for s in cov.scopes
    ]
    out += ["", "failures by reason (fleet):"]
    if not fleet.reasons:
        out.append("  none")
    for reason, n in fleet.reasons.most_common():
        out.append(f"  {reason:<20} {n:>7}")
    streaks = [st for st in cov.streaks if st.days >= min_days]
    out += ["", f"consecutive failures 连续失败明细 (>= {min_days} days): {len(streaks)} meters"]
    if streaks:
        out.append(
            f"  {'meter':<14} {'concentrator':<14} {'district':<12} {'manufacturer':<14}"
            f" {'days':>4} {'last reason':<18} {'last read':<10}"
        )
    for st in streaks:
        out.append(
            f"  {st.meter:<14} {st.concentrator:<14} {st.district:<12} {st.manufacturer:<14}"
            f" {st.days:>4} {st.last_reason:<18} {st.last_success or 'never':<10}"
        )
    if cov.unarchived_reads:
        out += ["", f"reads from meters not in the archive (not counted): {cov.unarchived_reads}"]
    return "\n".join(out) + "\n"


def _csv(cov: DayCoverage, min_days: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "day",
            "scope",
            "key",
            "expected",
            "read",
            "rate",
            "timely",
            "timeliness_rate",
            "complete",
            "completeness_rate",
            "failed",
        ]
    )
    for s in cov.scopes:
        w.writerow(
            [
                cov.day,
                s.scope,
                s.key,
                s.expected,
                s.read,
                _pct(s.rate),
                s.timely,
                _pct(s.timeliness_rate),
                s.complete,
                _pct(s.completeness_rate),
                s.failed,
            ]
        )
    w.writerow([])
    w.writerow(["day", "scope", "key", "reason", "meters"])
    for s in cov.scopes:
        for reason, n in sorted(s.reasons.items()):
            w.writerow([cov.day, s.scope, s.key, reason, n])
    w.writerow([])
    w.writerow(
        [
            "day",
            "meter",
            "concentrator",
            "district",
            "manufacturer",
            "days",
            "last_reason",
            "last_detail",
            "last_success",
        ]
    )
    for st in cov.streaks:
        if st.days >= min_days:
            w.writerow(
                [
                    cov.day,
                    st.meter,
                    st.concentrator,
                    st.district,
                    st.manufacturer,
                    st.days,
                    st.last_reason,
                    st.last_detail,
                    st.last_success or "never",
                ]
            )
    return buf.getvalue()


def render(cov: DayCoverage, fmt: str, *, min_days: int, threshold: float = 98.0) -> str:
    if fmt == "json":
        return json.dumps(as_dict(cov, min_days, threshold), ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        return _csv(cov, min_days)
    return _table(cov, min_days, threshold)
