"""Modbus meters served by pymodbus from the register maps, read with a pymodbus client and
the sans-I/O decoder in protocols.modbus."""

from __future__ import annotations

import math

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from protocols.modbus import MAPS, decode_block, encode_register, load_map
from protocols.modbus.registers import decode_register
from simulators import serve_fleet
from tests.simulators.conftest import make_fleet

MODBUS = """
seed = 5
start = "2026-03-10T10:00:00"
frozen = true
[[district]]
[[district.bus]]
name = "mb"
protocol = "modbus"
[[district.bus.meters]]
first_unit = 1
models = { DTSU666 = 1 }
[[district.bus.meters]]
first_unit = 2
models = { SDM630 = 1 }
[[district.bus.meters]]
first_unit = 3
models = { SDM630 = 1 }
dead = 1.0
"""


@pytest.mark.parametrize("model", sorted(MAPS))
def test_register_round_trip(model: str) -> None:
    regmap = load_map(model)
    for reg in regmap.registers:
        for value in (0.0, 1.5, 229.7, 12345.67):
            decoded = decode_register(reg, encode_register(reg, value))
            assert math.isclose(float(decoded.value), value, rel_tol=1e-6, abs_tol=reg.scale)
    assert all(b.count <= 125 for b in regmap.blocks())


async def _read_all(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for unit, model in ((1, "chint_dtsu666"), (2, "eastron_sdm630")):
        regmap = load_map(model)
        values: dict[str, float | int | str] = {}
        for block in regmap.blocks():
            read = (
                client.read_holding_registers
                if block.function == 3
                else client.read_input_registers
            )
            reply = await read(block.address, count=block.count, device_id=unit)
            assert not reply.isError()
            values.update({m.name: m.value for m in decode_block(regmap, block, reply.registers)})
        out[unit] = values
    return out


def _matches(decoded: dict, meter_values: dict) -> None:
    for name, value in decoded.items():
        assert math.isclose(float(value), float(meter_values[name]), rel_tol=1e-5, abs_tol=1e-3), (
            name
        )


async def test_modbus_tcp_values_come_from_the_meter_model() -> None:
    fleet = make_fleet(MODBUS)
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("mb").address  # type: ignore[misc]
        client = AsyncModbusTcpClient(host, port=port, timeout=0.5, retries=0)
        await client.connect()
        try:
            decoded = await _read_all(client)
            with pytest.raises(ModbusException):
                await client.read_input_registers(0, count=2, device_id=3)  # dead: silent
        finally:
            client.close()
    for unit in (1, 2):
        _matches(decoded[unit], fleet.meter(f"mb:{unit}").values())
    outcomes = {(r.meter, r.outcome) for r in fleet.recorder.records}
    assert ("mb:1", "answered") in outcomes
    assert ("mb:3", "dead") in outcomes


async def test_modbus_rtu_on_a_pty() -> None:
    fleet = make_fleet(MODBUS)
    async with serve_fleet(fleet, transport="pty") as serving:
        path = serving.endpoint("mb").path
        assert path is not None
        client = AsyncModbusSerialClient(path, baudrate=9600, timeout=1, retries=0)
        await client.connect()
        try:
            decoded = await _read_all(client)
        finally:
            client.close()
    _matches(decoded[2], fleet.meter("mb:2").values())
