"""The order service's helpers for the ``security`` command: arguments, the typed reply and the
read-back rule (docs/topup.md)."""

from __future__ import annotations

import datetime as dt

import pytest

from central.topup.hsm import IdentityAuth, PurseMacs
from central.topup.steps import (
    PurchaseState,
    Verdict,
    auth_step,
    parse_security_reply,
    read_step,
    reconcile,
    relay_step,
    security_args,
    step_reason,
    topup_step,
)
from protocols.commands import new_command
from protocols.payloads import FailureReason, validate
from protocols.topup import PURCHASE_READBACK_ITEMS, SecurityReason

ACCEPTED = dt.datetime(2026, 3, 10, 10, 0, 30)


def _state(count: int | None, amount: int | None = 5000, minutes: float = 2) -> PurchaseState:
    when = ACCEPTED.replace(second=0) + dt.timedelta(minutes=minutes)
    return PurchaseState(purchase_count=count, last_amount_fen=amount, last_time=when)


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        (_state(8), Verdict.CONFIRMED),
        (_state(8, minutes=0), Verdict.CONFIRMED),  # same minute as the acceptance
        (_state(8, minutes=-4), Verdict.CONFIRMED),  # within the meter clock tolerance
        (_state(7), Verdict.RESEND),
        (_state(9), Verdict.NEEDS_REVIEW),  # further on: someone else bought meanwhile
        (_state(6), Verdict.NEEDS_REVIEW),
        (_state(8, amount=3000), Verdict.NEEDS_REVIEW),  # n+1 but another purchase's amount
        (_state(8, minutes=-60), Verdict.NEEDS_REVIEW),  # a purchase before the order existed
        (_state(None), Verdict.UNKNOWN),
        (PurchaseState(purchase_count=8), Verdict.UNKNOWN),
    ],
)
def test_reconcile(state: PurchaseState, verdict: Verdict) -> None:
    assert reconcile(state, target_count=8, amount_fen=5000, accepted_at=ACCEPTED) is verdict


def test_reconcile_takes_an_aware_time_in_the_meter_zone() -> None:
    aware = ACCEPTED.replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert reconcile(_state(8), target_count=8, amount_fen=5000, accepted_at=aware) is (
        Verdict.CONFIRMED
    )
    wider = dt.timedelta(minutes=90)
    assert reconcile(
        _state(8, minutes=-60), target_count=8, amount_fen=5000, accepted_at=ACCEPTED,
        clock_tolerance=wider,
    ) is Verdict.CONFIRMED  # fmt: skip


def test_purchase_state_from_read_values() -> None:
    state = PurchaseState.from_values(
        {
            "purchase_count": 8,
            "purchase_amount_yuan": 50.0,
            "purchase_time": "2026-03-10T10:02:00",
            "balance_yuan": 130.55,
            "status_word_3": (1 << 4) | (1 << 9),
            "auth_session_remaining_min": 4,
        }
    )
    assert (state.purchase_count, state.last_amount_fen, state.remaining_fen) == (8, 5000, 13055)
    assert (state.relay_open, state.relay_command_open, state.local_prepaid) == (True, False, True)
    assert PurchaseState().relay_open is None


def test_arguments_validate_against_the_command_schema() -> None:
    auth = IdentityAuth("000000000001", b"\x01" * 8, b"\x02" * 8, b"\x00\x00" + b"\x01" + b"\0" * 5)
    assert auth.data == b"\x02" * 8 + b"\x01" * 8 + auth.diversification
    macs = PurseMacs(b"\x03" * 22, b"\x04" * 4, b"\x05" * 4)
    deadline = dt.datetime(2026, 3, 10, 11, 0, tzinfo=dt.UTC)
    for steps, session in (
        ([auth_step(auth, session_minutes=30), read_step()], None),
        ([topup_step(macs), read_step(["purchase_count"])], b"\x09" * 4),
        ([relay_step(b"\x06" * 20, password=b"\x96\0\0\0")], b"\x09" * 4),
    ):
        args = security_args(steps, session=session, not_after=deadline, operator=b"\x01\0\0\0")
        command = new_command(
            "security", concentrator="c-1", key=b"k", now=deadline, meter="m", args=args
        )
        validate("cmd", command)
    assert read_step()["items"] == list(PURCHASE_READBACK_ITEMS)
    with pytest.raises(ValueError, match="aware"):
        security_args([read_step()], not_after=dt.datetime(2026, 3, 10))


def test_reasons_parse_into_their_closed_sets() -> None:
    assert step_reason("duplicate_top_up") is SecurityReason.DUPLICATE_TOP_UP
    assert step_reason("no_reply") is FailureReason.NO_REPLY
    assert step_reason("invalid") == "invalid"
    assert step_reason(None) is None


def test_a_refusal_before_any_step() -> None:
    result = parse_security_reply(
        {"ok": False, "command": "security", "reason": "unauthorized", "detail": "bad signature"}
    )
    assert (result.ok, result.reason, result.steps, result.random2) == (
        False,
        "unauthorized",
        [],
        None,
    )
