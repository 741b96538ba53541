"""The top-up vocabulary (`protocols.topup`) agrees with the codec it must not import."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols.dlt645 import (
    RelayAction,
    RemoteControlRequest,
    SecurityErrorFlags,
    SecurityRequest,
    from_frame,
    to_frame,
)
from protocols.dlt645.address import Address
from protocols.dlt645.security import (
    DI_ACCOUNT_OPEN,
    DI_AUTH_VALIDITY,
    DI_DATA_READBACK,
    DI_IDENTITY_AUTH,
    DI_TOP_UP,
)
from protocols.errors import PayloadError
from protocols.payloads import FailureReason
from protocols.topup import (
    DATA_LENGTHS,
    HSM_ERRORS,
    SERR_BITS,
    RelayCommand,
    SecurityReason,
    StepOp,
    hsm_reason,
    relay_plaintext,
    serr_reason,
    serr_reasons,
)


def test_every_serr_flag_has_one_reason() -> None:
    assert {bit for bit, _ in SERR_BITS} == {int(f) for f in SecurityErrorFlags}
    names = {
        SecurityErrorFlags.OTHER: SecurityReason.OTHER,
        SecurityErrorFlags.DUPLICATE_TOP_UP: SecurityReason.DUPLICATE_TOP_UP,
        SecurityErrorFlags.ESAM_FAILED: SecurityReason.ESAM_FAILED,
        SecurityErrorFlags.AUTH_FAILED: SecurityReason.AUTH_FAILED,
        SecurityErrorFlags.CUSTOMER_MISMATCH: SecurityReason.CUSTOMER_MISMATCH,
        SecurityErrorFlags.PURCHASE_COUNT_ERROR: SecurityReason.PURCHASE_COUNT_ERROR,
        SecurityErrorFlags.HOARDING_EXCEEDED: SecurityReason.HOARDING_EXCEEDED,
        SecurityErrorFlags.ADDRESS_ERROR: SecurityReason.ADDRESS_ERROR,
        SecurityErrorFlags.REMOTE_LOCKED: SecurityReason.METER_SUSPENDED,
    }
    for flag, reason in names.items():
        assert serr_reason(int(flag)) is reason
        assert serr_reasons(int(flag)) == (reason,)


def test_several_bits_the_earliest_check_wins() -> None:
    word = int(SecurityErrorFlags.DUPLICATE_TOP_UP | SecurityErrorFlags.AUTH_FAILED)
    assert serr_reasons(word) == (SecurityReason.AUTH_FAILED, SecurityReason.DUPLICATE_TOP_UP)
    assert serr_reason(0x0102) is SecurityReason.METER_SUSPENDED
    assert serr_reason(0) is SecurityReason.OTHER  # an abnormal reply with no bit set
    assert serr_reasons(0x8002) == (SecurityReason.DUPLICATE_TOP_UP, SecurityReason.OTHER)


def test_reason_sets_do_not_overlap() -> None:
    assert not {r.value for r in SecurityReason} & {r.value for r in FailureReason}
    assert "invalid" not in {r.value for r in SecurityReason}


def test_hsm_codes() -> None:
    assert hsm_reason(160) is hsm_reason(168) is SecurityReason.HSM_UNAVAILABLE
    assert hsm_reason(167) is SecurityReason.HSM_MAC_FAILED
    assert hsm_reason(171) is SecurityReason.HSM_FAULT
    assert hsm_reason(1107) is SecurityReason.HSM_PERMISSION
    assert hsm_reason(4242) is SecurityReason.HSM_ERROR
    assert all(reason.value.startswith("hsm_") for reason, _ in HSM_ERRORS.values())


def test_relay_codes_and_plaintext_match_the_codec() -> None:
    assert {c.name: c.value for c in RelayCommand} == {a.name: a.value for a in RelayAction}
    until = dt.datetime(2026, 3, 10, 10, 9, 8)
    plain = relay_plaintext("close_allowed", until)
    frame = to_frame(
        Address.parse("000000000001"), RemoteControlRequest(RelayAction.CLOSE_ALLOWED, until)
    )
    assert plain == frame.data[8:]  # N1 N2 N3..N8 of the plain 1CH the codec builds
    assert relay_plaintext(RelayCommand.TRIP, until)[0] == 0x1A
    with pytest.raises(KeyError):
        relay_plaintext("open_sesame", until)
    with pytest.raises(ValueError, match="2000-2099"):
        relay_plaintext("trip", dt.datetime(2100, 1, 1))


@pytest.mark.parametrize(
    ("op", "di"),
    [
        (StepOp.AUTH, DI_IDENTITY_AUTH),
        (StepOp.AUTH_VALIDITY, DI_AUTH_VALIDITY),
        (StepOp.OPEN, DI_ACCOUNT_OPEN),
        (StepOp.TOPUP, DI_TOP_UP),
        (StepOp.READBACK, DI_DATA_READBACK),
    ],
)
def test_data_lengths_are_the_codec_layouts(op: StepOp, di: int) -> None:
    """`data` + DI + operator decodes into the step's typed request: the lengths agree."""
    data = bytes(DATA_LENGTHS[op])
    if op in (StepOp.OPEN, StepOp.TOPUP):
        data = bytes(12) + bytes.fromhex("000000000001") + bytes(4)
    if op is StepOp.AUTH_VALIDITY:
        data = b"\x05\x00" + bytes(4)
    frame = to_frame(Address.parse("000000000001"), SecurityRequest(di, bytes(4), data))
    message = from_frame(frame)
    assert type(message).__name__ != "SecurityRequest"  # a typed layout took every byte
    short = to_frame(Address.parse("000000000001"), SecurityRequest(di, bytes(4), data[:-1]))
    with pytest.raises(PayloadError):
        from_frame(short)
