"""Relay (1CH), time (08H / 14H, daily freeze) and addressing rules, over the line."""

from __future__ import annotations

import datetime as dt

from protocols.dlt645 import (
    BROADCAST,
    WILDCARD,
    Address,
    BroadcastTimeRequest,
    Done,
    ErrorFlags,
    ErrorReply,
    Frame,
    IdentityAuthReply,
    IdentityAuthRequest,
    ReadAddressReply,
    ReadAddressRequest,
    ReadRequest,
    RelayAction,
    RemoteControlRequest,
    SecureRemoteControlRequest,
    WriteRequest,
    lookup,
)
from protocols.dlt645.formats import ClockField
from simulators import Fleet
from tests.simulators.conftest import (
    PLAIN,
    PREPAID,
    SILENCE_S,
    START,
    THREE_PHASE,
    Master,
    make_fleet,
)

PASSWORD = b"\x02\x00\x00\x00"
LATER = START + dt.timedelta(hours=1)


async def _relay(line: Master, action: RelayAction, until: dt.datetime = LATER) -> object:
    _, reply = await line.one(PLAIN, RemoteControlRequest(action, until, PASSWORD))
    return reply


async def test_relay_actions_and_status_word(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PLAIN)

    def word3() -> int:
        value = meter.values()["status_word_3"]
        assert isinstance(value, int)
        return value

    assert await _relay(line, RelayAction.TRIP) == Done(0x1C)
    assert meter.relay.open
    assert word3() & (1 << 4)
    assert word3() & (1 << 6)
    assert meter.values()["current_a_a"] == 0.0
    assert await _relay(line, RelayAction.CLOSE_ALLOWED) == Done(0x1C)
    assert meter.relay.open  # waits for the customer's button
    assert not word3() & (1 << 6)
    assert meter.press_button()
    assert not word3() & (1 << 4)
    assert await _relay(line, RelayAction.ALARM) == Done(0x1C)
    assert word3() & (1 << 7)
    assert await _relay(line, RelayAction.ALARM_RELEASE) == Done(0x1C)
    assert await _relay(line, RelayAction.KEEP_POWER) == Done(0x1C)
    assert word3() & (1 << 12)
    refused = await _relay(line, RelayAction.TRIP)
    assert refused == ErrorReply(0x1C, ErrorFlags.UNAUTHORIZED)
    assert not meter.relay.open
    assert await _relay(line, RelayAction.KEEP_POWER_RELEASE) == Done(0x1C)
    assert await _relay(line, RelayAction.TRIP) == Done(0x1C)
    assert await _relay(line, RelayAction.DIRECT_CLOSE) == Done(0x1C)
    assert not meter.relay.open


async def test_relay_refuses_expired_commands_and_wrong_passwords(
    line: Master, fleet: Fleet
) -> None:
    expired = await _relay(line, RelayAction.TRIP, START - dt.timedelta(minutes=1))
    assert expired == ErrorReply(0x1C, ErrorFlags.UNAUTHORIZED)
    _, reply = await line.one(
        PLAIN, RemoteControlRequest(RelayAction.TRIP, LATER, b"\x02\x12\x34\x56")
    )
    assert reply == ErrorReply(0x1C, ErrorFlags.UNAUTHORIZED)
    assert not fleet.meter(PLAIN).relay.open


async def test_secure_relay_command_needs_the_session(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PREPAID)
    pending = fleet.encryption_machine().identity_auth(meter.identity.meter_number)
    _, auth = await line.one(
        PREPAID,
        IdentityAuthRequest(b"\0" * 4, pending.ciphertext, pending.random, pending.diversification),
    )
    assert isinstance(auth, IdentityAuthReply)
    plain = bytes((RelayAction.TRIP, 0)) + ClockField("YYMMDDhhmmss").encode(LATER.isoformat())
    cipher = pending.session(auth.random).relay_ciphertext(plain, auth.esam_serial)
    _, reply = await line.one(PREPAID, SecureRemoteControlRequest(cipher))
    assert reply == Done(0x1C)
    assert meter.relay.open
    forged = bytes(b ^ 1 for b in cipher)
    _, reply = await line.one(PREPAID, SecureRemoteControlRequest(forged))
    assert reply == ErrorReply(0x1C, ErrorFlags.UNAUTHORIZED)


async def test_broadcast_time_sync_rules(line: Master, fleet: Fleet) -> None:
    # unicast 08H answers, so each refusal is visible (and named in the answer record)
    other = fleet.meter(THREE_PHASE)
    other.set_time(START)
    _, reply = await line.one(THREE_PHASE, BroadcastTimeRequest(START + dt.timedelta(minutes=6)))
    assert reply == ErrorReply(0x08, ErrorFlags.UNAUTHORIZED)
    assert "exceeds 5 minutes" in fleet.recorder.records[-1].detail
    midnight = dt.datetime(2026, 3, 10, 23, 57)
    other.set_time(midnight)
    _, reply = await line.one(THREE_PHASE, BroadcastTimeRequest(midnight + dt.timedelta(minutes=1)))
    assert reply == ErrorReply(0x08, ErrorFlags.UNAUTHORIZED)
    assert "midnight" in fleet.recorder.records[-1].detail
    other.set_time(START)
    _, reply = await line.one(THREE_PHASE, BroadcastTimeRequest(START + dt.timedelta(minutes=2)))
    assert reply == Done(0x08)
    _, reply = await line.one(THREE_PHASE, BroadcastTimeRequest(START + dt.timedelta(minutes=3)))
    assert reply == ErrorReply(0x08, ErrorFlags.UNAUTHORIZED)
    assert "already synchronised today" in fleet.recorder.records[-1].detail
    # broadcast: never a reply; applied at most once a day
    meter = fleet.meter(PLAIN)
    meter.set_time(START)
    later = BroadcastTimeRequest(START + dt.timedelta(seconds=90))
    assert await line.ask(BROADCAST, later, quiet=SILENCE_S) == []
    assert abs(meter.clock.now() - (START + dt.timedelta(seconds=90))) < dt.timedelta(seconds=1)
    assert await line.ask(BROADCAST, BroadcastTimeRequest(START), quiet=SILENCE_S) == []
    assert meter.clock.now() >= START + dt.timedelta(seconds=89)  # refused: already today


