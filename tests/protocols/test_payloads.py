from __future__ import annotations

import pytest

from protocols.payloads import FailureReason, PayloadInvalid, kind_of_topic, topic, validate


def _reading_batch() -> dict[str, object]:
    return {
        "schema": "meterlink.readings/1",
        "concentrator": "c-001",
        "batch_id": "c-001:17",
        "sent_at": "2026-11-26T05:00:00+00:00",
        "readings": [
            {
                "meter": "123456789012",
                "item": "daily_freeze",
                "plan": "daily",
                "data_time": "2026-11-26T00:00:00+08:00",
                "read_at": "2026-11-26T00:20:01+08:00",
                "values": {"energy_import_total_kwh": {"value": 1234.56, "unit": "kWh"}},
            }
        ],
    }


def test_a_valid_batch_passes() -> None:
    validate("readings", _reading_batch())


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda p: p.pop("batch_id"), "/"),
        (lambda p: p["readings"][0].update(meter=""), "/readings/0/meter"),
        (
            lambda p: p["readings"][0]["values"].update(Bad={"value": 1, "unit": None}),
            "/readings/0/values",
        ),
        (lambda p: p.update(schema="meterlink.readings/2"), "/schema"),
    ],
)
def test_invalid_batches_name_the_place(mutate: object, path: str) -> None:
    payload = _reading_batch()
    mutate(payload)  # type: ignore[operator]
    with pytest.raises(PayloadInvalid) as err:
        validate("readings", payload)
    assert err.value.path == path


def test_round_reasons_are_the_closed_set() -> None:
    report = {
        "schema": "meterlink.rounds/1",
        "concentrator": "c-001",
        "plan": "daily",
        "round_id": "r1",
        "started_at": "2026-11-26T00:05:00+08:00",
        "ended_at": "2026-11-26T00:06:00+08:00",
        "expected": 2,
        "read": 1,
        "failed": [{"meter": "000000000002", "reason": "no_reply", "attempts": 3}],
        "failed_by_reason": {"no_reply": 1},
    }
    validate("rounds", report)
    report["failed_by_reason"] = {"cosmic_rays": 1}
    with pytest.raises(PayloadInvalid):
        validate("rounds", report)
    assert {r.value for r in FailureReason} >= {"timeout", "no_reply", "checksum", "abnormal_reply"}


def test_topics() -> None:
    assert topic("c-001", "readings") == "meterlink/v1/c-001/readings"
    assert kind_of_topic("meterlink/v1/c-001/rounds") == ("c-001", "rounds")
    assert kind_of_topic("meterlink/v2/c-001/rounds") is None
    with pytest.raises(ValueError, match="concentrator id"):
        topic("a/b", "readings")
