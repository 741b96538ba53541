"""The tariff set-up items of a DL/T 645-2007 meter (State-Grid 2013 extension): data identifiers,
byte layouts, and the translation between the meter's bytes and `protocols.tariff.TariffSetup`.

Layouts (tariff reference §C.1; values BCD, low byte first, as every 645 value):

* zone table 04010000 / 04020000: 14 entries MMDDNN, each sent NN DD MM (entries 1..14 in
  order); daily table 040100nn / 040200nn: 14 entries hhmmNN, sent NN mm hh; unused entries
  repeat the last used one (the meter pads so);
* ladder zone table 04070000 / 04070001: 4 entries MMDDNN (NN = ladder table);
* switch times 04000106..0A: YYMMDDhhmm (sent mm hh DD MM YY), all zero = none / cleared;
* counts 04000201..04 and 04000207: NN; 04000205 (holidays): NNNN;
* weekend word 04000801: one byte of bits (bit d = weekday d, 0 = Sunday; 1 = work day);
  weekend table 04000802: NN;
* holiday 040300nn (nn = 01..FE): YYMMDDNN, sent NN DD MM YY;
* prices 040501nn / 040502nn: XXXX.XXXX 元/kWh, blocks 040501FF / 040502FF = k of them;
* ladder blocks 040604FF / 040605FF (2013): 6 thresholds NNNNNN.NN kWh + 7 prices XXXX.XXXX +
  4 settlement days MMDDhh (sent hh DD MM) = 64 bytes; later firmware's tables 040606FF, 07FF
  (current set) and 04060AFF, 0BFF (backup set) carry 6 settlement days = 70 bytes; 2009
  ladders: 040600FF / 040602FF thresholds, 040601FF / 040603FF prices (n each);
* current prices 0280000B (ladder), 02800020 (price), 02800021 (tariff price): XXXX.XXXX;
* programming-event counters 03300400 … 03301000 (总次数): NNNNNN.

Decoding rejects bytes that do not fit with `ValueFormatError`; encoding rejects values that do
not fit with `LocalProtocolError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import TypeVar

from protocols.dlt645.formats import bcd_to_int, int_to_bcd
from protocols.dlt645.functions import Edition, format_di
from protocols.errors import LocalProtocolError, ValueFormatError
from protocols.tariff import (
    MAX_PERIODS,
    MAX_ZONES,
    SWITCH_KINDS,
    Holiday,
    Ladder,
    Period,
    SettlementDay,
    TariffSetup,
    TouSet,
    ZoneEntry,
    active_sets_from_status3,
)

__all__ = [
    "DI_CLOCK",
    "DI_COUNTS",
    "DI_CURRENT_PRICES",
    "DI_EVENT_COUNTERS",
    "DI_LADDER_2009",
    "DI_LADDER_BLOCKS",
    "DI_LADDER_TABLES",
    "DI_LADDER_ZONES",
    "DI_PRICE_BLOCKS",
    "DI_STATUS3",
    "DI_SWITCH",
    "DI_WEEKEND_TABLE",
    "DI_WEEKEND_WORKDAYS",
    "LADDER_FORMS",
    "decode_counter",
    "decode_holiday",
    "decode_ladder",
    "decode_period_table",
    "decode_prices",
    "decode_switch_time",
    "decode_thresholds",
    "decode_zone_table",
    "describe_item",
    "di_daily_table",
    "di_holiday",
    "di_zone_table",
    "encode_holiday",
    "encode_ladder",
    "encode_period_table",
    "encode_prices",
    "encode_switch_time",
    "encode_thresholds",
    "encode_zone_table",
    "is_tariff_di",
    "padded",
    "replies_from_setup",
    "setup_from_replies",
    "tariff_item_name",
]

DI_CLOCK = 0x0400010C
DI_STATUS3 = 0x04000503
DI_SWITCH: dict[str, int] = {kind: 0x04000106 + i for i, kind in enumerate(SWITCH_KINDS)}
"""switch times by kind: zones 04000106, tables 07, prices 08, ladders 09, ladder_zones 0A"""
DI_COUNTS: dict[str, int] = {
    "zones": 0x04000201,
    "tables": 0x04000202,
    "periods": 0x04000203,
    "tariffs": 0x04000204,
    "holidays": 0x04000205,
    "ladders": 0x04000207,
}
DI_WEEKEND_WORKDAYS = 0x04000801
DI_WEEKEND_TABLE = 0x04000802
DI_PRICE_BLOCKS = (0x040501FF, 0x040502FF)
"""current (first) and backup (second) tariff price set"""
DI_LADDER_BLOCKS = (0x040604FF, 0x040605FF)
"""2013 ladder blocks, current and backup (64 bytes each)"""
DI_LADDER_TABLES = ((0x040606FF, 0x040607FF), (0x04060AFF, 0x04060BFF))
"""later firmware: current set tables 1, 2 and backup set tables 1, 2 (70 bytes each)"""
DI_LADDER_2009 = ((0x040600FF, 0x040601FF), (0x040602FF, 0x040603FF))
"""2009 ladders: (thresholds, prices) of the first and the second set"""
DI_LADDER_ZONES = (0x04070000, 0x04070001)
DI_CURRENT_PRICES: dict[str, int] = {
    "ladder_price": 0x0280000B,
    "price": 0x02800020,
    "tariff_price": 0x02800021,
}
DI_EVENT_COUNTERS: dict[int, str] = {
    0x03300400: "校时 clock set",
    0x03300500: "时段表编程 daily tables programmed",
    0x03300600: "时区表编程 zone tables programmed",
    0x03300700: "周休日编程 weekend rule programmed",
    0x03300800: "节假日编程 holidays programmed",
    0x03300F00: "费率参数表编程 prices programmed",
    0x03301000: "阶梯表编程 ladders programmed",
}
LADDER_FORMS = ("2013", "tables", "2009")
"""how a local meter stores its ladders: one 64-byte block per set, two 70-byte tables per set,
or the 2009 threshold / price blocks"""

_T = TypeVar("_T")
_ENTRY = 3
_LADDER_THRESHOLDS = 6
_LADDER_PRICES = 7


def _item_names() -> dict[int, str]:
    names: dict[int, str] = {
        DI_CLOCK: "clock",
        DI_STATUS3: "status word 3",
        DI_WEEKEND_WORKDAYS: "weekend work-day word",
        DI_WEEKEND_TABLE: "weekend daily table",
    }
    sides = ("current", "backup")
    names.update({v: f"{k} switch time" for k, v in DI_SWITCH.items()})
    names.update({v: f"{k} count" for k, v in DI_COUNTS.items()})
    names.update({v: f"{sides[i]} prices" for i, v in enumerate(DI_PRICE_BLOCKS)})
    names.update({v: f"{sides[i]} ladder" for i, v in enumerate(DI_LADDER_BLOCKS)})
    names.update({v: f"{k} (now)" for k, v in DI_CURRENT_PRICES.items()})
    names.update({v: f"events: {k.split(' ', 1)[1]}" for v, k in DI_EVENT_COUNTERS.items()})
    for side, pair in enumerate(DI_LADDER_TABLES):
        for table, di in enumerate(pair, start=1):
            names[di] = f"{sides[side]} ladder table {table}"
    for side, (thresholds, prices) in enumerate(DI_LADDER_2009):
        names[thresholds] = f"set {side + 1} ladder thresholds (2009)"
        names[prices] = f"set {side + 1} ladder prices (2009)"
    for side, di in enumerate(DI_LADDER_ZONES):
        names[di] = f"{sides[side]} ladder zones"
    return names


_NAMES = _item_names()


def di_zone_table(set_no: int) -> int:
    """04010000 (first set) or 04020000 (second set)."""
    _check_set(set_no)
    return 0x04000000 | set_no << 16


def di_daily_table(set_no: int, table: int) -> int:
    """040100nn / 040200nn, nn = 1..8."""
    _check_set(set_no)
    if not 1 <= table <= 8:
        raise LocalProtocolError(f"daily table number {table} outside 1..8")
    return 0x04000000 | set_no << 16 | table


def di_holiday(index: int) -> int:
    """040300nn, nn = 1..254 (hex DI0)."""
    if not 1 <= index <= 254:
        raise LocalProtocolError(f"holiday number {index} outside 1..254")
    return 0x04030000 | index


def _check_set(set_no: int) -> None:
    if set_no not in (1, 2):
        raise LocalProtocolError(f"set number {set_no} is 1 or 2")


def is_tariff_di(di: int) -> bool:
    """Whether `di` is one of the tariff set-up items this module decodes."""
    return tariff_item_name(di) is not None


def tariff_item_name(di: int) -> str | None:
    """A short English name of a tariff item, None for any other DI."""
    names = _NAMES
    if di in names:
        return names[di]
    if di in (0x04010000, 0x04020000):
        return f"set {di >> 16 & 0xF} zone table"
    if di >> 8 in (0x040100, 0x040200) and 1 <= di & 0xFF <= 8:
        return f"set {di >> 16 & 0xF} daily table {di & 0xFF}"
    if di >> 8 == 0x040300 and 1 <= di & 0xFF <= 254:
        return f"holiday {di & 0xFF}"
    if di >> 8 in (0x040501, 0x040502) and 1 <= di & 0xFF <= 0x3F:
        return f"set {(di >> 8 & 0xF)} price T{di & 0xFF}"
    return None


# --- field layouts -----------------------------------------------------------------------------


def _bcd(data: bytes, what: str) -> int:
    return bcd_to_int(data, what=what)


def _decimal(data: bytes, decimals: int, what: str) -> Decimal:
    return Decimal(_bcd(data, what)).scaleb(-decimals)


def _decimal_bytes(value: Decimal, size: int, decimals: int, what: str) -> bytes:
    scaled = value.scaleb(decimals)
    if not value.is_finite() or scaled != scaled.to_integral_value():
        raise LocalProtocolError(f"{what}: {value} has more than {decimals} decimals")
    return int_to_bcd(int(scaled), size, what=what)


def _entries(data: bytes, what: str, limit: int) -> list[tuple[int, int, int]]:
    if not data or len(data) % _ENTRY or len(data) > limit * _ENTRY:
        raise ValueFormatError(
            f"{what}: {len(data)} bytes is not 1..{limit} entries of {_ENTRY} bytes"
        )
    out = []
    for i in range(0, len(data), _ENTRY):
        nn, low, high = (_bcd(data[i + j : i + j + 1], what) for j in range(_ENTRY))
        out.append((high, low, nn))
    return out


def _pad(entries: Sequence[tuple[int, int, int]], slots: int, what: str) -> bytes:
    if not entries:
        raise LocalProtocolError(f"{what}: at least one entry")
    if len(entries) > slots:
        raise LocalProtocolError(f"{what}: {len(entries)} entries, the meter holds {slots}")
    full = list(entries) + [entries[-1]] * (slots - len(entries))
    return b"".join(
        int_to_bcd(nn, 1, what=what)
        + int_to_bcd(low, 1, what=what)
        + int_to_bcd(high, 1, what=what)
        for high, low, nn in full
    )


def decode_zone_table(data: bytes, *, limit: int = MAX_ZONES) -> tuple[ZoneEntry, ...]:
    """A zone table (14 × MMDDNN, each sent NN DD MM), every stored entry, padding included."""
    return tuple(ZoneEntry(m, d, n) for m, d, n in _entries(data, "zone table", limit))


def encode_zone_table(entries: Sequence[ZoneEntry], *, slots: int = MAX_ZONES) -> bytes:
    """`slots` entries, the unused ones repeating the last given entry."""
    return _pad([(z.month, z.day, z.table) for z in entries], slots, "zone table")


def decode_period_table(data: bytes) -> tuple[Period, ...]:
    """A daily table (14 × hhmmNN, each sent NN mm hh), every stored entry."""
    return tuple(Period(h, m, n) for h, m, n in _entries(data, "daily table", MAX_PERIODS))


def encode_period_table(entries: Sequence[Period], *, slots: int = MAX_PERIODS) -> bytes:
    return _pad([(p.hour, p.minute, p.tariff) for p in entries], slots, "daily table")


def decode_switch_time(data: bytes) -> dt.datetime | None:
    """YYMMDDhhmm (sent mm hh DD MM YY); all zero = no switch pending."""
    if len(data) != 5:
        raise ValueFormatError(f"switch time: expected 5 bytes, got {len(data)}")
    if not any(data):
        return None
    mm, hh, dd, mo, yy = (_bcd(data[i : i + 1], "switch time") for i in range(5))
    try:
        return dt.datetime(2000 + yy, mo, dd, hh, mm)
    except ValueError as exc:
        raise ValueFormatError(f"switch time {data[::-1].hex(' ').upper()}: {exc}") from None


def encode_switch_time(when: dt.datetime | None) -> bytes:
    if when is None:
        return bytes(5)
    if not 2000 <= when.year <= 2099:
        raise LocalProtocolError(f"switch time: year {when.year} outside 2000-2099")
    fields = (when.minute, when.hour, when.day, when.month, when.year - 2000)
    return b"".join(int_to_bcd(v, 1) for v in fields)


def decode_holiday(data: bytes) -> Holiday:
    """YYMMDDNN, sent NN DD MM YY."""
    if len(data) != 4:
        raise ValueFormatError(f"holiday: expected 4 bytes, got {len(data)}")
    nn, dd, mo, yy = (_bcd(data[i : i + 1], "holiday") for i in range(4))
    try:
        return Holiday(dt.date(2000 + yy, mo, dd), nn)
    except ValueError as exc:
        raise ValueFormatError(f"holiday {data[::-1].hex(' ').upper()}: {exc}") from None


def encode_holiday(holiday: Holiday) -> bytes:
    d = holiday.date
    if not 2000 <= d.year <= 2099:
        raise LocalProtocolError(f"holiday: year {d.year} outside 2000-2099")
    return b"".join(
        int_to_bcd(v, 1, what="holiday") for v in (holiday.table, d.day, d.month, d.year - 2000)
    )


def decode_prices(data: bytes) -> tuple[Decimal, ...]:
    """k × XXXX.XXXX 元/kWh (a price block, or one price)."""
    if len(data) % 4:
        raise ValueFormatError(f"prices: {len(data)} bytes is not a multiple of 4")
    return tuple(_decimal(data[i : i + 4], 4, "price") for i in range(0, len(data), 4))


def encode_prices(prices: Sequence[Decimal]) -> bytes:
    return b"".join(_decimal_bytes(p, 4, 4, "price") for p in prices)


def decode_thresholds(data: bytes) -> tuple[Decimal, ...]:
    """n × NNNNNN.NN kWh (2009 ladder thresholds)."""
    if len(data) % 4:
        raise ValueFormatError(f"ladder thresholds: {len(data)} bytes is not a multiple of 4")
    return tuple(_decimal(data[i : i + 4], 2, "ladder threshold") for i in range(0, len(data), 4))


def encode_thresholds(values: Sequence[Decimal]) -> bytes:
    return b"".join(_decimal_bytes(v, 4, 2, "ladder threshold") for v in values)


def decode_ladder(data: bytes) -> Ladder:
    """A ladder block: 6 thresholds, 7 prices, then 4 (64 bytes) or 6 (70 bytes) settlement days
    MMDDhh (sent hh DD MM; 99 99 99 = unset)."""
    fixed = 4 * (_LADDER_THRESHOLDS + _LADDER_PRICES)
    if len(data) not in (fixed + 4 * 3, fixed + 6 * 3):
        raise ValueFormatError(f"ladder block: {len(data)} bytes, expected 64 or 70")
    thresholds = decode_thresholds(data[: 4 * _LADDER_THRESHOLDS])
    prices = decode_prices(data[4 * _LADDER_THRESHOLDS : fixed])
    days = tuple(
        SettlementDay(*(_bcd(data[i + j : i + j + 1], "settlement day") for j in (2, 1, 0)))
        for i in range(fixed, len(data), 3)
    )
    return Ladder(thresholds, prices, days)


def encode_ladder(ladder: Ladder) -> bytes:
    if len(ladder.thresholds) != _LADDER_THRESHOLDS or len(ladder.prices) != _LADDER_PRICES:
        raise LocalProtocolError("ladder block: 6 thresholds and 7 prices")
    if len(ladder.settlement_days) not in (4, 6):
        raise LocalProtocolError("ladder block: 4 or 6 settlement days")
    days = b"".join(
        b"".join(int_to_bcd(v, 1, what="settlement day") for v in (s.hour, s.day, s.month))
        for s in ladder.settlement_days
    )
    return encode_thresholds(ladder.thresholds) + encode_prices(ladder.prices) + days


def decode_counter(data: bytes) -> int:
    """An event's 总次数: NNNNNN."""
    if len(data) != 3:
        raise ValueFormatError(f"event counter: expected 3 bytes, got {len(data)}")
    return _bcd(data, "event counter")


