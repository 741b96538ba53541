from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import (
    LOW_WATER,
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    Outbox,
    OutboxError,
)
from protocols.payloads import validate
from tests.conftest import REPO


def reading(n: int, meter: str = "000000000001") -> dict[str, Any]:
    return {
        "meter": meter,
        "item": "daily_freeze",
        "data_time": f"2026-11-{1 + n // 1000 % 28:02d}T00:00:00+08:00",
        "read_at": "2026-11-26T00:20:01+08:00",
        "values": {"energy_import_total_kwh": {"value": n, "unit": "kWh"}},
    }


def round_report(n: int) -> dict[str, Any]:
    return {
        "plan": "daily",
        "round_id": f"r{n}",
        "started_at": "2026-11-26T00:05:00+08:00",
        "ended_at": "2026-11-26T00:06:00+08:00",
        "expected": 1,
        "read": 1,
        "failed": [],
    }


def event(name: str) -> dict[str, Any]:
    return {"at": "2026-11-26T00:05:00+08:00", "event": name}


def as_message(event_row: dict[str, Any]) -> dict[str, Any]:
    """What the publisher makes of an events row."""
    return {**event_row, "schema": "meterlink.events/1", "concentrator": "c-001"}


def row_bytes(payload: dict[str, Any]) -> int:
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return len(text.encode()) + ROW_OVERHEAD


