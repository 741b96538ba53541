"""Injected faults (chaos primitives) seen from the master's side of the line, each as the
top-up reference's §E describes it: what came back, and what the meter did."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols.dlt645 import (
    Done,
    ErrorReply,
    IdentityAuthReply,
    IdentityAuthRequest,
    ReadReply,
    ReadRequest,
    SecureRemoteControlRequest,
    SecurityAck,
    SecurityErrorFlags,
    SecurityErrorReply,
    TopUpRequest,
)
from protocols.topup import relay_plaintext
from simulators import Fleet, FleetError
from simulators.esam import MacMaker
from tests.simulators.conftest import FLEET, PREPAID, SILENCE_S, START, Master, make_fleet

OP = b"\x01\x00\x00\x00"


async def _session(master: Master, fleet: Fleet) -> tuple[MacMaker, bytes]:
    pending = fleet.encryption_machine().identity_auth(fleet.meter(PREPAID).identity.meter_number)
    _, reply = await master.one(
        PREPAID,
        IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification),
    )
    assert isinstance(reply, IdentityAuthReply)
    return pending.session(reply.random), reply.esam_serial


def _top_up(fleet: Fleet, session: MacMaker, amount: int, count: int) -> TopUpRequest:
    wallet = fleet.meter(PREPAID).wallet
    assert wallet is not None
    mac1, mac2 = session.top_up_macs(amount, count, wallet.customer_number)
    return TopUpRequest(OP, amount, count, mac1, wallet.customer_number, mac2)


def _count(fleet: Fleet) -> int:
    wallet = fleet.meter(PREPAID).wallet
    assert wallet is not None
    return wallet.purchase_count


async def test_drop_request_the_meter_never_hears_it(direct: Master, fleet: Fleet) -> None:
    """§E #2: no reply, and the read-back shows count n: nothing was credited."""
    session, _ = await _session(direct, fleet)
    n = _count(fleet)
    rule = fleet.inject(PREPAID, "drop_request", on="topup")
    assert await direct.ask(PREPAID, _top_up(fleet, session, 5000, n + 1)) == []
    assert _count(fleet) == n
    assert fleet.recorder.records[-1].outcome == "lost"
    assert rule.hits == 1
    # spent: the same request now goes through
    _, reply = await direct.one(PREPAID, _top_up(fleet, session, 5000, n + 1))
    assert isinstance(reply, SecurityAck)
    assert _count(fleet) == n + 1


async def test_drop_reply_after_the_meter_credited(direct: Master, fleet: Fleet) -> None:
    """§E #1: no reply, but the meter credited: the read-back shows count n+1 and the last
    purchase amount = the order's; sending it again gets 重复充值, never a second credit."""
    session, _ = await _session(direct, fleet)
    n = _count(fleet)
    fleet.inject(PREPAID, "drop_reply", on="topup")
    request = _top_up(fleet, session, 5000, n + 1)
    assert await direct.ask(PREPAID, request) == []
    record = fleet.recorder.records[-1]
    assert (record.outcome, record.di) == ("reply_lost", "070102FF")
    assert "top-up credited" in record.detail
    _, count = await direct.one(PREPAID, ReadRequest(0x03330201))
    _, amount = await direct.one(PREPAID, ReadRequest(0x03330301))
    assert isinstance(count, ReadReply)
    assert isinstance(amount, ReadReply)
    assert int(count.value[::-1].hex()) == n + 1
    assert int(amount.value[::-1].hex()) == 5000  # XXXXXX.XX yuan: 50.00
    _, again = await direct.one(PREPAID, request)
    assert again == SecurityErrorReply(SecurityErrorFlags.DUPLICATE_TOP_UP)
    assert [c.purchase_count for c in fleet.credits.records()] == [n + 1]


async def test_late_request_past_the_session(direct: Master, fleet: Fleet) -> None:
    """§E #3: carrier latency delivers the top-up after the 5-minute session: SERR bit3 and
    nothing credited; a late arrival inside the session is credited normally."""
    session, _ = await _session(direct, fleet)
    n = _count(fleet)
    fleet.inject(PREPAID, "late", on="topup", late_s=301)
    _, reply = await direct.one(PREPAID, _top_up(fleet, session, 5000, n + 1))
    assert reply == SecurityErrorReply(SecurityErrorFlags.AUTH_FAILED)
    assert _count(fleet) == n
    assert "late" in fleet.recorder.records[-1].detail
    session, _ = await _session(direct, fleet)
    fleet.inject(PREPAID, "late", on="topup", late_s=120)
    _, reply = await direct.one(PREPAID, _top_up(fleet, session, 5000, n + 1))
    assert isinstance(reply, SecurityAck)
    assert fleet.credits.records()[-1].meter_time == START + dt.timedelta(seconds=120)


