"""The soak, short: 2.5 run days of the field (two concentrators, RS-485 and carrier, two
central instances) at 4320x on one accelerated clock, with every fault of bench/soak.py at
seeded times; every invariant must hold. `bench/soak.py` runs the week and prints the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.soak import soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard, not a speed limit


async def test_two_and_a_half_days_of_field_faults_lose_nothing(tmp_path: Path) -> None:
    result = await soak(tmp_path, days=2.5, speed=4320, seed=13)
    print(result.table())
    failed = [f"{name}: {figures}" for name, figures, held in result.rows if not held]
    assert not failed, "\n".join(failed) + "\n\n" + result.table()
    assert result.readings_checked > 100  # the run read meters, days and days of them
    assert {f.name for f in result.faults} >= {
        "broker_restart", "broker_outage", "influx_down", "agent_sigkill", "disk_budget",
        "clock_forward", "meter_replaced", "packet_loss", "central_sigkill",
    }  # fmt: skip
