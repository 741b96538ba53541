"""03H remote top-up with the simulated ESAM, over the line: every refusal, MAC rejection,
session expiry, and the wallet driving the relay."""

from __future__ import annotations

import datetime as dt
from typing import Any

from protocols.dlt645 import (
    AccountOpenRequest,
    AuthEndReply,
    AuthEndRequest,
    AuthValidityRequest,
    Done,
    Edition,
    ErrorFlags,
    ErrorReply,
    IdentityAuthReply,
    IdentityAuthRequest,
    ReadReply,
    ReadRequest,
    SecureRemoteControlRequest,
    SecurityAck,
    SecurityErrorFlags,
    SecurityErrorReply,
    StatusQueryReply,
    StatusQueryRequest,
    TopUpRequest,
    lookup,
    values_of,
)
from protocols.topup import relay_plaintext
from simulators import Fleet
from simulators.esam import MacMaker
from tests.simulators.conftest import (
    FLEET,
    PLAIN,
    PREPAID,
    START,
    DirectMaster,
    Master,
    make_fleet,
)

OP = b"\x01\x00\x00\x00"


async def _auth(line: Master, fleet: Fleet, address: str = PREPAID) -> MacMaker:
    meter = fleet.meter(address)
    pending = fleet.encryption_machine().identity_auth(meter.identity.meter_number)
    _, reply = await line.one(
        address,
        IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification),
    )
    assert isinstance(reply, IdentityAuthReply)
    return pending.session(reply.random)


def _top_up(session: MacMaker, amount: int, count: int, customer: str) -> TopUpRequest:
    mac1, mac2 = session.top_up_macs(amount, count, customer)
    return TopUpRequest(OP, amount, count, mac1, customer, mac2)


async def _refused(line: Master, request: TopUpRequest) -> SecurityErrorFlags:
    frame, reply = await line.one(PREPAID, request)
    assert frame.control.byte == 0xC3
    assert isinstance(reply, SecurityErrorReply)
    return reply.flags


