"""MQTT → InfluxDB through the consumer, against a real influxd / VictoriaMetrics and Mosquitto."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from central.ledger import Ledger
from central.points import Converted, convert
from central.spool import Spool
from central.store import Store
from meterlink.cli import main
from tests.central.helpers import (
    CST,
    TARIFFS,
    archive,
    batch,
    config,
    meters,
    publish,
    reading,
    round_report,
    running_consumer,
    wait_for,
)
from tests.fixtures.services import InfluxDB1, Mosquitto, VictoriaMetrics


def count(db: InfluxDB1) -> int:
    series = db.query("SELECT count(energy_import_total_kwh) FROM reading")
    return int(series[0]["values"][0][1]) if series else 0


async def test_readings_land_as_points_keyed_by_meter_item_and_data_time(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    ids = meters(300)
    payloads = [
        ("c-001", "readings", batch("c-001", [reading(m, "2026-11-25", kwh=1000 + i)
                                              for i, m in enumerate(ids[k:k + 100])], f"b{k}"))
        for k in range(0, 300, 100)
    ]  # fmt: skip
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, payloads)
        await wait_for(lambda: count(influxdb) == 300, what="300 points")
        # the same batches again (a replay from the agent's outbox): still one point each
        await publish(mosquitto.port, payloads)
        await wait_for(lambda: consumer.stats.acked == 6, what="6 acks")
    assert count(influxdb) == 300
    series = influxdb.query(
        "SELECT * FROM reading WHERE meter = '000000000007' GROUP BY concentrator, item, meter"
    )
    assert len(series) == 1
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    assert series[0]["tags"] == {
        "concentrator": "c-001",
        "item": "daily_freeze",
        "meter": "000000000007",
    }
    # data_time 2026-11-25T00:00+08:00 is the point's time, not the time it arrived
    assert row["time"] == int(dt.datetime(2026, 11, 25, tzinfo=CST).timestamp())
    assert row["energy_import_total_kwh"] == 1006.0
    assert row["energy_import_t4_kwh"] == 251.5
    assert row["quality"] == "ok"
    assert set(TARIFFS) <= set(row)


async def test_invalid_payloads_are_counted_kept_aside_and_acknowledged(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    good = batch("c-001", [reading("000000000001", "2026-11-25")], "ok")
    bad_schema = json.loads(json.dumps(good)) | {"batch_id": ""}
    wrong_topic = batch("c-002", [reading("000000000002", "2026-11-25")], "elsewhere")
    async with running_consumer(cfg) as consumer:
        await publish(
            mosquitto.port,
            [
                ("c-001", "readings", b"{not json"),
                ("c-001", "readings", bad_schema),
                ("c-001", "readings", wrong_topic),  # names c-002 on c-001's topic
                ("c-001", "readings", good),
            ],
        )
        await wait_for(lambda: consumer.stats.acked == 4, what="4 acks")
        assert consumer.stats.invalid == 3
    assert count(influxdb) == 1
    spool = Spool(cfg.consumer.spool)
    try:
        assert spool.dead_counts() == {"schema": 3}
        errors = [d.error for d in spool.dead_letters()]
    finally:
        spool.close()
    assert any("batch_id" in e for e in errors)
    assert any("concentrator differs" in e for e in errors)
    conf = tmp_path / "central.toml"
    conf.write_text(f'[consumer]\nspool = "{cfg.consumer.spool}"\n')
    assert main(["central", "spool", "--config", str(conf)]) == 0
    shown = capsys.readouterr().out
    assert "waiting for InfluxDB: 0 batches, 0 lines" in shown
    assert "dead letters: schema 3" in shown


async def test_lines_influxdb_refuses_are_isolated_into_dead_letters(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    ids = meters(50)
    first = batch("c-001", [reading(m, "2026-11-25") for m in ids], "numbers")
    # schema-valid, but a text value where the field already holds numbers: a 400 from influxd
    odd = reading("000000000099", "2026-11-26")
    odd["values"]["energy_import_total_kwh"] = {"value": "n/a", "unit": "kWh"}
    second = batch("c-001", [*(reading(m, "2026-11-26") for m in ids), odd], "one-bad")
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, [("c-001", "readings", first)])
        await wait_for(lambda: count(influxdb) == 50, what="first batch")
        await publish(mosquitto.port, [("c-001", "readings", second)])
        await wait_for(lambda: consumer.stats.acked == 2, what="2 acks")
        assert consumer.sink.stats.dead_lines == 1
    assert count(influxdb) == 100
    spool = Spool(cfg.consumer.spool)
    try:
        (dead,) = spool.dead_letters()
    finally:
        spool.close()
    assert (dead.kind, dead.status) == ("influx", 400)
    assert b"meter=000000000099" in dead.body


async def test_v2_write_path_through_influxdb_client_into_victoria_metrics(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    cfg = config(tmp_path, mosquitto.port, victoria.url, api="v2")
    ids = meters(120)
    async with running_consumer(cfg) as consumer:
        await publish(
            mosquitto.port,
            [("c-007", "readings", batch("c-007", [reading(m, "2026-11-25", kwh=7.5)
                                                   for m in ids], "v2"))],
        )  # fmt: skip
        await wait_for(lambda: consumer.stats.acked == 1, what="ack")

    def exported() -> list[dict[str, Any]]:
        return victoria.export('{__name__="reading_energy_import_total_kwh"}')

    await wait_for(lambda: len(exported()) == 120, what="120 series in VictoriaMetrics")
    one = next(s for s in exported() if s["metric"]["meter"] == "000000000042")
    assert one["metric"] == {
        "__name__": "reading_energy_import_total_kwh",
        "concentrator": "c-007",
        "item": "daily_freeze",
        "meter": "000000000042",
    }
    assert one["values"] == [7.5]
    assert one["timestamps"] == [int(dt.datetime(2026, 11, 25, tzinfo=CST).timestamp()) * 1000]


def _poison() -> list[tuple[str, str, dict[str, Any] | bytes]]:
    """Payloads the schema accepts (or cannot even parse) that no conversion can store."""
    feb30 = batch("c-001", [reading("000000000901", "2026-11-25")], "feb-30")
    feb30["readings"][0]["data_time"] = "2026-02-30T00:00:00+08:00"  # the pattern allows it
    # one good reading, then an impossible one: the message goes whole or not at all
    late = reading("000000000902", "2026-11-25")
    late["read_at"] = "2026-11-25T24:00:00+08:00"
    half = batch("c-001", [reading("000000000903", "2026-11-25"), late], "half")
    old_day = round_report("c-001", "2026-11-25", [("000000000904", "no_reply")], expected=1)
    old_day["data_day"] = "2026-02-30"
    stamp_feb30 = archive(
        "c-001", 1, [("000000000905", "east", "acme")], "2026-02-30T10:00:00+08:00"
    )
    huge = archive("c-001", 2**70, [("000000000906", "east", "acme")], "2026-11-25T10:00:00+08:00")
    lone = batch("c-001", [reading("\ud800", "2026-11-25")], "surrogate")  # JSON "\ud800"
    return [
        ("c-001", "readings", feb30),
        ("c-001", "readings", half),
        ("c-001", "rounds", old_day),
        ("c-001", "archive", stamp_feb30),
        ("c-001", "archive", huge),
        ("c-001", "readings", lone),
        # readings are decoded into structs in one pass, which refuses these two as malformed
        ("c-001", "readings", b"[" * 100_000),
        ("c-001", "events", b"[" * 100_000),  # json.loads: a RecursionError, not a ValueError
    ]


async def test_a_schema_valid_payload_that_cannot_be_converted_is_a_dead_letter_not_a_crash(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    poison = _poison()
    ids = meters(300)
    good = [
        ("c-001", "readings", batch("c-001", [reading(m, "2026-11-25") for m in ids[k : k + 100]],
                                    f"good-{k}"))
        for k in range(0, 300, 100)
    ]  # fmt: skip
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, [*poison, *good], retain_archive=False)
        await wait_for(lambda: count(influxdb) == 300, what="every good reading")
        await wait_for(lambda: consumer.stats.acked == len(poison) + 3, what="every message acked")
        assert consumer.stats.invalid == len(poison)
        known = consumer.ledger.known_days()
        archived = consumer.ledger.rows("SELECT count(*) FROM archive_version")[0][0]
    # nothing of a rejected message was stored: not even the good first reading of `half`
    assert influxdb.query("SELECT count(quality) FROM reading WHERE meter = '000000000903'") == []
    assert known == ["2026-11-25"]
    assert archived == 0
    spool = Spool(cfg.consumer.spool)
    try:
        assert spool.dead_counts() == {"schema": len(poison)}
        dead = spool.dead_letters()
    finally:
        spool.close()
    assert [d.error.split(":")[0] for d in dead] == [
        *(f"{kind} payload not convertible" for _, kind, _ in poison[:5]),
        "readings payload invalid at /",
        "readings payload invalid at /",
        "events payload not convertible",
    ]
    assert "day is out of range for month" in dead[0].error
    assert b"2026-02-30T00:00:00+08:00" in dead[0].body
    assert "not JSON: JSON is malformed: unexpected end of escaped utf-16" in dead[5].error
    assert "Expected `object`, got `array`" in dead[6].error
    assert "RecursionError" in dead[7].error


async def test_a_bad_day_already_in_the_ledger_neither_stops_ingest_nor_coverage(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, store: Store, store_url: str
) -> None:
    """A ledger written before conversions were checked may hold a round's data_day
    2026-11-31; the coverage job used to die on it, and the consumer with it."""
    cfg = config(tmp_path, mosquitto.port, influxdb.url, store=store_url)
    Ledger(store)
    store.execute(
        "INSERT INTO daily_failure VALUES ('c-001', '000000000001', '2026-11-31', 'no_reply',"
        " '', 0)"
    )
    store.execute("INSERT INTO dirty_day VALUES ('2026-11-31', 1)")
    ids = meters(20)
    good = [
        ("c-001", "archive", archive("c-001", 1, [(m, "east", "acme") for m in ids],
                                     "2026-11-20T10:00:00+08:00")),
        ("c-001", "readings", batch("c-001", [reading(m, "2026-11-25") for m in ids], "good")),
    ]  # fmt: skip
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, good)
        await wait_for(lambda: count(influxdb) == 20, what="the readings")
        await wait_for(
            lambda: influxdb.query("SELECT collected FROM coverage WHERE scope = 'fleet'"),
            what="coverage of 2026-11-25",
        )
        await wait_for(lambda: not consumer.ledger.dirty_days(), what="no dirty day left")
    (series,) = influxdb.query("SELECT collected FROM coverage WHERE scope = 'fleet'")
    assert series["values"] == [[1795564800, 20.0]]  # 2026-11-25T00:00Z, and only that day


async def test_dead_letters_go_back_to_the_spool_for_another_attempt(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, capsys: pytest.CaptureFixture[str]
) -> None:
    """`meterlink central spool --replay-dead`: lines refused for the set-up's sake (what a
    consumer that dead-lettered 401/404 left behind) land once moved back; a really bad line
    is refused again and stays one dead letter."""
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    old = Converted()
    convert("readings", batch("c-001", [reading(m, "2026-11-24") for m in meters(60)], "o"), old)
    spool = Spool(cfg.consumer.spool)
    spool.dead("influx", "v1", 'HTTP 404: {"error":"database not found"}',
               "\n".join(old.lines[:40]).encode(), 404)  # fmt: skip
    spool.dead("influx", "v1", "HTTP 401: {}", "\n".join(old.lines[40:]).encode(), 401)
    spool.close()
    ids = meters(50)
    odd = reading("000000000099", "2026-11-26")
    odd["values"]["energy_import_total_kwh"] = {"value": "n/a", "unit": "kWh"}
    data = [
        ("c-001", "readings", batch("c-001", [reading(m, "2026-11-25") for m in ids], "n")),
        ("c-001", "readings", batch("c-001", [*(reading(m, "2026-11-26") for m in ids), odd], "x")),
    ]
    conf = tmp_path / "central.toml"
    conf.write_text(f'[consumer]\nspool = "{cfg.consumer.spool}"\n')
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, data[:1])  # the field's type is float from now on
        await wait_for(lambda: count(influxdb) == 50, what="the first batch")
        await publish(mosquitto.port, data[1:])
        await wait_for(lambda: consumer.sink.stats.dead_lines == 1, what="the 400")
        assert consumer.spool.dead_counts() == {"influx": 3}
        capsys.readouterr()
        assert main(["central", "spool", "--config", str(conf), "--replay-dead"]) == 0
        assert "moved 3 dead letters (61 lines) back to the spool" in capsys.readouterr().out
        await wait_for(lambda: count(influxdb) == 160, what="the revived lines")
        await wait_for(lambda: consumer.sink.stats.dead_lines == 2, what="the 400 again")
        # the refused line is a dead letter before its batch leaves the spool (nothing is lost
        # between the two), so the spool empties a moment after the count
        await wait_for(lambda: consumer.spool.pending() == (0, 0), what="the spool emptied")
    spool = Spool(cfg.consumer.spool)
    try:
        (dead,) = spool.dead_letters()
    finally:
        spool.close()
    assert (dead.kind, dead.status) == ("influx", 400)
    assert b"meter=000000000099" in dead.body


async def test_a_batch_is_bounded_by_lines_not_only_readings(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    # no timer in this test's life: only the size bound writes (and acknowledges) the batch;
    # the coverage job's timer too (its day lines, written 0.3 s later, once counted here)
    cfg = config(tmp_path, mosquitto.port, influxdb.url,
                 consumer={"batch_readings": 50, "flush_interval_s": 3600},
                 coverage={"interval_s": 3600})  # fmt: skip
    failed = [(m, "no_reply") for m in meters(60)]  # 61 lines, not one reading
    report = round_report("c-001", "2026-11-25", failed, expected=60)
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, [("c-001", "rounds", report)])
        await wait_for(lambda: consumer.stats.acked == 1, what="the report written and acked")
        assert consumer.stats.readings == 0
        assert consumer.sink.stats.written_lines == 61