def _count(data: bytes, size: int, what: str) -> int:
    if len(data) != size:
        raise ValueFormatError(f"{what}: expected {size} bytes, got {len(data)}")
    return _bcd(data, what)


def _decode_clock(data: bytes) -> dt.datetime:
    """YYMMDDWWhhmmss, sent ss mm hh WW DD MM YY; the weekday is not checked (often unset)."""
    if len(data) != 7:
        raise ValueFormatError(f"clock: expected 7 bytes, got {len(data)}")
    ss, mm, hh, _ww, dd, mo, yy = (_bcd(data[i : i + 1], "clock") for i in range(7))
    try:
        return dt.datetime(2000 + yy, mo, dd, hh, mm, ss)
    except ValueError as exc:
        raise ValueFormatError(f"clock {data[::-1].hex(' ').upper()}: {exc}") from None


def _encode_clock(when: dt.datetime) -> bytes:
    week = (when.weekday() + 1) % 7
    fields = (when.second, when.minute, when.hour, week, when.day, when.month, when.year - 2000)
    return b"".join(int_to_bcd(v, 1, what="clock") for v in fields)


def _word(data: bytes) -> int:
    if len(data) != 2:
        raise ValueFormatError(f"status word: expected 2 bytes, got {len(data)}")
    return int.from_bytes(data, "little")


