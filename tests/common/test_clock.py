"""The run's time source: real by default, accelerated and shared by every process of a run."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path

import pytest

import common.clock
from common.clock import AcceleratedClock, Clock, ClockSpecError, FileClock, parse
from simulators.clock import WorldClock
from tests.fixtures.clock import on_clock

BEIJING = zoneinfo.ZoneInfo("Asia/Shanghai")
EPOCH = dt.datetime(2026, 3, 9, 23, 59, 0, tzinfo=BEIJING)


def test_production_reads_the_real_clock() -> None:
    clock = parse(None)
    assert type(clock) is Clock
    assert clock.spec is None
    before = time.time()
    assert before - 1 <= clock.time() <= time.time() + 1
    assert parse("").spec is None


def test_an_accelerated_clock_runs_from_its_epoch_at_its_speed() -> None:
    anchor = time.time() - 10.0  # the run started 10 real seconds ago
    clock = parse(f"{EPOCH.isoformat()}@60@{anchor}")
    assert isinstance(clock, AcceleratedClock)
    assert clock.time() - EPOCH.timestamp() >= 600  # 10 real seconds at 60x
    assert clock.now(BEIJING).date() == dt.date(2026, 3, 10)  # midnight is behind it
    assert clock.real_seconds(3600) == 60
    again = parse(clock.spec)  # what a child process is given: the same time line
    assert isinstance(again, AcceleratedClock)
    assert (again.epoch, again.speed, again.anchor) == (EPOCH, 60.0, pytest.approx(anchor))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("tomorrow@10", "not an ISO date-time"),
        ("2026-03-09T23:59:00@10", "needs a UTC offset"),
        ("2026-03-09T23:59:00+08:00@fast", "numbers"),
        ("2026-03-09T23:59:00+08:00@0", "positive"),
        ("2026-03-09T23:59:00+08:00@nan", "positive"),
        ("2026-03-09T23:59:00+08:00", "expected <iso-epoch>@<speed>"),
        ("file:/nonexistent/clock", "clock file"),
    ],
)
def test_a_bad_spec_says_what_is_expected(spec: str, says: str) -> None:
    with pytest.raises(ClockSpecError, match=says):
        parse(spec)


async def test_sleeps_last_simulated_seconds() -> None:
    clock = AcceleratedClock(EPOCH, 3600.0)
    start_mono, start = clock.monotonic(), clock.time()
    await clock.sleep(3600)  # an hour of the run: one real second
    assert clock.monotonic() - start_mono >= 3600 - 1
    assert clock.time() - start >= 3600 - 1


def test_a_file_clock_steps_when_its_file_changes_and_monotonic_does_not(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text(f"{EPOCH.isoformat()}@1@{time.time()}")
    clock = FileClock(path)
    clock.CHECK_EVERY_S = 0.0  # look at the file on every reading (the default polls)
    mono = clock.monotonic()
    assert abs(clock.time() - EPOCH.timestamp()) < 5
    back = EPOCH - dt.timedelta(hours=2)
    path.write_text(f"{back.isoformat()}@1@{time.time()}")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime, surely
    deadline = time.monotonic() + 5
    while abs(clock.time() - back.timestamp()) > 5:
        assert time.monotonic() < deadline, "the file clock did not follow its file"
        time.sleep(FileClock.CHECK_EVERY_S)
    assert clock.monotonic() >= mono  # stepping back never turns monotonic time back
    path.write_text("half a spec")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    time.sleep(FileClock.CHECK_EVERY_S * 2)
    assert abs(clock.time() - back.timestamp()) < 5  # a bad rewrite keeps the time it had


def test_install_exports_the_clock_to_children() -> None:
    clock = AcceleratedClock(EPOCH, 1.0)
    with on_clock(clock):
        assert common.clock.current() is clock
        code = "import common.clock as c; print(c.current().spec)"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == clock.spec  # the child's time line is the run's, not today's
    assert common.clock.current() is not clock


class _Manual(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


def test_the_simulators_world_follows_the_run_clock() -> None:
    """Freezes fall on the run's midnights: the world clock takes the same time source."""
    clock = AcceleratedClock(EPOCH, 600.0)
    world = WorldClock(tz=BEIJING, source=clock)
    assert abs((world.now() - EPOCH.replace(tzinfo=None)).total_seconds()) < 600 * 2
    started = world.now()
    time.sleep(0.2)
    assert (world.now() - started).total_seconds() >= 60


def test_meterlink_rejects_a_bad_clock_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meterlink", "--clock", "2026-03-09@x", "frame", "--help"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "clock spec" in done.stderr


async def test_the_agents_plan_clock_sleeps_until_a_local_time_on_the_run_clock() -> None:
    from agent.plans.context import Clock as PlanClock

    source = AcceleratedClock(EPOCH, 1200.0)
    plans = PlanClock(BEIJING, source)
    midnight = dt.datetime(2026, 3, 10, tzinfo=BEIJING)
    await asyncio.wait_for(plans.sleep_until(midnight), 30)  # 60 s of run time: 0.05 s real
    assert plans.now() >= midnight
