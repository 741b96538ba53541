"""What a meter must hold to execute a plan version: the values to write (work orders,
correction orders), in the meter's own terms (`protocols.tariff`)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from central.tariff.plans import WEEKDAYS, PlanVersion
from protocols.tariff import Holiday, Period, TouSet, ZoneEntry

__all__ = ["expected_set", "holidays", "to_write", "weekend_word"]


def expected_set(version: PlanVersion) -> TouSet:
    """The zone table and daily tables of `version`, sorted as the meter keeps them."""
    zones = tuple(
        ZoneEntry(*z.month_day, z.table) for z in sorted(version.zones, key=lambda z: z.month_day)
    )
    tables = {
        int(k): tuple(
            Period(p.minute // 60, p.minute % 60, p.tariff)
            for p in sorted(v, key=lambda p: p.minute)
        )
        for k, v in version.tables.items()
    }
    return TouSet(zones=zones, tables=tables)


def weekend_word(version: PlanVersion) -> int:
    """04000801: bit d = weekday d (0 = Sunday), 1 = work day, 0 = rest day."""
    word = 0x7F
    for name in version.rest_days:
        weekday = (WEEKDAYS.index(name) + 1) % 7  # Monday = 1 … Sunday = 0
        word &= ~(1 << weekday)
    return word


def holidays(version: PlanVersion, since: dt.date) -> tuple[Holiday, ...]:
    return tuple(Holiday(h.date, h.table) for h in sorted(version.holidays, key=lambda h: h.date)
                 if h.date >= since)  # fmt: skip


def to_write(version: PlanVersion, since: dt.date) -> dict[str, str]:
    """The items a technician (or a correction order) writes, by DI, as readable text."""
    tou = expected_set(version)
    out = {
        "04000201": str(len(tou.zones)),
        "04000202": str(len(tou.tables)),
        "04000203": str(max(len(v) for v in tou.tables.values())),
        "04000204": str(version.tariffs),
        "04010000": " ".join(f"{z.month:02d}{z.day:02d}{z.table:02d}" for z in tou.zones),
    }
    for number, periods in sorted(tou.tables.items()):
        out[f"040100{number:02d}"] = " ".join(
            f"{p.hour:02d}{p.minute:02d}{p.tariff:02d}" for p in periods
        )
    if version.rest_days and version.weekend_table is not None:
        out["04000801"] = f"{weekend_word(version):02X}"
        out["04000802"] = f"{version.weekend_table:02d}"
    hs = holidays(version, since)
    if hs:
        out["04000205"] = str(len(hs))
        for i, h in enumerate(hs, 1):
            out[f"040300{i:02X}"] = f"{h.date:%y%m%d}{h.table:02d}"
    if version.prices is not None:
        out["040501FF"] = " ".join(str(Decimal(str(p)).quantize(Decimal("0.0001")))
                                   for p in version.prices)  # fmt: skip
    return out
