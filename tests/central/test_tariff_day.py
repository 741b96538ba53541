"""The tariff check over an archive in the store (SQLite and PostgreSQL): outcomes persisted,
the KPI by scope, the report and the work orders from the command line."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from central.ledger import Ledger
from central.points import ArchiveFact, Converted, TariffRead, archive_digest, convert
from central.store import Store
from central.tariff.check import CheckSettings
from central.tariff.day import check_day, day_lines
from central.tariff.store import TariffStore
from meterlink.cli import main
from tests.tariff.test_check import BOOK, DAY, LOCAL, TOU, good

D = DAY.isoformat()
METERS = ("m-ok", "m-bad", "m-unread", "m-local", "m-noplan", "m-unknown")


def _archive() -> Converted:
    meters = tuple((m, "east" if i < 3 else "west", "acme", "b1") for i, m in enumerate(METERS))
    extras = (
        ("DDZY666", "resident-tou"),
        ("DDZY666", "resident-tou"),
        ("DTZY", "resident-tou"),
        ("DDZY666", "prepaid-local"),
        ("DDZY666", ""),
        ("DDZY666", "nope"),
    )
    at = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp())
    fact = ArchiveFact("c-1", 1, at, "2026-06-01", meters, archive_digest(meters, extras), extras)
    return Converted(archives=[fact])


def _load(store: Store) -> tuple[Ledger, TariffStore]:
    ledger = Ledger(store)
    ledger.apply(_archive(), [])
    tariffs = TariffStore(store)
    tariffs.replace_plans(BOOK.text, "test")
    bad = good(TOU)
    t1 = tuple(dataclasses.replace(p, hour=9) if p.hour == 8 else p for p in bad.sets[0].tables[1])
    bad = dataclasses.replace(
        bad,
        sets=(dataclasses.replace(bad.sets[0], tables={**bad.sets[0].tables, 1: t1}), bad.sets[1]),
    )
    local = good(LOCAL)
    v27 = LOCAL.version[1]
    assert v27.prices is not None
    local = dataclasses.replace(
        local,
        switch_prices=dt.datetime(2027, 1, 1),
        prices_backup=tuple(Decimal(str(p)) for p in v27.prices),
    )
    facts = Converted()
    for meter, setup in (("m-ok", good(TOU)), ("m-bad", bad), ("m-local", local)):
        facts.tariffs.append(
            TariffRead("c-1", meter, int(setup.read_at.timestamp()), setup.to_payload())
        )
    tariffs.apply_converted(facts)
    return ledger, tariffs


def test_a_day_is_checked_stored_and_counted_by_scope(store: Store) -> None:
    ledger, tariffs = _load(store)
    result = check_day(ledger, tariffs, BOOK, D, CheckSettings(), "Asia/Shanghai")
    got = {o.meter: o.outcome for o in result.outcomes}
    assert got == {"m-ok": "OK", "m-bad": "PARAM_MISMATCH", "m-unread": "NOT_READ", "m-local": "OK"}
    fleet = result.fleet()
    assert (fleet.meters, fleet.ok, fleet.rate) == (4, 2, 50.0)
    by = {(s.scope, s.key): (s.meters, s.ok) for s in result.scopes}
    assert by[("district", "east")] == (3, 1)
    assert by[("district", "west")] == (1, 1)
    assert by[("model", "DTZY")] == (1, 0)
    assert result.unknown_plans == [("c-1", "m-unknown", "nope")]
    assert result.without_plan == 1
    stored = {o.meter: o for o in tariffs.outcomes(D)}
    assert stored["m-bad"].detail["findings"]["PARAM_MISMATCH"]["tables"]["1"]["found"][1] == (
        "09:00→T3"
    )
    lines = day_lines(result)
    assert any(
        ln.startswith("tariff_execution,scope=fleet,key=all ") and "rate=50.0" in ln for ln in lines
    )
    assert sum(ln.startswith("tariff_outcome,") for ln in lines) == 4


def test_report_and_work_orders_from_the_command_line(
    store: Store, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _load(store)
    # the freeze of the day makes it a day with data
    out = Converted()
    convert(
        "readings",
        {
            "schema": "meterlink.readings/1",
            "concentrator": "c-1",
            "batch_id": "b-1",
            "sent_at": f"{D}T00:06:00+08:00",
            "readings": [
                {
                    "meter": "m-ok",
                    "item": "daily_freeze",
                    "data_time": f"{D}T00:00:00+08:00",
                    "read_at": f"{D}T00:05:00+08:00",
                    "values": {
                        "energy_import_total_kwh": {"value": 10.0, "unit": "kWh"},
                        "energy_import_t1_kwh": {"value": 0.0, "unit": "kWh"},
                        "energy_import_t2_kwh": {"value": 3.0, "unit": "kWh"},
                        "energy_import_t3_kwh": {"value": 3.0, "unit": "kWh"},
                        "energy_import_t4_kwh": {"value": 4.0, "unit": "kWh"},
                    },
                }
            ],
        },
        out,
    )
    assert out.freezes[0].registers == (0.0, 3.0, 3.0, 4.0)
    Ledger(store).apply(out, [])
    TariffStore(store).apply_converted(out)
    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\n')
    assert main(["central", "report", "--tariff", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"data day {D}" in text
    assert "fleet: 2/4 OK = 50.00%" in text
    assert "m-bad" in text
    assert "set 1 table 1: expected" in text
    assert main(["central", "report", "--tariff", "--config", str(config), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["scopes"][0]["rate"] == 50.0
    assert main(["central", "tariff", "workorders", "--config", str(config), "--day", D]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["meter"], r["outcome"]) for r in rows] == [("m-bad", "PARAM_MISMATCH")]
    assert "04010001=000004 080003" in rows[0]["to_write"]


async def test_the_panel_shows_the_rate_the_outcome_and_the_meters_not_ok(
    store: Store, tmp_path: Path
) -> None:
    import aiohttp

    from central.panel.app import running
    from central.panel.auth import Users
    from tests.panel.test_access import PASSWORDS, Client, _config

    ledger, tariffs = _load(store)
    check_day(ledger, tariffs, BOOK, D, CheckSettings(), "Asia/Shanghai")
    Users(store).add("vera", "viewer", PASSWORDS["vera"])
    cfg = _config(tmp_path)
    urls: list[str] = []
    async with (
        running(cfg, store, b"k" * 32, urls.append) as svc,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        section = svc.registry.sections["tariff"]
        assert section.configured
        assert section.provider is not None
        figure = await section.provider.figure(D)
        assert figure is not None
        assert (figure.rate, figure.numerator, figure.denominator) == (50.0, 2, 4)
        client = Client(urls[0].rstrip("/"), http)
        await client.log_in("vera")
        async with http.get(f"{client.base}/section/tariff") as r:
            page = await r.text()
        assert "m-bad" in page
        assert "PARAM_MISMATCH" in page
        assert "m-ok" not in page
        async with http.get(f"{client.base}/meters/c-1/m-bad?day={D}") as r:
            assert "set 1 table 1: expected" in (await r.text()).replace("&gt;", ">")


def test_a_recorded_job_covers_the_programming_it_did(
    store: Store, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, tariffs = _load(store)
    later = good(
        TOU,
        event_counters={"03300500": 4, "03300600": 1},
        read_at=dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC),
        meter_time=dt.datetime(2026, 6, 15, 20),
    )
    facts = Converted()
    facts.tariffs.append(
        TariffRead("c-1", "m-ok", int(later.read_at.timestamp()), later.to_payload())
    )
    tariffs.apply_converted(facts)
    outcome = {
        o.meter: o.outcome
        for o in check_day(ledger, tariffs, BOOK, D, CheckSettings(), "Asia/Shanghai").outcomes
    }
    assert outcome["m-ok"] == "PROGRAMMED_OUTSIDE_PLAN"
    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\n')
    args = [
        "central",
        "tariff",
        "job",
        "--config",
        str(config),
        "--concentrator",
        "c-1",
        "--meter",
        "m-ok",
        "--start",
        "2026-06-15T11:00:00+08:00",
        "--end",
        "2026-06-15T11:30:00+08:00",
        "--by",
        "technician 7",
        "--detail",
        "WO-1",
    ]
    assert main(args) == 0
    assert "recorded" in capsys.readouterr().out
    outcome = {
        o.meter: o.outcome
        for o in check_day(ledger, tariffs, BOOK, D, CheckSettings(), "Asia/Shanghai").outcomes
    }
    assert outcome["m-ok"] == "OK"
    assert main([*args[:-6], "--start", "yesterday", "--end", "x", "--by", "t"]) == 2


def test_a_tariff_payload_becomes_a_set_up_fact_and_a_point() -> None:
    from central.points import NotConvertible

    setup = good(TOU)
    body = {
        **setup.to_payload(),
        "meter": "m-ok",
        "reason": "weekly",
        "clock_offset_s": 1.5,
        "raw": {"04000201": "03"},
    }
    out = Converted()
    convert("tariff", {"schema": "x", "concentrator": "c-1", **body}, out)
    assert [(t.meter, t.setup["counts"]["zones"]) for t in out.tariffs] == [("m-ok", 3)]
    assert out.lines[0].startswith("tariff_read,concentrator=c-1,meter=m-ok ")
    assert 'reason="weekly"' in out.lines[0]
    broken = {**body, "counts": {"zones": "three"}}
    with pytest.raises(NotConvertible, match="counts"):
        convert("tariff", {"concentrator": "c-1", **broken}, out)
    assert len(out.tariffs) == 1  # all of a payload or nothing


SWITCHING_TODAY = """
[[plan]]
name = "resident-tou"
  [[plan.version]]
  effective = 2026-01-01
  tariffs = 4
  zones = [ { start = "01-01", table = 1 } ]
    [plan.version.tables]
    1 = [ { start = "00:00", tariff = 4 }, { start = "08:00", tariff = 3 } ]
  [[plan.version]]
  effective = TODAY
  tariffs = 4
  zones = [ { start = "01-01", table = 1 } ]
    [plan.version.tables]
    1 = [ { start = "00:00", tariff = 4 }, { start = "07:00", tariff = 2 } ]