# --- the whole set-up ---------------------------------------------------------------------------


def _hex(di: int) -> str:
    return format_di(di, Edition.V2007)


class _Collector:
    """Decodes one reply after the other, keeping each failure (DI → message) instead of raising."""

    def __init__(self, replies: Mapping[int, bytes]) -> None:
        self.replies = replies
        self.errors: dict[str, str] = {}

    def get(self, di: int, decode: Callable[[bytes], _T]) -> _T | None:
        data = self.replies.get(di)
        if data is None:
            return None
        try:
            return decode(data)
        except ValueFormatError as exc:
            self.errors[_hex(di)] = str(exc)
            return None


def setup_from_replies(
    replies: Mapping[int, bytes],
    *,
    read_at: dt.datetime,
    denied: Iterable[int] = (),
) -> tuple[TariffSetup, dict[str, str]]:
    """The set-up from the value bytes of the items read (DI → bytes after the DI) and the DIs the
    meter denied. Returns the set-up and, per DI (hex), why its bytes could not be decoded (such
    an item is left unset: the raw bytes stay with the caller)."""
    c = _Collector(replies)
    sets: list[TouSet] = []
    for set_no in (1, 2):
        zones = c.get(di_zone_table(set_no), decode_zone_table) or ()
        tables: dict[int, tuple[Period, ...]] = {}
        for n in range(1, 9):
            periods = c.get(di_daily_table(set_no, n), decode_period_table)
            if periods is not None:
                tables[n] = periods
        sets.append(TouSet(zones=zones, tables=tables))
    status3 = c.get(DI_STATUS3, _word)
    zone_set, table_set = active_sets_from_status3(status3 or 0)
    counts = {k: c.get(di, _count_decoder(k)) for k, di in DI_COUNTS.items()}
    holidays: list[Holiday] = []
    for i in range(1, 255):
        h = c.get(di_holiday(i), decode_holiday)
        if h is None and di_holiday(i) not in replies:
            break
        if h is not None:
            holidays.append(h)
    switch = {k: c.get(di, decode_switch_time) for k, di in DI_SWITCH.items()}
    ladders: list[tuple[Ladder, ...]] = []
    for s in (0, 1):
        found: list[Ladder] = []
        block = c.get(DI_LADDER_BLOCKS[s], decode_ladder)
        if block is not None:
            found.append(block)
        for di in DI_LADDER_TABLES[s]:
            table = c.get(di, decode_ladder)
            if table is not None:
                found.append(table)
        th_di, pr_di = DI_LADDER_2009[s]
        thresholds, prices = c.get(th_di, decode_thresholds), c.get(pr_di, decode_prices)
        if thresholds is not None and prices is not None:
            found.append(Ladder(thresholds, prices, ()))
        ladders.append(tuple(found))
    ladder_zones = [
        c.get(di, lambda d: decode_zone_table(d, limit=4)) or () for di in DI_LADDER_ZONES
    ]
    now_prices = {
        k: c.get(di, lambda d: _decimal(_exact(d, 4, "price"), 4, "price"))
        for k, di in DI_CURRENT_PRICES.items()
    }
    counters = {
        _hex(di): value
        for di in DI_EVENT_COUNTERS
        if (value := c.get(di, decode_counter)) is not None
    }
    setup = TariffSetup(
        read_at=read_at,
        meter_time=c.get(DI_CLOCK, _decode_clock),
        zone_count=counts["zones"],
        table_count=counts["tables"],
        period_count=counts["periods"],
        tariff_count=counts["tariffs"],
        holiday_count=counts["holidays"],
        ladder_count=counts["ladders"],
        sets=(sets[0], sets[1]),
        status_word3=status3,
        active_zone_set=zone_set,
        active_table_set=table_set,
        switch_zones=switch["zones"],
        switch_tables=switch["tables"],
        switch_prices=switch["prices"],
        switch_ladders=switch["ladders"],
        switch_ladder_zones=switch["ladder_zones"],
        weekend_workdays=c.get(DI_WEEKEND_WORKDAYS, lambda d: _exact(d, 1, "weekend word")[0]),
        weekend_table=c.get(DI_WEEKEND_TABLE, lambda d: _count(d, 1, "weekend table")),
        holidays=tuple(holidays),
        prices_current=c.get(DI_PRICE_BLOCKS[0], decode_prices),
        prices_backup=c.get(DI_PRICE_BLOCKS[1], decode_prices),
        ladders_current=ladders[0],
        ladders_backup=ladders[1],
        ladder_zones_current=ladder_zones[0],
        ladder_zones_backup=ladder_zones[1],
        current_ladder_price=now_prices["ladder_price"],
        current_price=now_prices["price"],
        current_tariff_price=now_prices["tariff_price"],
        event_counters=counters,
        unsupported=frozenset(_hex(di) for di in denied),
    )
    return setup, c.errors


