"""Eastron SDM630 (Modbus V2) three-phase meter, input registers (FC 04).

Source: Eastron "SDM630 Modbus Protocol" input register table (parameter numbers 1-…,
addresses 30001…; 0-based address = register - 30001), as listed in
``docs/registers-sdm630.md`` of github.com/plebann/eastron_SDM_HA_integration and in
``src/nl/oppleo/utils/modbus/SDM360v2.py`` of github.com/ilseh/Oppleo (30001 phase 1 volts at
address 0, 30013 phase 1 power at 12, 30053 total system power, 30071 frequency, 30073/30075
import/export kWh, 30225 neutral current). Every value is an IEEE-754 float32, high word first,
in plain units (V, A, W, var, VA, Hz, kWh); watts are scaled to the vocabulary's kW here.
"""

from __future__ import annotations

from protocols.modbus.registers import DataType, Register, RegisterMap

_F = DataType.FLOAT32_BE
_IR = 4


def _r(name: str, register: int, scale: float = 1.0) -> Register:
    return Register(name, _IR, register - 30001, _F, scale)


MAP = RegisterMap(
    model="SDM630",
    manufacturer="Eastron",
    phases=3,
    source="Eastron SDM630 Modbus protocol, input registers 30001-30225",
    registers=(
        _r("voltage_a_v", 30001),
        _r("voltage_b_v", 30003),
        _r("voltage_c_v", 30005),
        _r("current_a_a", 30007),
        _r("current_b_a", 30009),
        _r("current_c_a", 30011),
        _r("power_active_a_kw", 30013, 0.001),
        _r("power_active_b_kw", 30015, 0.001),
        _r("power_active_c_kw", 30017, 0.001),
        _r("power_apparent_a_kva", 30019, 0.001),
        _r("power_apparent_b_kva", 30021, 0.001),
        _r("power_apparent_c_kva", 30023, 0.001),
        _r("power_reactive_a_kvar", 30025, 0.001),
        _r("power_reactive_b_kvar", 30027, 0.001),
        _r("power_reactive_c_kvar", 30029, 0.001),
        _r("power_factor_a", 30031),
        _r("power_factor_b", 30033),
        _r("power_factor_c", 30035),
        _r("power_active_total_kw", 30053, 0.001),
        _r("power_apparent_total_kva", 30057, 0.001),
        _r("power_reactive_total_kvar", 30061, 0.001),
        _r("power_factor_total", 30063),
        _r("frequency_hz", 30071),
        _r("energy_import_total_kwh", 30073),
        _r("energy_export_total_kwh", 30075),
        _r("current_n_a", 30225),
    ),
)
