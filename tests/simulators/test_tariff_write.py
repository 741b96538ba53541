"""Secure 14H writes of tariff items (level 99 plaintext + MAC, level 98 ciphertext + MAC) into a
simulated meter's ESAM and tariff set-up: a correction brings a misprogrammed meter back to its
plan; a wrong MAC, a wrong level, no session or the read-only price set change nothing."""

from __future__ import annotations

import pytest

from protocols.dlt645 import (
    Done,
    ErrorFlags,
    ErrorReply,
    IdentityAuthReply,
    IdentityAuthRequest,
    WriteRequest,
)
from protocols.dlt645.tariff import (
    encode_holiday,
    encode_period_table,
    encode_prices,
    encode_switch_time,
    encode_zone_table,
    padded,
)
from protocols.tariff_write import (
    LEVEL_CIPHER,
    LEVEL_PLAIN,
    first_class,
    machine_plaintext,
    password_level,
    writable_items,
)
from simulators import Fleet, parse_fleet
from simulators.esam import MacMaker
from simulators.meter import Meter
from simulators.tariff import applicable, misprogram, program
from tests.simulators.conftest import DirectMaster
from tests.simulators.test_tariff import fleet_text

OP = b"\x01\x00\x00\x00"


FLEET = """
seed = 11
start = "2026-03-10T09:30:00"
frozen = true
[tariff]
misprogram_share = 0.5
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = 30
    first_address = "000000000001"
    models = { DDZY666 = 3, DTZY666 = 1, DTSD1352 = 1 }
    prepaid = 0.8
    remote = 0.5
"""


@pytest.fixture
def fleet() -> Fleet:
    """Cost-control meters (an ESAM each), half of them remote-prepaid on the TOU plan with
    holidays, half local-prepaid with prices; a seeded half misprogrammed."""
    return parse_fleet(FLEET)


def _meter(fleet: Fleet, defect: str, *, local: bool | None = None) -> Meter:
    """An ESAM meter with `defect`: the fleet's own, else a sound one given it."""
    for wanted in (defect, None):
        for m in fleet.meters():
            if m.esam is None or m.tariff is None or m.tariff.defect != wanted or m.faults.dead:
                continue
            if local is not None and (m.tariff.programmed.prices_current is not None) != local:
                continue
            if wanted is None:
                if not applicable(defect, m.tariff):
                    continue
                misprogram(m.tariff, defect, start=m.now(), reprogram_at=m.now())
            return m
    raise AssertionError(f"the fleet has no ESAM meter that can have {defect}")


async def _auth(master: DirectMaster, fleet: Fleet, meter: Meter) -> MacMaker:
    pending = fleet.encryption_machine().identity_auth(meter.identity.meter_number)
    _, reply = await master.one(
        meter.identity.address,
        IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification),
    )
    assert isinstance(reply, IdentityAuthReply)
    return pending.session(reply.random)


def _write(session: MacMaker, di: int, value: bytes) -> WriteRequest:
    level = password_level(di)
    data = session.parameter_update(di, machine_plaintext(di, value), cipher=level == LEVEL_CIPHER)
    return WriteRequest(di, bytes((level, 0, 0, 0)), data, OP)


def _diff(meter: Meter) -> dict[int, bytes]:
    assert meter.tariff is not None
    now = meter.now()
    have = writable_items(padded(meter.tariff.setup_at(now)))
    want = writable_items(program(meter.tariff.plan, now.date()))
    return {di: v for di, v in want.items() if have.get(di) != v}


def test_the_pure_layouts_are_the_codecs() -> None:
    fleet = parse_fleet(fleet_text(count=10))
    for meter in fleet.meters():
        if meter.tariff is None:
            continue
        setup = meter.tariff.programmed
        items = writable_items(setup)
        for set_no, tou in enumerate(setup.sets, start=1):
            assert items[0x04000000 | set_no << 16] == encode_zone_table(tou.zones)
            for n, periods in tou.tables.items():
                assert items[0x04000000 | set_no << 16 | n] == encode_period_table(periods)
        for i, holiday in enumerate(setup.holidays, start=1):
            assert items[0x04030000 | i] == encode_holiday(holiday)
        assert items[0x04000107] == encode_switch_time(setup.switch_tables)
        if setup.prices_backup is not None:
            assert items[0x040502FF] == encode_prices(setup.prices_backup)
            assert items[0x04000108] == encode_switch_time(setup.switch_prices)


