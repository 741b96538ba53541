"""Modbus meters (RTU and TCP) through pymodbus, decoded with the shared register maps.

pymodbus owns the Modbus framing and line handling (its own serial transport); this module owns
what to read (the map's blocks), the mapping of failures onto our closed set of reasons, and
bus-time accounting like the DL/T 645 transports.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.config import MeterConfig
from agent.poller import BusPoller
from agent.transports import BusError, NoReply
from agent.transports.url import BusUrl
from protocols.errors import MeterRejection
from protocols.measurements import Measurement
from protocols.modbus import RegisterMap, decode_block, load_map

__all__ = ["ModbusBus", "ModbusClient", "ModbusRejection", "modbus_poller"]

log = logging.getLogger(__name__)


class ModbusRejection(MeterRejection):
    """A Modbus exception response (illegal address, device failure …): the meter is alive."""


class ModbusBus:
    """One Modbus line or gateway connection.

    The pymodbus client is made on first use, inside the running event loop: pymodbus binds
    its client to the running loop when it is built, and the agent builds its buses before the
    loop runs (`Agent.__init__`)."""

    def __init__(self, url: BusUrl) -> None:
        self.url = url
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self.busy_seconds = 0.0
        self.exchanges = 0

    @property
    def client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._client is None:
            url, timeout = self.url, self.url.timeout_ms / 1000
            if url.scheme == "modbus+rtu":
                self._client = AsyncModbusSerialClient(
                    url.path,
                    baudrate=url.baud,
                    parity=url.parity,
                    bytesize=url.bytesize,
                    stopbits=url.stopbits,
                    timeout=timeout,
                    retries=0,
                )
            else:
                self._client = AsyncModbusTcpClient(
                    url.host, port=url.port, timeout=timeout, retries=0
                )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()

    async def read_words(self, unit: int, function: int, address: int, count: int) -> list[int]:
        if not self.client.connected and not await self.client.connect():
            raise BusError(f"{self.url}: cannot connect")
        started = time.monotonic()
        try:
            if function == 3:
                rr = await self.client.read_holding_registers(address, count=count, device_id=unit)
            else:
                rr = await self.client.read_input_registers(address, count=count, device_id=unit)
        except ConnectionException as exc:
            raise BusError(f"{self.url}: {exc}") from exc
        except ModbusIOException as exc:
            raise NoReply(f"unit {unit}: no reply ({exc})") from exc
        except ModbusException as exc:
            raise NoReply(f"unit {unit}: {exc}") from exc
        finally:
            self.busy_seconds += time.monotonic() - started
            self.exchanges += 1
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            raise ModbusRejection(
                f"unit {unit}: Modbus exception {code}", code, (f"modbus_exception_{code}",)
            )
        return list(rr.registers)


class ModbusClient:
    """Reads a meter's mapped measurements; the poller passes it to jobs on Modbus buses."""

    def __init__(self, bus: ModbusBus) -> None:
        self.bus = bus
        self._maps: dict[str, RegisterMap] = {}

    def map_of(self, meter: MeterConfig) -> RegisterMap:
        if meter.model not in self._maps:
            self._maps[meter.model] = load_map(meter.model)
        return self._maps[meter.model]

    async def read(self, meter: MeterConfig, names: set[str] | None = None) -> list[Measurement]:
        """Every mapped measurement (or those in `names`), in as few requests as the map allows."""
        assert meter.unit is not None
        regmap = self.map_of(meter)
        wanted = [r for r in regmap.registers if names is None or r.measurement in names]
        sub = RegisterMap(
            regmap.model, regmap.manufacturer, regmap.phases, tuple(wanted), regmap.source
        )
        out: list[Measurement] = []
        for block in sub.blocks():
            words = await self.bus.read_words(
                meter.unit, block.function, block.address, block.count
            )
            out += decode_block(sub, block, words)
        return out

    async def read_energy(self, meter: MeterConfig) -> list[Measurement]:
        names = {m for m in self.map_of(meter).measurements if m.startswith("energy_")}
        return await self.read(meter, names)


def modbus_poller(name: str, url: BusUrl) -> BusPoller[Any]:
    bus = ModbusBus(url)
    return BusPoller(name, url, ModbusClient(bus), bus)
