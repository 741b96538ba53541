"""Whatever arrives on a meterlink topic, the consumer keeps running: a payload it cannot take
(huge, absurdly deep, wrong types, not UTF-8, random bytes) becomes one dead
letter with a one-line reason, is counted and acknowledged; the good message after it still
lands. Messages go straight into the consumer's intake (`_take`, then `flush`, as its MQTT loop
and flusher do), so Hypothesis can try thousands of them without a broker in between."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.consumer import Consumer
from central.spool import Spool
from tests.central.helpers import batch, config, reading
from tests.fixtures.services import free_port

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TOPIC = "meterlink/v1/c-001/readings"
GOOD = batch("c-001", [reading("000000000001", "2026-11-25")], "good")
MAX_REASON = 600  # characters: a reason names the problem, it does not quote the payload


class _Paho:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


class _Client:
    """What the consumer uses of an aiomqtt client when it acknowledges."""

    def __init__(self) -> None:
        self._client = _Paho()


class _Message:
    def __init__(self, topic: str, payload: bytes, mid: int) -> None:
        self.topic = aiomqtt.Topic(topic)
        self.payload = payload
        self.qos = 1
        self.mid = mid


class Intake:
    """A consumer without its MQTT loop: hand it messages, flush, look at what it did."""

    def __init__(self, tmp: Path) -> None:
        # InfluxDB and the broker are never reached: a closed port, so good lines go to the spool
        cfg = config(tmp, free_port(), f"http://127.0.0.1:{free_port()}")
        self.consumer = Consumer(cfg)
        self.client = _Client()
        self.consumer._client = self.client  # type: ignore[assignment]
        self.consumer._generation = 1
        self.spool_path = cfg.consumer.spool
        self.loop = asyncio.new_event_loop()
        self.mid = 0

    def take(self, payload: bytes, topic: str = TOPIC) -> tuple[int, int]:
        """(dead letters added, readings taken) for one message; checks it was acknowledged."""
        self.mid += 1
        before_invalid = self.consumer.stats.invalid
        before_readings = self.consumer.stats.readings
        message = _Message(topic, payload, self.mid)

        async def one() -> None:
            await self.consumer._take(self.client, 1, message)  # type: ignore[arg-type]
            await self.consumer.flush()

        self.loop.run_until_complete(one())
        assert self.client._client.acked[-1] == self.mid, "every message is acknowledged"
        return (
            self.consumer.stats.invalid - before_invalid,
            self.consumer.stats.readings - before_readings,
        )

    def reasons(self) -> list[str]:
        spool = Spool(self.spool_path)
        try:
            return [d.error for d in spool.dead_letters(limit=10**6)]
        finally:
            spool.close()

    def close(self) -> None:
        self.loop.run_until_complete(self.consumer._close())
        self.loop.close()


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    made = Intake(tmp_path)
    try:
        yield made
    finally:
        made.close()


def _refused(intake: Intake, payload: bytes, *, says: str | None = None) -> str:
    dead, taken = intake.take(payload)
    assert (dead, taken) == (1, 0)
    reason = intake.reasons()[-1]
    assert reason
    assert "\n" not in reason
    assert "Traceback" not in reason
    assert len(reason) <= MAX_REASON, reason[:200]
    if says is not None:
        assert says in reason, reason
    return reason


def _still_working(intake: Intake) -> None:
    assert intake.take(json.dumps(GOOD).encode()) == (0, 1)


def test_random_bytes_are_refused_one_by_one(intake: Intake) -> None:
    @FUZZ
    @given(st.binary(max_size=2000))
    def check(raw: bytes) -> None:
        _refused(intake, raw)

    check()
    _still_working(intake)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


PATHS = _paths(GOOD)[1:]


def test_wrong_types_anywhere_are_refused_or_taken_never_a_crash(intake: Intake) -> None:
    @FUZZ
    @given(st.sampled_from(PATHS), json_values)
    def check(path: tuple[Any, ...], value: Any) -> None:
        payload = copy.deepcopy(GOOD)
        target = payload
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        dead, taken = intake.take(json.dumps(payload).encode())
        assert (dead, taken) in ((1, 0), (0, 1))  # a free-form field may take any value
        if dead:
            reason = intake.reasons()[-1]
            assert "\n" not in reason
            assert len(reason) <= MAX_REASON

    check()
    _still_working(intake)


def test_absurd_nesting_is_refused(intake: Intake) -> None:
    _refused(intake, b"[" * 100_000 + b"]" * 100_000)
    # a schema-shaped batch whose one value nests 50 000 objects deep
    placeholder = '"NESTED"'
    shallow = copy.deepcopy(GOOD)
    shallow["readings"][0]["values"]["energy_import_total_kwh"] = "NESTED"
    nested = '{"a": ' * 50_000 + "1" + "}" * 50_000
    _refused(intake, json.dumps(shallow).replace(placeholder, nested, 1).encode())
    _still_working(intake)


def test_huge_payloads_are_refused_with_a_short_reason(intake: Intake) -> None:
    huge = copy.deepcopy(GOOD)
    huge["readings"][0]["meter"] = "9" * 4_000_000
    _refused(intake, json.dumps(huge).encode())
    many = copy.deepcopy(GOOD)
    many["readings"] = [copy.deepcopy(GOOD["readings"][0]) for _ in range(20_000)]
    many["readings"][-1]["values"] = "not values"
    _refused(intake, json.dumps(many).encode())
    _still_working(intake)


def test_duplicate_keys_never_crash_the_intake(intake: Intake) -> None:
    """{"concentrator": "c-002", "concentrator": "c-001"}: parsers differ on which one wins.
    Whatever this intake decides, the message is acknowledged once and lands at most once."""
    text = json.dumps(GOOD)
    twice = text.replace(
        '"concentrator": "c-001"', '"concentrator": "c-002", "concentrator": "c-001"'
    )
    assert twice != text
    assert intake.take(twice.encode()) in ((1, 0), (0, 1))
    _still_working(intake)


def test_a_redelivered_message_is_taken_again_not_a_dead_letter(intake: Intake) -> None:
    """At-least-once delivery: the same batch twice lands on the same point."""
    body = json.dumps(GOOD).encode()
    assert intake.take(body) == (0, 1)
    assert intake.take(body) == (0, 1)
    assert intake.reasons() == []


def test_not_utf8_is_refused_with_a_clear_reason(intake: Intake) -> None:
    body = json.dumps(GOOD).encode().replace(b"000000000001", b"0000\xff\xfe0001")
    _refused(intake, body, says="UTF-8")
    _refused(intake, b"\xff" * 64, says="UTF-8")
    _still_working(intake)


def test_junk_on_a_topic_that_is_not_meterlinks_is_refused(intake: Intake) -> None:
    dead, taken = intake.take(json.dumps(GOOD).encode(), topic="meterlink/v1/c-001/nonsense")
    assert (dead, taken) == (1, 0)
    assert intake.reasons()[-1] == "not a meterlink topic"
