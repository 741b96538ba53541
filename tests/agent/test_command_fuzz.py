"""Whatever arrives on the command topic, the agent's command channel answers with a refusal
that says why, counts it by reason, and never runs the handler — random bytes, absurd nesting,
duplicate keys, a signed command changed anywhere, one signed with another key, an expired one,
a replayed one. (A replay across a restart, end to end: tests/agent/test_nonces.py.)"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.mqtt.client import ConnectionState, LinkStats
from agent.mqtt.commands import CommandChannel
from agent.mqtt.settings import LinkSettings
from agent.nonces import PersistentNonces
from common.config import build
from protocols.commands import new_command
from protocols.payloads import validate
from tests.agent.helpers_mqtt import CONCENTRATOR, KEY

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
REASONS = {"invalid", "unauthorized"}


def signed(**kw: Any) -> dict[str, Any]:
    return new_command(
        kw.pop("name", "read"),
        concentrator=CONCENTRATOR,
        key=kw.pop("key", KEY),
        now=kw.pop("at", dt.datetime.now(dt.UTC)),
        meter="000000000001",
        args={"items": ["energy_import_total_kwh"]},
    )


class Channel:
    def __init__(self, tmp: Path) -> None:
        self.handled: list[dict[str, Any]] = []
        self.stats = LinkStats()
        self.nonces = PersistentNonces(tmp / "nonces.sqlite")
        self.loop = asyncio.new_event_loop()

        async def handler(cmd: dict[str, Any]) -> dict[str, Any]:
            self.handled.append(cmd)
            return {"ok": True}

        self.channel = CommandChannel(
            build(LinkSettings, {"host": "127.0.0.1"}),
            CONCENTRATOR,
            f"meterlink/v1/{CONCENTRATOR}/cmd",
            handler=handler,
            key=KEY,
            sender=None,  # type: ignore[arg-type]  # answer() never sends
            stats=self.stats,
            connection=ConnectionState(),
            nonces=self.nonces,
        )

    def answer(self, raw: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self.loop.run_until_complete(self.channel.answer(raw))
        validate("response", reply)
        return reply

    def refused(self, raw: Any) -> dict[str, Any]:
        before = sum(self.stats.commands_refused.values())
        handled = len(self.handled)
        reply = self.answer(raw)
        assert reply["ok"] is False
        assert reply["reason"] in REASONS
        assert "\n" not in reply["detail"]
        assert len(reply["detail"]) <= 1200
        assert sum(self.stats.commands_refused.values()) == before + 1
        assert len(self.handled) == handled
        return reply


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Channel]:
    made = Channel(tmp_path)
    try:
        yield made
    finally:
        made.nonces.close()
        made.loop.close()


def _works(channel: Channel) -> None:
    assert channel.answer(json.dumps(signed()).encode())["ok"] is True


def test_random_bytes(channel: Channel) -> None:
    @FUZZ
    @given(st.binary(max_size=1000))
    def check(raw: bytes) -> None:
        channel.refused(raw)

    check()
    _works(channel)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def test_a_signed_command_changed_anywhere_is_refused(channel: Channel) -> None:
    @FUZZ
    @given(st.sampled_from(_paths(signed())[1:]), json_values)
    def check(path: tuple[Any, ...], value: Any) -> None:
        cmd = signed()
        target = cmd
        for key in path[:-1]:
            target = target[key]
        if target[path[-1]] == value:
            return
        target[path[-1]] = value
        channel.refused(json.dumps(cmd).encode())

    check()
    _works(channel)


@pytest.mark.parametrize(
    ("make", "reason", "detail"),
    [
        (lambda: signed(key=b"the wrong key"), "unauthorized", "bad signature"),
        (
            lambda: signed(at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
            "unauthorized",
            "issued_at",
        ),
        (lambda: b"[" * 200_000, "invalid", "JSON"),
        (lambda: ('{"a":' * 5000 + "1" + "}" * 5000).encode(), "invalid", ""),
        (
            lambda: (
                json.dumps(signed())
                .replace('"command"', '"command": "relay", "command"', 1)
                .encode()
            ),
            "invalid",
            "duplicate key",
        ),
        (
            lambda: json.dumps(signed()).encode().replace(b'"read"', b'"re\xffad"'),
            "invalid",
            "UTF-8",
        ),
    ],
    ids=["wrong_key", "expired", "deep_list", "deep_objects", "duplicate_keys", "not_utf8"],
)
def test_bad_commands(channel: Channel, make: Any, reason: str, detail: str) -> None:
    reply = channel.refused(make())
    assert reply["reason"] == reason
    assert detail in reply["detail"]
    _works(channel)


def test_a_replay_is_refused_and_counted(channel: Channel) -> None:
    body = json.dumps(signed()).encode()
    assert channel.answer(body)["ok"] is True
    reply = channel.refused(copy.copy(body))
    assert reply["detail"] == "nonce already used"
    assert channel.stats.commands_refused == {"unauthorized": 1}