async def test_time_write_with_password(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PLAIN)
    item = lookup(0x0400010C)
    assert item is not None
    target = dt.datetime(2026, 3, 9, 8, 0, 0)
    value = item.encode({"meter_datetime": target.isoformat()})
    _, reply = await line.one(PLAIN, WriteRequest(0x0400010C, b"\x02\x99\x99\x99", value))
    assert reply == ErrorReply(0x14, ErrorFlags.UNAUTHORIZED)
    energy = meter.values()["energy_import_total_kwh"]
    _, reply = await line.one(PLAIN, WriteRequest(0x0400010C, PASSWORD, value))
    assert reply == Done(0x14)
    assert meter.values()["meter_datetime"] == target.isoformat()
    assert meter.values()["energy_import_total_kwh"] == energy  # registers do not jump
    _, reply = await line.one(PLAIN, WriteRequest(0x00010000, PASSWORD, b"\0" * 4))
    assert reply == ErrorReply(0x14, ErrorFlags.UNAUTHORIZED)  # energy is read-only


async def test_daily_freeze_at_meter_midnight(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(PLAIN)
    assert len(meter.freeze_history()) == 62
    first_day = meter.freeze_history()[0].time
    assert first_day == dt.datetime(2026, 3, 10)
    fleet.world.set(dt.datetime(2026, 3, 10, 23, 59, 59))
    assert meter.freeze_history()[0].time == first_day
    fleet.world.set(dt.datetime(2026, 3, 11, 0, 0, 30))
    history = meter.freeze_history()
    assert history[0].time == dt.datetime(2026, 3, 11)
    assert len(history) == 62  # the oldest record fell off
    _, reply = await line.one(PLAIN, ReadRequest(0x05060001))
    assert getattr(reply, "value", None) == ClockField("YYMMDDhhmm").encode("2026-03-11T00:00:00")
    _, reply = await line.one(PLAIN, ReadRequest(0x05060101))
    item = lookup(0x05060101)
    assert item is not None
    values = {m.name: m.value for m in item.decode(getattr(reply, "value", b""))}
    assert values["energy_import_total_kwh"] == history[0].values()["energy_import_total_kwh"]


def test_freeze_history_is_deterministic_from_the_seed() -> None:
    one, two = make_fleet(), make_fleet()
    for a, b in zip(one.meters(), two.meters(), strict=True):
        assert a.freeze_history() == b.freeze_history()
    other = make_fleet().meters()[0].freeze_history()
    changed = make_fleet().meters()[1].freeze_history()
    assert other != changed  # different meters, different histories


async def test_silence_for_other_addresses_and_broadcast(line: Master, fleet: Fleet) -> None:
    assert await line.ask("999999999990", ReadRequest(0x00010000), quiet=SILENCE_S) == []
    assert await line.ask(BROADCAST, ReadRequest(0x00010000), quiet=SILENCE_S) == []
    outcomes = [r.outcome for r in fleet.recorder.records[-6:]]
    assert "no_meter" in outcomes
    assert "silent_broadcast" in outcomes


async def test_shortened_address_reaches_one_meter(line: Master) -> None:
    # 缩位: the low bytes given, the high bytes AA; the reply carries the full address
    short = Address(bytes.fromhex("21") + b"\xaa" * 5)
    frame, _ = await line.one(short, ReadRequest(0x00010000))
    assert frame.address.digits == PLAIN


async def test_read_address_collides_when_several_meters_answer(line: Master) -> None:
    # the collided replies end in bytes no frame completes: listen 1 s, not the reply window
    events = await line.ask(WILDCARD, ReadAddressRequest(), quiet=1.0)
    assert not any(isinstance(e, Frame) for e in events)  # garbage, not a frame


async def test_read_address_of_a_lone_meter(fleet: Fleet) -> None:
    lone = make_fleet(
        """
seed = 1
[[district]]
[[district.bus]]
name = "b1"
[[district.bus.meters]]
first_address = "000000004321"
"""
    )
    from simulators import serve_fleet
    from tests.simulators.conftest import open_master

    async with serve_fleet(lone, transport="tcp") as serving:
        master = await open_master(serving)
        try:
            frame, reply = await master.one(WILDCARD, ReadAddressRequest())
        finally:
            await master.close()
    assert frame.control.byte == 0x93
    assert reply == ReadAddressReply(Address.parse("000000004321"))