def _count_decoder(kind: str) -> Callable[[bytes], int]:
    size = 2 if kind == "holidays" else 1
    return lambda data: _count(data, size, f"{kind} count")


def _exact(data: bytes, size: int, what: str) -> bytes:
    if len(data) != size:
        raise ValueFormatError(f"{what}: expected {size} bytes, got {len(data)}")
    return data


def replies_from_setup(setup: TariffSetup, *, ladder_form: str = "2013") -> dict[int, bytes]:
    """What a meter holding `setup` answers, DI → value bytes: every item the set-up has a value
    for (tables padded to 14 entries, holidays 1..n, prices and ladders in `ladder_form`). The
    inverse of `setup_from_replies` for set-ups whose tables hold their padding."""
    if ladder_form not in LADDER_FORMS:
        raise LocalProtocolError(f"ladder form {ladder_form!r} is one of {LADDER_FORMS}")
    out: dict[int, bytes] = {}
    if setup.meter_time is not None:
        out[DI_CLOCK] = _encode_clock(setup.meter_time)
    if setup.status_word3 is not None:
        out[DI_STATUS3] = setup.status_word3.to_bytes(2, "little")
    counts = {
        "zones": setup.zone_count,
        "tables": setup.table_count,
        "periods": setup.period_count,
        "tariffs": setup.tariff_count,
        "holidays": setup.holiday_count,
        "ladders": setup.ladder_count,
    }
    for kind, value in counts.items():
        if value is not None:
            out[DI_COUNTS[kind]] = int_to_bcd(value, 2 if kind == "holidays" else 1, what=kind)
    for kind, di in DI_SWITCH.items():
        out[di] = encode_switch_time(setup.switch_time(kind))
    for set_no, tou in enumerate(setup.sets, start=1):
        if tou.zones:
            out[di_zone_table(set_no)] = encode_zone_table(tou.zones)
        for n, periods in tou.tables.items():
            out[di_daily_table(set_no, n)] = encode_period_table(periods)
    if setup.weekend_workdays is not None:
        out[DI_WEEKEND_WORKDAYS] = bytes((setup.weekend_workdays,))
    if setup.weekend_table is not None:
        out[DI_WEEKEND_TABLE] = int_to_bcd(setup.weekend_table, 1, what="weekend table")
    for i, holiday in enumerate(setup.holidays, start=1):
        out[di_holiday(i)] = encode_holiday(holiday)
    for di, prices in zip(
        DI_PRICE_BLOCKS, (setup.prices_current, setup.prices_backup), strict=True
    ):
        if prices is not None:
            out[di] = encode_prices(prices)
            for t, price in enumerate(prices, start=1):
                out[di & 0xFFFFFF00 | t] = encode_prices([price])
    for s, ladders in enumerate((setup.ladders_current, setup.ladders_backup)):
        if not ladders:
            continue
        if ladder_form == "2013":
            out[DI_LADDER_BLOCKS[s]] = encode_ladder(ladders[0])
        elif ladder_form == "tables":
            for di, ladder in zip(DI_LADDER_TABLES[s], ladders, strict=False):
                out[di] = encode_ladder(ladder)
        else:
            th_di, pr_di = DI_LADDER_2009[s]
            out[th_di] = encode_thresholds(ladders[0].thresholds)
            out[pr_di] = encode_prices(ladders[0].prices)
    for di, zones in zip(
        DI_LADDER_ZONES, (setup.ladder_zones_current, setup.ladder_zones_backup), strict=True
    ):
        if zones:
            out[di] = encode_zone_table(zones, slots=4)
    now_prices = {
        "ladder_price": setup.current_ladder_price,
        "price": setup.current_price,
        "tariff_price": setup.current_tariff_price,
    }
    for kind, di in DI_CURRENT_PRICES.items():
        now_price = now_prices[kind]
        if now_price is not None:
            out[di] = _decimal_bytes(now_price, 4, 4, "price")
    for di in DI_EVENT_COUNTERS:
        count = setup.event_counters.get(_hex(di))
        if count is not None:
            out[di] = int_to_bcd(count, 3, what="event counter")
    return out


