"""`common.mqtt.Client`: every wait for the broker (CONNACK, SUBACK, PUBACK, the disconnection)
can be cancelled, also in the loop iteration where the answer arrives; no code builds an
`aiomqtt.Client` past it, and product code never waits with Python 3.11's `asyncio.wait_for`;
a socket paho closes before its deferred watch starts is not watched (its number may be another
file's by then)."""

from __future__ import annotations

import asyncio
import os
import re
import socket

import aiomqtt
import paho.mqtt.client as paho
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


def _paho_holding(client: Client, sock: socket.socket) -> paho.Client:
    """The client's paho instance, holding `sock` as after a connect."""
    inner = client._client
    inner._sock = sock
    return inner


async def test_a_socket_closed_before_its_write_registration_runs_is_left_alone() -> None:
    """A publish asks paho to write; the broker resets the connection in the same loop
    iteration, so paho closes the socket before aiomqtt's deferred `add_writer` runs: with
    aiomqtt's own client that was an "Exception in callback ... Bad file descriptor" (a stack
    trace in the agent's log, seen under load in tests/agent/test_disk_full.py)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            inner = _paho_holding(Client(*NOBODY), ours)
            inner._call_socket_register_write()  # a publish queued bytes
            inner._sock_close()  # the reset, read in the same iteration
            for _ in range(3):
                await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_a_reused_descriptor_does_not_get_the_old_sockets_callbacks() -> None:
    """Worse than the log line: once the system hands the closed socket's number to another
    file (a serial line, the outbox's database), the deferred registration would watch that
    file and run MQTT's reader or writer on its events."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    number = ours.fileno()
    inner = _paho_holding(Client(*NOBODY), ours)
    inner._call_socket_open(ours)  # the connect thread: watch for reading
    inner._call_socket_register_write()  # and for writing
    inner._sock_close()  # closed before either registration ran
    other, peer = socket.socketpair()  # the number now belongs to another file
    copied = other.fileno() != number  # the system usually hands out the lowest free number
    if copied:
        os.dup2(other.fileno(), number)
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        assert not loop.remove_reader(number)
        assert not loop.remove_writer(number)
    finally:
        if copied:
            os.close(number)
        for sock in (theirs, other, peer):
            sock.close()
