"""End to end: simulated fleet -> `meterlink agent run` (a real subprocess) with the tariff plan ->
a Mosquitto of the test's own -> a subscriber: every live 2007 meter's set-up arrives as a
`tariff` payload that validates and decodes to what the simulated meter holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.dlt645.tariff import padded
from protocols.tariff import TariffSetup
from tests.agent.helpers_mqtt import Collector, eventually
from tests.agent.test_e2e import AgentProcess, _config, _field, _now
from tests.fixtures.services import running_mosquitto

pytestmark = pytest.mark.slow

TARIFF = """
[plans.tariff]
enabled = true
start = "00:00"
deadline = "23:59"
"""


async def test_tariff_payloads_arrive_and_decode(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker") as broker:
        async with (
            _field(tmp_path, transport="tcp", count=6, dead=0.0) as (fleet, url, archive),
            Collector(broker) as seen,
        ):
            config = _config(tmp_path, broker, url, archive)
            config.write_text(config.read_text() + TARIFF)
            agent = AgentProcess(config)
            await agent.start()
            wanted = {
                m.identity.meter_id
                for m in fleet.meters()
                if m.identity.protocol == "dlt645-2007" and not m.faults.dead
            }
            assert wanted
            try:
                await eventually(
                    lambda: {s.payload["meter"] for s in seen.of("tariff")} >= wanted, within=90
                )
            finally:
                assert await agent.stop() == 0, agent.log()
    assert not seen.invalid
    today = _now().date()
    for s in seen.of("tariff"):
        body = s.payload
        assert body["reason"] == "first"
        setup = TariffSetup.from_payload(body["setup"])
        meter = fleet.meter(body["meter"])
        shown = meter.tariff_setup()
        assert shown is not None
        held = padded(shown)
        assert setup.sets == held.sets
        assert (setup.active_zone_set, setup.active_table_set) == (
            held.active_zone_set,
            held.active_table_set,
        )
        assert setup.holidays == held.holidays
        assert setup.switch_tables == held.switch_tables
        assert setup.event_counters == held.event_counters
        assert setup.prices_current == held.prices_current
        assert setup.meter_time is not None
        assert setup.meter_time.date() == today
        assert abs(body["clock_offset_s"]) < 5
        assert bytes.fromhex(body["raw"]["04010001"])  # raw bytes beside the decoded set-up
