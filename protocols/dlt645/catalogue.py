"""Data-identifier catalogue: DI -> name, fields (measurement, format, unit, sign), history.

Sources and confidence for each family: ``docs/dlt645.md`` (The catalogue); the generated table
of every item: ``docs/dlt645-catalogue.md`` (``scripts/gen-catalogue-doc``). A DI missing here is
still readable: the frame decodes, its values are just not interpreted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from protocols.dlt645.formats import Bcd, ClockField, Digits, ValueFormat, Word
from protocols.dlt645.functions import Edition, format_di
from protocols.errors import LocalProtocolError, ValueFormatError
from protocols.measurements import ENERGY_FAMILIES, MAX_TARIFFS, Measurement, energy_name, quantity

__all__ = [
    "DataItem",
    "Field",
    "History",
    "all_items",
    "di_for_measurement",
    "lookup",
    "parse_item",
]


@dataclass(frozen=True, slots=True)
class Field:
    measurement: str
    format: ValueFormat

    @property
    def unit(self) -> str | None:
        return quantity(self.measurement).unit


@dataclass(frozen=True, slots=True)
class History:
    """Which past record a DI addresses: the `index`-th last settlement day / freeze / purchase."""

    kind: str  # "settlement" | "daily_freeze" | "purchase" | "relay_trip" | "relay_close"
    index: int


@dataclass(frozen=True, slots=True)
class DataItem:
    di: int
    edition: Edition
    name: str
    fields: tuple[Field, ...]
    min_fields: int = 0
    """blocks whose length depends on the meter (tariff count) may stop after this many fields;
    0 means all fields are always present"""
    history: History | None = None
    # (measurement, format, size, unit) per field, resolved once: decoding is on the hot path
    _plan: tuple[tuple[str, ValueFormat, int, str | None], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        plan = tuple((f.measurement, f.format, f.format.size, f.unit) for f in self.fields)
        object.__setattr__(self, "_plan", plan)

    @property
    def di_hex(self) -> str:
        return format_di(self.di, self.edition)

    @property
    def size(self) -> int:
        return sum(f.format.size for f in self.fields)

    def decode(self, data: bytes) -> list[Measurement]:
        """Decode the value bytes (after the DI) into measurements."""
        out: list[Measurement] = []
        pos = 0
        have = len(data)
        for i, (name, fmt, size, unit) in enumerate(self._plan):
            if pos == have and self.min_fields and i >= self.min_fields:
                break
            if have - pos < size:
                raise ValueFormatError(
                    f"DI {self.di_hex} ({self.name}): {have} value bytes, "
                    f"field {name} needs {size} more at offset {pos}"
                )
            value = fmt.decode(data[pos : pos + size])
            if isinstance(fmt, Word):
                out.append(Measurement(name, value, unit, fmt.flags(int(value))))
            else:
                out.append(Measurement(name, value, unit))
            pos += size
        if pos != have:
            raise ValueFormatError(
                f"DI {self.di_hex} ({self.name}): {len(data) - pos} bytes left after the last field"
            )
        return out

    def encode(self, values: Mapping[str, float | int | str]) -> bytes:
        """Encode values keyed by measurement name; a block stops at the first missing field."""
        out = bytearray()
        for i, fld in enumerate(self.fields):
            if fld.measurement not in values:
                if self.min_fields and i >= self.min_fields:
                    break
                raise LocalProtocolError(f"DI {self.di_hex}: no value for {fld.measurement}")
            out += fld.format.encode(values[fld.measurement])
        return bytes(out)


# --- formats --------------------------------------------------------------------------------
ENERGY = Bcd("XXXXXX.XX")
ENERGY_SIGNED = Bcd("XXXXXX.XX", signed=True)
VOLTAGE = Bcd("XXX.X")
CURRENT = Bcd("XXX.XXX", signed=True)
POWER = Bcd("XX.XXXX", signed=True)
POWER_UNSIGNED = Bcd("XX.XXXX")
PF = Bcd("X.XXX", signed=True)
AMOUNT = Bcd("XXXXXX.XX")
YYMMDDHHMM = ClockField("YYMMDDhhmm")

_STATUS_BITS: dict[int, tuple[tuple[int, str], ...]] = {
    1: (
        (1, "demand_interval_mode"),
        (2, "clock_battery_low"),
        (3, "reading_battery_low"),
        (4, "active_power_reverse"),
        (5, "reactive_power_reverse"),
        (8, "control_loop_error"),
        (9, "esam_error"),
        (12, "internal_program_error"),
        (13, "memory_fault"),
        (14, "overdraft"),
        (15, "clock_fault"),
    ),
    2: (
        (0, "active_reverse_a"),
        (1, "active_reverse_b"),
        (2, "active_reverse_c"),
        (4, "reactive_reverse_a"),
        (5, "reactive_reverse_b"),
        (6, "reactive_reverse_c"),
    ),
    3: (
        (0, "period_set_2"),
        (1, "supply_auxiliary"),
        (2, "supply_battery"),
        (3, "programming_allowed"),
        (4, "relay_open"),
        (5, "time_zone_set_2"),
        (6, "relay_command_open"),
        (7, "pre_trip_alarm"),
        (8, "prepaid_energy_type"),
        (9, "prepaid_money_type"),
        (10, "step_table_2"),
        (11, "step_table_aux"),
        (12, "keep_power"),
        (13, "identity_authenticated"),
        (14, "local_account_not_opened"),
        (15, "remote_account_not_opened"),
    ),
    7: (
        (0, "voltage_reverse_sequence"),
        (1, "current_reverse_sequence"),
        (2, "voltage_imbalance"),
        (3, "current_imbalance"),
        (4, "aux_supply_lost"),
        (5, "power_down"),
        (6, "demand_over_limit"),
        (7, "power_factor_low"),
        (8, "current_severe_imbalance"),
        (9, "cover_open"),
        (10, "terminal_cover_open"),
    ),
}
_PHASE_FAULTS = (
    (0, "loss_of_voltage"),
    (1, "undervoltage"),
    (2, "overvoltage"),
    (3, "loss_of_current"),
    (4, "overcurrent"),
    (5, "overload"),
    (6, "power_reverse"),
    (7, "phase_break"),
    (8, "current_break"),
)
for _w in (4, 5, 6):
    _STATUS_BITS[_w] = _PHASE_FAULTS


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th … 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _item(
    di: int,
    name: str,
    fields: list[tuple[str, ValueFormat]],
    *,
    edition: Edition = Edition.V2007,
    min_fields: int = 0,
    history: History | None = None,
) -> DataItem:
    return DataItem(di, edition, name, tuple(Field(m, f) for m, f in fields), min_fields, history)


_FIXED: dict[tuple[Edition, int], DataItem] = {}


def _fixed(item: DataItem) -> None:
    _FIXED[(item.edition, item.di)] = item


# loop variables of the tables below (declared once for the type checker)
_fmt: ValueFormat
_fields: list[tuple[str, ValueFormat]]

_PH = ("a", "b", "c")
_TPH = ("total", "a", "b", "c")

# --- 2007 instantaneous variables (DI3 = 02) -------------------------------------------------
for _i, _p in enumerate(_PH, start=1):
    _fixed(
        _item(0x02010000 | _i << 8, f"voltage phase {_p.upper()}", [(f"voltage_{_p}_v", VOLTAGE)])
    )
    _fixed(
        _item(0x02020000 | _i << 8, f"current phase {_p.upper()}", [(f"current_{_p}_a", CURRENT)])
    )
    _fixed(
        _item(
            0x02070000 | _i << 8,
            f"phase angle {_p.upper()}",
            [(f"phase_angle_{_p}_deg", Bcd("XXX.X"))],
        )
    )
_fixed(_item(0x0201FF00, "voltage block", [(f"voltage_{p}_v", VOLTAGE) for p in _PH], min_fields=1))
_fixed(_item(0x0202FF00, "current block", [(f"current_{p}_a", CURRENT) for p in _PH], min_fields=1))
_fixed(
    _item(
        0x0207FF00,
        "phase angle block",
        [(f"phase_angle_{p}_deg", Bcd("XXX.X")) for p in _PH],
        min_fields=1,
    )
)
for _ti, _tname, _fmt, _stem in [
    (3, "active power", POWER, "power_active_{}_kw"),
    (4, "reactive power", POWER, "power_reactive_{}_kvar"),
    (5, "apparent power", POWER_UNSIGNED, "power_apparent_{}_kva"),
    (6, "power factor", PF, "power_factor_{}"),
]:
    for _i, _p in enumerate(_TPH):
        _fixed(
            _item(0x02000000 | _ti << 16 | _i << 8, f"{_tname} {_p}", [(_stem.format(_p), _fmt)])
        )
    _fixed(
        _item(
            0x0200FF00 | _ti << 16,
            f"{_tname} block",
            [(_stem.format(p), _fmt) for p in _TPH],
            min_fields=1,
        )
    )
for _di, _name, _m, _fmt in [
    (0x02800001, "neutral current", "current_n_a", CURRENT),
    (0x02800002, "grid frequency", "frequency_hz", Bcd("XX.XX")),
    (0x02800003, "one-minute average active power", "power_active_avg_1min_kw", POWER),
    (0x02800004, "current active demand", "demand_active_kw", POWER),
    (0x02800005, "current reactive demand", "demand_reactive_kvar", POWER),
    (0x02800007, "meter temperature", "temperature_c", Bcd("XXX.X", signed=True)),
    (0x02800008, "clock battery voltage", "battery_clock_v", Bcd("XX.XX")),
    (0x02800009, "meter-reading battery voltage", "battery_reading_v", Bcd("XX.XX")),
    (0x0280000B, "current step price", "price_current_yuan_per_kwh", Bcd("XXXX.XXXX")),
]:
    _fixed(_item(_di, _name, [(_m, _fmt)]))

# --- maximum demand (DI3 = 01): XX.XXXX kW + YYMMDDhhmm ----------------------------------------
_fixed(
    _item(
        0x01010000,
        "forward active maximum demand",
        [("demand_max_import_kw", POWER_UNSIGNED), ("demand_max_import_time", YYMMDDHHMM)],
    )
)
_fixed(
    _item(
        0x01020000,
        "reverse active maximum demand",
        [("demand_max_export_kw", POWER_UNSIGNED), ("demand_max_export_time", YYMMDDHHMM)],
    )
)

# --- parameters, clock, identity (DI3 = 04) ---------------------------------------------------
for _di, _name, _m, _fmt in [
    (0x04000101, "date and weekday", "meter_date", ClockField("YYMMDDWW")),
    (0x04000102, "time", "meter_time", ClockField("hhmmss")),
    (0x0400010C, "date, weekday and time", "meter_datetime", ClockField("YYMMDDWWhhmmss")),
    (0x04000401, "communication address", "comm_address", Digits(6)),
    (0x04000402, "meter number", "meter_number", Digits(6)),
    (0x0400040E, "customer number", "customer_number", Digits(6)),
    (0x04001001, "alarm amount limit 1", "alarm_limit_1_yuan", AMOUNT),
    (0x04001002, "alarm amount limit 2", "alarm_limit_2_yuan", AMOUNT),
    (0x04001003, "overdraft amount limit", "overdraft_limit_yuan", AMOUNT),
    (0x04001004, "hoarding amount limit", "hoarding_limit_yuan", AMOUNT),
    (0x04001005, "close-allowed amount limit", "close_allowed_limit_yuan", AMOUNT),
]:
    _fixed(_item(_di, _name, [(_m, _fmt)]))
for _n, _bits in sorted(_STATUS_BITS.items()):
    _fixed(
        _item(0x04000500 | _n, f"running status word {_n}", [(f"status_word_{_n}", Word(_bits))])
    )
_fixed(
    _item(
        0x040005FF,
        "running status words 1-7",
        [(f"status_word_{n}", Word(b)) for n, b in sorted(_STATUS_BITS.items())],
        min_fields=1,
    )
)

# --- prepaid (费控, State-Grid 2013 extension) -------------------------------------------------
for _di, _name, _m, _fmt in [
    (0x00900100, "remaining energy", "balance_kwh", ENERGY),
    (0x00900101, "overdraft energy", "overdraft_kwh", ENERGY),
    (0x00900200, "remaining amount", "balance_yuan", AMOUNT),
    (0x00900201, "overdraft amount", "overdraft_yuan", AMOUNT),
]:
    _fixed(_item(_di, _name, [(_m, _fmt)]))

_PURCHASE_FIELDS: list[tuple[str, ValueFormat]] = [
    ("purchase_time", YYMMDDHHMM),
    ("purchase_count", Bcd("XXXX")),
    ("purchase_amount_yuan", AMOUNT),
    ("balance_before_purchase_yuan", AMOUNT),
    ("balance_after_purchase_yuan", AMOUNT),
    ("purchase_total_yuan", AMOUNT),
]
for _nn in range(1, 11):
    _h = History("purchase", _nn)
    for _ss, (_m, _fmt) in enumerate(_PURCHASE_FIELDS, start=1):
        _fixed(
            _item(
                0x03330000 | _ss << 8 | _nn,
                f"{_m} of the {ordinal(_nn)} last purchase",
                [(_m, _fmt)],
                history=_h,
            )
        )
    _fixed(_item(0x0333FF00 | _nn, f"purchase record {_nn}", list(_PURCHASE_FIELDS), history=_h))


# --- identity-authentication session and relay events (State-Grid 2013 费控) ------------------
_fixed(
    _item(
        0x02800022,
        "identity-authentication minutes left",
        [("auth_session_remaining_min", Bcd("XXXX"))],
    )
)
_fixed(_item(0x1D000001, "relay trip count", [("relay_trip_count", Bcd("XXXXXX"))]))
_fixed(_item(0x1E000001, "relay close count", [("relay_close_count", Bcd("XXXXXX"))]))
_RELAY_EVENT_FIELDS: list[tuple[str, ValueFormat]] = [
    ("relay_event_time", ClockField("YYMMDDhhmmss")),
    ("relay_event_operator", Word((), 4, "XXXXXXXX")),
    ("energy_import_total_kwh", ENERGY),
    ("energy_export_total_kwh", ENERGY),
    *((f"energy_reactive_q{_q}_total_kvarh", ENERGY) for _q in range(1, 5)),
]
for _nn in range(1, 11):
    for _base, _kind, _what in (
        (0x1D00FF00, "relay_trip", "trip"),
        (0x1E00FF00, "relay_close", "close"),
    ):
        _fixed(
            _item(
                _base | _nn,
                f"relay {_what} record {_nn}",
                list(_RELAY_EVENT_FIELDS),
                history=History(_kind, _nn),
            )
        )


def _energy_block(family: str, fmt: ValueFormat) -> list[tuple[str, ValueFormat]]:
    return [(energy_name(family, t), fmt) for t in range(MAX_TARIFFS + 1)]


# --- daily freeze records (05 06 SS NN), NN = 1..62 -------------------------------------------
for _nn in range(1, 63):
    _h = History("daily_freeze", _nn)
    _fixed(
        _item(
            0x05060000 | _nn, f"daily freeze {_nn}: time", [("freeze_time", YYMMDDHHMM)], history=_h
        )
    )
    _fixed(
        _item(
            0x05060100 | _nn,
            f"daily freeze {_nn}: forward active energy",
            _energy_block("energy_import", ENERGY),
            min_fields=1,
            history=_h,
        )
    )
    _fixed(
        _item(
            0x05060200 | _nn,
            f"daily freeze {_nn}: reverse active energy",
            _energy_block("energy_export", ENERGY),
            min_fields=1,
            history=_h,
        )
    )

# --- 1997 edition (2-byte DI) ----------------------------------------------------------------
_V97 = Edition.V1997
_TABLE_1997: list[tuple[int, str, list[tuple[str, ValueFormat]], int]] = [
    (0x9010, "forward active total", [("energy_import_total_kwh", ENERGY)], 0),
    (0x9020, "reverse active total", [("energy_export_total_kwh", ENERGY)], 0),
    (0x9110, "forward reactive total", [("energy_reactive_combined1_total_kvarh", ENERGY)], 0),
    (0x9120, "reverse reactive total", [("energy_reactive_combined2_total_kvarh", ENERGY)], 0),
    (
        0x901F,
        "forward active block",
        [(energy_name("energy_import", t), ENERGY) for t in range(5)],
        1,
    ),
    (
        0x902F,
        "reverse active block",
        [(energy_name("energy_export", t), ENERGY) for t in range(5)],
        1,
    ),
    (0xB61F, "voltage block", [(f"voltage_{p}_v", Bcd("XXX")) for p in _PH], 1),
    (0xB62F, "current block", [(f"current_{p}_a", Bcd("XX.XX")) for p in _PH], 1),
    (0xB63F, "active power block", [(f"power_active_{p}_kw", Bcd("XX.XXXX")) for p in _TPH], 1),
    (0xB64F, "reactive power block", [(f"power_reactive_{p}_kvar", Bcd("XX.XX")) for p in _TPH], 1),
    (0xB65F, "power factor block", [(f"power_factor_{p}", Bcd("X.XXX")) for p in _TPH], 1),
    (0xC010, "date and weekday", [("meter_date", ClockField("YYMMDDWW"))], 0),
    (0xC011, "time", [("meter_time", ClockField("hhmmss"))], 0),
    (0xC032, "meter number", [("meter_number", Digits(6))], 0),
    (0xC033, "customer number", [("customer_number", Digits(6))], 0),
    (0xC034, "device number", [("device_number", Digits(6))], 0),
]
for _di, _name, _fields, _min in _TABLE_1997:
    _fixed(_item(_di, _name, _fields, edition=_V97, min_fields=_min))
for _t in range(1, 5):
    _fixed(
        _item(
            0x9010 + _t,
            f"forward active tariff {_t}",
            [(energy_name("energy_import", _t), ENERGY)],
            edition=_V97,
        )
    )
    _fixed(
        _item(
            0x9020 + _t,
            f"reverse active tariff {_t}",
            [(energy_name("energy_export", _t), ENERGY)],
            edition=_V97,
        )
    )
for _i, _p in enumerate(_PH, start=1):
    _fixed(
        _item(
            0xB610 + _i,
            f"voltage phase {_p.upper()}",
            [(f"voltage_{_p}_v", Bcd("XXX"))],
            edition=_V97,
        )
    )
    _fixed(
        _item(
            0xB620 + _i,
            f"current phase {_p.upper()}",
            [(f"current_{_p}_a", Bcd("XX.XX"))],
            edition=_V97,
        )
    )
for _i, _p in enumerate(_TPH):
    _fixed(
        _item(
            0xB630 + _i,
            f"active power {_p}",
            [(f"power_active_{_p}_kw", Bcd("XX.XXXX"))],
            edition=_V97,
        )
    )
    _fixed(
        _item(
            0xB640 + _i,
            f"reactive power {_p}",
            [(f"power_reactive_{_p}_kvar", Bcd("XX.XX"))],
            edition=_V97,
        )
    )
    _fixed(
        _item(
            0xB650 + _i, f"power factor {_p}", [(f"power_factor_{_p}", Bcd("X.XXX"))], edition=_V97
        )
    )

# --- 2007 energy registers (DI3 = 00): 00 TT RR SS, generated on demand ------------------------
_ENERGY_TYPES = tuple(ENERGY_FAMILIES)  # TT = 00..08 in this order
_SIGNED_FAMILIES = {"energy_combined", "energy_reactive_combined1", "energy_reactive_combined2"}


def _energy_item(di: int) -> DataItem | None:
    tt, rr, ss = di >> 16 & 0xFF, di >> 8 & 0xFF, di & 0xFF
    if tt >= len(_ENERGY_TYPES) or ss > 0x0C or not (rr <= MAX_TARIFFS or rr == 0xFF):
        return None
    family = _ENERGY_TYPES[tt]
    fmt = ENERGY_SIGNED if family in _SIGNED_FAMILIES else ENERGY
    history = History("settlement", ss) if ss else None
    when = f", {ordinal(ss)} last settlement day" if ss else ""
    desc = ENERGY_FAMILIES[family][1]
    if rr == 0xFF:
        return _item(
            di, f"{desc} block{when}", _energy_block(family, fmt), min_fields=1, history=history
        )
    part = "total" if rr == 0 else f"tariff {rr}"
    return _item(di, f"{desc} {part}{when}", [(energy_name(family, rr), fmt)], history=history)


@lru_cache(maxsize=4096)
def lookup(di: int, edition: Edition = Edition.V2007) -> DataItem | None:
    """The catalogue entry of a DI, or None when it is not catalogued."""
    item = _FIXED.get((edition, di))
    if item is None and edition is Edition.V2007 and di >> 24 == 0x00 and di >> 16 != 0x0090:
        item = _energy_item(di)
    return item


def all_items() -> Iterator[DataItem]:
    """Every catalogued item of both editions (the energy family is enumerated)."""
    yield from _FIXED.values()
    for tt in range(len(_ENERGY_TYPES)):
        for rr in [*range(MAX_TARIFFS + 1), 0xFF]:
            for ss in range(0x0D):
                item = _energy_item(tt << 16 | rr << 8 | ss)
                assert item is not None
                yield item


@lru_cache(maxsize=1)
def _current_index() -> dict[tuple[Edition, str], int]:
    index: dict[tuple[Edition, str], int] = {}
    for item in all_items():
        if item.history is None and len(item.fields) == 1:
            index.setdefault((item.edition, item.fields[0].measurement), item.di)
    return index


def di_for_measurement(name: str, edition: Edition = Edition.V2007) -> int:
    """The DI that reads the *current* value of a measurement (for `meterlink read ITEM`)."""
    try:
        return _current_index()[(edition, name)]
    except KeyError:
        raise LocalProtocolError(
            f"no DL/T 645-{edition} data identifier reads {name!r} on its own"
        ) from None


def parse_item(text: str, edition: Edition = Edition.V2007) -> int:
    """A DI from its hex digits ("00010000"; "B611" in 1997) or from the name of the measurement
    it reads ("voltage_a_v"). What technicians, plans and commands accept as an item."""
    digits = 8 if edition is Edition.V2007 else 4
    if len(text) == digits and all(c in "0123456789abcdefABCDEF" for c in text):
        return int(text, 16)
    return di_for_measurement(text, edition)
