"""The measurement vocabulary every protocol maps onto.

DL/T 645 data identifiers and Modbus registers both decode into these names, so MQTT payloads,
InfluxDB fields and panels never depend on the protocol a meter speaks. A name carries its unit
(`energy_import_total_kwh`); a value is a number, or text for identities and clock readings.

Whether a value is *current* or *historic* (the 3rd last settlement day, the 1st last daily
freeze) is not part of the name: the data item that produced it says so (see
`protocols.dlt645.catalogue.History`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_TARIFFS",
    "QUANTITIES",
    "Kind",
    "Measurement",
    "Quantity",
    "energy_name",
    "quantity",
]

#: DL/T 645 numbers tariffs 01..3FH
MAX_TARIFFS = 63


class Kind(StrEnum):
    NUMBER = "number"
    TEXT = "text"  # identities: addresses, meter and customer numbers
    DATE = "date"  # ISO 8601 date, meter's local calendar
    TIME = "time"  # hh:mm:ss, meter's local clock
    DATETIME = "datetime"  # ISO 8601 without zone: the meter's own clock
    WORD = "word"  # a bit field (status words); integer value plus named flags


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str | None
    kind: Kind
    description: str


@dataclass(frozen=True, slots=True)
class Measurement:
    """One decoded value. `flags` names the set bits of a WORD quantity."""

    name: str
    value: float | int | str
    unit: str | None
    flags: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"value": self.value, "unit": self.unit}
        if self.flags:
            out["flags"] = list(self.flags)
        return out


QUANTITIES: dict[str, Quantity] = {}


def _add(name: str, unit: str | None, kind: Kind, description: str) -> None:
    if name in QUANTITIES:
        raise RuntimeError(f"measurement {name} defined twice")
    QUANTITIES[name] = Quantity(name, unit, kind, description)


# --- energy registers: (family, unit, description) -----------------------------------------
ENERGY_FAMILIES: dict[str, tuple[str, str]] = {
    "energy_combined": ("kWh", "combined active energy 组合有功 (signed)"),
    "energy_import": ("kWh", "forward active energy 正向有功"),
    "energy_export": ("kWh", "reverse active energy 反向有功"),
    "energy_reactive_combined1": ("kvarh", "combined reactive energy 1 组合无功1 (signed)"),
    "energy_reactive_combined2": ("kvarh", "combined reactive energy 2 组合无功2 (signed)"),
    "energy_reactive_q1": ("kvarh", "quadrant I reactive energy 第一象限无功"),
    "energy_reactive_q2": ("kvarh", "quadrant II reactive energy 第二象限无功"),
    "energy_reactive_q3": ("kvarh", "quadrant III reactive energy 第三象限无功"),
    "energy_reactive_q4": ("kvarh", "quadrant IV reactive energy 第四象限无功"),
}


def energy_name(family: str, tariff: int) -> str:
    """`energy_import_total_kwh` for tariff 0, `energy_import_t3_kwh` for tariff 3."""
    unit = ENERGY_FAMILIES[family][0].lower()
    part = "total" if tariff == 0 else f"t{tariff}"
    return f"{family}_{part}_{unit}"


for _family, (_unit, _desc) in ENERGY_FAMILIES.items():
    for _t in range(MAX_TARIFFS + 1):
        _add(
            energy_name(_family, _t),
            _unit,
            Kind.NUMBER,
            f"{_desc}, {'total' if _t == 0 else f'tariff {_t}'}",
        )

_PHASES = {"a": "phase A", "b": "phase B", "c": "phase C"}
_TOTAL_PHASES = {"total": "total", **_PHASES}

for _p, _d in _PHASES.items():
    _add(f"voltage_{_p}_v", "V", Kind.NUMBER, f"voltage, {_d}")
    _add(f"current_{_p}_a", "A", Kind.NUMBER, f"current, {_d} (signed: negative = reverse)")
    _add(f"phase_angle_{_p}_deg", "°", Kind.NUMBER, f"phase angle, {_d}")
for _p, _d in _TOTAL_PHASES.items():
    _add(f"power_active_{_p}_kw", "kW", Kind.NUMBER, f"active power, {_d} (signed)")
    _add(f"power_reactive_{_p}_kvar", "kvar", Kind.NUMBER, f"reactive power, {_d} (signed)")
    _add(f"power_apparent_{_p}_kva", "kVA", Kind.NUMBER, f"apparent power, {_d}")
    _add(f"power_factor_{_p}", None, Kind.NUMBER, f"power factor, {_d} (signed)")

for _name, _u, _kind, _desc in [
    ("current_n_a", "A", Kind.NUMBER, "neutral current 零线电流"),
    ("frequency_hz", "Hz", Kind.NUMBER, "grid frequency 电网频率"),
    ("power_active_avg_1min_kw", "kW", Kind.NUMBER, "one-minute average active power"),
    ("demand_active_kw", "kW", Kind.NUMBER, "current active demand 当前有功需量 (signed)"),
    ("demand_reactive_kvar", "kvar", Kind.NUMBER, "current reactive demand (signed)"),
    ("demand_max_import_kw", "kW", Kind.NUMBER, "forward active maximum demand 正向有功最大需量"),
    ("demand_max_import_time", None, Kind.DATETIME, "time of the forward active maximum demand"),
    ("demand_max_export_kw", "kW", Kind.NUMBER, "reverse active maximum demand 反向有功最大需量"),
    ("demand_max_export_time", None, Kind.DATETIME, "time of the reverse active maximum demand"),
    ("temperature_c", "°C", Kind.NUMBER, "meter internal temperature 表内温度"),
    ("battery_clock_v", "V", Kind.NUMBER, "clock battery voltage 时钟电池电压"),
    ("battery_reading_v", "V", Kind.NUMBER, "meter-reading battery voltage 停电抄表电池电压"),
    ("price_current_yuan_per_kwh", "yuan/kWh", Kind.NUMBER, "current price 当前电价"),
    ("meter_date", None, Kind.DATE, "meter calendar date 日期"),
    ("meter_time", None, Kind.TIME, "meter clock time 时间"),
    ("meter_datetime", None, Kind.DATETIME, "meter date and time 日期时间"),
    ("comm_address", None, Kind.TEXT, "communication address 通信地址 (nameplate order)"),
    ("meter_number", None, Kind.TEXT, "meter number 表号"),
    ("customer_number", None, Kind.TEXT, "customer number 户号/客户编号"),
    ("device_number", None, Kind.TEXT, "device number 设备码 (1997)"),
    ("balance_yuan", "yuan", Kind.NUMBER, "remaining amount 剩余金额"),
    ("overdraft_yuan", "yuan", Kind.NUMBER, "overdraft amount 透支金额"),
    ("balance_kwh", "kWh", Kind.NUMBER, "remaining energy 剩余电量 (energy-prepaid meters)"),
    ("overdraft_kwh", "kWh", Kind.NUMBER, "overdraft energy 透支电量 (energy-prepaid meters)"),
    ("alarm_limit_1_yuan", "yuan", Kind.NUMBER, "alarm amount limit 1 报警金额1"),
    ("alarm_limit_2_yuan", "yuan", Kind.NUMBER, "alarm amount limit 2 报警金额2"),
    ("overdraft_limit_yuan", "yuan", Kind.NUMBER, "overdraft limit 透支金额限值"),
    ("hoarding_limit_yuan", "yuan", Kind.NUMBER, "hoarding limit 囤积金额限值"),
    ("close_allowed_limit_yuan", "yuan", Kind.NUMBER, "close-allowed amount 合闸允许金额限值"),
    ("purchase_time", None, Kind.DATETIME, "date and time of a purchase 购电日期"),
    ("purchase_count", None, Kind.NUMBER, "total purchase count after a purchase 购电次数"),
    ("purchase_amount_yuan", "yuan", Kind.NUMBER, "amount of a purchase 购电金额"),
    ("balance_before_purchase_yuan", "yuan", Kind.NUMBER, "remaining before a purchase"),
    ("balance_after_purchase_yuan", "yuan", Kind.NUMBER, "remaining after a purchase"),
    ("purchase_total_yuan", "yuan", Kind.NUMBER, "cumulative purchased amount 累计购电金额"),
    ("freeze_time", None, Kind.DATETIME, "time stamp of a frozen record 冻结时间"),
    (
        "auth_session_remaining_min",
        "min",
        Kind.NUMBER,
        "minutes left of the identity-authentication session 身份认证时效剩余时间",
    ),
    ("relay_trip_count", None, Kind.NUMBER, "relay trips so far 跳闸总次数"),
    ("relay_close_count", None, Kind.NUMBER, "relay closings so far 合闸总次数"),
    ("relay_event_time", None, Kind.DATETIME, "time of a relay trip or closing 跳闸/合闸发生时刻"),
    ("relay_event_operator", None, Kind.NUMBER, "operator code of a relay event (4 bytes, LE)"),
    ("clock_offset_s", "s", Kind.NUMBER, "meter clock minus true time (positive = fast)"),
]:
    _add(_name, _u, _kind, _desc)

for _n in range(1, 8):
    _add(f"status_word_{_n}", None, Kind.WORD, f"running status word {_n} 电表运行状态字{_n}")


def quantity(name: str) -> Quantity:
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the measurement vocabulary") from None