async def test_rows_come_back_in_order_per_kind_and_ack_deletes(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        ids = await box.put_many("readings", [reading(i) for i in range(5)])
        rid = await box.put("rounds", round_report(1))
        eid = await box.put("events", event("meter_offline"))
        assert ids == sorted(ids)
        assert len({*ids, rid, eid}) == 7
        assert await box.depth() == {"readings": 5, "rounds": 1, "events": 1, "tariff": 0}
        assert box.depth_now() == {"readings": 5, "rounds": 1, "events": 1, "tariff": 0}

        peeked = await box.peek("readings", 3)
        assert [i for i, _ in peeked] == ids[:3]
        assert [p["values"]["energy_import_total_kwh"]["value"] for _, p in peeked] == [0, 1, 2]
        assert await box.peek("rounds", 10) == [(rid, round_report(1))]

        await box.ack(ids[:3])
        await box.ack(ids[:3])  # a second ack of the same ids is harmless
        assert [i for i, _ in await box.peek("readings", 10)] == ids[3:]
        assert box.put_count == 7
        assert (
            box.depth_now()
            == await box.depth()
            == {"readings": 2, "rounds": 1, "events": 1, "tariff": 0}
        )
        await box.ack([*ids[3:], rid, eid])
        assert box.bytes_used == 0
        assert box.depth_now() == {"readings": 0, "rounds": 0, "events": 0, "tariff": 0}


async def test_rows_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        ids = await box.put_many("readings", [reading(i) for i in range(3)])
        used = box.bytes_used
        epoch = box.epoch
    async with await Outbox.open(path) as box:
        assert [i for i, _ in await box.peek("readings", 10)] == ids
        assert box.bytes_used == used
        assert box.depth_now()["readings"] == 3
        assert box.epoch == epoch
        # AUTOINCREMENT: ids of deleted rows are never handed out again (batch ids rely on it)
        await box.ack(ids)
        assert await box.put("readings", reading(9)) > ids[-1]


async def test_file_is_wal_at_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        await box.put("events", event("started"))
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert other.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        finally:
            other.close()


async def test_only_storable_kinds_and_json_payloads_are_accepted(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        for kind in ("response", "archive", "status", "cmd"):
            with pytest.raises(ValueError, match="outbox stores"):
                await box.put(kind, {})
        bad = reading(1)
        bad["values"]["energy_import_total_kwh"]["value"] = float("nan")
        with pytest.raises(ValueError, match="JSON"):
            await box.put("readings", bad)
        assert await box.put_many("readings", []) == []
        assert sum((await box.depth()).values()) == 0


async def test_all_writes_happen_on_one_thread(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        seen: set[int] = set()
        original = box._put_sync

        def spy(kind: str, texts: list[str]) -> list[int]:
            seen.add(threading.get_ident())
            return original(kind, texts)

        box._put_sync = spy  # type: ignore[method-assign]
        ids = await asyncio.gather(*(box.put("readings", reading(i)) for i in range(50)))
        assert len(set(ids)) == 50
        assert len(seen) == 1
        assert threading.get_ident() not in seen


async def test_dead_letters_leave_the_queue_and_are_counted(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        ids = await box.put_many("readings", [reading(i) for i in range(4)])
        await box.dead_letter([ids[1]], "readings/0/item: does not match")
        assert [i for i, _ in await box.peek("readings", 10)] == [ids[0], *ids[2:]]
        assert box.dead_lettered == box.dead_letter_rows == 1
        assert (
            box.depth_now()
            == await box.depth()
            == {"readings": 3, "rounds": 0, "events": 0, "tariff": 0}
        )
        assert await box.dead_letters() == [
            (ids[1], "readings", "readings/0/item: does not match", reading(1))
        ]
        assert box.bytes_used == 3 * row_bytes(reading(0))


# --- disk budget ----------------------------------------------------------------------------
async def test_budget_evicts_oldest_readings_first_and_counts_them(tmp_path: Path) -> None:
    one = row_bytes(reading(0))
    budget = 40 * one
    async with await Outbox.open(tmp_path / "o.db", max_bytes=budget) as box:
        rid = await box.put("rounds", round_report(1))
        eid = await box.put("events", event("meter_offline"))
        ids: list[int] = []
        for i in range(60):
            ids.extend(await box.put_many("readings", [reading(i)]))

        assert box.bytes_used <= budget
        assert box.depth_now() == await box.depth()
        left = [i for i, _ in await box.peek("readings", 100)]
        evicted = box.evicted["readings"]
        assert evicted > 0
        assert left == ids[evicted:]  # the oldest went, the newest stayed
        assert box.evicted["rounds"] == box.evicted["events"] == 0
        assert await box.peek("rounds", 10) == [(rid, round_report(1))]

        events = await box.peek("events", 100)
        assert events[0][0] == eid
        reports = [p for _, p in events if p["event"] == "outbox_eviction"]
        assert len(reports) == box.evictions
        assert sum(r["detail"]["evicted"]["readings"] for r in reports) == evicted
        assert reports[-1]["detail"]["evicted_total"]["readings"] == evicted
        assert reports[-1]["detail"]["policy"] == "oldest_readings"
        # hysteresis: every eviction frees down to the low-water mark, so far fewer episodes
        # than puts that crossed the budget
        assert box.evictions < evicted
        for r in reports:
            assert r["detail"]["freed_bytes"] >= (1 - LOW_WATER) * budget - one
            validate("events", as_message(r))


async def test_rounds_and_events_go_only_when_no_reading_is_left(tmp_path: Path) -> None:
    report = round_report(1)
    budget = 12 * row_bytes(report)
    async with await Outbox.open(tmp_path / "o.db", max_bytes=budget) as box:
        await box.put("readings", reading(1))
        rounds = [await box.put("rounds", round_report(i)) for i in range(14)]
        assert box.evicted["readings"] == 1
        assert box.evicted["rounds"] >= 1
        left = [i for i, _ in await box.peek("rounds", 100)]
        assert left == rounds[box.evicted["rounds"] :]
        assert await box.peek("readings", 10) == []


async def test_oldest_policy_ignores_kind(tmp_path: Path) -> None:
    budget = 30 * row_bytes(reading(0))
    async with await Outbox.open(tmp_path / "o.db", max_bytes=budget, eviction="oldest") as box:
        first_round = await box.put("rounds", round_report(1))
        readings = [await box.put("readings", reading(i)) for i in range(40)]
        assert box.evicted["rounds"] == 1
        assert await box.peek("rounds", 10) == []
        left = [i for i, _ in await box.peek("readings", 100)]
        assert left == readings[box.evicted["readings"] :]
        assert first_round < readings[0]
        assert box.bytes_used <= budget


async def test_the_triggering_put_is_never_evicted(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db", max_bytes=3 * row_bytes(reading(0))) as box:
        ids = await box.put_many("readings", [reading(i) for i in range(6)])
        assert [i for i, _ in await box.peek("readings", 10)] == ids
        assert box.evicted["readings"] == 0


async def test_eviction_hands_exactly_the_evicted_payloads_to_on_evicted(tmp_path: Path) -> None:
    calls: list[tuple[str, list[dict[str, Any]], int]] = []
    budget = 40 * row_bytes(reading(0))

    def on_evicted(kind: str, payloads: list[dict[str, Any]]) -> None:
        calls.append((kind, payloads, threading.get_ident()))

    async with await Outbox.open(tmp_path / "o.db", max_bytes=budget, on_evicted=on_evicted) as box:
        await box.put("rounds", round_report(1))
        puts = [reading(i, meter=f"{i:012d}") for i in range(100)]
        for n, payload in enumerate(puts):
            await box.put("readings", payload)
            # reported before the put that caused the eviction returns
            assert sum(len(p) for _, p, _ in calls) == box.evicted["readings"], n
        evicted = box.evicted["readings"]
        assert evicted > 0
        assert box.evictions == len(calls) > 1
        assert {kind for kind, _, _ in calls} == {"readings"}
        # every evicted reading once, oldest first, exactly as it was put; nothing else
        assert [p for _, payloads, _ in calls for p in payloads] == puts[:evicted]
        left = [p for _, p in await box.peek("readings", 1000)]
        assert left == puts[evicted:]
        # on the event loop's thread, not the writer's
        assert {thread for _, _, thread in calls} == {threading.get_ident()}


async def test_on_evicted_is_told_even_when_the_put_was_cancelled(tmp_path: Path) -> None:
    told = asyncio.Event()
    heard: list[tuple[str, list[dict[str, Any]]]] = []
    budget = 10 * row_bytes(reading(0))

    def on_evicted(kind: str, payloads: list[dict[str, Any]]) -> None:
        heard.append((kind, payloads))
        told.set()

    async with await Outbox.open(tmp_path / "o.db", max_bytes=budget) as box:
        box.on_evicted = on_evicted  # settable after open
        first = [reading(i) for i in range(10)]
        await box.put_many("readings", first)
        assert heard == []
        started, gate = threading.Event(), threading.Event()
        original = box._put_sync

        def slow_put(kind: str, texts: list[str]) -> list[int]:
            started.set()
            gate.wait()
            return original(kind, texts)

        box._put_sync = slow_put  # type: ignore[method-assign]
        put = asyncio.create_task(box.put_many("readings", [reading(10), reading(11)]))
        await asyncio.to_thread(started.wait, 10)  # the writer is doing this put ...
        put.cancel()  # ... when its caller gives up
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await put
        async with asyncio.timeout(10):
            await told.wait()
        assert heard == [("readings", first[: box.evicted["readings"]])]
        assert box.evicted["readings"] > 0


async def test_a_failing_on_evicted_does_not_fail_the_put(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def on_evicted(kind: str, payloads: list[dict[str, Any]]) -> None:
        raise RuntimeError("plan state is gone")

    budget = 5 * row_bytes(reading(0))
    async with await Outbox.open(tmp_path / "o.db", max_bytes=budget, on_evicted=on_evicted) as box:
        ids = [await box.put("readings", reading(i)) for i in range(10)]
        assert box.evicted["readings"] > 0
        assert [i for i, _ in await box.peek("readings", 10)][-1] == ids[-1]
    assert any("on_evicted failed" in r.getMessage() for r in caplog.records)


async def test_an_eviction_whose_report_a_power_cut_stopped_is_reported_at_the_next_open(
    tmp_path: Path,
) -> None:
    """The eviction is committed, the process dies before `on_evicted` runs (seen in the soak:
    an agent SIGKILLed right after an eviction lost two daily readings for good: the plan
    state still said "read", so backfill never asked again)."""
    heard: list[tuple[str, list[dict[str, Any]]]] = []

    def on_evicted(kind: str, payloads: list[dict[str, Any]]) -> None:
        heard.append((kind, payloads))

    path = tmp_path / "o.db"
    budget = 10 * row_bytes(reading(0))
    puts = [reading(i, meter=f"{i:012d}") for i in range(12)]
    async with await Outbox.open(path, max_bytes=budget, on_evicted=on_evicted) as box:
        box._report_evicted = lambda payloads, upto: None  # type: ignore[method-assign]
        for payload in puts:
            await box.put("readings", payload)
        evicted = box.evicted["readings"]
    assert evicted > 0
    assert heard == []  # the power cut: nobody was told
    async with await Outbox.open(path, max_bytes=budget, on_evicted=on_evicted) as box:
        assert heard == [("readings", puts[:evicted])]  # told at open, before anything else
        await box.put("events", {"event": "x"})  # the next write forgets the told report
    async with await Outbox.open(path, max_bytes=budget, on_evicted=on_evicted) as box:
        assert len(heard) == 1  # told once, not at every open


async def test_a_report_the_owner_failed_is_made_again_at_the_next_open(tmp_path: Path) -> None:
    def failing(kind: str, payloads: list[dict[str, Any]]) -> None:
        raise RuntimeError("plan state is gone")

    heard: dict[str, list[dict[str, Any]]] = {}
    path = tmp_path / "o.db"
    budget = 5 * row_bytes(reading(0))
    puts = [reading(i, meter=f"{i:012d}") for i in range(10)]
    async with await Outbox.open(path, max_bytes=budget, on_evicted=failing) as box:
        for payload in puts:
            await box.put("readings", payload)
        evicted = box.evicted["readings"]
    async with await Outbox.open(
        path,
        max_bytes=budget,
        on_evicted=lambda kind, rows: heard.setdefault(kind, []).extend(rows),
    ):
        assert heard["readings"] == puts[:evicted]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="eviction policy"):
        Outbox(Path("x.db"), max_bytes=1, eviction="newest")


# --- damaged, old and future files ------------------------------------------------------------
async def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    garbage = b"this is not sqlite" * 400
    path.write_bytes(garbage)
    async with await Outbox.open(path) as box:
        assert box.moved_aside is not None
        assert box.moved_aside.name.startswith("o.db.corrupt-")
        assert box.moved_aside.read_bytes() == garbage
        events = [p for _, p in await box.peek("events", 10)]
        assert [e["event"] for e in events] == ["outbox_corrupt"]
        assert events[0]["detail"]["moved_to"] == str(box.moved_aside)
        validate("events", as_message(events[0]))
        assert await box.put("readings", reading(1)) == 2


async def test_a_database_with_damaged_pages_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        await box.put_many("readings", [reading(i) for i in range(300)])
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    for offset in range(2 * page, len(data), page):  # keep the header page, wreck the b-trees
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))

    async with await Outbox.open(path) as box:
        assert box.moved_aside is not None
        assert box.moved_aside.exists()
        assert (await box.depth())["readings"] == 0
        assert [p["event"] for _, p in await box.peek("events", 10)] == ["outbox_corrupt"]
    # the fresh file is sound: reopening does not move it again
    async with await Outbox.open(path) as box:
        assert box.moved_aside is None


# The first released layout, frozen here as an old file would have it on a concentrator.
V1_DDL = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('readings', 'rounds', 'events')),
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX outbox_kind_id ON outbox (kind, id);
PRAGMA user_version = 1;
"""


async def test_a_version_1_file_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    old = sqlite3.connect(path)
    old.executescript(V1_DDL)
    text = json.dumps(reading(7), separators=(",", ":"))
    old.execute(
        "INSERT INTO outbox (kind, payload, size, created_at) VALUES ('readings', ?, ?, 1.5)",
        (text, len(text) + ROW_OVERHEAD),
    )
    old.commit()
    old.close()

    async with await Outbox.open(path) as box:
        assert box.moved_aside is None
        rows = await box.peek_rows("readings", 10)
        assert [(r.id, r.payload, r.created_at) for r in rows] == [(1, reading(7), 1.5)]
        assert box.bytes_used == len(text) + ROW_OVERHEAD
        assert len(box.epoch) == 8
        await box.dead_letter([1], "test")  # the table v2 added works
        assert box.dead_letter_rows == 1
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        check.close()


async def test_a_file_from_a_newer_agent_is_refused_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    newer = sqlite3.connect(path)
    newer.execute("CREATE TABLE future (x)")
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    newer.commit()
    newer.close()
    with pytest.raises(OutboxError, match="newer"):
        await Outbox.open(path)
    assert [name for name in os.listdir(tmp_path) if "corrupt" in name] == []


async def test_closed_outbox_refuses_work(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    await box.close()
    await box.close()
    with pytest.raises(OutboxError, match="closed"):
        await box.put("readings", reading(1))


# --- power loss -------------------------------------------------------------------------------
WRITER = """
import asyncio, sys
from pathlib import Path
from agent.outbox import Outbox

async def main() -> None:
    box = await Outbox.open(Path(sys.argv[1]))
    n = 0
    while True:
        if n % 3 == 0:
            batch = [{"meter": "m", "item": "daily_freeze", "data_time": str(n + k),
                      "read_at": "x", "values": {}} for k in range(20)]
            ids = await box.put_many("readings", batch)
        else:
            ids = [await box.put("events", {"at": "x", "event": "tick", "detail": {"n": n}})]
        sys.stdout.write(" ".join(map(str, ids)) + "\\n")
        sys.stdout.flush()
        n += 1

asyncio.run(main())
"""


def test_sigkill_mid_stream_loses_no_returned_put(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    returned: list[int] = []
    try:
        assert proc.stdout is not None
        while len(returned) < 600:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            returned.extend(int(x) for x in line.split())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            # lines written between our last read and the kill were returned puts too
            returned.extend(int(x) for x in proc.stdout.read().split())
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    async def stored() -> set[int]:
        async with await Outbox.open(path) as box:
            assert box.moved_aside is None
            rows = await box.peek("readings", 100_000) + await box.peek("events", 100_000)
            return {i for i, _ in rows}

    found = asyncio.run(stored())
    assert set(returned) <= found
    assert len(returned) >= 600
