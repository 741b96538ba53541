"""Modbus meters served with pymodbus from the register maps in `protocols.modbus.maps`.

Each Modbus meter on a bus becomes a pymodbus `SimDevice` whose registers are refreshed from
the meter model (the same model that drives the DL/T 645 meters) on every read, so values move
with the meter's clock. Dead meters are left out of the server, so their unit id stays silent.
"""

from __future__ import annotations

from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from protocols.modbus import RegisterMap, encode_values, load_map
from simulators.bus import Bus
from simulators.meter import Meter
from simulators.record import AnswerRecord

__all__ = ["modbus_devices", "rtu_server", "tcp_server"]


def _regmap(meter: Meter) -> RegisterMap:
    from simulators.models import model

    name = model(meter.identity.model).modbus_map
    if name is None:
        raise ValueError(f"model {meter.identity.model} has no Modbus register map")
    return load_map(name)


async def _refresh(
    bus: Bus,
    meter: Meter,
    regmap: RegisterMap,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    now = meter.tick()
    outcome = "answered"
    result: ExcCodes | None = None
    if set_values is not None:
        outcome, result = "abnormal", ExcCodes.ILLEGAL_FUNCTION  # read-only measurement map
    else:
        for reg_address, word in encode_values(regmap, meter.values(now), function_code).items():
            offset = reg_address - start_address
            if 0 <= offset < len(registers):
                registers[offset] = word
    bus.recorder.add(
        AnswerRecord(
            wall_time=bus.world.now().replace(microsecond=0).isoformat(),
            bus=bus.name,
            meter=meter.identity.meter_id,
            function=f"modbus_fc{function_code:02d}",
            di=f"{address:04X}+{count}",
            outcome=outcome,
            meter_time=now.replace(microsecond=0, tzinfo=None).isoformat(),
        )
    )
    return result


class _Line(SimCore):
    """pymodbus' device table, made to behave like a line: a unit id nobody has, a dead meter
    and an intermittent meter's missed attempt all give silence (the client times out)."""

    def __init__(self, bus: Bus, devices: list[SimDevice]) -> None:
        super().__init__(devices)
        self.bus = bus
        self.units = {m.identity.unit_id: m for m in bus.meters}

    def _check(self, device_id: int, function_code: int, address: int, count: int) -> None:
        meter = self.units.get(device_id)
        outcome = None
        if meter is None:
            outcome = "no_meter"
        elif meter.faults.dead:
            outcome = "dead"
        elif self.bus.rng_for(meter).random() < meter.faults.loss:
            outcome = "lost"
        if outcome is None:
            return
        self.bus.recorder.add(
            AnswerRecord(
                wall_time=self.bus.world.now().replace(microsecond=0).isoformat(),
                bus=self.bus.name,
                meter=meter.identity.meter_id if meter else None,
                function=f"modbus_fc{function_code:02d}",
                di=f"{address:04X}+{count}",
                outcome=outcome,
                meter_time=meter.now().replace(microsecond=0).isoformat() if meter else None,
            )
        )
        raise NoSuchIdException(f"unit {device_id} stays silent ({outcome})")

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self._check(device_id, func_code, address, count)
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        self._check(device_id, func_code, address, len(values))
        return await super().async_setValues(device_id, func_code, address, values)


def modbus_devices(bus: Bus) -> list[SimDevice]:
    devices = []
    for meter in bus.meters:
        regmap = _regmap(meter)
        # the reads an agent makes (`RegisterMap.blocks`) span small gaps: serve them as zeros
        simdata = [
            SimData(block.address, count=block.count, values=0, datatype=DataType.REGISTERS)
            for block in regmap.blocks()
        ]
        devices.append(
            SimDevice(
                meter.identity.unit_id,
                simdata=simdata,
                action=partial(_refresh, bus, meter, regmap),
            )
        )
    return devices


def tcp_server(bus: Bus, host: str, port: int) -> ModbusTcpServer:
    devices = modbus_devices(bus)
    server = ModbusTcpServer(devices, address=(host, port), ignore_missing_devices=True)
    server.context = _Line(bus, devices)
    return server


def rtu_server(bus: Bus, path: str, baud: int) -> ModbusSerialServer:
    devices = modbus_devices(bus)
    server = ModbusSerialServer(devices, port=path, baudrate=baud, ignore_missing_devices=True)
    server.context = _Line(bus, devices)
    return server