@pytest.mark.parametrize("defect", ["wrong_boundary", "missing_holiday", "switch_missed"])
async def test_a_correction_brings_the_meter_to_its_plan(fleet: Fleet, defect: str) -> None:
    meter = _meter(fleet, defect)
    assert meter.tariff is not None
    master = DirectMaster(fleet.bus("b1"))
    counters = dict(meter.tariff.programmed.event_counters)
    diff = _diff(meter)
    assert diff
    assert not meter.tariff.executes_plan(meter.now())
    session = await _auth(master, fleet, meter)
    for di, value in diff.items():
        frame, reply = await master.one(meter.identity.address, _write(session, di, value))
        assert isinstance(reply, Done), (f"{di:08X}", reply)
        assert frame.control.byte == 0x94
    assert _diff(meter) == {}
    assert meter.tariff.executes_plan(meter.now())
    assert meter.tariff.defect is None
    assert fleet.tariff_truth(meter.now().date())[meter.identity.meter_id].outcome == "OK"
    after = meter.tariff.programmed.event_counters
    assert any(after[k] > v for k, v in counters.items())


async def test_a_price_switch_is_written_in_the_backup_set(fleet: Fleet) -> None:
    meter = _meter(fleet, "wrong_price", local=True)
    assert meter.tariff is not None
    master = DirectMaster(fleet.bus("b1"))
    session = await _auth(master, fleet, meter)
    want = writable_items(program(meter.tariff.plan, meter.now().date()))
    _, reply = await master.one(
        meter.identity.address, _write(session, 0x040502FF, want[0x040502FF])
    )
    assert isinstance(reply, Done)
    assert meter.tariff.programmed.prices_backup is not None
    assert encode_prices(meter.tariff.programmed.prices_backup) == want[0x040502FF]
    # the current set is read-only (2013 rules), whatever the MAC
    _, reply = await master.one(meter.identity.address, _write(session, 0x040501FF, b"\0" * 16))
    assert isinstance(reply, ErrorReply)


async def test_refused_writes_change_nothing(fleet: Fleet) -> None:
    meter = _meter(fleet, "wrong_boundary")
    assert meter.tariff is not None
    assert meter.esam is not None
    master = DirectMaster(fleet.bus("b1"))
    address = meter.identity.address
    di, value = next(iter(_diff(meter).items()))
    before = meter.tariff.programmed

    # no identity authentication yet: no session
    stray = MacMaker(b"\x00" * 16)
    _, reply = await master.one(address, _write(stray, di, value))
    assert isinstance(reply, ErrorReply)
    assert reply.flags == ErrorFlags.UNAUTHORIZED

    session = await _auth(master, fleet, meter)
    good = _write(session, di, value)
    failures = meter.esam.mac_failures
    tampered = WriteRequest(di, good.password, good.value[:-1] + bytes([good.value[-1] ^ 1]), OP)
    _, reply = await master.one(address, tampered)
    assert isinstance(reply, ErrorReply)
    assert reply.flags == ErrorFlags.UNAUTHORIZED
    assert meter.esam.mac_failures == failures + 1
    # a 二类 item at level 99 (plaintext) is refused by the firmware before the ESAM
    assert not first_class(di)
    plain = session.parameter_update(di, value, cipher=False)
    _, reply = await master.one(address, WriteRequest(di, bytes((LEVEL_PLAIN, 0, 0, 0)), plain, OP))
    assert isinstance(reply, ErrorReply)
    assert meter.tariff.programmed is before

    _, reply = await master.one(address, good)
    assert isinstance(reply, Done)
    assert meter.tariff.programmed is not before


async def test_meters_without_an_esam_take_no_secure_write(fleet: Fleet) -> None:
    meter = next(
        m for m in fleet.meters() if m.tariff is not None and m.esam is None and not m.faults.dead
    )
    master = DirectMaster(fleet.bus("b1"))
    session = MacMaker(b"\x01" * 16)
    _, reply = await master.one(
        meter.identity.address, _write(session, 0x04010001, b"\x01\x00\x00" * 14)
    )
    assert isinstance(reply, ErrorReply)
    assert reply.flags == ErrorFlags.UNAUTHORIZED