async def test_top_up_credits_once_and_counts(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    before, count = meter.values()["balance_yuan"], wallet.purchase_count
    session = await _auth(line, fleet)
    request = _top_up(session, 5000, count + 1, wallet.customer_number)
    _, reply = await line.one(PREPAID, request)
    assert isinstance(reply, SecurityAck)
    assert meter.values()["balance_yuan"] == round(float(before) + 50.0, 2)
    assert wallet.purchase_count == count + 1
    record = wallet.record(1)
    assert record is not None
    assert (record.count, record.amount_fen) == (count + 1, 5000)
    # the same request again (a retry after a lost reply) is a duplicate, not a second credit
    assert await _refused(line, request) == SecurityErrorFlags.DUPLICATE_TOP_UP
    assert meter.values()["balance_yuan"] == round(float(before) + 50.0, 2)
    # the purchase count read back with 11H: 03 33 02 01
    _, read = await line.one(PREPAID, ReadRequest(0x03330201))
    assert getattr(read, "value", None) == bytes.fromhex(f"{count + 1:04d}")[::-1]


async def test_every_top_up_refusal(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    count, customer = wallet.purchase_count, wallet.customer_number
    # no identity authentication yet
    machine = fleet.encryption_machine()
    stale = machine.identity_auth(meter.identity.meter_number).session(b"\x00" * 4)
    assert await _refused(line, _top_up(stale, 100, count + 1, customer)) == (
        SecurityErrorFlags.AUTH_FAILED
    )
    session = await _auth(line, fleet)
    assert await _refused(line, _top_up(session, 100, count + 1, "999999999999")) == (
        SecurityErrorFlags.CUSTOMER_MISMATCH
    )
    assert await _refused(line, _top_up(session, 100, count + 2, customer)) == (
        SecurityErrorFlags.PURCHASE_COUNT_ERROR
    )
    assert await _refused(line, _top_up(session, 100, count, customer)) == (
        SecurityErrorFlags.DUPLICATE_TOP_UP
    )
    assert await _refused(line, _top_up(session, 10_000_000, count + 1, customer)) == (
        SecurityErrorFlags.HOARDING_EXCEEDED
    )
    forged = _top_up(session, 100, count + 1, customer)
    forged = TopUpRequest(OP, 900, count + 1, forged.mac1, customer, forged.mac2)  # amount changed
    assert await _refused(line, forged) == SecurityErrorFlags.ESAM_FAILED
    assert wallet.purchase_count == count  # nothing was credited


async def test_replayed_mac_from_an_old_session_is_rejected(line: Master, fleet: Fleet) -> None:
    wallet = fleet.meter(PREPAID).wallet
    assert wallet is not None
    first = await _auth(line, fleet)
    request = _top_up(first, 1000, wallet.purchase_count + 1, wallet.customer_number)
    await _auth(line, fleet)  # a new session: new random-2, new session key
    assert await _refused(line, request) == SecurityErrorFlags.ESAM_FAILED


async def test_session_expires_after_five_minutes(line: Master, fleet: Fleet) -> None:
    wallet = fleet.meter(PREPAID).wallet
    assert wallet is not None
    session = await _auth(line, fleet)
    fleet.world.advance(5 * 60 + 1)
    request = _top_up(session, 1000, wallet.purchase_count + 1, wallet.customer_number)
    assert await _refused(line, request) == SecurityErrorFlags.AUTH_FAILED


async def test_forged_identity_authentication_fails(line: Master, fleet: Fleet) -> None:
    pending = fleet.encryption_machine().identity_auth("000000000001")  # another meter's key
    meter = fleet.meter(PREPAID)
    _, reply = await line.one(
        PREPAID,
        IdentityAuthRequest(
            OP,
            pending.ciphertext,
            pending.random,
            b"\x00\x00" + bytes.fromhex(meter.identity.meter_number)[::-1],
        ),
    )
    assert isinstance(reply, SecurityErrorReply)
    assert reply.flags == SecurityErrorFlags.AUTH_FAILED


async def test_status_query_and_auth_end(line: Master, fleet: Fleet) -> None:
    wallet = fleet.meter(PREPAID).wallet
    assert wallet is not None
    # the status query's MACs are made with the session's random-1: no session, no answer
    _, refused = await line.one(PREPAID, StatusQueryRequest(OP))
    assert refused == SecurityErrorReply(SecurityErrorFlags.AUTH_FAILED)
    await _auth(line, fleet)
    _, status = await line.one(PREPAID, StatusQueryRequest(OP))
    assert isinstance(status, StatusQueryReply)
    assert status.purchase_count == wallet.purchase_count
    assert status.customer_number == wallet.customer_number
    _, end = await line.one(PREPAID, AuthEndRequest(OP))
    assert isinstance(end, AuthEndReply)
    assert end.remaining_fen == round(float(fleet.meter(PREPAID).values()["balance_yuan"]) * 100)
    # the session is over: MAC-bearing requests are refused again
    _, after = await line.one(PREPAID, StatusQueryRequest(OP))
    assert after == SecurityErrorReply(SecurityErrorFlags.AUTH_FAILED)


async def test_non_prepaid_meter_refuses_03h(line: Master, fleet: Fleet) -> None:
    _, reply = await line.one(PLAIN, StatusQueryRequest(OP))
    assert isinstance(reply, SecurityErrorReply)
    assert reply.flags == SecurityErrorFlags.OTHER


async def test_exhausted_wallet_trips_and_top_up_restores(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    now = meter.now()
    wallet.set_balance(-wallet.limits.overdraft_fen - 1, meter.importer.tariffs_at(now))
    await line.one(PREPAID, ReadRequest(0x04000503))
    assert meter.relay.open
    flags = meter.values()["status_word_3"]
    assert isinstance(flags, int)
    assert flags & (1 << 4)  # relay open
    assert meter.values()["power_active_total_kw"] == 0.0
    assert meter.values()["overdraft_yuan"] == (wallet.limits.overdraft_fen + 1) / 100
    energy = meter.values()["energy_import_total_kwh"]
    fleet.world.advance(3600)
    assert meter.values()["energy_import_total_kwh"] == energy  # no supply, no energy
    session = await _auth(line, fleet)
    _, reply = await line.one(
        PREPAID, _top_up(session, 20000, wallet.purchase_count + 1, wallet.customer_number)
    )
    assert isinstance(reply, SecurityAck)
    assert not meter.relay.open
    assert meter.values()["balance_yuan"] == (20000 - wallet.limits.overdraft_fen - 1) / 100


# --- the rules of topup-tariff.md §A.1, §A.3-A.5, §B.3, one by one (no line: `direct`) --------

REMOTE = "123456781020"
REMOTE_FLEET = (
    FLEET
    + f"""
  [[district.bus.meters]]
  first_address = "{REMOTE}"
  models = {{ DDZY666 = 1 }}
  remote = 1.0
"""
)


def _flags(reply: object) -> SecurityErrorFlags:
    assert isinstance(reply, SecurityErrorReply), reply
    return reply.flags


async def _auth_pending(master: Master, fleet: Fleet, address: str) -> tuple[Any, MacMaker, bytes]:
    meter = fleet.meter(address)
    pending = fleet.encryption_machine().identity_auth(meter.identity.meter_number)
    _, reply = await master.one(
        address,
        IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification),
    )
    assert isinstance(reply, IdentityAuthReply), reply
    return pending, pending.session(reply.random), reply.esam_serial


async def test_remote_mode_meter_refuses_top_up_but_authenticates() -> None:
    """§A.1: a remote-prepaid (远程费控) meter answers 03H 充值 with SERR 0001, even inside a
    valid session with good MACs; status word 3 bits 9-8 are 00 there, 10 on a local meter."""
    fleet = make_fleet(REMOTE_FLEET)
    direct = DirectMaster(fleet.bus("b1"))
    meter = fleet.meter(REMOTE)
    assert (meter.mode, fleet.meter(PREPAID).mode, fleet.meter(PLAIN).mode) == (
        "remote",
        "local",
        None,
    )
    _, session, _ = await _auth_pending(direct, fleet, REMOTE)
    customer = meter.identity.customer_number
    _, reply = await direct.one(REMOTE, _top_up(session, 1000, 1, customer))
    assert _flags(reply) == SecurityErrorFlags.OTHER
    _, reply = await direct.one(
        REMOTE, AccountOpenRequest(OP, 1000, 1, b"\0" * 4, customer, b"\0" * 4)
    )
    assert _flags(reply) == SecurityErrorFlags.OTHER
    assert meter.credits == []

    def mode_bits(address: str) -> int:
        word = fleet.meter(address).values()["status_word_3"]
        assert isinstance(word, int)
        return word >> 8 & 0b11

    assert (mode_bits(REMOTE), mode_bits(PREPAID)) == (0b00, 0b10)
    # the wallet DIs are answered only in local mode
    _, remaining = await direct.one(REMOTE, ReadRequest(0x00900200))
    assert isinstance(remaining, ErrorReply)
    # the status query still answers (the unused ESAM purse), inside the session
    _, status = await direct.one(REMOTE, StatusQueryRequest(OP))
    assert isinstance(status, StatusQueryReply)
    assert (status.remaining_fen, status.purchase_count, status.customer_number) == (0, 0, customer)


async def test_session_lifetime_and_its_remaining_minutes(direct: Master, fleet: Fleet) -> None:
    """§A.5: 5 minutes by default, 02 80 00 22 gives whole minutes left, status word 3 bit13."""
    meter = fleet.meter(PREPAID)

    async def minutes_left() -> int:
        _, reply = await direct.one(PREPAID, ReadRequest(0x02800022))
        assert isinstance(reply, ReadReply)
        return int(reply.value[::-1].hex())

    def authenticated() -> bool:
        word = meter.values()["status_word_3"]
        assert isinstance(word, int)
        return bool(word & 1 << 13)

    assert (await minutes_left(), authenticated()) == (0, False)
    await _auth_pending(direct, fleet, PREPAID)
    assert (await minutes_left(), authenticated()) == (5, True)
    fleet.world.advance(61)
    assert await minutes_left() == 3  # 3 min 59 s left: whole minutes
    fleet.world.advance(4 * 60)
    assert (await minutes_left(), authenticated()) == (0, False)
    # 07 00 01 FF sets the validity of the next sessions
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)
    _, ack = await direct.one(PREPAID, AuthValidityRequest(OP, 30, session.validity_mac(30)))
    assert isinstance(ack, SecurityAck)
    await _auth_pending(direct, fleet, PREPAID)
    assert await minutes_left() == 30


async def test_every_authentication_resets_the_esam_random(direct: Master, fleet: Fleet) -> None:
    """§A.4: MACs made for an earlier random-2 are dead; a failed authentication ends the
    session too."""
    wallet = fleet.meter(PREPAID).wallet
    assert wallet is not None
    count, customer = wallet.purchase_count, wallet.customer_number
    randoms = set()
    for _ in range(3):
        pending, session, _ = await _auth_pending(direct, fleet, PREPAID)
        randoms.add(session.key)
    assert len(randoms) == 3  # a new random-2 (and session key) every time
    request = _top_up(session, 1000, count + 1, customer)
    forged = fleet.encryption_machine().identity_auth("000000000001")
    _, reply = await direct.one(
        PREPAID, IdentityAuthRequest(OP, forged.ciphertext, forged.random, pending.diversification)
    )
    assert _flags(reply) == SecurityErrorFlags.AUTH_FAILED
    _, reply = await direct.one(PREPAID, request)
    assert _flags(reply) == SecurityErrorFlags.AUTH_FAILED  # the good session went with it
    assert wallet.purchase_count == count


async def test_mac_failures_suspend_secure_operations_until_midnight(
    direct: Master, fleet: Fleet
) -> None:
    """§A.5: every MAC failure counts; at 200 (here lowered to 3) the meter answers secure
    operations with SERR bit8 (挂起) until its midnight; plain reads still answer."""
    meter = fleet.meter(PREPAID)
    esam, wallet = meter.esam, meter.wallet
    assert esam is not None
    assert wallet is not None
    assert esam.lock_after == 200
    esam.lock_after = 3
    count, customer = wallet.purchase_count, wallet.customer_number
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)
    good = _top_up(session, 1000, count + 1, customer)
    forged = TopUpRequest(OP, 9999, count + 1, good.mac1, customer, good.mac2)
    for _ in range(2):
        _, reply = await direct.one(PREPAID, forged)
        assert _flags(reply) == SecurityErrorFlags.ESAM_FAILED
    _, reply = await direct.one(PREPAID, forged)
    assert _flags(reply) == SecurityErrorFlags.ESAM_FAILED
    assert esam.mac_failures == 3
    _, reply = await direct.one(PREPAID, good)
    assert _flags(reply) == SecurityErrorFlags.REMOTE_LOCKED
    pending = fleet.encryption_machine().identity_auth(meter.identity.meter_number)
    auth = IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification)
    _, reply = await direct.one(PREPAID, auth)
    assert _flags(reply) == SecurityErrorFlags.REMOTE_LOCKED
    _, read = await direct.one(PREPAID, ReadRequest(0x03330201))
    assert isinstance(read, ReadReply)
    assert wallet.purchase_count == count
    # the meter's midnight clears the lock and the counter
    fleet.world.set(dt.datetime.combine(START.date() + dt.timedelta(days=1), dt.time(0, 0, 30)))
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)
    _, reply = await direct.one(PREPAID, _top_up(session, 1000, count + 1, customer))
    assert isinstance(reply, SecurityAck)
    assert esam.mac_failures == 0


