"""The concentrator's disk fills up under the real agent (`meterlink agent run`): its state
directory is a small tmpfs of its own, filled by another file while the agent reads.

What must hold: the agent keeps running; each failed write is one clear log line (no stack
trace) and a metric; what it could not commit is not claimed as read, so once space returns the
daily plan reads those meters again and every live meter's freeze arrives, once."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import common.clock
from tests.agent.helpers_mqtt import Collector, eventually
from tests.agent.test_e2e import (  # the real agent process and the field it reads
    AgentProcess,
    _check_against_simulator,
    _config,
    _daily,
    _field,
    _live,
    _no_agent_left_behind,  # noqa: F401 - an autouse fixture, here too
    _now,
)
from tests.fixtures.clock import on_clock
from tests.fixtures.services import free_port, running_mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hang guard, not a speed limit


@pytest.fixture(autouse=True)
def _before_the_round() -> Iterator[None]:
    """Ten times real speed from 09:58 today (UTC): the daily round starts at 10:00, twelve real
    seconds in, after the disk has filled; no test straddles a midnight."""
    today = dt.datetime.now(dt.UTC).date()
    epoch = dt.datetime.combine(today, dt.time(9, 58), dt.UTC)
    with on_clock(common.clock.AcceleratedClock(epoch, 10.0, time.time())):
        yield


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only: CI runs as root, a developer may not)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:  # root (as CI) and no tmpfs: a broken machine, not a reason to skip
        pytest.fail(f"cannot mount a tmpfs as root: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take the disk's free space down to about `leave` bytes with a file of its own."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("ab") as f, contextlib.suppress(OSError):  # ENOSPC: full already
        f.write(b"\0" * max(0, free - leave))
    return filler


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _lines(log: str, level: str) -> list[str]:
    return [json.loads(x)["msg"] for x in log.splitlines() if f'"level": "{level}"' in x]


async def test_a_full_disk_loses_nothing_and_says_so(tmp_path: Path) -> None:
    metrics_port = free_port()
    with (
        small_disk(tmp_path / "state", "2m") as disk,
        running_mosquitto(tmp_path / "broker") as broker,
    ):
        async with (
            _field(tmp_path, transport="tcp", count=12, dead=0.0) as (fleet, url, archive),
            Collector(broker) as seen,
        ):
            config = _config(tmp_path, broker, url, archive, metrics=metrics_port)
            config.write_text(config.read_text().replace('start = "00:00"', 'start = "10:00"'))
            # 1. no room at all: the agent does not start, and says why in one line
            filler = fill(disk, leave=0)
            refused = AgentProcess(config)
            await refused.start()
            assert refused.proc is not None
            assert await refused.proc.wait() == 74  # EX_IOERR: systemd's Restart= tries again
            (line,) = refused.log().splitlines()
            assert f"state directory {disk}: No space left on device (0 bytes free" in line, line
            filler.unlink()
            # 2. the disk fills while the agent runs, during a broker outage (nothing drains
            # the outbox), before the daily round at 10:00
            running = config.with_name("running.toml")
            running.write_text(config.read_text())
            agent = AgentProcess(running)
            await agent.start()
            today = _now().date()
            live = _live(fleet)
            try:
                await eventually(lambda: bool(seen.of("status")), 30)
                broker.stop()
                filler = fill(disk, leave=0)
                await eventually(lambda: "no room" in " ".join(_lines(agent.log(), "error")), 90)
                # the round reads meters it cannot store: not read, asked again later
                not_stored = 'meterlink_reads_total{plan="daily",result="storage_full"}'
                await eventually(lambda: metric(metrics_port, not_stored) >= 1, 60)
                errors = await asyncio.to_thread(metric, metrics_port, "meterlink_storage_write")
                assert errors >= 1
                assert await asyncio.to_thread(metric, metrics_port, "meterlink_storage_full") == 1
                assert agent.proc is not None
                assert agent.proc.returncode is None  # still running
                filler.unlink()  # an operator frees space; the broker comes back
                broker.start()
                await eventually(lambda: _daily(seen.readings(), today) >= live, within=120)
                await eventually(lambda: "writes succeed again" in agent.log(), 30)
                assert await asyncio.to_thread(metric, metrics_port, "meterlink_storage_full") == 0
            finally:
                assert await agent.stop() == 0, agent.log()[-5000:]
    log = agent.log()
    assert "Traceback" not in log
    assert _lines(log, "critical") == []
    full = [m for m in _lines(log, "error") if "no room" in m]
    assert len(full) == 1, full  # one line for the episode, however many writes failed
    assert f"state directory {disk}: no room to store " in full[0]
    keys = [(r["meter"], r["item"], r["data_time"]) for r in seen.readings()]
    assert len(keys) == len(set(keys))  # nothing published twice
    _check_against_simulator(fleet, seen.readings())
