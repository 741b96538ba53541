"""A small fleet with a known answer, used by the coverage, report and dashboard tests.

Two concentrators; c-001 has meters 1..10 (districts east 1-5 / west 6-10; manufacturer acme
for odd, zeta for even), c-002 has 101..104 (west, acme). On 2026-11-24:

- c-001: 1..8 read; 8 read at 23:30 (after the 23:00 deadline: not timely); 7 carries only
  the total (not complete); 9 failed no_reply (also on 22 and 23; last read 21);
  10 listed by no round (unexplained; never read on any day).
- c-002: 101..103 read, 104 route_failure.

So the fleet expects 14, read 11 (78.5714%), timely 10, complete 10.
"""

from __future__ import annotations

from typing import Any

from tests.central.helpers import archive, batch, reading, round_report, stamp

C1 = [
    (f"{i:012d}", "east" if i <= 5 else "west", "acme" if i % 2 else "zeta") for i in range(1, 11)
]
C2 = [(f"{i:012d}", "west", "acme") for i in range(101, 105)]
DAY = "2026-11-24"
M = {i: f"{i:012d}" for i in [*range(1, 12), *range(101, 105)]}


def messages() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("c-001", "archive", archive("c-001", 1, C1, stamp("2026-11-20", "10:00"))),
        ("c-002", "archive", archive("c-002", 1, C2, stamp("2026-11-20", "10:00"))),
    ]
    for day in ("2026-11-21", "2026-11-22", "2026-11-23"):
        ok = [m for m, _, _ in C1 if m != M[10] and (day == "2026-11-21" or m != M[9])]
        out.append(("c-001", "readings", batch("c-001", [reading(m, day) for m in ok], day)))
        if day != "2026-11-21":
            report = round_report("c-001", day, [(M[9], "no_reply")], expected=10)
            out.append(("c-001", "rounds", report))
    day1 = [reading(M[i], DAY) for i in range(1, 7)]
    day1.append(reading(M[7], DAY, names=["energy_import_total_kwh"]))
    day1.append(reading(M[8], DAY, read_at="23:30"))
    out += [
        ("c-001", "readings", batch("c-001", day1, "c1-24")),
        ("c-001", "rounds", round_report("c-001", DAY, [(M[9], "no_reply")], expected=10)),
        ("c-002", "readings", batch("c-002", [reading(M[i], DAY) for i in (101, 102, 103)], "c2")),
        ("c-002", "rounds", round_report("c-002", DAY, [(M[104], "route_failure")], expected=4)),
    ]
    return out


def backfill() -> list[tuple[str, str, dict[str, Any]]]:
    """Meter 9's freeze of the 24th, read late from the meter's history; and archive v2 on the
    25th adds meter 11 (not expected on the 24th)."""
    late = reading(M[9], DAY, read_at="2026-11-25T01:00:00+08:00", quality="backfill")
    c1v2 = [*C1, (M[11], "east", "acme")]
    return [
        ("c-001", "readings", batch("c-001", [late], "backfill-24")),
        ("c-001", "archive", archive("c-001", 2, c1v2, stamp("2026-11-25", "09:00"))),
    ]