async def test_overdraft_is_netted_first(direct: Master, fleet: Fleet) -> None:
    """§A.5 (FW JudgeBuyTimes): remaining′ = remaining + amount − overdraft; the purchase
    record keeps before/after; count and last amount are what reconciles, not the balance."""
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    wallet.set_balance(-500, meter.importer.tariffs_at(meter.now()))  # 5 yuan overdraft
    assert meter.values()["overdraft_yuan"] == 5.0
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)
    count = wallet.purchase_count
    _, reply = await direct.one(PREPAID, _top_up(session, 2000, count + 1, wallet.customer_number))
    assert isinstance(reply, SecurityAck)
    values = meter.values()
    assert (values["balance_yuan"], values["overdraft_yuan"]) == (15.0, 0.0)
    for di, expected in ((0x03330201, count + 1), (0x03330301, 20.0)):
        _, read = await direct.one(PREPAID, ReadRequest(di))
        assert isinstance(read, ReadReply)
        item = lookup(di)
        assert item is not None
        assert item.decode(read.value)[0].value == expected
    _, read = await direct.one(PREPAID, ReadRequest(0x03330101))
    assert isinstance(read, ReadReply)
    assert str(values_of(0x03330101, read.value, Edition.V2007)["purchase_time"]["value"]) == (
        meter.now().replace(second=0, microsecond=0).isoformat()
    )


