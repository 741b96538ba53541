"""CHINT DTSU666 three-phase four-wire meter, Modbus RTU (holding registers, FC 03).

Source: CHINT "DTSU666 series and DSSU666 series three phase electronic energy meter, user
manual" (ZTY0.464.1448), table 11 "ModBus protocol address table", as reproduced at
https://www.easymanua.ls/chint/dtsu666-ct/manual?p=13 and the register list of
https://www.aggsoft.com/serial-data-logger/tutorials/modbus-data-logging/chint-instrument-dsu666-dtsu666.htm
(8192 = 2000H Uab … 8260 = 2044H Freq, 16414 = 401EH ImpEp, 16424 = 4028H ExpEp).
Values are IEEE-754 float32, high word first ("ABCD"). The instantaneous values are integers
in scaled units, as the DTSU666 emulation notes at
https://docs.smart-stuff.nl/p1-modbus-dongle/quick-start/register-mapping/dtsu666-emulation
state ("V x10", "A x1000"); power in 0.1 W, power factor in 0.001 and frequency in 0.01 Hz
follow the same manual table. Energy registers are plain kWh. Default line: 9600 8N1, unit 1.
"""

from __future__ import annotations

from protocols.modbus.registers import DataType, Register, RegisterMap

_F = DataType.FLOAT32_BE
_H = 3


def _r(name: str, address: int, scale: float) -> Register:
    return Register(name, _H, address, _F, scale)


MAP = RegisterMap(
    model="DTSU666",
    manufacturer="CHINT",
    phases=3,
    source="CHINT DTSU666 user manual ZTY0.464.1448, table 11 (ModBus protocol address table)",
    registers=(
        _r("voltage_a_v", 0x2006, 0.1),
        _r("voltage_b_v", 0x2008, 0.1),
        _r("voltage_c_v", 0x200A, 0.1),
        _r("current_a_a", 0x200C, 0.001),
        _r("current_b_a", 0x200E, 0.001),
        _r("current_c_a", 0x2010, 0.001),
        _r("power_active_total_kw", 0x2012, 0.0001),
        _r("power_active_a_kw", 0x2014, 0.0001),
        _r("power_active_b_kw", 0x2016, 0.0001),
        _r("power_active_c_kw", 0x2018, 0.0001),
        _r("power_reactive_total_kvar", 0x201A, 0.0001),
        _r("power_reactive_a_kvar", 0x201C, 0.0001),
        _r("power_reactive_b_kvar", 0x201E, 0.0001),
        _r("power_reactive_c_kvar", 0x2020, 0.0001),
        _r("power_factor_total", 0x202A, 0.001),
        _r("power_factor_a", 0x202C, 0.001),
        _r("power_factor_b", 0x202E, 0.001),
        _r("power_factor_c", 0x2030, 0.001),
        _r("frequency_hz", 0x2044, 0.01),
        _r("energy_import_total_kwh", 0x401E, 1.0),
        _r("energy_export_total_kwh", 0x4028, 1.0),
    ),
)
