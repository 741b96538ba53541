"""The bus poller: priorities, cancelled submitters, staged drain."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agent.poller import PRIORITY_COMMAND, PRIORITY_DAILY, BusClosed, BusPoller
from agent.transports import BusUrl


@contextlib.asynccontextmanager
async def poller():  # type: ignore[no-untyped-def]
    p: BusPoller[object] = BusPoller("b", BusUrl.parse("tcp://127.0.0.1:1"), object(), None)
    task = asyncio.create_task(p.run())
    try:
        yield p
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_commands_overtake_queued_plan_work() -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def blocker(_c: object) -> None:
        await release.wait()

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run(_c: object) -> str:
            order.append(name)
            return name

        return run

    async with poller() as p:
        first = asyncio.create_task(p.submit(blocker, priority=PRIORITY_DAILY))
        await asyncio.sleep(0)
        plan = [
            asyncio.create_task(p.submit(job(f"plan{i}"), priority=PRIORITY_DAILY))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        command = asyncio.create_task(p.submit(job("command"), priority=PRIORITY_COMMAND))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, command, *plan)
    assert order == ["command", "plan0", "plan1", "plan2"]


async def test_a_cancelled_submitter_does_not_stop_the_bus() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(_c: object) -> int:
        started.set()
        await release.wait()
        return 1

    async def quick(_c: object) -> int:
        return 2

    async with poller() as p:
        gone = asyncio.create_task(p.submit(slow, priority=PRIORITY_DAILY))
        await started.wait()
        gone.cancel()  # e.g. the plan was reloaded while its job was on the wire
        release.set()
        assert await p.submit(quick, priority=PRIORITY_DAILY) == 2


async def test_drain_refuses_queued_work_and_waits_for_the_running_job() -> None:
    release = asyncio.Event()

    async def running(_c: object) -> str:
        await release.wait()
        return "finished"

    async with poller() as p:
        busy = asyncio.create_task(p.submit(running, priority=PRIORITY_DAILY))
        await asyncio.sleep(0)
        queued = asyncio.create_task(p.submit(running, priority=PRIORITY_DAILY))
        await asyncio.sleep(0)
        drained = asyncio.create_task(p.drain(5))
        await asyncio.sleep(0)
        with pytest.raises(BusClosed):
            await queued
        release.set()
        assert await drained is True
        assert await busy == "finished"
        with pytest.raises(BusClosed):
            await p.submit(running, priority=PRIORITY_COMMAND)


def test_a_due_reprobe_is_handed_out_once() -> None:
    from agent.config import HealthConfig
    from agent.health import HealthTracker
    from protocols.payloads import FailureReason

    health = HealthTracker(
        HealthConfig(offline_after_failures=1, offline_after_minutes=0, reprobe_min_minutes=1)
    )
    health.failure("m", FailureReason.NO_REPLY, 0.0)
    assert health.offline == ["m"]
    assert not health.may_attempt("m", 30.0)
    assert health.may_attempt("m", 61.0)  # the daily plan takes the probe ...
    assert not health.may_attempt("m", 61.5)  # ... the interval plan does not probe as well
    health.failure("m", FailureReason.NO_REPLY, 62.0)  # backoff doubles from the outcome
    assert not health.may_attempt("m", 62.0 + 119)
    assert health.may_attempt("m", 62.0 + 120)