"""


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    async def send(self, concentrator: str, command: str, *, meter: str | None = None,
                   wait_s: float = 60.0) -> object:  # fmt: skip
        self.sent.append((concentrator, command, meter))

        class Reply:
            ok, reason = True, None

        return Reply()


async def test_after_a_plan_switch_the_centre_asks_for_fresh_reads(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    import zoneinfo

    from central.consumer import Consumer
    from tests.central.helpers import config

    today = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Shanghai")).date()
    _, tariffs = _load(store)  # the archive: m-ok, m-bad, m-unread on resident-tou
    tariffs.replace_plans(SWITCHING_TODAY.replace("TODAY", today.isoformat()), "test")
    # m-ok was read before today's switch, m-bad after it
    facts = Converted()
    for meter, when in (("m-ok", dt.datetime(2026, 1, 5, tzinfo=dt.UTC)),
                        ("m-bad", dt.datetime.now(dt.UTC))):  # fmt: skip
        store.execute("DELETE FROM tariff_setup WHERE meter = ?", (meter,))
        setup = good(TOU, read_at=when)
        facts.tariffs.append(TariffRead("c-1", meter, int(when.timestamp()), setup.to_payload()))
    tariffs.apply_converted(facts)
    consumer = Consumer(config(tmp_path, 1, "http://127.0.0.1:1", store=store_url))
    try:
        sender = _Sender()
        assert await consumer.request_switch_reads(sender) == 1
        assert sender.sent == [("c-1", "tariff", "m-ok")]
        # without the command key nothing is sent (and nothing fails)
        assert await consumer.request_switch_reads() == 0
    finally:
        consumer.store.close()
        consumer.spool.close()


def test_an_archive_without_tariff_plans_keeps_its_digest() -> None:
    meters = (("m-1", "east", "acme", "b1"), ("m-2", "east", "acme", "b1"))
    before = archive_digest(meters)  # as coverage computed it before models and plans were kept
    assert archive_digest(meters, (("DDZY666", ""), ("DTZY666", ""))) == before
    assert archive_digest(meters, (("DDZY666", "resident-tou"), ("DTZY666", ""))) != before