async def test_hoarding_limit_and_zero_means_none(direct: Master, fleet: Fleet) -> None:
    """§A.5, §B.3: over the limit → 购电超囤积 and nothing changes; a limit of 0 is no limit."""
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    wallet.limits.hoarding_fen = 15000  # 150 yuan; the balance is 100 yuan
    count, customer = wallet.purchase_count, wallet.customer_number
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)
    _, reply = await direct.one(PREPAID, _top_up(session, 6000, count + 1, customer))
    assert _flags(reply) == SecurityErrorFlags.HOARDING_EXCEEDED
    assert (wallet.purchase_count, meter.values()["balance_yuan"]) == (count, 100.0)
    _, reply = await direct.one(PREPAID, _top_up(session, 5000, count + 1, customer))
    assert isinstance(reply, SecurityAck)  # exactly at the limit
    wallet.limits.hoarding_fen = 0
    _, reply = await direct.one(PREPAID, _top_up(session, 10_000_000, count + 2, customer))
    assert isinstance(reply, SecurityAck)
    assert meter.values()["balance_yuan"] == 100_150.0


async def test_account_opening_rules(direct: Master, fleet: Fleet) -> None:
    """§A.3 step 4: 充值 on a meter never opened → 充值次数错误; 开户 writes the customer number
    and credits; a second 开户 is refused (SERR bit UNCONFIRMED: 其它错误 here)."""
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    wallet.opened = False
    wallet.purchase_count = 0
    word = meter.values()["status_word_3"]
    assert isinstance(word, int)
    assert word & 1 << 15  # remote account not opened
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)
    new_customer = "000000777777"
    _, reply = await direct.one(PREPAID, _top_up(session, 1000, 1, new_customer))
    assert _flags(reply) == SecurityErrorFlags.PURCHASE_COUNT_ERROR
    mac1, mac2 = session.top_up_macs(3000, 1, new_customer)
    opening = AccountOpenRequest(OP, 3000, 1, mac1, new_customer, mac2)
    _, reply = await direct.one(PREPAID, opening)
    assert isinstance(reply, SecurityAck)
    assert (wallet.opened, wallet.customer_number, wallet.purchase_count) == (True, new_customer, 1)
    word = meter.values()["status_word_3"]
    assert isinstance(word, int)
    assert not word & 1 << 15
    mac1, mac2 = session.top_up_macs(3000, 2, new_customer)
    _, reply = await direct.one(PREPAID, AccountOpenRequest(OP, 3000, 2, mac1, new_customer, mac2))
    assert _flags(reply) == SecurityErrorFlags.OTHER
    assert [(c.source, c.purchase_count, c.amount_fen) for c in meter.credits] == [
        ("open", 1, 3000)
    ]


