"""`protocols.dlt645.tariff`: the tariff items' bytes, both ways, and the whole set-up."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import Address, ReadReply, decode_frame, from_frame, to_frame
from protocols.dlt645.tariff import (
    DI_COUNTS,
    DI_EVENT_COUNTERS,
    DI_STATUS3,
    DI_SWITCH,
    decode_counter,
    decode_holiday,
    decode_ladder,
    decode_period_table,
    decode_prices,
    decode_switch_time,
    decode_zone_table,
    di_daily_table,
    di_holiday,
    di_zone_table,
    encode_holiday,
    encode_ladder,
    encode_period_table,
    encode_prices,
    encode_switch_time,
    encode_zone_table,
    is_tariff_di,
    padded,
    replies_from_setup,
    setup_from_replies,
    tariff_item_name,
)
from protocols.errors import LocalProtocolError, ValueFormatError
from protocols.tariff import (
    Holiday,
    Ladder,
    Period,
    SettlementDay,
    TariffSetup,
    TouSet,
    ZoneEntry,
    meter_tariff_minutes,
)

READ_AT = dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC)


def test_entry_byte_order() -> None:
    # MMDDNN sent NN DD MM; hhmmNN sent NN mm hh; entries 1..n in order, then padding
    zones = encode_zone_table([ZoneEntry(1, 1, 1), ZoneEntry(6, 15, 2)])
    assert zones[:6] == bytes.fromhex("01 01 01 02 15 06")
    assert zones[6:] == bytes.fromhex("02 15 06") * 12
    assert len(zones) == 42
    periods = encode_period_table([Period(0, 0, 4), Period(8, 30, 2)])
    assert periods[:6] == bytes.fromhex("04 00 00 02 30 08")
    assert decode_zone_table(zones)[:3] == (
        ZoneEntry(1, 1, 1),
        ZoneEntry(6, 15, 2),
        ZoneEntry(6, 15, 2),
    )
    assert decode_period_table(periods)[1] == Period(8, 30, 2)


def test_switch_time_holiday_price_counter_vectors() -> None:
    assert encode_switch_time(dt.datetime(2027, 1, 1, 0, 0)) == bytes.fromhex("00 00 01 01 27")
    assert decode_switch_time(bytes.fromhex("30 08 15 06 27")) == dt.datetime(2027, 6, 15, 8, 30)
    assert decode_switch_time(bytes(5)) is None
    assert encode_switch_time(None) == bytes(5)
    assert encode_holiday(Holiday(dt.date(2026, 10, 1), 3)) == bytes.fromhex("03 01 10 26")
    assert decode_holiday(bytes.fromhex("03 01 10 26")) == Holiday(dt.date(2026, 10, 1), 3)
    assert encode_prices([Decimal("0.5283")]) == bytes.fromhex("83 52 00 00")
    assert decode_prices(bytes.fromhex("83 52 00 00 00 00 01 00")) == (
        Decimal("0.5283"),
        Decimal("1.0000"),
    )
    assert decode_counter(bytes.fromhex("17 00 00")) == 17


def test_ladder_blocks_64_and_70_bytes() -> None:
    ladder = Ladder(
        thresholds=(Decimal("2160.00"), Decimal("4200.00"), *(Decimal("4200.00"),) * 4),
        prices=(Decimal("0.0000"), Decimal("0.0500"), *(Decimal("0.3000"),) * 5),
        settlement_days=(SettlementDay(1, 1, 0), *(SettlementDay(99, 99, 99),) * 3),
    )
    raw = encode_ladder(ladder)
    assert len(raw) == 64
    assert raw[:4] == bytes.fromhex("00 60 21 00")  # 2160.00 kWh = 00216000, low byte first
    assert raw[52:55] == bytes.fromhex("00 01 01")  # MMDDhh 01 01 00 sent hh DD MM
    assert decode_ladder(raw) == ladder
    six = Ladder(
        ladder.thresholds, ladder.prices, ladder.settlement_days + (SettlementDay(99, 99, 99),) * 2
    )
    assert len(encode_ladder(six)) == 70
    assert decode_ladder(encode_ladder(six)) == six
    with pytest.raises(ValueFormatError, match="64 or 70"):
        decode_ladder(raw[:60])


@pytest.mark.parametrize(
    ("decode", "data", "message"),
    [
        (decode_zone_table, bytes.fromhex("01 01"), "not 1..14 entries"),
        (decode_zone_table, bytes(45), "not 1..14 entries"),
        (decode_period_table, bytes.fromhex("0A 00 08"), "not BCD"),
        (decode_switch_time, bytes.fromhex("00 00 32 01 27"), "day is out of range"),
        (decode_switch_time, bytes(4), "5 bytes"),
        (decode_holiday, bytes.fromhex("03 01 13 26"), "month must be"),
        (decode_prices, bytes(3), "multiple of 4"),
        (decode_counter, bytes(2), "3 bytes"),
    ],
)
def test_bad_bytes_are_value_format_errors(decode: object, data: bytes, message: str) -> None:
    assert callable(decode)
    with pytest.raises(ValueFormatError, match=message):
        decode(data)


def test_values_that_do_not_fit_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError, match="at least one"):
        encode_zone_table([])
    with pytest.raises(LocalProtocolError, match="15 entries"):
        encode_period_table([Period(0, 0, 1)] * 15)
    with pytest.raises(LocalProtocolError, match="decimals"):
        encode_prices([Decimal("0.12345")])
    with pytest.raises(LocalProtocolError, match="2000-2099"):
        encode_switch_time(dt.datetime(2100, 1, 1))
    with pytest.raises(LocalProtocolError, match=r"1\.\.8"):
        di_daily_table(1, 9)


def test_item_names_and_dis() -> None:
    assert di_zone_table(2) == 0x04020000
    assert di_daily_table(1, 8) == 0x04010008
    assert di_holiday(254) == 0x040300FE
    assert DI_SWITCH["zones"] == 0x04000106
    assert DI_SWITCH["ladder_zones"] == 0x0400010A
    assert tariff_item_name(0x04020003) == "set 2 daily table 3"
    assert tariff_item_name(0x04030010) == "holiday 16"
    assert tariff_item_name(0x04050203) == "set 2 price T3"
    assert is_tariff_di(0x03300500)
    assert not is_tariff_di(0x00010000)
    assert not is_tariff_di(0x04010009)


LOCAL = TariffSetup(
    read_at=READ_AT,
    meter_time=dt.datetime(2026, 12, 3, 9, 0, 5),
    zone_count=2,
    table_count=2,
    period_count=5,
    tariff_count=4,
    holiday_count=2,
    ladder_count=3,
    sets=(
        TouSet(
            zones=(ZoneEntry(1, 1, 1), ZoneEntry(6, 1, 2)),
            tables={
                1: (
                    Period(0, 0, 4),
                    Period(8, 0, 2),
                    Period(11, 30, 3),
                    Period(18, 0, 2),
                    Period(22, 0, 4),
                ),
                2: (
                    Period(0, 0, 4),
                    Period(8, 0, 2),
                    Period(11, 0, 1),
                    Period(13, 0, 2),
                    Period(22, 0, 4),
                ),
            },
        ),
        TouSet(zones=(ZoneEntry(1, 1, 1),), tables={1: (Period(0, 0, 3),)}),
    ),
    status_word3=1 << 5 | 1 << 8,
    active_zone_set=2,
    active_table_set=1,
    switch_tables=dt.datetime(2027, 1, 1, 0, 0),
    weekend_workdays=0b0111110,
    weekend_table=2,
    holidays=(Holiday(dt.date(2027, 1, 1), 1), Holiday(dt.date(2027, 2, 17), 1)),
    prices_current=(Decimal("0.6800"), Decimal("0.5800"), Decimal("0.4800"), Decimal("0.3100")),
    prices_backup=(Decimal("0.7000"),) * 4,
    ladders_current=(
        Ladder(
            (Decimal("2160.00"), Decimal("4200.00"), *(Decimal("4200.00"),) * 4),
            (Decimal("0.0000"), Decimal("0.0500"), *(Decimal("0.3000"),) * 5),
            (SettlementDay(1, 1, 0), *(SettlementDay(99, 99, 99),) * 3),
        ),
    ),
    ladder_zones_current=(ZoneEntry(1, 1, 1),),
    current_ladder_price=Decimal("0.0000"),
    current_price=Decimal("0.5800"),
    current_tariff_price=Decimal("0.5800"),
    event_counters={"03300400": 3, "03300500": 1},
)


def test_a_whole_setup_round_trips_through_read_reply_frames() -> None:
    replies = replies_from_setup(LOCAL)
    address = Address.parse("000000001234")
    through_frames: dict[int, bytes] = {}
    for di, value in replies.items():
        assert len(value) <= 200, hex(di)  # each item fits one 11H reply
        message = from_frame(decode_frame(to_frame(address, ReadReply(di, value)).to_bytes()))
        assert isinstance(message, ReadReply)
        through_frames[message.di] = message.value
    setup, errors = setup_from_replies(through_frames, read_at=READ_AT, denied=[0x0400010A])
    assert errors == {}
    expected = padded(LOCAL)
    assert setup.unsupported == frozenset({"0400010A"})
    assert setup == replace(expected, unsupported=frozenset({"0400010A"}))
    # padding does not change what the meter runs
    for day in (dt.date(2026, 12, 5), dt.date(2027, 1, 1), dt.date(2027, 7, 1)):
        assert meter_tariff_minutes(setup, day) == meter_tariff_minutes(LOCAL, day)


def test_other_ladder_forms() -> None:
    for form, dis in (("tables", {0x040606FF}), ("2009", {0x040600FF, 0x040601FF})):
        replies = replies_from_setup(LOCAL, ladder_form=form)
        assert dis <= set(replies)
        setup, errors = setup_from_replies(replies, read_at=READ_AT)
        assert errors == {}
        assert setup.ladders_current[0].prices == LOCAL.ladders_current[0].prices
    with pytest.raises(LocalProtocolError, match="ladder form"):
        replies_from_setup(LOCAL, ladder_form="1997")


def test_a_bad_item_is_kept_out_and_named() -> None:
    replies = replies_from_setup(LOCAL)
    replies[di_daily_table(1, 2)] = bytes.fromhex("0A 00 08")
    replies[DI_COUNTS["periods"]] = bytes(2)
    setup, errors = setup_from_replies(replies, read_at=READ_AT)
    assert set(errors) == {"04010002", "04000203"}
    assert "not BCD" in errors["04010002"]
    assert 2 not in setup.sets[0].tables
    assert setup.period_count is None
    assert setup.sets[0].tables[1] == padded(LOCAL).sets[0].tables[1]


def test_status_word_and_counters_come_through() -> None:
    setup, _ = setup_from_replies(replies_from_setup(LOCAL), read_at=READ_AT)
    assert (setup.active_zone_set, setup.active_table_set) == (2, 1)
    assert setup.event_counters == {"03300400": 3, "03300500": 1}
    assert DI_STATUS3 in replies_from_setup(LOCAL)
    assert set(DI_EVENT_COUNTERS) >= {0x03300400, 0x03300500}


# --- properties ------------------------------------------------------------------------------

zones = st.builds(ZoneEntry, st.integers(0, 12), st.integers(0, 31), st.integers(0, 99))
periods = st.builds(Period, st.integers(0, 23), st.integers(0, 59), st.integers(0, 99))
prices = st.decimals(min_value=0, max_value=Decimal("9999.9999"), places=4)


@given(st.lists(zones, min_size=1, max_size=14))
def test_zone_table_round_trip(entries: list[ZoneEntry]) -> None:
    raw = encode_zone_table(entries)
    assert len(raw) == 42
    decoded = decode_zone_table(raw)
    assert decoded[: len(entries)] == tuple(entries)
    assert set(decoded[len(entries) :]) <= {entries[-1]}


@given(st.lists(periods, min_size=1, max_size=14))
def test_period_table_round_trip(entries: list[Period]) -> None:
    decoded = decode_period_table(encode_period_table(entries))
    assert decoded[: len(entries)] == tuple(entries)


@given(st.none() | st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59)))
def test_switch_time_round_trip(when: dt.datetime | None) -> None:
    if when is not None:
        when = when.replace(second=0, microsecond=0)
    assert decode_switch_time(encode_switch_time(when)) == when


@given(st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)), st.integers(0, 99))
def test_holiday_round_trip(day: dt.date, table: int) -> None:
    assert decode_holiday(encode_holiday(Holiday(day, table))) == Holiday(day, table)


@given(st.lists(prices, max_size=63))
def test_prices_round_trip(values: list[Decimal]) -> None:
    assert decode_prices(encode_prices(values)) == tuple(values)


@settings(max_examples=300)
@given(
    st.binary(max_size=80),
    st.sampled_from(
        [
            decode_zone_table,
            decode_period_table,
            decode_switch_time,
            decode_holiday,
            decode_prices,
            decode_ladder,
            decode_counter,
        ]
    ),
)
def test_no_bytes_crash_a_decoder(data: bytes, decode: object) -> None:
    assert callable(decode)
    with contextlib.suppress(ValueFormatError):  # any other exception fails the test
        decode(data)


def test_items_are_described_for_technicians() -> None:
    from protocols.dlt645 import describe
    from protocols.dlt645.tariff import describe_item

    replies = replies_from_setup(LOCAL)
    described = {f"{di:08X}": describe_item(di, value) for di, value in replies.items()}
    assert described["04010002"] == (
        "set 1 daily table 2",
        [["00:00", 4], ["08:00", 2], ["11:00", 1], ["13:00", 2], ["22:00", 4]] + [["22:00", 4]] * 9,
    )
    assert described["04020000"][1][0] == ["01-01", 1]  # type: ignore[index]
    assert described["04000107"] == ("tables switch time", "2027-01-01T00:00")
    assert described["04000106"] == ("zones switch time", None)
    assert described["04000801"] == (
        "weekend work-day word",
        {"work_days": ["mon", "tue", "wed", "thu", "fri"], "word": 0b0111110},
    )
    assert described["04030002"] == ("holiday 2", ["2027-02-17", 1])
    assert described["040501FF"] == ("current prices", ["0.6800", "0.5800", "0.4800", "0.3100"])
    assert described["040604FF"][1]["settlement_days"][0] == "010100"  # type: ignore[index]
    assert described["03300400"] == ("events: clock set", 3)
    assert all(d is not None for d in described.values())
    assert describe_item(0x00010000, bytes(4)) is None
    # a whole reply frame as `meterlink frame decode` shows it
    frame = to_frame(Address.parse("000000001234"), ReadReply(0x04010001, replies[0x04010001]))
    shown = describe(decode_frame(frame.to_bytes()))
    assert shown["tariff_item"]["name"] == "set 1 daily table 1"
    assert shown["tariff_item"]["value"][1] == ["08:00", 2]