def padded(setup: TariffSetup) -> TariffSetup:
    """`setup` with its tables as a meter stores them: 14 zone and period entries (the last
    repeated), 4 ladder-zone entries — what `setup_from_replies` gives back."""

    def pad_set(tou: TouSet) -> TouSet:
        zones = tou.zones + (tou.zones[-1],) * (MAX_ZONES - len(tou.zones)) if tou.zones else ()
        tables = {n: ps + (ps[-1],) * (MAX_PERIODS - len(ps)) for n, ps in tou.tables.items() if ps}
        return TouSet(zones=zones, tables=tables)

    def pad4(zones: tuple[ZoneEntry, ...]) -> tuple[ZoneEntry, ...]:
        return zones + (zones[-1],) * (4 - len(zones)) if zones else ()

    return replace(
        setup,
        sets=(pad_set(setup.sets[0]), pad_set(setup.sets[1])),
        ladder_zones_current=pad4(setup.ladder_zones_current),
        ladder_zones_backup=pad4(setup.ladder_zones_backup),
    )


def describe_item(di: int, value: bytes) -> tuple[str, object] | None:
    """(name, JSON-ready value) of a tariff item's value bytes, for technicians (`meterlink read`,
    `meterlink frame decode`); None for a DI that is not a tariff item. Raises
    `ValueFormatError` for bytes that do not fit."""
    name = tariff_item_name(di)
    if name is None:
        return None
    return name, _describe_value(di, value)