async def test_relay_stays_open_after_a_credit_when_remotely_tripped(
    direct: Master, fleet: Fleet
) -> None:
    """§A.5 (FW 远程充值后仍然拉闸), §E #14: a credit does not close a relay a 1CH trip opened;
    1CH 1B does (with the customer's button), and both moves are in the relay event records."""
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    _, session, serial = await _auth_pending(direct, fleet, PREPAID)
    until = START + dt.timedelta(minutes=10)
    operator = b"\x07\x00\x00\x00"
    trip = session.relay_ciphertext(relay_plaintext("trip", until), serial)
    _, reply = await direct.one(PREPAID, SecureRemoteControlRequest(trip, operator=operator))
    assert reply == Done(0x1C)
    assert meter.relay.open
    _, reply = await direct.one(
        PREPAID, _top_up(session, 5000, wallet.purchase_count + 1, wallet.customer_number)
    )
    assert isinstance(reply, SecurityAck)
    meter.tick()
    assert meter.relay.open  # credited, still cut off
    allow = session.relay_ciphertext(relay_plaintext("close_allowed", until), serial)
    _, reply = await direct.one(PREPAID, SecureRemoteControlRequest(allow))
    assert reply == Done(0x1C)
    word = meter.values()["status_word_3"]
    assert isinstance(word, int)
    assert (bool(word & 1 << 4), bool(word & 1 << 6)) == (True, False)  # open, no trip command
    assert meter.press_button()
    word = meter.values()["status_word_3"]
    assert isinstance(word, int)
    assert not word & 1 << 4
    _, trips = await direct.one(PREPAID, ReadRequest(0x1D00FF01))
    _, closes = await direct.one(PREPAID, ReadRequest(0x1E00FF01))
    _, count = await direct.one(PREPAID, ReadRequest(0x1D000001))
    assert isinstance(trips, ReadReply)
    assert isinstance(closes, ReadReply)
    assert isinstance(count, ReadReply)
    trip_record = values_of(0x1D00FF01, trips.value, Edition.V2007)
    assert trip_record["relay_event_time"]["value"] == START.isoformat()
    assert trip_record["relay_event_operator"]["value"] == 7
    assert values_of(0x1E00FF01, closes.value, Edition.V2007)["relay_event_operator"]["value"] == 0
    assert values_of(0x1D000001, count.value, Edition.V2007)["relay_trip_count"]["value"] == 1


