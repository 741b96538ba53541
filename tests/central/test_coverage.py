"""Coverage from the ledger: expected against the archive, reasons, streaks, late data — on
both engines of the store (SQLite and PostgreSQL: the `store` fixture)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from central.config import CoverageConfig
from central.coverage import UNEXPLAINED, compute_day, day_lines
from central.ledger import Ledger, day_offset
from central.points import Converted, convert
from central.store import Store, open_store
from protocols.payloads import FailureReason, validate
from tests.central import scenario
from tests.central.helpers import archive, batch, reading, stamp
from tests.central.scenario import DAY, M


def apply(ledger: Ledger, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
    facts = Converted()
    for _, kind, payload in messages:
        validate(kind, payload)
        convert(kind, payload, facts)
    ledger.apply(facts, CoverageConfig().required_values)


@pytest.fixture
def ledger(store: Store) -> Ledger:
    led = Ledger(store)
    apply(led, scenario.messages())
    return led


def test_the_fleet_rate_counts_every_archived_meter(ledger: Ledger) -> None:
    cov = compute_day(ledger, DAY, CoverageConfig())
    fleet = cov.fleet()
    assert (fleet.expected, fleet.read, fleet.timely, fleet.complete) == (14, 11, 10, 10)
    assert fleet.rate == pytest.approx(100 * 11 / 14, abs=1e-4)
    assert fleet.timeliness_rate == pytest.approx(100 * 10 / 14, abs=1e-4)
    assert fleet.completeness_rate == pytest.approx(100 * 10 / 14, abs=1e-4)
    assert dict(fleet.reasons) == {"no_reply": 1, "route_failure": 1, UNEXPLAINED: 1}


def test_breakdowns_by_concentrator_district_and_manufacturer(ledger: Ledger) -> None:
    cov = compute_day(ledger, DAY, CoverageConfig())
    got = {(s.scope, s.key): (s.expected, s.read) for s in cov.scopes}
    assert got == {
        ("fleet", "all"): (14, 11),
        ("concentrator", "c-001"): (10, 8),
        ("concentrator", "c-002"): (4, 3),
        ("district", "east"): (5, 5),
        ("district", "west"): (9, 6),
        ("manufacturer", "acme"): (9, 7),  # 1 3 5 7 9 + 101..104 -> 9 fails, 104 fails
        ("manufacturer", "zeta"): (5, 4),  # 2 4 6 8 10 -> 10 fails
    }
    only = compute_day(ledger, DAY, CoverageConfig(), concentrator="c-002")
    assert (only.fleet().key, only.fleet().expected, only.fleet().read) == ("c-002", 4, 3)


def test_consecutive_failures_name_the_last_reason_and_the_last_good_day(ledger: Ledger) -> None:
    cov = compute_day(ledger, DAY, CoverageConfig())
    streaks = {s.meter: s for s in cov.streaks}
    assert set(streaks) == {M[9], M[10], M[104]}
    nine = streaks[M[9]]
    assert (nine.days, nine.last_reason, nine.last_success) == (3, "no_reply", "2026-11-21")
    assert nine.last_detail == "no_reply on rs485-1"
    # meter 10 was never read: failing on every day the ledger knows (21..24)
    assert (streaks[M[10]].days, streaks[M[10]].last_success) == (4, None)
    assert streaks[M[10]].last_reason == UNEXPLAINED
    # c-002 sent nothing for 21..23: its meters were expected and unread on those days too
    assert (streaks[M[104]].days, streaks[M[104]].last_reason) == (4, "route_failure")
    assert [s.meter for s in cov.streaks] == [M[10], M[104], M[9]]  # longest first


def test_backfill_updates_the_past_day_and_a_later_archive_does_not(ledger: Ledger) -> None:
    ledger.clean(DAY, ledger.dirty_days()[DAY])
    apply(ledger, scenario.backfill())
    assert DAY in ledger.dirty_days()
    cov = compute_day(ledger, DAY, CoverageConfig())
    fleet = cov.fleet()
    # read now, but neither on time nor counted twice; meter 11 (archive v2 of the 25th) absent
    assert (fleet.expected, fleet.read, fleet.timely) == (14, 12, 10)
    assert M[9] not in {s.meter for s in cov.streaks}
    assert dict(fleet.reasons) == {"route_failure": 1, UNEXPLAINED: 1}
    next_day = compute_day(ledger, "2026-11-25", CoverageConfig())
    assert next_day.by("concentrator")[0].expected == 11


def test_replays_change_nothing(ledger: Ledger) -> None:
    before = compute_day(ledger, DAY, CoverageConfig())
    apply(ledger, scenario.messages())
    after = compute_day(ledger, DAY, CoverageConfig())
    assert [vars(s) for s in after.scopes] == [vars(s) for s in before.scopes]
    assert after.streaks == before.streaks


def test_timeliness_deadline_and_required_values_are_configurable(
    new_store_url: Callable[[], str],
) -> None:
    cfg = CoverageConfig(timely_by="23:45", required_values=["energy_import_total_kwh"])
    store = open_store(new_store_url())
    try:
        led2 = Ledger(store)
        facts = Converted()
        for _, kind, payload in scenario.messages():
            convert(kind, payload, facts)
        led2.apply(facts, cfg.required_values)
        fleet = compute_day(led2, DAY, cfg).fleet()
    finally:
        store.close()
    assert (fleet.read, fleet.timely, fleet.complete) == (11, 11, 11)


def test_a_recovered_meter_is_zeroed_in_the_published_streaks(ledger: Ledger) -> None:
    lines, published = day_lines(compute_day(ledger, DAY, CoverageConfig()), {})
    assert any(
        line.startswith(f"coverage_streak,concentrator=c-001,meter={M[9]} ") for line in lines
    )
    apply(ledger, scenario.backfill())
    lines, _ = day_lines(compute_day(ledger, DAY, CoverageConfig()), published)
    nine = [line for line in lines if f"meter={M[9]}" in line]
    assert len(nine) == 1
    assert 'days=0.0,last_reason=""' in nine[0]
    reasons = [line for line in lines if line.startswith("coverage_reason,scope=fleet,")]
    assert (
        len(reasons) == len(FailureReason) + 1
    )  # the closed set and "unexplained", zeros included
    assert any("reason=no_reply meters=0.0" in line for line in reasons)


def _days(first: str, n: int) -> list[str]:
    start = dt.date.fromisoformat(first)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n)]


def test_a_streak_and_its_last_success_look_back_as_far_as_a_meter_keeps(store: Store) -> None:
    """62 days: a consecutive-failure count stops there, and so does the last good day (so a
    change can move no day more than 62 days after it, and the job redoes no more)."""
    days = _days("2026-08-27", 90)
    a, b = M[1], M[2]
    led = Ledger(store)
    apply(led, [("c-001", "archive", archive("c-001", 1, [(a, "e", "x"), (b, "e", "x")],
                                             stamp(days[0], "08:00")))])  # fmt: skip
    for i, d in enumerate(days):  # b stops answering after day 20
        read = [reading(m, d) for m in ([a, b] if i < 20 else [a])]
        apply(led, [("c-001", "readings", batch("c-001", read, d))])
    (at_80,) = compute_day(led, days[79], CoverageConfig()).streaks
    (at_90,) = compute_day(led, days[89], CoverageConfig()).streaks
    assert (at_80.meter, at_80.days, at_80.last_success) == (b, 60, days[19])
    assert (at_90.days, at_90.last_success) == (63, None)  # day 20 is 70 days back: "never"


def _expected(led: Ledger, day: str, concentrator: str) -> int:
    return compute_day(led, day, CoverageConfig(), concentrator=concentrator).fleet().expected


def test_an_archive_version_reset_is_detected_and_the_new_content_is_in_force(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    c1v2 = [*scenario.C1, (M[11], "east", "acme")]
    apply(ledger, [
        ("c-001", "archive", archive("c-001", 2, c1v2, stamp("2026-11-22", "09:00"))),
        ("c-002", "archive", archive("c-002", 2, scenario.C2, stamp("2026-11-23", "09:00"))),
    ])  # fmt: skip
    assert [_expected(ledger, d, "c-001") for d in ("2026-11-21", "2026-11-22")] == [10, 11]
    for day in ledger.dirty_days():
        ledger.clean(day, ledger.dirty_days()[day])
    # c-001's state was wiped: it re-imported its configured meters as version 1 — the very
    # content of the old v1, stamped now; c-002 says version 1 again with other meters and a
    # clock behind (stamped before its v2)
    reset = [
        ("c-001", "archive", archive("c-001", 1, scenario.C1, stamp("2026-11-24", "08:00"))),
        ("c-002", "archive", archive("c-002", 1, scenario.C2[:3], stamp("2026-11-21", "08:00"))),
    ]
    with caplog.at_level("WARNING", logger="central.ledger"):
        apply(ledger, reset)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert warnings[0].startswith("archive of c-001: version 1 after version 2, other meters")
    assert warnings[1].startswith("archive of c-002: version 1 after version 2, other meters")
    # the days from the reset on are judged by it, the days before keep their version
    assert [_expected(ledger, d, "c-001") for d in ("2026-11-23", DAY)] == [11, 10]
    # a stamp before the version it replaces does not rewrite the days that version judged
    assert [_expected(ledger, d, "c-002") for d in ("2026-11-22", "2026-11-23", DAY)] == [4, 3, 3]
    assert sorted(ledger.dirty_days()) == ["2026-11-23", DAY]
    # redelivered, old or new, nothing moves and nothing more is recorded or logged
    versions = ledger.rows("SELECT count(*) FROM archive_version")
    caplog.clear()
    apply(ledger, [
        ("c-001", "archive", archive("c-001", 2, c1v2, stamp("2026-11-22", "09:00"))),
        *reset,
        ("c-001", "archive", archive("c-001", 1, scenario.C1, stamp("2026-11-20", "10:00"))),
    ])  # fmt: skip
    assert ledger.rows("SELECT count(*) FROM archive_version") == versions
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    assert [_expected(ledger, d, "c-001") for d in ("2026-11-23", DAY)] == [11, 10]


def test_an_archive_stamped_in_local_time_applies_from_its_local_date(ledger: Ledger) -> None:
    """The agent stamps `updated_at` in the concentrator's zone: 02:30 +08:00 on the 25th is
    18:30 UTC on the 24th, and the version is in force from the 25th."""
    c1v2 = [*scenario.C1, (M[11], "east", "acme")]
    apply(ledger, [("c-001", "archive", archive("c-001", 2, c1v2, "2026-11-25T02:30:00+08:00"))])
    apply(ledger, [("c-001", "readings", batch("c-001", [reading(M[11], "2026-11-25")], "25"))])
    assert [_expected(ledger, d, "c-001") for d in (DAY, "2026-11-25")] == [10, 11]


def test_a_ledger_from_before_keeps_its_archive_versions(tmp_path: Path) -> None:
    """A ledger written when archive versions were keyed by their number opens with every day
    judged by the version it had, and a reset after that is seen."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE archive_version (
            concentrator TEXT NOT NULL, version INTEGER NOT NULL, updated_at INTEGER NOT NULL,
            day_from TEXT NOT NULL, PRIMARY KEY (concentrator, version));
        CREATE TABLE archive_meter (
            concentrator TEXT NOT NULL, version INTEGER NOT NULL, meter TEXT NOT NULL,
            district TEXT NOT NULL, manufacturer TEXT NOT NULL, bus TEXT NOT NULL,
            PRIMARY KEY (concentrator, version, meter)) WITHOUT ROWID;
    """)  # fmt: skip
    for version, day, n in ((2, "2026-11-22", 11), (1, "2026-11-20", 10)):
        db.execute("INSERT INTO archive_version VALUES ('c-001', ?, 0, ?)", (version, day))
        db.executemany(
            "INSERT INTO archive_meter VALUES ('c-001', ?, ?, 'east', 'acme', 'rs485-1')",
            [(version, M[i]) for i in range(1, n + 1)],
        )
    db.commit()
    db.close()
    led = Ledger(path)
    try:
        # 11-19: before its first archive and without data, the concentrator does not count yet
        assert [_expected(led, d, "c-001") for d in ("2026-11-19", "2026-11-21", DAY)] == [
            0,
            10,
            11,
        ]
        apply(led, [("c-001", "archive", archive("c-001", 1, scenario.C1[:4], stamp(DAY)))])
        assert [_expected(led, d, "c-001") for d in ("2026-11-23", DAY)] == [11, 4]
    finally:
        led.close()
    led = Ledger(path)  # and opens again as it is
    try:
        assert _expected(led, DAY, "c-001") == 4
    finally:
        led.close()


def test_a_streak_does_not_count_the_days_before_the_meter_was_archived(ledger: Ledger) -> None:
    """Meter 11 joins c-001's archive on the 24th and is never read: failing 1 day, not 4.
    Meter 9 (unread since the 21st) leaves the archive on the 22nd and is back on the 24th:
    failing 1 day, not 3."""
    without_9 = [m for m in scenario.C1 if m[0] != M[9]]
    apply(ledger, [
        ("c-001", "archive", archive("c-001", 2, without_9, stamp("2026-11-22", "09:00"))),
        ("c-001", "archive", archive("c-001", 3, [*scenario.C1, (M[11], "east", "acme")],
                                     stamp(DAY, "09:00"))),
    ])  # fmt: skip
    streaks = {s.meter: s.days for s in compute_day(ledger, DAY, CoverageConfig()).streaks}
    assert streaks == {M[9]: 1, M[10]: 4, M[11]: 1, M[104]: 4}
    apply(ledger, [("c-001", "readings", batch("c-001", [reading(M[1], "2026-11-25")], "25"))])
    streaks = {s.meter: s.days for s in compute_day(ledger, "2026-11-25", CoverageConfig()).streaks}
    assert (streaks[M[9]], streaks[M[11]], streaks[M[10]]) == (2, 2, 5)


def test_a_concentrator_counts_from_its_commissioning_not_for_all_history(ledger: Ledger) -> None:
    """c-009 is installed on DAY (first archive) and backfills DAY-1: it is expected on those
    days, not on the older days other concentrators have data for."""
    apply(
        ledger,
        [("c-009", "archive", archive("c-009", 1, [("000000000090", "west", "acme")], stamp(DAY)))],
    )
    apply(
        ledger,
        [
            (
                "c-009",
                "readings",
                batch("c-009", [reading("000000000090", day_offset(DAY, -1))], "b"),
            )
        ],
    )
    known = ledger.known_days(DAY)
    older = [d for d in known if d < day_offset(DAY, -1)]
    assert older  # the scenario has older days from the other concentrators
    assert all(_expected(ledger, d, "c-009") == 0 for d in older)
    assert [_expected(ledger, d, "c-009") for d in (day_offset(DAY, -1), DAY)] == [1, 1]