def _describe_value(di: int, value: bytes) -> object:
    if di in (di_zone_table(1), di_zone_table(2), *DI_LADDER_ZONES):
        limit = 4 if di in DI_LADDER_ZONES else MAX_ZONES
        return [
            [f"{z.month:02d}-{z.day:02d}", z.table] for z in decode_zone_table(value, limit=limit)
        ]
    if di >> 8 in (0x040100, 0x040200):
        return [[f"{p.hour:02d}:{p.minute:02d}", p.tariff] for p in decode_period_table(value)]
    if di in DI_SWITCH.values():
        when = decode_switch_time(value)
        return None if when is None else when.isoformat(timespec="minutes")
    if di == DI_COUNTS["holidays"]:
        return _count(value, 2, "holidays count")
    if di in DI_COUNTS.values() or di == DI_WEEKEND_TABLE:
        return _count(value, 1, "count")
    if di == DI_WEEKEND_WORKDAYS:
        word = _exact(value, 1, "weekend word")[0]
        days = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
        return {"work_days": [d for i, d in enumerate(days) if word >> i & 1], "word": word}
    if di >> 8 == 0x040300:
        holiday = decode_holiday(value)
        return [holiday.date.isoformat(), holiday.table]
    if di in DI_EVENT_COUNTERS:
        return decode_counter(value)
    if di == DI_CLOCK:
        return _decode_clock(value).isoformat()
    if di == DI_STATUS3:
        return _word(value)
    if di in (*DI_LADDER_BLOCKS, *DI_LADDER_TABLES[0], *DI_LADDER_TABLES[1]):
        ladder = decode_ladder(value)
        return {
            "thresholds": [str(t) for t in ladder.thresholds],
            "prices": [str(p) for p in ladder.prices],
            "settlement_days": [
                f"{s.month:02d}{s.day:02d}{s.hour:02d}" for s in ladder.settlement_days
            ],
        }
    if di in (DI_LADDER_2009[0][0], DI_LADDER_2009[1][0]):
        return [str(t) for t in decode_thresholds(value)]
    return [str(p) for p in decode_prices(value)]  # price blocks, single prices, current prices
