"""03H remote top-up with the simulated ESAM, over the line: every refusal, MAC rejection,
session expiry, and the wallet driving the relay."""

from __future__ import annotations

from protocols.dlt645 import (
    AuthEndReply,
    AuthEndRequest,
    IdentityAuthReply,
    IdentityAuthRequest,
    ReadRequest,
    SecurityAck,
    SecurityErrorFlags,
    SecurityErrorReply,
    StatusQueryReply,
    StatusQueryRequest,
    TopUpRequest,
)
from simulators import Fleet
from simulators.esam import MacMaker
from tests.simulators.conftest import PLAIN, PREPAID, Master

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
    _, status = await line.one(PREPAID, StatusQueryRequest(OP))
    assert isinstance(status, StatusQueryReply)
    assert status.purchase_count == wallet.purchase_count
    assert status.customer_number == wallet.customer_number
    _, end = await line.one(PREPAID, AuthEndRequest(OP))
    assert isinstance(end, AuthEndReply)
    assert end.remaining_fen == round(float(fleet.meter(PREPAID).values()["balance_yuan"]) * 100)


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
