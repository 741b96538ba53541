"""Writing tariff items through the encryption machine (tariff correction orders).

Pure, and free of the frame codec, so the central side can build what it writes: the value
bytes of the writable tariff items (the same layouts `protocols.dlt645.tariff` decodes — a test
keeps the two equal), each item's write class, and the plaintext the machine takes.

* **Classes** (topup-tariff.md §B.3, §C.1): 一类 items are written at password level 99 with
  plaintext + MAC (the machine's ParameterUpdate); everything else in ``04 …`` is 二类, level
  98, ciphertext + MAC (ParameterElseUpdate). 一类: 04000108 (price switch time), 04000109
  (ladder switch time: 一类 per WSD/T1, 密文+MAC per one firmware comment — **UNCONFIRMED**,
  taken as 一类 here), 040501xx / 040502xx prices, 040604FF / 040605FF / 04060AFF / 04060BFF
  ladders, 04001001 / 04001002 alarm limits.
* **ESAM write headers** of the 一类 items the CLDC sequence names (the APDU the machine's
  ParameterUpdate takes): 040502FF ``04D6840414``, 04000108 ``04D6810A09``, 04060AFF
  ``04D684344A``, 04000109 ``04D684C009``; LC = data length + 4 (MAC).
* **Read-only**: the current price set 040501xx (2013 rules: only the backup set 040502FF is
  writable, prices change by backup set + switch time).
* **98-level plaintext**: the firmware reverses the data of a level-98 write after decrypting
  (``if( Auth == KEYTYPE2 ) Inverse(…)``), so whoever builds the machine's plaintext reverses it
  first. Modelled as a byte reversal of the whole value — **UNCONFIRMED** as a general rule
  (the reference says "reverses entry order").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

from protocols.tariff import MAX_PERIODS, MAX_ZONES, Holiday, Period, TariffSetup, ZoneEntry

__all__ = [
    "APDU_HEADERS",
    "DI_BACKUP_PRICES",
    "DI_HOLIDAY_COUNT",
    "LEVEL_CIPHER",
    "LEVEL_PLAIN",
    "WriteItemError",
    "apdu_header",
    "encode_holiday",
    "encode_period_table",
    "encode_prices",
    "encode_switch_time",
    "encode_zone_table",
    "first_class",
    "machine_plaintext",
    "meter_value",
    "password_level",
    "read_only",
    "writable_items",
]

LEVEL_PLAIN: Final = 0x99
"""一类: plaintext + MAC"""
LEVEL_CIPHER: Final = 0x98
"""二类: ciphertext + MAC"""
DI_BACKUP_PRICES: Final = 0x040502FF
DI_HOLIDAY_COUNT: Final = 0x04000205
APDU_HEADERS: Final[dict[int, bytes]] = {
    0x040502FF: bytes.fromhex("04D6840414"),
    0x04000108: bytes.fromhex("04D6810A09"),
    0x04060AFF: bytes.fromhex("04D684344A"),
    0x04000109: bytes.fromhex("04D684C009"),
}
"""ESAM write headers (CLA INS P1=file P2=offset LC) of the CLDC sequence"""
_FIRST_CLASS_EXACT: Final = frozenset(
    {0x04000108, 0x04000109, 0x040604FF, 0x040605FF, 0x04060AFF, 0x04060BFF, 0x04001001, 0x04001002}
)


class WriteItemError(ValueError):
    """A value that cannot be written as the item's layout (too many entries, a year outside
    2000-2099, a price with more than 4 decimals …)."""


def first_class(di: int) -> bool:
    """Whether `di` is a 一类 item (level 99, plaintext + MAC)."""
    return di in _FIRST_CLASS_EXACT or di >> 8 in (0x040501, 0x040502)


def password_level(di: int) -> int:
    return LEVEL_PLAIN if first_class(di) else LEVEL_CIPHER


def read_only(di: int) -> bool:
    """Items a correction must not write: the current price set (2013 rules)."""
    return di >> 8 == 0x040501


def apdu_header(di: int) -> bytes | None:
    """The ESAM write header of a 一类 item, when the reference gives it."""
    return APDU_HEADERS.get(di)


def machine_plaintext(di: int, value: bytes) -> bytes:
    """What the machine is given for `value` of `di`: the value itself for a 一类 item, the
    value reversed for a 二类 one (the meter reverses it back after decrypting)."""
    return value if first_class(di) else value[::-1]


def meter_value(di: int, plaintext: bytes) -> bytes:
    """The inverse of `machine_plaintext` (what the meter does after decrypting)."""
    return plaintext if first_class(di) else plaintext[::-1]


# --- value layouts (the same bytes protocols.dlt645.tariff encodes and decodes) ----------------
def _bcd(n: int, size: int, what: str) -> bytes:
    if n < 0 or n >= 100**size:
        raise WriteItemError(f"{what}: {n} does not fit {2 * size} BCD digits")
    out = bytearray(size)
    for i in range(size):
        n, r = divmod(n, 100)
        out[i] = (r // 10) << 4 | r % 10
    return bytes(out)


def _entries(entries: Sequence[tuple[int, int, int]], slots: int, what: str) -> bytes:
    if not entries:
        raise WriteItemError(f"{what}: at least one entry")
    if len(entries) > slots:
        raise WriteItemError(f"{what}: {len(entries)} entries, the meter holds {slots}")
    full = list(entries) + [entries[-1]] * (slots - len(entries))
    return b"".join(
        _bcd(nn, 1, what) + _bcd(lo, 1, what) + _bcd(hi, 1, what) for hi, lo, nn in full
    )


def encode_zone_table(entries: Sequence[ZoneEntry], *, slots: int = MAX_ZONES) -> bytes:
    """14 × MMDDNN, each sent NN DD MM, unused entries repeating the last."""
    return _entries([(z.month, z.day, z.table) for z in entries], slots, "zone table")


def encode_period_table(entries: Sequence[Period]) -> bytes:
    """14 × hhmmNN, each sent NN mm hh, unused entries repeating the last."""
    return _entries([(p.hour, p.minute, p.tariff) for p in entries], MAX_PERIODS, "daily table")


def encode_switch_time(when: dt.datetime | None) -> bytes:
    """YYMMDDhhmm sent mm hh DD MM YY; None = all zero (no switch)."""
    if when is None:
        return bytes(5)
    if not 2000 <= when.year <= 2099:
        raise WriteItemError(f"switch time: year {when.year} outside 2000-2099")
    fields = (when.minute, when.hour, when.day, when.month, when.year - 2000)
    return b"".join(_bcd(v, 1, "switch time") for v in fields)


def encode_holiday(holiday: Holiday) -> bytes:
    """YYMMDDNN sent NN DD MM YY."""
    d = holiday.date
    if not 2000 <= d.year <= 2099:
        raise WriteItemError(f"holiday: year {d.year} outside 2000-2099")
    return b"".join(_bcd(v, 1, "holiday") for v in (holiday.table, d.day, d.month, d.year - 2000))


def encode_prices(prices: Sequence[Decimal]) -> bytes:
    """k × XXXX.XXXX 元/kWh."""
    out = b""
    for price in prices:
        scaled = price.scaleb(4)
        if not price.is_finite() or scaled != scaled.to_integral_value():
            raise WriteItemError(f"price {price}: more than 4 decimals")
        out += _bcd(int(scaled), 4, "price")
    return out


def writable_items(setup: TariffSetup) -> dict[int, bytes]:
    """DI → value bytes of every item of `setup` a correction can write (what the set-up has a
    value for): counts of zones, tables, periods and holidays, both zone tables and all daily
    tables, the zone / table switch times, the weekend rule, the holidays 1..n, and for a
    local meter the backup prices with their switch time. Not written: the tariff count, the
    current prices (read-only), ladders (not built by corrections yet)."""
    out: dict[int, bytes] = {}
    counts = {
        0x04000201: (setup.zone_count, 1),
        0x04000202: (setup.table_count, 1),
        0x04000203: (setup.period_count, 1),
        DI_HOLIDAY_COUNT: (setup.holiday_count, 2),
    }
    for di, (value, size) in counts.items():
        if value is not None:
            out[di] = _bcd(value, size, f"count {di:08X}")
    for set_no, tou in enumerate(setup.sets, start=1):
        if tou.zones:
            out[0x04000000 | set_no << 16] = encode_zone_table(tou.zones)
        for n, periods in sorted(tou.tables.items()):
            if periods:
                out[0x04000000 | set_no << 16 | n] = encode_period_table(periods)
    out[0x04000106] = encode_switch_time(setup.switch_zones)
    out[0x04000107] = encode_switch_time(setup.switch_tables)
    if setup.weekend_workdays is not None:
        out[0x04000801] = bytes((setup.weekend_workdays,))
    if setup.weekend_table is not None:
        out[0x04000802] = _bcd(setup.weekend_table, 1, "weekend table")
    for i, holiday in enumerate(setup.holidays, start=1):
        if i > 254:
            raise WriteItemError("more than 254 holidays")
        out[0x04030000 | i] = encode_holiday(holiday)
    if setup.prices_backup is not None:
        out[DI_BACKUP_PRICES] = encode_prices(setup.prices_backup)
        out[0x04000108] = encode_switch_time(setup.switch_prices)
    return out
