"""Proof, in process: over a seeded fleet whose meters are misprogrammed in every way the outcome
set names, the central check's verdict equals the simulator's recorded truth for every meter and
every outcome code, and 电价执行正确率 equals the simulator's count.

The payloads are built from the simulator as the agent builds them: each meter's tariff items
as it answers them (`MeterTariff.replies`, denied items left out) decoded by the codec
(`setup_from_replies`) into the `tariff` set-up, read once on the first day (the baseline) and
again on the checked day; the daily freezes of the three days before from the meter's own
freeze records. The central side sees only those (and the fleet's archive and plan file).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

from central.ledger import Ledger
from central.points import Converted, Freeze, TariffRead, convert
from central.store import open_store
from central.tariff.check import OUTCOMES, CheckSettings
from central.tariff.day import check_day
from central.tariff.plans import parse_plans
from central.tariff.store import TariffStore
from protocols.dlt645.tariff import replies_from_setup, setup_from_replies
from simulators import parse_fleet
from simulators.fleet import Fleet
from simulators.meter import Meter

START = dt.datetime(2026, 6, 10, 9, 0)  # a Wednesday; the plans switch on Friday the 12th
FLEET = f"""
seed = 11
start = "{START.isoformat()}"
frozen = true

[tariff]
misprogram_share = 0.6

[[district]]
name = "east"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = 60
    first_address = "000000000001"
    models = {{ DDZY666 = 6, DTSD1352 = 3, "DDS-2009" = 1 }}
    prepaid = 0.5
    dead = 0.04

[[district]]
name = "west"
  [[district.bus]]
  name = "b2"
    [[district.bus.meters]]
    count = 40
    first_address = "000000001001"
    models = {{ DDZY71 = 3, DTSD1352 = 1 }}
    prepaid = 0.5