async def test_error_after_the_meter_changed_state(direct: Master, fleet: Fleet) -> None:
    """§E #16: an abnormal reply although the meter credited: only a read-back tells."""
    session, _ = await _session(direct, fleet)
    n = _count(fleet)
    fleet.inject(PREPAID, "error_after", on="topup", serr=0x0001)
    _, reply = await direct.one(PREPAID, _top_up(fleet, session, 5000, n + 1))
    assert reply == SecurityErrorReply(SecurityErrorFlags.OTHER)
    assert _count(fleet) == n + 1
    # on a 1CH the injected error is the ERR byte: the relay tripped all the same
    until = START + dt.timedelta(minutes=10)
    session, serial = await _session(direct, fleet)
    fleet.inject(PREPAID, "error_after", on="relay", err=0x04)
    trip = session.relay_ciphertext(relay_plaintext("trip", until), serial)
    _, reply = await direct.one(PREPAID, SecureRemoteControlRequest(trip))
    assert isinstance(reply, ErrorReply)
    assert fleet.meter(PREPAID).relay.open


async def test_relay_stuck_the_contact_does_not_move(direct: Master, fleet: Fleet) -> None:
    """§E #13: the 1CH is accepted (9C) and the command bit moves, the contact does not; the
    relay event records show no trip."""
    meter = fleet.meter(PREPAID)
    session, serial = await _session(direct, fleet)
    fleet.inject(PREPAID, "relay_stuck", on="relay")
    trip = session.relay_ciphertext(
        relay_plaintext("trip", START + dt.timedelta(minutes=5)), serial
    )
    _, reply = await direct.one(PREPAID, SecureRemoteControlRequest(trip))
    assert reply == Done(0x1C)
    word = meter.values()["status_word_3"]
    assert isinstance(word, int)
    assert (bool(word & 1 << 4), bool(word & 1 << 6)) == (False, True)
    assert meter.relay_counts["relay_trip"] == 0
    assert "did not move" in fleet.recorder.records[-1].detail


async def test_skip_times_targets_and_clearing(direct: Master, fleet: Fleet) -> None:
    rule = fleet.inject(PREPAID, "drop_request", on="read", skip=1, times=2)
    answers = [bool(await direct.ask(PREPAID, ReadRequest(0x00010000))) for _ in range(4)]
    assert answers == [True, False, False, True]
    assert (rule.seen, rule.hits, rule.spent) == (3, 2, True)
    forever = fleet.inject(PREPAID, "drop_request", on="security", times=None)
    pending = fleet.encryption_machine().identity_auth(PREPAID)
    auth = IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification)
    for _ in range(3):
        assert await direct.ask(PREPAID, auth) == []
    assert bool(await direct.ask(PREPAID, ReadRequest(0x00010000)))  # not a 03H
    assert forever.hits == 3
    assert fleet.clear_faults(PREPAID) == 2
    assert bool(await direct.ask(PREPAID, auth))
    with pytest.raises(KeyError):
        fleet.inject("999999999999", "drop_request")
    with pytest.raises(ValueError, match="action"):
        fleet.inject(PREPAID, "explode")
    with pytest.raises(ValueError, match="on"):
        fleet.inject(PREPAID, "drop_request", on="toppup")


def test_faults_from_the_fleet_file() -> None:
    fleet = make_fleet(
        FLEET + f'\n[[inject]]\nmeter = "{PREPAID}"\naction = "error_after"\non = "topup"\n'
        'serr = "0002"\ntimes = "forever"\n'
    )
    (rule,) = fleet.injected.rules
    assert (rule.action, rule.on, rule.serr, rule.times) == ("error_after", "topup", 2, None)
    for bad, message in (
        (f'meter = "{PREPAID}"\naction = "nope"', "inject\\[0\\]: action"),
        ('meter = "999999999999"\naction = "drop_reply"', "inject\\[0\\].meter"),
        (f'meter = "{PREPAID}"\naction = "late"\nlate = 3', "unknown key"),
    ):
        with pytest.raises(FleetError, match=message):
            make_fleet(FLEET + f"\n[[inject]]\n{bad}\n")
    with pytest.raises(FleetError, match=r"purchase\[0\]\.at"):
        make_fleet(FLEET + f'\n[[purchase]]\nmeter = "{PREPAID}"\nat = "soon"\namount_yuan = 1\n')


async def test_injected_faults_over_a_real_line(line: Master, fleet: Fleet) -> None:
    """The same primitives through the pty / TCP line: silence is silence on the wire."""
    session, _ = await _session(line, fleet)
    n = _count(fleet)
    fleet.inject(PREPAID, "drop_reply", on="topup")
    assert await line.ask(PREPAID, _top_up(fleet, session, 700, n + 1), quiet=SILENCE_S) == []
    assert _count(fleet) == n + 1
    _, reply = await line.one(PREPAID, ReadRequest(0x03330201))
    assert isinstance(reply, ReadReply)
