"""`meterlink demo` on a seeded fleet: the coverage the centre computes equals what the
simulator's own answer record says, meter by meter — with the central side's store in its
default SQLite file, and in a private PostgreSQL (`--store postgresql://...`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import common.clock
from central.config import CoverageConfig
from central.coverage import compute_day
from central.ledger import Ledger
from central.store import open_store
from simulators import load_fleet
from tests.fixtures.clock import clear_of_midnight, on_clock

REPO = Path(__file__).resolve().parents[2]
FLEET = Path(__file__).parent / "data" / "demo-fleet.toml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hang guard, not a speed limit


@pytest.fixture(autouse=True)
def _clear_of_midnight() -> Iterator[None]:
    """The daily plan reads today's 00:00 freeze: the demo's processes and this test share a
    clock that starts at 10:00 today in the meters' zone, so no run straddles a midnight."""
    with on_clock(clear_of_midnight(load_fleet(FLEET).world.tz)):
        yield


#: the demo's --settle: longer than its agent's retry spacing (6 s) and the way to the store,
#: or a meter whose first attempt timed out on a loaded machine is reported before its retry
#: lands (seen: the report one read short of the simulator's record)
SETTLE_S = 10


def answered_energy(record: Path) -> set[str]:
    """Independently of central/: meters whose frozen-energy read the simulator answered."""
    out = set()
    for line in record.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["outcome"] == "answered" and (r["di"] or "").startswith("0506"):
            out.add(r["meter"])
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    if request.param == "sqlite":
        return []  # the default: coverage.sqlite3 in the work dir
    server = request.getfixturevalue("postgresql")
    return ["--store", server.create_database(f"demo_{uuid.uuid4().hex[:12]}")]


async def test_demo_coverage_equals_the_simulators_record(
    tmp_path: Path, store_args: list[str]
) -> None:
    tz = load_fleet(FLEET).world.tz  # the meters' zone (Asia/Shanghai), not this machine's
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterlink", "demo", "--fleet", str(FLEET),
        "--workdir", str(tmp_path), "--wait", "90", "--settle", str(SETTLE_S), *store_args,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "TZ": "UTC"},  # a server's zone: the demo needs no override for it
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 150)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]

    fleet = load_fleet(FLEET)
    archived = {m.identity.meter_id for m in fleet.meters()}
    dead = {m.identity.meter_id for m in fleet.meters() if m.faults.dead}
    assert dead
    assert len(dead) < len(archived)
    sim = answered_energy(tmp_path / "answers.jsonl")
    assert sim == archived - dead

    store = open_store(store_args[1] if store_args else tmp_path / "coverage.sqlite3")
    try:
        ledger = Ledger(store)
        day = common.clock.current().now(tz).date().isoformat()
        cov = compute_day(ledger, day, CoverageConfig())
        read = {
            str(m) for (m,) in ledger.rows("SELECT meter FROM daily_read WHERE day = ?", (day,))
        }
    finally:
        store.close()
    fleet_cov = cov.fleet()
    assert (fleet_cov.expected, fleet_cov.read) == (len(archived), len(sim))
    assert read == sim
    assert {s.meter for s in cov.streaks} == dead
    assert dict(fleet_cov.reasons) == {"no_reply": len(dead)}
    assert f"simulator's own record: {len(sim)} of {len(archived)}" in text
    assert f"fleet: {len(sim)}/{len(archived)} read" in text
    assert f"demo: central store {store_args[1] if store_args else 'sqlite:'}" in text
    # the operators' panel was up, with a log-in made for the run
    panel = re.search(
        r"demo: panel (http://127\.0\.0\.1:\d+/) \(log-in demo / (\S+), operator\)", text
    )
    assert panel, text[-3000:]
    assert f"panel      {panel[1]}  log-in: demo / {panel[2]}" in text
    assert "panel: serving" in (tmp_path / "panel.log").read_text()
    # top-ups and relay orders through the billing API: every one terminal, the rate line
    # beside the simulator's credit record, no meter credited twice
    assert re.search(r"top-ups: 远程充值成功率 \S+: [\d.]+ % \(\d+/\d+\)", text), text[-3000:]
    assert "waiting 0; 停复电成功率" in text, text[-3000:]
    assert "meters credited twice for one purchase count: 0 (none)" in text
    credited = re.search(r"(\d+) remote credits on (\d+) meters \(confirmed top-ups: (\d+)\)", text)
    assert credited, text[-3000:]
    assert credited[1] == credited[2] == credited[3]
    # the demo stopped what it started
    assert "Traceback" not in text
