"""One accelerated clock for a whole run: the simulator's meters freeze at its midnight, the
agent's daily plan reads the new day's freeze, and the central coverage report counts that
day — all three processes cross the same day boundary, a few real seconds after the start."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.fixtures.field import BEIJING, Site, field_run, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hang guard, not a speed limit

BEFORE = dt.date(2026, 3, 9)
AFTER = dt.date(2026, 3, 10)


async def test_simulator_agent_and_central_cross_midnight_together(tmp_path: Path) -> None:
    epoch = dt.datetime.combine(BEFORE, dt.time(23, 58), BEIJING)
    async with field_run(tmp_path, [Site("c-edge", ("rs-2",))], epoch=epoch, speed=60) as run:
        archived = {m["meter"] for m in run.archive if m["bus"] == "rs-2"}
        seen: dict[str, object] = {}

        def settled() -> bool:
            for name, process in run.centrals.items():
                assert process.proc is not None
                assert process.proc.returncode is None, name + process.log()[-3000:]
            agent = run.agents["c-edge"].process
            assert agent is not None
            assert agent.proc is not None
            assert agent.proc.returncode is None, agent.log()[-3000:]
            if run.now().date() < AFTER or not (tmp_path / "coverage.sqlite3").exists():
                return False
            truth = run.truth().get(AFTER, set()) & archived
            report = run.report(AFTER)
            (fleet,) = [s for s in report["scopes"] if s["scope"] == "fleet"]
            failing = {f["meter"] for f in report["consecutive_failures"]}
            seen.update(truth=truth, read=archived - failing, fleet=fleet)
            return (
                bool(truth) and fleet["expected"] == len(archived) and archived - failing == truth
            )

        await wait_for(settled, within=240, every=1.0)
        # the new day was read from the new freeze: the agent's plan state holds it too
        assert run.agent_read()[AFTER] >= seen["truth"]  # type: ignore[operator]
        assert run.now().date() == AFTER  # it all happened on the run's clock, not the wall's