"""
CONCENTRATOR = "c-proof"


def read_setup(meter: Meter, fleet: Fleet) -> dict[str, Any] | None:
    """The agent's read of the meter's tariff items, decoded as the agent decodes them."""
    tariff = meter.tariff
    if tariff is None or meter.faults.dead:
        return None
    meter.tick()
    now = meter.now()
    setup = meter.tariff_setup(now)
    assert setup is not None
    answered = tariff.replies(setup)
    asked = replies_from_setup(setup, ladder_form=tariff.ladder_form)
    denied = [di for di in asked if di not in answered]
    world = fleet.world.now()
    if world.tzinfo is None:  # the world clock's local time
        world = world.replace(tzinfo=fleet.world.tz)
    read_at = world.astimezone(dt.UTC)
    decoded, errors = setup_from_replies(answered, read_at=read_at, denied=denied)
    assert not errors, errors
    return decoded.to_payload()


def freezes(meter: Meter, days: list[dt.date]) -> list[Freeze]:
    out = []
    for record in meter.freezes:
        if record.time.date() in days:
            values = record.values()
            regs = tuple(
                float(values[f"energy_import_t{i}_kwh"])
                for i in range(1, 5)
                if f"energy_import_t{i}_kwh" in values
            )
            out.append(
                Freeze(
                    CONCENTRATOR,
                    meter.identity.meter_id,
                    record.time.date().isoformat(),
                    float(values["energy_import_total_kwh"]),
                    regs,
                    None,
                )
            )
    return out


def test_the_verdict_is_the_simulators_truth_for_every_meter_and_every_code(
    tmp_path: Path,
) -> None:
    seen: Counter[str] = Counter()
    # the day after the start (before the plans' switch) and two days after the switch
    for days_later in (1, 3):
        seen += _check_against_truth(tmp_path / f"day{days_later}", days_later)
    assert set(seen) == set(OUTCOMES), seen  # every code of the closed set occurred


def _check_against_truth(tmp_path: Path, days_later: int) -> Counter[str]:
    tmp_path.mkdir()
    fleet = parse_fleet(FLEET)
    tz = fleet.world.tz
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="proof")
    try:
        ledger = Ledger(store)
        tariffs = TariffStore(store)
        book = tariffs.replace_plans(fleet.tariff_plans_toml(), "simulator")
        assert book.plans == parse_plans(fleet.tariff_plans_toml()).plans
        out = Converted()
        archive = {
            "concentrator": CONCENTRATOR,
            "version": 1,
            "updated_at": START.replace(tzinfo=tz).isoformat(),
            "meters": fleet.archive(),
        }
        convert("archive", archive, out)
        # the baseline read on the first day, then the checked day's
        for when in (
            START + dt.timedelta(minutes=30),
            START + dt.timedelta(days=days_later, hours=11),
        ):
            fleet.world.set(when)
            for meter in fleet.meters():
                payload = read_setup(meter, fleet)
                if payload is not None:
                    out.tariffs.append(
                        TariffRead(
                            CONCENTRATOR,
                            meter.identity.meter_id,
                            int(dt.datetime.fromisoformat(payload["read_at"]).timestamp()),
                            payload,
                        )
                    )
        day = (START + dt.timedelta(days=days_later)).date()
        window = [day - dt.timedelta(days=k) for k in (2, 1, 0)]
        for meter in fleet.meters():
            if meter.tariff is not None and not meter.faults.dead:
                out.freezes += freezes(meter, window)
        ledger.apply(out, [])
        tariffs.apply_converted(out)

        result = check_day(ledger, tariffs, book, day.isoformat(), CheckSettings(), str(tz))
        truth = fleet.tariff_truth(day)
        verdict = {o.meter: o for o in result.outcomes}
        assert set(verdict) == set(truth)
        wrong = {
            m: (t.defect, t.outcome, verdict[m].outcome, verdict[m].detail)
            for m, t in truth.items()
            if verdict[m].outcome != t.outcome
        }
        assert not wrong, "\n".join(f"{m}: {w}" for m, w in wrong.items())
        codes = Counter(t.outcome for t in truth.values())
        ok = codes["OK"]
        fleet_scope = result.fleet()
        assert (fleet_scope.ok, fleet_scope.meters) == (ok, len(truth))
        assert fleet_scope.rate == round(100.0 * ok / len(truth), 4)
        return codes
    finally:
        store.close()


def test_a_work_order_carried_out_and_recorded_makes_the_meter_ok(tmp_path: Path) -> None:
    """Mismatch → work-order CSV → the technician reprograms the meter on site (the simulator's
    visit) → `meterlink central tariff job` records it → the next read is OK; the same visit
    without the record is PROGRAMMED_OUTSIDE_PLAN."""
    import csv
    import io

    from central.tariff.report import workorders

    fleet = parse_fleet(FLEET)
    tz = fleet.world.tz
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="workorders")
    try:
        ledger, tariffs = Ledger(store), TariffStore(store)
        book = tariffs.replace_plans(fleet.tariff_plans_toml(), "simulator")
        out = Converted()
        convert("archive", {"concentrator": CONCENTRATOR, "version": 1,
                            "updated_at": START.replace(tzinfo=tz).isoformat(),
                            "meters": fleet.archive()}, out)  # fmt: skip
        ledger.apply(out, [])

        def read_all(when: dt.datetime) -> None:
            fleet.world.set(when)
            facts = Converted()
            for meter in fleet.meters():
                payload = read_setup(meter, fleet)
                if payload is not None:
                    at = int(dt.datetime.fromisoformat(payload["read_at"]).timestamp())
                    facts.tariffs.append(
                        TariffRead(CONCENTRATOR, meter.identity.meter_id, at, payload)
                    )
            tariffs.apply_converted(facts)

        def outcomes(day: dt.date) -> dict[str, str]:
            result = check_day(ledger, tariffs, book, day.isoformat(), CheckSettings(), str(tz))
            return {o.meter: o.outcome for o in result.outcomes}

        day0 = START.date()
        read_all(START + dt.timedelta(minutes=30))
        before = outcomes(day0)
        csv_text = workorders(day0.isoformat(), tariffs.outcomes(day0.isoformat()), book)
        orders = {r["meter"]: r for r in csv.DictReader(io.StringIO(csv_text))}
        fix = sorted(m for m, o in before.items() if o == "PARAM_MISMATCH")
        assert len(fix) >= 2
        assert all(orders[m]["to_write"] for m in fix)
        recorded, unrecorded = fix[0], fix[1]
        visit = START + dt.timedelta(hours=2)
        fleet.world.set(visit)
        for meter_id in (recorded, unrecorded):
            assert fleet.meter(meter_id).technician_visit()  # counters moved
        local = visit.replace(tzinfo=tz)
        tariffs.record_job(CONCENTRATOR, recorded, "workorder",
                           int((local - dt.timedelta(minutes=5)).timestamp()),
                           int((local + dt.timedelta(minutes=30)).timestamp()), "technician 7",
                           orders[recorded]["to_write"][:100])  # fmt: skip
        read_all(START + dt.timedelta(hours=4))
        after = outcomes(day0)
        assert after[recorded] == "OK"
        assert after[unrecorded] == "PROGRAMMED_OUTSIDE_PLAN"
    finally:
        store.close()
