"""End to end: `meterlink demo` on a fleet misprogrammed in every way the simulator knows — the
simulator serving the meters, the agent's daily and tariff plans reading them, the broker, the
consumer storing the `tariff` payloads and freezes — and the central verdict for each meter
equals the simulator's recorded truth for the day; 电价执行正确率 equals its count."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import common.clock
from central.store import open_store
from central.tariff.store import TariffStore
from simulators import load_fleet
from tests.fixtures.clock import clear_of_midnight, on_clock
from tests.meterlink.test_demo import SETTLE_S

REPO = Path(__file__).resolve().parents[2]
FLEET = Path(__file__).parent / "data" / "tariff-fleet.toml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hang guard, not a speed limit


@pytest.fixture(autouse=True)
def _clear_of_midnight() -> Iterator[None]:
    """The daily plan reads today's 00:00 freeze: the demo's processes and this test share a
    clock that starts at 10:00 today in the meters' zone, so no run straddles a midnight."""
    with on_clock(clear_of_midnight(load_fleet(FLEET).world.tz)):
        yield


async def test_the_demos_tariff_verdict_is_the_simulators_truth(tmp_path: Path) -> None:
    fleet = load_fleet(FLEET)
    tz = fleet.world.tz
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterlink", "demo", "--fleet", str(FLEET),
        "--workdir", str(tmp_path), "--wait", "120", "--settle", str(SETTLE_S),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "TZ": "UTC"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 200)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]

    day = common.clock.current().now(tz).date()
    truth = load_fleet(FLEET).tariff_truth(day)
    assert {t.defect for t in truth.values()} >= {None, "dead", "old_firmware", "wrong_boundary",
                                                  "wrong_price", "clock_drift"}  # fmt: skip
    store = open_store(tmp_path / "coverage.sqlite3")
    try:
        verdict = {o.meter: o for o in TariffStore(store).outcomes(day.isoformat())}
    finally:
        store.close()
    assert set(verdict) == set(truth)
    wrong = {m: (t.defect, t.outcome, verdict[m].outcome, verdict[m].detail)
             for m, t in truth.items() if verdict[m].outcome != t.outcome}  # fmt: skip
    assert not wrong, "\n".join(f"{m}: {w}" for m, w in wrong.items())
    ok = sum(t.outcome == "OK" for t in truth.values())
    rate = f"{100.0 * ok / len(truth):.2f}"
    printed = re.search(r"电价执行正确率 ([\d.]+)% \((\d+)/(\d+) meters OK\)", text)
    assert printed is not None, text[-3000:]
    assert printed.groups() == (rate, str(ok), str(len(truth)))
    assert f"simulator's own truth: {ok} of {len(truth)} meters" in text
