"""An implementation we did not write (PyPI `dlt645` 3.2.0) reads the simulator and gets the
same values. Its address strings are in wire order: meter 123456781012 is "121078563412"."""

from __future__ import annotations

import asyncio
import logging

from dlt645.service.clientsvc.client_service import MeterClientService

from simulators import serve_fleet
from tests.simulators.conftest import PREPAID, make_fleet

ITEMS = {
    0x00000000: "energy_combined_total_kwh",
    0x00010000: "energy_import_total_kwh",
    0x00010100: "energy_import_t1_kwh",
    0x00020000: "energy_export_total_kwh",
    0x02010100: "voltage_a_v",
    0x02020100: "current_a_a",
    0x02030000: "power_active_total_kw",
    0x02060000: "power_factor_total",
    0x02800002: "frequency_hz",
}


def _read_with_pypi_client(port: int) -> dict[int, float]:
    logging.getLogger("dlt645").setLevel(logging.CRITICAL)
    client = MeterClientService.new_tcp_client("127.0.0.1", port, timeout=3.0)
    assert client.set_address("121078563412")  # wire order of 123456781012
    out: dict[int, float] = {}
    try:
        for di in ITEMS:
            read = client.read_00 if di >> 24 == 0 else client.read_02
            item = read(di)
            assert item is not None, f"{di:08X}"
            out[di] = float(item.value)
    finally:
        client.disconnect()
    return out


async def test_pypi_dlt645_client_reads_the_same_values() -> None:
    fleet = make_fleet()
    async with serve_fleet(fleet, transport="tcp") as serving:
        _, port = serving.endpoint("b1").address  # type: ignore[misc]
        theirs = await asyncio.to_thread(_read_with_pypi_client, port)
    ours = fleet.meter(PREPAID).values()
    for di, name in ITEMS.items():
        assert theirs[di] == ours[name], f"{di:08X} {name}"
