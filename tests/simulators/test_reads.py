"""Reads of every catalogue item over the line, compared with the meter model's own values."""

from __future__ import annotations

from protocols.dlt645 import (
    ErrorFlags,
    ErrorFlags1997,
    ErrorReply,
    FollowUpReply,
    Frame,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    all_items,
    decode_frame,
    lookup,
)
from protocols.dlt645.functions import Edition
from simulators import Fleet
from tests.simulators.conftest import OLD, PREPAID, T63, THREE_PHASE, Master


def _items(edition: Edition) -> list[int]:
    """Every fixed catalogue item, and the energy family for tariffs 0-5 and blocks."""
    out = []
    for item in all_items():
        if item.edition is not edition:
            continue
        energy = edition is Edition.V2007 and item.di >> 24 == 0 and (item.di >> 16) & 0xFF != 0x90
        if energy and (item.di >> 8) & 0xFF not in (0, 1, 2, 3, 4, 5, 0xFF):
            continue
        out.append(item.di)
    return out


async def _check_all(line: Master, fleet: Fleet, address: str, edition: Edition) -> tuple[int, int]:
    meter = fleet.meter(address)
    answered = refused = 0
    for di in _items(edition):
        expected = meter.read(di, edition)
        frame, message = await line.one(address, ReadRequest(di), edition)
        if expected is None:
            assert isinstance(message, ErrorReply), f"{di:08X}"
            flag = ErrorFlags.NO_DATA if edition is Edition.V2007 else ErrorFlags1997.BAD_DI
            assert message.flags == flag
            refused += 1
            continue
        assert isinstance(message, ReadReply), f"{di:08X}: {message}"
        if frame.control.follow_up:
            continue  # long blocks: test_follow_up
        item = lookup(di, edition)
        assert item is not None
        assert message.di == di
        assert message.value == expected, f"{di:08X}"
        decoded = {m.name: m.value for m in item.decode(message.value)}
        source = meter.values() if item.history is None else meter.history_values(item.history)
        assert source is not None
        for fld in item.fields[: len(decoded)]:
            # the meter's value, at the resolution of the item's format (1997 volts are whole)
            wanted = fld.format.decode(fld.format.encode(source[fld.measurement]))
            assert decoded[fld.measurement] == wanted, f"{di:08X} {fld.measurement}"
        answered += 1
    return answered, refused


async def test_every_catalogue_item_of_a_prepaid_meter(tcp_line: Master, fleet: Fleet) -> None:
    answered, refused = await _check_all(tcp_line, fleet, PREPAID, Edition.V2007)
    # the catalogue holds items a single-phase, 4-tariff meter cannot have (phases B/C,
    # tariffs 5+, purchase records it never made, kWh-type wallet): those are NO_DATA
    assert answered > 900
    assert refused > 0


async def test_every_catalogue_item_of_a_three_phase_meter_over_pty(
    line: Master, fleet: Fleet
) -> None:
    answered, _ = await _check_all(line, fleet, THREE_PHASE, Edition.V2007)
    assert answered > 900


async def test_every_1997_item(line: Master, fleet: Fleet) -> None:
    answered, refused = await _check_all(line, fleet, OLD, Edition.V1997)
    assert answered >= 20
    assert refused > 0  # phases B/C of a single-phase meter


async def test_follow_up_frames_carry_a_long_block(line: Master, fleet: Fleet) -> None:
    meter = fleet.meter(T63)
    expected = meter.read(0x0001FF00)
    assert expected is not None
    assert len(expected) == 64 * 4  # total + 63 tariffs: longer than one reply may carry
    frame, message = await line.one(T63, ReadRequest(0x0001FF00))
    assert frame.control.follow_up
    assert frame.control.byte == 0xB1
    assert isinstance(message, ReadReply)
    parts = [message.value]
    seq = 1
    while frame.control.follow_up:
        frame, message = await line.one(T63, ReadFollowUpRequest(0x0001FF00, seq))
        assert isinstance(message, FollowUpReply)
        assert message.seq == seq
        parts.append(message.value)
        seq += 1
    assert frame.control.byte == 0x92
    assert b"".join(parts) == expected
    item = lookup(0x0001FF00)
    assert item is not None
    values = {m.name: m.value for m in item.decode(b"".join(parts))}
    assert len(values) == 64
    assert values["energy_import_t63_kwh"] == meter.values()["energy_import_t63_kwh"]
    # without a pending long reply a follow-up request is "no such data"
    _, message = await line.one(T63, ReadFollowUpRequest(0x0001FF00, seq))
    assert isinstance(message, ErrorReply)
    assert message.flags == ErrorFlags.NO_DATA


async def test_unknown_item_is_an_abnormal_reply(line: Master) -> None:
    frame, message = await line.one(PREPAID, ReadRequest(0x0E0E0E0E))
    assert frame.control.byte == 0xD1
    assert isinstance(message, ErrorReply)
    assert message.flags == ErrorFlags.NO_DATA
    frame, message = await line.one(OLD, ReadRequest(0xEEEE), Edition.V1997)
    assert frame.control.byte == 0xC1
    assert isinstance(message, ErrorReply)
    assert message.flags == ErrorFlags1997.BAD_DI


async def test_reply_carries_the_meters_wakeup_bytes(line: Master) -> None:
    events = await line.ask(PREPAID, ReadRequest(0x00010000))
    assert isinstance(events[0], Frame)
    # the fleet asks for exactly two FE before each reply of this meter
    assert line.decoder.skipped_bytes == 2
    assert decode_frame(events[0].to_bytes(wakeup=2)) == events[0]
