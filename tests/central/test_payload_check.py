"""The compiled check every payload goes through (fastjsonschema, `protocols.payloads.accepts`)
agrees with jsonschema on what the consumer sees and on thousands of mutations of it."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from protocols.payloads import SCHEMAS, PayloadInvalid, accepts, decode_readings, validate
from tests.central import scenario
from tests.central.helpers import batch, reading

ODD_VALUES: list[Any] = [
    *(None, True, False, 0, -1, 1.5, 2.0, 1e300),
    *("", "x", "2026-11-25", "AAAAAAAAAAAA", "no_reply", "Z" * 70),
    *([], [1], {}, {"value": 1, "unit": None}),
]


def samples() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [(kind, p) for _, kind, p in scenario.messages()]
    r = reading("000000000001", "2026-11-25", quality="backfill")
    r["values"]["status_word_1"] = {"value": 3, "unit": None, "flags": ["a", "b"]}
    r["clock_offset_s"] = -2.5
    out.append(("readings", batch("c-1", [r], "x")))
    out.append(("events", {"schema": "meterlink.events/1", "concentrator": "c-1",
                           "at": "2026-11-25T00:00:00+08:00", "event": "meter_offline",
                           "meter": "000000000001", "detail": {"since": 3}}))  # fmt: skip
    out.append(("status", {"schema": "meterlink.status/1", "concentrator": "c-1",
                           "state": "online", "at": "2026-11-25T00:00:00+08:00",
                           "outbox_depth": 0}))  # fmt: skip
    return out


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            found += _paths(v, (*prefix, i))
    return found


def _mutants(payload: Any, rng: random.Random, n: int) -> list[Any]:
    paths = _paths(payload)
    out = []
    for _ in range(n):
        p = copy.deepcopy(payload)
        path = rng.choice(paths)
        parent = p
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["extra", "Bad-Name", "9x", "ok_name"])] = rng.choice(ODD_VALUES)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        out.append(p)
    return out


def _jsonschema_accepts(kind: str, payload: Any) -> bool:
    from protocols.payloads import _detailed

    return next(iter(_detailed(kind).iter_errors(payload)), None) is None


def test_the_verdicts_agree_on_thousands_of_mutations() -> None:
    rng = random.Random(645)
    checked = rejected = 0
    for kind, payload in samples():
        assert kind in SCHEMAS
        for mutant in [payload, *_mutants(payload, rng, 250)]:
            expected = _jsonschema_accepts(kind, mutant)
            assert accepts(kind, mutant) is expected, (kind, mutant)
            checked += 1
            rejected += not expected
    assert checked > 3000
    assert rejected > checked // 3  # the mutations really break things


def _decoder_accepts(payload: Any) -> bool:
    try:
        decode_readings(json.dumps(payload).encode())
    except PayloadInvalid:
        return False
    return True


def test_the_readings_decoder_agrees_with_the_schema_on_thousands_of_mutations() -> None:
    """The consumer decodes readings with the msgspec structs the schema is generated from:
    their verdicts are jsonschema's on the published schema."""
    rng = random.Random(2007)
    checked = rejected = 0
    for kind, payload in samples():
        if kind != "readings":
            continue
        for mutant in [payload, *_mutants(payload, rng, 600)]:
            expected = _jsonschema_accepts(kind, mutant)
            assert _decoder_accepts(mutant) is expected, mutant
            checked += 1
            rejected += not expected
    assert checked > 1000
    assert rejected > checked // 3


def test_the_decoder_says_what_is_wrong_and_where() -> None:
    bad = batch("c-1", [reading("000000000001", "2026-11-25")], "x")
    bad["readings"][0]["values"]["energy_import_total_kwh"]["value"] = True
    with pytest.raises(PayloadInvalid) as err:
        decode_readings(json.dumps(bad).encode())
    assert err.value.path == "$.readings[0].values[...].value"
    assert "Expected `float | str`, got `bool`" in str(err.value)
    with pytest.raises(PayloadInvalid, match="not JSON"):
        decode_readings(b'{"schema": "meterlink.readings/1", "readings": [')
    # a number no float holds: valid JSON, never a valid field value
    big = json.dumps(batch("c-1", [reading("000000000001", "2026-11-25")], "x"))
    with pytest.raises(PayloadInvalid, match="out of range"):
        decode_readings(big.replace("100.0", "1e400", 1).encode())


def test_a_refused_payload_reports_the_schema_modules_error() -> None:
    bad = batch("c-1", [reading("000000000001", "2026-11-25")], "x")
    bad["readings"][0]["quality"] = "great"
    with pytest.raises(PayloadInvalid) as err:
        validate("readings", bad)
    assert err.value.path == "/readings/0/quality"
