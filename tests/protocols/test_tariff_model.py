"""`protocols.tariff`: the meter's tariff selection (reference §C.2) and the payload form."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.tariff import (
    Holiday,
    IncompleteSetup,
    Ladder,
    Period,
    SettlementDay,
    TariffPayloadError,
    TariffSetup,
    TouSet,
    ZoneEntry,
    active_sets_from_status3,
    meter_daily_table,
    meter_tariff,
    meter_tariff_minutes,
)

READ_AT = dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC)

# a typical plan: summer (Jun-Aug) table 2 with a 尖 peak, the rest of the year table 1
WINTER = (Period(0, 0, 4), Period(8, 0, 2), Period(11, 30, 3), Period(18, 0, 2), Period(22, 0, 4))
SUMMER = (
    Period(0, 0, 4), Period(8, 0, 2), Period(11, 0, 1), Period(13, 0, 2), Period(17, 0, 3),
    Period(22, 0, 4),
)  # fmt: skip
WEEKEND = (Period(0, 0, 3),)
FIRST = TouSet(
    zones=(ZoneEntry(1, 1, 1), ZoneEntry(6, 1, 2), ZoneEntry(9, 1, 1)),
    tables={1: WINTER, 2: SUMMER, 3: WEEKEND},
)


def setup_with(**changes: object) -> TariffSetup:
    base = TariffSetup(
        read_at=READ_AT,
        meter_time=dt.datetime(2026, 12, 3, 9, 0, 5),
        zone_count=3,
        table_count=3,
        period_count=6,
        tariff_count=4,
        holiday_count=0,
        sets=(FIRST, TouSet()),
        weekend_workdays=0b1111111,
        weekend_table=3,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_the_period_is_the_last_one_started() -> None:
    s = setup_with(period_count=5)
    assert meter_tariff(s, at("2026-12-03T07:59")) == 4
    assert meter_tariff(s, at("2026-12-03T08:00")) == 2
    assert meter_tariff(s, at("2026-12-03T11:29")) == 2
    assert meter_tariff(s, at("2026-12-03T11:30")) == 3
    assert meter_tariff(s, at("2026-12-03T23:59")) == 4


def test_the_zone_is_the_last_one_started_and_wraps_around() -> None:
    s = setup_with()
    assert meter_daily_table(s, at("2026-05-31T12:00")) == (1, 1)
    assert meter_daily_table(s, at("2026-06-01T00:00")) == (1, 2)
    assert meter_tariff(s, at("2026-07-15T12:00")) == 1
    assert meter_daily_table(s, at("2026-09-01T00:00")) == (1, 1)
    # zones starting 03-01 and 10-01 only: February is before the first ⇒ the last zone
    late = replace(FIRST, zones=(ZoneEntry(10, 1, 2), ZoneEntry(3, 1, 1)))
    s2 = setup_with(sets=(late, TouSet()), zone_count=2)
    assert meter_daily_table(s2, at("2026-02-10T12:00")) == (1, 2)
    assert meter_daily_table(s2, at("2026-03-01T12:00")) == (1, 1)


def test_only_the_first_p_zones_and_m_periods_count() -> None:
    s = setup_with(zone_count=1)  # only the 01-01 zone: table 1 all year
    assert meter_daily_table(s, at("2026-07-01T12:00")) == (1, 1)
    s = setup_with(period_count=2)  # 00:00 T4, 08:00 T2
    assert meter_tariff(s, at("2026-12-03T12:00")) == 2
    assert meter_tariff(s, at("2026-12-03T23:00")) == 2
    # p or m = 0 (or over 14) counts as 1
    assert meter_daily_table(setup_with(zone_count=0), at("2026-07-01T00:00")) == (1, 1)
    assert meter_tariff(setup_with(period_count=15), at("2026-12-03T12:00")) == 4


def test_padding_by_repeating_the_last_entry_changes_nothing() -> None:
    padded = TouSet(
        zones=FIRST.zones + (FIRST.zones[-1],) * 11,
        tables={n: t + (t[-1],) * (14 - len(t)) for n, t in FIRST.tables.items()},
    )
    plain, pad = setup_with(), setup_with(sets=(padded, TouSet()), zone_count=14, period_count=14)
    for day in (dt.date(2026, 1, 1), dt.date(2026, 7, 4), dt.date(2026, 12, 31)):
        assert meter_tariff_minutes(pad, day) == meter_tariff_minutes(
            replace(
                plain,
                period_count=len(
                    plain.sets[0].tables[
                        meter_daily_table(plain, dt.datetime.combine(day, dt.time()))[1]
                    ]
                ),
            ),
            day,
        )


def test_empty_zone_entries_sort_first() -> None:
    # one empty entry sorts first and is a zone that starts before 1 January
    zones = (ZoneEntry(6, 1, 2), ZoneEntry(0, 0, 3), ZoneEntry(9, 1, 1))
    s = setup_with(sets=(replace(FIRST, zones=zones), TouSet()), zone_count=3)
    assert meter_daily_table(s, at("2026-01-15T00:00")) == (1, 3)
    assert meter_daily_table(s, at("2026-07-01T00:00")) == (1, 2)
    # an empty entry following another ends the search (firmware FindSQ): the first empty one
    zones = (ZoneEntry(6, 1, 2), ZoneEntry(0, 0, 3), ZoneEntry(0, 0, 4))
    s = setup_with(sets=(replace(FIRST, zones=zones), TouSet()), zone_count=3)
    assert meter_daily_table(s, at("2026-07-01T00:00")) == (1, 3)


def test_tariff_numbers_out_of_range_fall_back_to_t1() -> None:
    odd = replace(FIRST, tables={1: (Period(0, 0, 0), Period(12, 0, 5)), 2: SUMMER, 3: WEEKEND})
    s = setup_with(sets=(odd, TouSet()), period_count=2)
    assert meter_tariff(s, at("2026-12-03T01:00")) == 1
    assert meter_tariff(s, at("2026-12-03T13:00")) == 1


def test_weekend_rule_and_holiday_precedence() -> None:
    # 2026-12-05 is a Saturday, 2026-12-06 a Sunday: bit 0 (Sunday) and bit 6 (Saturday) clear
    s = setup_with(weekend_workdays=0b0111110)
    assert meter_daily_table(s, at("2026-12-05T12:00")) == (1, 3)
    assert meter_daily_table(s, at("2026-12-06T12:00")) == (1, 3)
    assert meter_daily_table(s, at("2026-12-07T12:00")) == (1, 1)
    holidays = (Holiday(dt.date(2026, 12, 7), 3), Holiday(dt.date(2026, 12, 5), 2))
    s = replace(s, holidays=holidays, holiday_count=2)
    assert meter_daily_table(s, at("2026-12-07T12:00")) == (1, 3)
    assert meter_daily_table(s, at("2026-12-05T12:00")) == (1, 2)  # holiday over weekend
    # only the first n holidays count
    assert meter_daily_table(replace(s, holiday_count=1), at("2026-12-05T12:00")) == (1, 3)
    # a table number 0 or over 8 falls back to table 1
    s = replace(s, holidays=(Holiday(dt.date(2026, 12, 7), 9),), holiday_count=1)
    assert meter_daily_table(s, at("2026-12-07T12:00")) == (1, 1)


def test_switch_times_flip_the_active_sets() -> None:
    second = TouSet(zones=(ZoneEntry(1, 1, 1),), tables={1: (Period(0, 0, 2),)})
    s = setup_with(
        sets=(FIRST, second),
        switch_zones=at("2026-12-10T00:00"),
        switch_tables=at("2026-12-10T00:00"),
    )
    assert meter_tariff(s, at("2026-12-09T23:59")) == 4
    assert meter_tariff(s, at("2026-12-10T00:00")) == 2
    assert meter_daily_table(s, at("2026-12-10T00:00")) == (2, 1)
    # the status word says the second set already runs: the switch flips back to the first
    flipped = replace(s, active_zone_set=2, active_table_set=2)
    assert meter_tariff(flipped, at("2026-12-09T12:00")) == 2
    assert meter_tariff(flipped, at("2026-12-10T12:00")) == 3
    # a switch inside a day shows in the minute list
    mid = replace(s, switch_zones=at("2026-12-10T12:30"), switch_tables=at("2026-12-10T12:30"))
    minutes = meter_tariff_minutes(mid, dt.date(2026, 12, 10))
    assert minutes[12 * 60 + 29] == 3
    assert minutes[12 * 60 + 30] == 2
    assert minutes[0] == 4
    # a switch time with seconds (a payload may carry them) takes effect from the next minute,
    # as `meter_tariff` sees it (found by the property test below: 15:00:00.798595)
    late = replace(
        s, switch_zones=at("2026-12-10T12:30:01"), switch_tables=at("2026-12-10T12:30:01")
    )
    minutes = meter_tariff_minutes(late, dt.date(2026, 12, 10))
    assert meter_tariff(late, at("2026-12-10T12:30")) == minutes[12 * 60 + 30] == 3
    assert meter_tariff(late, at("2026-12-10T12:31")) == minutes[12 * 60 + 31] == 2
    end = replace(
        s, switch_zones=at("2026-12-10T23:59:30"), switch_tables=at("2026-12-10T23:59:30")
    )
    assert meter_tariff_minutes(end, dt.date(2026, 12, 10))[-1] == meter_tariff(
        end, at("2026-12-10T23:59")
    )


def test_status_word_3_bits() -> None:
    assert active_sets_from_status3(0) == (1, 1)
    assert active_sets_from_status3(1 << 5) == (2, 1)
    assert active_sets_from_status3(1) == (1, 2)
    assert active_sets_from_status3(0xFFFF) == (2, 2)


def test_a_table_not_read_is_an_incomplete_setup() -> None:
    s = setup_with(sets=(replace(FIRST, tables={1: WINTER}), TouSet()))
    with pytest.raises(IncompleteSetup, match="daily table 2"):
        meter_tariff(s, at("2026-07-01T12:00"))
    with pytest.raises(ValueError, match="naive"):
        meter_tariff(s, READ_AT)


# --- payload ------------------------------------------------------------------------------

FULL = setup_with(
    sets=(FIRST, TouSet(zones=(ZoneEntry(1, 1, 1),), tables={1: (Period(0, 0, 3),)})),
    status_word3=0x0021,
    active_zone_set=2,
    active_table_set=2,
    switch_prices=at("2027-01-01T00:00"),
    holidays=(Holiday(dt.date(2027, 1, 1), 3),),
    holiday_count=1,
    ladder_count=3,
    prices_current=(Decimal("0.6800"), Decimal("0.5800"), Decimal("0.4800"), Decimal("0.3100")),
    prices_backup=(Decimal("0.7000"),) * 4,
    ladders_current=(
        Ladder(
            thresholds=(Decimal("2160.00"), Decimal("4200.00")) + (Decimal("4200.00"),) * 4,
            prices=(Decimal("0"), Decimal("0.0500"), Decimal("0.3000")) + (Decimal("0.3000"),) * 4,
            settlement_days=(SettlementDay(1, 1, 0),) + (SettlementDay(99, 99, 99),) * 3,
        ),
    ),
    ladder_zones_current=(ZoneEntry(1, 1, 1),) * 4,
    current_price=Decimal("0.5800"),
    current_tariff_price=Decimal("0.5800"),
    current_ladder_price=Decimal("0.0000"),
    event_counters={"03300500": 2, "03300400": 17},
    unsupported=frozenset({"0400010A", "04070000"}),
)


def test_payload_round_trip_through_json() -> None:
    body = json.loads(json.dumps(FULL.to_payload()))
    assert TariffSetup.from_payload(body) == FULL
    assert body["active"] == {"zones": 2, "tables": 2}
    assert body["sets"][0]["tables"]["2"][2] == [11, 0, 1]
    assert body["unsupported"] == ["0400010A", "04070000"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("version",), 2, "version"),
        (("read_at",), "2026-12-03T01:00:00", "UTC offset"),
        (("meter_time",), "2026-12-03T09:00:05+08:00", "meter_time"),
        (("counts", "zones"), -1, "counts.zones"),
        (("active", "zones"), 3, "1 or 2"),
        (("sets",), [], "two sets"),
        (("holidays",), [["2027-13-01", 3]], "holidays\\[0\\]"),
        (("prices", "current"), ["0.68", 1], "prices.current\\[1\\]"),
        (("unsupported",), ["0400010a"], "upper-case hex"),
        (("switch", "zones"), "tomorrow", "switch.zones"),
        (("extra",), 1, "unknown extra"),
    ],
)
def test_bad_payloads_name_the_key(path: tuple[str, ...], value: object, message: str) -> None:
    body = json.loads(json.dumps(FULL.to_payload()))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(TariffPayloadError, match=message):
        TariffSetup.from_payload(body)


# --- properties ------------------------------------------------------------------------------

periods = st.builds(Period, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]), st.integers(0, 6))
zones = st.builds(ZoneEntry, st.integers(1, 12), st.integers(1, 28), st.integers(1, 3))


@st.composite
def setups(draw: st.DrawFn) -> TariffSetup:
    def tou() -> TouSet:
        return TouSet(
            zones=tuple(draw(st.lists(zones, min_size=1, max_size=14))),
            tables={n: tuple(draw(st.lists(periods, min_size=1, max_size=14))) for n in (1, 2, 3)},
        )

    switch = draw(st.none() | st.datetimes(dt.datetime(2026, 1, 1), dt.datetime(2027, 12, 31)))
    return TariffSetup(
        read_at=READ_AT,
        zone_count=draw(st.none() | st.integers(0, 16)),
        period_count=draw(st.none() | st.integers(0, 16)),
        sets=(tou(), tou()),
        active_zone_set=draw(st.sampled_from([1, 2])),
        active_table_set=draw(st.sampled_from([1, 2])),
        switch_zones=switch,
        switch_tables=draw(st.sampled_from([None, switch])),
        weekend_workdays=draw(st.none() | st.integers(0, 127)),
        weekend_table=draw(st.integers(0, 3)),
        holidays=tuple(
            Holiday(d, t)
            for d, t in draw(
                st.lists(
                    st.tuples(
                        st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)), st.integers(0, 3)
                    )
                )
            )
        ),
    )


def reference_tariff(setup: TariffSetup, when: dt.datetime) -> int:
    """An independent reading of §C.2 for entries without empty ones: the last started entry,
    ties to the later one as stored, wrap-around to the latest one."""
    zone_no = setup.active_zone_set
    if setup.switch_zones is not None and setup.switch_zones <= when:
        zone_no = 3 - zone_no
    table_no = setup.active_table_set
    if setup.switch_tables is not None and setup.switch_tables <= when:
        table_no = 3 - table_no

    def first(count: int | None, entries: tuple[object, ...]) -> int:
        n = len(entries) if count is None else (1 if count in (0,) or count > 14 else count)
        return min(n, len(entries))

    def last_started(keys: list[tuple[int, int]], now: tuple[int, int]) -> int:
        started = [i for i, k in enumerate(keys) if k <= now]
        pool = started or list(range(len(keys)))
        best = max(keys[i] for i in pool)
        return max(i for i in pool if keys[i] == best)

    zs = setup.sets[zone_no - 1].zones
    zs = zs[: first(setup.zone_count, zs)]
    table = zs[last_started([(z.month, z.day) for z in zs], (when.month, when.day))].table
    if (
        setup.weekend_workdays is not None
        and not setup.weekend_workdays >> (when.isoweekday() % 7) & 1
    ):
        table = setup.weekend_table if setup.weekend_table is not None else table
    for h in setup.holidays:
        if h.date == when.date():
            table = h.table
            break
    table = 1 if table in (0,) or table > 8 else table
    ps = setup.sets[table_no - 1].tables[table]
    ps = ps[: first(setup.period_count, ps)]
    p = ps[last_started([(x.hour, x.minute) for x in ps], (when.hour, when.minute))]
    return 1 if p.tariff == 0 or p.tariff > 4 else p.tariff


@settings(max_examples=300, deadline=None)
@given(setups(), st.datetimes(dt.datetime(2026, 1, 1), dt.datetime(2027, 12, 31)))
def test_selection_agrees_with_an_independent_reading(
    setup: TariffSetup, when: dt.datetime
) -> None:
    assert meter_tariff(setup, when) == reference_tariff(setup, when)


@settings(max_examples=40, deadline=None)
@given(setups(), st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)))
def test_minute_list_equals_the_minute_by_minute_selection(
    setup: TariffSetup, day: dt.date
) -> None:
    minutes = meter_tariff_minutes(setup, day)
    assert len(minutes) == 1440
    midnight = dt.datetime.combine(day, dt.time())
    assert minutes == [meter_tariff(setup, midnight + dt.timedelta(minutes=i)) for i in range(1440)]


@settings(max_examples=100, deadline=None)
@given(
    setups(),
    st.randoms(use_true_random=False),
    st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)),
)
def test_stored_order_of_distinct_entries_does_not_matter(
    setup: TariffSetup, rnd: object, day: dt.date
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    m = setup.period_count

    def shuffled(tou: TouSet) -> TouSet:
        tables = {}
        for n, ps in tou.tables.items():
            k = len(ps) if m is None else (1 if m == 0 or m > 14 else min(m, len(ps)))
            head = list({(p.hour, p.minute): p for p in ps[:k]}.values())  # distinct starts
            rnd.shuffle(head)
            tables[n] = tuple(head)
        return TouSet(zones=tou.zones, tables=tables)

    distinct = replace(
        setup, sets=(shuffled(setup.sets[0]), shuffled(setup.sets[1])), period_count=None
    )
    deduped = replace(
        distinct,
        sets=tuple(
            TouSet(
                zones=t.zones,
                tables={
                    n: tuple(sorted(ps, key=lambda p: (p.hour, p.minute)))
                    for n, ps in t.tables.items()
                },
            )
            for t in distinct.sets
        ),
    )  # type: ignore[arg-type]
    assert meter_tariff_minutes(distinct, day) == meter_tariff_minutes(deduped, day)


@settings(max_examples=100, deadline=None)
@given(setups())
def test_payload_round_trip_property(setup: TariffSetup) -> None:
    assert TariffSetup.from_payload(json.loads(json.dumps(setup.to_payload()))) == setup