async def test_secure_relay_on_a_remote_meter() -> None:
    """Remote (远程费控) meters: every trip and close is a 98-level 1CH in the session; a
    ciphertext made for another ESAM serial or session is refused (DC, ERR 04)."""
    fleet = make_fleet(REMOTE_FLEET)
    direct = DirectMaster(fleet.bus("b1"))
    meter = fleet.meter(REMOTE)
    _, session, serial = await _auth_pending(direct, fleet, REMOTE)
    until = START + dt.timedelta(minutes=10)
    wrong_serial = session.relay_ciphertext(relay_plaintext("trip", until), b"\x01" * 8)
    _, reply = await direct.one(REMOTE, SecureRemoteControlRequest(wrong_serial))
    assert reply == ErrorReply(0x1C, ErrorFlags.UNAUTHORIZED)
    trip = session.relay_ciphertext(relay_plaintext("trip", until), serial)
    _, reply = await direct.one(REMOTE, SecureRemoteControlRequest(trip))
    assert reply == Done(0x1C)
    assert meter.relay.open
    close = session.relay_ciphertext(relay_plaintext("direct_close", until), serial)
    _, session2, _ = await _auth_pending(direct, fleet, REMOTE)  # voids `close`
    _, reply = await direct.one(REMOTE, SecureRemoteControlRequest(close))
    assert reply == ErrorReply(0x1C, ErrorFlags.UNAUTHORIZED)
    close = session2.relay_ciphertext(relay_plaintext("direct_close", until), serial)
    _, reply = await direct.one(REMOTE, SecureRemoteControlRequest(close))
    assert reply == Done(0x1C)
    assert not meter.relay.open
    assert meter.relay_counts == {"relay_trip": 1, "relay_close": 1}


async def test_out_of_band_card_purchase_and_the_credit_log() -> None:
    """§E #8: a card purchase at a given time moves the meter to n+1; meterlink's top-up for
    n+1 then gets 重复充值 although its money never arrived, and the last purchase (amount,
    time) is the card's. The credit log says which credit came from where."""
    at = START + dt.timedelta(minutes=3)
    fleet = make_fleet(
        FLEET + f'\n[[purchase]]\nmeter = "{PREPAID}"\nat = "{at.isoformat()}"\namount_yuan = 30\n'
    )
    direct = DirectMaster(fleet.bus("b1"))
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    n = wallet.purchase_count
    fleet.world.advance(2 * 60)
    meter.tick()
    assert wallet.purchase_count == n  # not yet
    fleet.world.advance(2 * 60)
    _, session, _ = await _auth_pending(direct, fleet, PREPAID)  # the meter catches up
    assert wallet.purchase_count == n + 1
    _, reply = await direct.one(PREPAID, _top_up(session, 5000, n + 1, wallet.customer_number))
    assert _flags(reply) == SecurityErrorFlags.DUPLICATE_TOP_UP
    _, amount = await direct.one(PREPAID, ReadRequest(0x03330301))
    assert isinstance(amount, ReadReply)
    assert values_of(0x03330301, amount.value, Edition.V2007)["purchase_amount_yuan"]["value"] == 30
    _, reply = await direct.one(PREPAID, _top_up(session, 5000, n + 2, wallet.customer_number))
    assert isinstance(reply, SecurityAck)
    log = [
        (c.meter, c.purchase_count, c.amount_fen, c.source, c.meter_time)
        for c in fleet.credits.records()
    ]
    assert log == [
        (PREPAID, n + 1, 3000, "card", at),
        (PREPAID, n + 2, 5000, "remote", meter.now()),
    ]
    assert fleet.credits.repeated_counts() == []
    assert meter.card_purchase(100_000_000) is None  # over the hoarding limit: refused
    record = meter.card_purchase(1000)
    assert record is not None
    assert (record.purchase_count, record.source) == (n + 3, "card")
