"""Seeded faults: the same fleet and the same requests give the same outcomes, twice."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols.dlt645 import Address, Frame, ReadRequest, decode_frame, to_frame
from protocols.errors import FrameError
from simulators import Fleet, serve_fleet
from tests.simulators.conftest import make_fleet, open_master

FAULTY = """
seed = 99
start = "2026-03-10T02:30:00"
frozen = true
[[district]]
name = "d"
[[district.bus]]
name = "b1"
noise = [{ from = 2, to = 4, rate = 0.2 }]
[[district.bus.meters]]
count = 30
first_address = "000000000100"
models = { DDZY666 = 1, DTSD1352 = 1 }
dead = 0.1
intermittent = 0.2
intermittent_loss = 0.5
corrupt = 0.05
slow = 0.05
garbage = 0.05
duplicates = 1
"""


def _run(fleet: Fleet, rounds: int = 4) -> list[tuple[str | None, str]]:
    bus = fleet.bus("b1")
    for _ in range(rounds):
        for meter in list(bus.meters):
            frame = to_frame(Address.parse(meter.identity.address), ReadRequest(0x00010000))
            bus.exchange(frame)
    return [(r.meter, r.outcome) for r in fleet.recorder.records]


def test_same_seed_same_outcomes() -> None:
    first, second = _run(make_fleet(FAULTY)), _run(make_fleet(FAULTY))
    assert first == second
    outcomes = {o for _, o in first}
    # every fault of the rule shows up in 120 attempts
    assert {"answered", "dead", "lost", "corrupted", "slow", "noise", "collided"} <= outcomes
    other = _run(make_fleet(FAULTY.replace("seed = 99", "seed = 100")))
    assert other != first


def test_fault_outcomes_match_the_bytes() -> None:
    fleet = make_fleet(FAULTY)
    bus = fleet.bus("b1")
    seen: set[str] = set()
    for meter in bus.meters * 4:
        frame = to_frame(Address.parse(meter.identity.address), ReadRequest(0x00010000))
        sent = bus.exchange(frame)
        outcome = fleet.recorder.records[-1].outcome
        seen.add(outcome)
        if outcome in ("dead", "lost", "noise"):
            assert sent == []
        elif outcome == "corrupted":
            assert len(sent) == 1
            with pytest.raises(FrameError):
                decode_frame(sent[0].data)
        elif outcome == "slow":
            assert sent[0].delay > 0.5
        elif outcome == "answered":
            assert 0.02 <= sent[0].delay <= 0.5
    assert "corrupted" in seen


async def test_seeded_faults_give_the_same_outcome_twice_over_tcp() -> None:
    results = []
    for _ in range(2):
        fleet = make_fleet(FAULTY.replace("slow = 0.05", "slow = 0.0"))
        meters = list(fleet.bus("b1").meters)[:12]
        got = []
        async with serve_fleet(fleet, transport="tcp") as serving:
            master = await open_master(serving)
            try:
                for meter in meters * 2:
                    # a dead or lost meter is silent: 1 s is silence on this untimed line
                    events = await master.ask(
                        meter.identity.address, ReadRequest(0x00010000), quiet=1.0
                    )
                    got.append(
                        "silent"
                        if not events
                        else "frame"
                        if isinstance(events[0], Frame)
                        else type(events[0]).__name__
                    )
            finally:
                await master.close()
        results.append((got, [r.outcome for r in fleet.recorder.records]))
    assert results[0] == results[1]
    assert "silent" in results[0][0]
    assert "frame" in results[0][0]


def test_noise_only_in_its_hours() -> None:
    fleet = make_fleet(FAULTY)
    fleet.world.set(dt.datetime(2026, 3, 10, 12, 0))
    assert "noise" not in {o for _, o in _run(fleet)}
