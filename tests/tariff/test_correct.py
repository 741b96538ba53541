"""Tariff correction orders in-process (the agent's command executor on a frozen simulated fleet,
the simulator's encryption machine, a SQLite store; the run's clock is the simulator's): a
missed switch written as backup set + switch time and flipping at the planned date, a wrong
price fixed through the backup set (the current set is read-only) in two orders, a lost reply
retried with a fresh authentication, and the outcomes that go to technicians."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import common.clock
from central.commands import CommandTimeout
from central.store import open_store
from central.tariff.check import CheckSettings
from central.tariff.correct import Corrector, items_to_write, target_setup
from central.tariff.store import TariffStore
from simulators import Fleet
from tests.simulators.test_tariff_write import FLEET
from tests.topup.helpers import Executor, LocalHsm, security_agent

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
C = "c-test"


class FleetClock(common.clock.Clock):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def time(self) -> float:
        return self.fleet.world.now().replace(tzinfo=TZ).timestamp()


class Channel:
    """The agent's executor as the corrector's channel; `drop` loses the reply of that many
    write commands after the agent ran them (the outcome is unknown to the centre)."""

    def __init__(self, run: Executor) -> None:
        self.run = run
        self.drop = 0
        self.sent: list[str] = []

    async def command(
        self, concentrator: str, name: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]:
        self.sent.append(name)
        reply = await self.run(name, meter, dict(args))
        writes = any(s.get("op") == "write" for s in args.get("steps", []))
        if writes and self.drop > 0:
            self.drop -= 1
            raise CommandTimeout("reply lost (test)")
        return reply


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Executor]:
    async with security_agent(FLEET, tmp_path) as executor:
        yield executor


@pytest.fixture
def clock(agent: Executor) -> Iterator[FleetClock]:
    before = common.clock.current()
    clock = common.clock.install(FleetClock(agent.sa.fleet))
    assert isinstance(clock, FleetClock)
    yield clock
    common.clock.install(before)


@pytest.fixture
def setup(agent: Executor, clock: FleetClock, tmp_path: Path) -> tuple[Corrector, Channel]:
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="correct")
    TariffStore(store).replace_plans(agent.sa.fleet.tariff_plans_toml(), "test")
    channel = Channel(agent)
    corrector = Corrector(store, LocalHsm(agent.sa.fleet), channel, CheckSettings(),
                          "Asia/Shanghai", by="test")  # fmt: skip
    return corrector, channel


def _plan(corrector: Corrector, fleet: Fleet, meter: str) -> Any:
    book = corrector.tariffs.plans()
    tariff = fleet.meter(meter).tariff
    assert book is not None
    assert tariff is not None
    plan = book.get(tariff.plan.name)
    assert plan is not None
    return plan


async def test_a_missed_switch_is_written_as_backup_set_and_flips_on_its_date(
    agent: Executor, setup: tuple[Corrector, Channel]
) -> None:
    corrector, _ = setup
    fleet = agent.sa.fleet
    mid = "000000000003"  # a sound ESAM meter: give it the missed switch
    meter = fleet.meter(mid)
    assert meter.tariff is not None
    from simulators.tariff import misprogram

    misprogram(meter.tariff, "switch_missed", start=meter.now(), reprogram_at=meter.now())
    r = await corrector.correct(C, mid, _plan(corrector, fleet, mid))
    assert (r.state, r.outcome_before, r.outcome_after) == ("verified", "SWITCH_PENDING", "OK")
    assert "04000107" in r.items
    assert r.items.index("04000107") > r.items.index("04020001")  # the set before its switch
    switch = meter.tariff.programmed.switch_tables
    assert switch == dt.datetime(2026, 3, 12)
    fleet.world.set(dt.datetime(2026, 3, 12, 0, 5))
    assert fleet.tariff_truth(dt.date(2026, 3, 12))[mid].outcome == "OK"
    shown = meter.tariff_setup()
    assert shown is not None
    assert shown.active_table_set == 2


async def test_a_wrong_price_is_fixed_through_the_backup_set(
    agent: Executor, setup: tuple[Corrector, Channel]
) -> None:
    corrector, _ = setup
    fleet = agent.sa.fleet
    mid = "000000000005"
    meter = fleet.meter(mid)
    assert meter.tariff is not None
    assert meter.tariff.defect == "wrong_price"
    plan = _plan(corrector, fleet, mid)
    first = await corrector.correct(C, mid, plan)
    # the current set is read-only: the right prices go to the backup set, flipping soon
    assert first.outcome_before == "PRICE_MISMATCH"
    assert first.items == ["040502FF", "04000108"]
    assert first.state == "written"
    assert first.outcome_after == "PRICE_MISMATCH"
    fleet.world.set(fleet.world.now() + dt.timedelta(minutes=5))
    second = await corrector.correct(C, mid, plan)
    # flipped: the current prices are the plan's; now the planned change goes to the backup
    assert second.outcome_before != "OK"
    assert second.state == "verified", second
    assert meter.tariff.programmed.switch_prices == dt.datetime(2026, 3, 12)
    assert fleet.tariff_truth(fleet.world.now().date())[mid].outcome == "OK"


async def test_a_lost_reply_is_retried_with_a_new_authentication(
    agent: Executor, setup: tuple[Corrector, Channel]
) -> None:
    corrector, channel = setup
    fleet = agent.sa.fleet
    mid = "000000000001"
    assert fleet.meter(mid).tariff is not None
    channel.drop = 1
    r = await corrector.correct(C, mid, _plan(corrector, fleet, mid))
    assert (r.state, r.attempts) == ("verified", 2), r
    kinds = [k for _, _, k, _ in corrector.tariffs.correction_audit(r.id)]
    assert kinds.count("hsm:identity_auth") == 2
    assert "retry" in kinds
    # the second attempt found the items written (read-back) and wrote nothing again
    assert kinds.count("hsm:parameter_update") == len(r.items)


async def test_what_goes_to_technicians(agent: Executor, setup: tuple[Corrector, Channel]) -> None:
    corrector, channel = setup
    fleet = agent.sa.fleet
    # (ENERGY_MISALLOCATED needs two days of freezes: tests/tariff/test_proof.py's territory)
    for mid, why in (("000000000006", "clock"), ("000000000023", "clock")):
        channel.sent.clear()
        r = await corrector.correct(C, mid, _plan(corrector, fleet, mid))
        assert r.state == "workorder", r
        assert why in r.reason
        assert r.workorder is not None
        assert channel.sent == ["tariff"]
    # a meter without an ESAM: the identity authentication is refused, nothing is written
    mid = "000000000004"
    before = fleet.meter(mid).tariff
    assert before is not None
    programmed = before.programmed
    r = await corrector.correct(C, mid, _plan(corrector, fleet, mid))
    assert r.state == "workorder", r
    assert "no ESAM" in r.reason
    assert r.workorder is not None
    assert r.workorder[:3] == [mid, C, "SWITCH_PENDING"]
    assert before.programmed is programmed
    assert "hsm:parameter_update" not in [
        k for _, _, k, _ in corrector.tariffs.correction_audit(r.id)
    ]


def test_the_target_keeps_the_meters_set_numbering(
    agent: Executor, setup: tuple[Corrector, Channel]
) -> None:
    """A meter whose active set is its second one is written in its own numbering: a sound
    meter's set-up with the sets swapped (and the status bits saying so) needs no write."""
    corrector, _ = setup
    tariff = agent.sa.fleet.meter("000000000009").tariff
    assert tariff is not None
    assert tariff.defect is None
    sound = tariff.programmed
    swapped = replace(sound, sets=(sound.sets[1], sound.sets[0]), active_zone_set=2,
                      active_table_set=2)  # fmt: skip
    plan = _plan(corrector, agent.sa.fleet, "000000000009")
    for held in (sound, swapped):
        target = target_setup(plan, dt.date(2026, 3, 10), held, dt.datetime(2026, 3, 10, 9, 0))
        assert items_to_write(held, target) == {}
    wrong = replace(swapped, sets=(swapped.sets[1], swapped.sets[0]))
    target = target_setup(plan, dt.date(2026, 3, 10), wrong, dt.datetime(2026, 3, 10, 9, 0))
    assert set(items_to_write(wrong, target)) >= {0x04010001, 0x04020001}
