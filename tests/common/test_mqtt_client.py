"""`common.mqtt.Client`: every wait for the broker (CONNACK, SUBACK, PUBACK, the disconnection)
can be cancelled, also in the loop iteration where the answer arrives; no code builds an
`aiomqtt.Client` past it, and product code never waits with Python 3.11's `asyncio.wait_for`."""

from __future__ import annotations

import asyncio
import re

import aiomqtt
import pytest

from common.mqtt import Client
from tests.conftest import REPO

NOBODY = ("127.0.0.1", 1)  # never connected: only the waiting is under test


async def test_a_cancel_arriving_with_the_answer_stops_the_waiter() -> None:
    """Python 3.11's `asyncio.wait_for` returns the answer and drops the cancellation here; the
    agent's publisher then went on waiting for rows after its link was stopped (a hung test
    teardown, 2 full runs in 10)."""
    client = Client(*NOBODY, timeout=5)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(client._wait_for(answer, None))
    await asyncio.sleep(0)  # it waits for the answer
    answer.set_result("PUBACK")
    task.cancel()  # told to stop in the same iteration
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_an_answer_comes_back_and_silence_is_an_mqtt_timeout() -> None:
    client = Client(*NOBODY, timeout=0.05)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    answer.set_result("CONNACK")
    assert await client._wait_for(answer, None) == "CONNACK"
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(aiomqtt.MqttError, match="Operation timed out"):
        await client._wait_for(never, None)
    assert never.cancelled()  # nothing left waiting
    endless: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(client._wait_for(endless, float("inf")))  # aiomqtt's "no limit"
    await asyncio.sleep(0.1)
    assert not task.done()
    endless.set_result("SUBACK")
    assert await task == "SUBACK"


def test_no_code_builds_an_aiomqtt_client_directly() -> None:
    built = re.compile(r"aiomqtt\.Client\(")
    offenders = [
        str(path.relative_to(REPO))
        for top in ("agent", "central", "common", "meterlink", "simulators", "bench", "tests")
        for path in sorted((REPO / top).rglob("*.py"))
        if built.search(path.read_text(encoding="utf-8"))
        and path != REPO / "tests" / "common" / "test_mqtt_client.py"
    ]
    assert offenders == [], "use common.mqtt.Client (safe to cancel on Python 3.11)"


def test_product_code_waits_with_timeout_not_wait_for() -> None:
    """The same 3.11 `wait_for` loses a stop sent as the awaited event fires: a service loop
    waiting for its stop event or its next period would then never end."""
    offenders = [
        str(path.relative_to(REPO))
        for top in ("agent", "central", "common", "meterlink", "simulators", "protocols")
        for path in sorted((REPO / top).rglob("*.py"))
        if "asyncio.wait_for(" in path.read_text(encoding="utf-8")
    ]
    assert offenders == [], "use `async with asyncio.timeout(...)`"
