"""The tariff dashboard's InfluxQL on the real influxd: the consumer's tariff job checks a day
(the archive, plans and set-ups of tests/central/test_tariff_day.py) and writes the KPI; every
panel's query gives the known numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from central.store import open_store
from central.tariff.day import SCOPES
from tests.central.helpers import config, running_consumer
from tests.central.test_dashboards import rows
from tests.central.test_tariff_day import D, _load
from tests.fixtures.services import InfluxDB1, Mosquitto

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "meterlink-tariff.json"
ONE_DAY = f"time >= '{D}T00:00:00Z' AND time < '{D}T23:59:59Z'"
THIRTY = f"time >= '2026-05-20T00:00:00Z' AND time < '{D}T23:59:59Z'"
AT = 1781481600  # 2026-06-15T00:00Z, the day's points

EXPECTED: dict[str, Any] = {
    "Tariff execution rate 电价执行正确率": lambda s: rows(s) == {AT: [50.0]},
    "Meters with a plan / OK / clock-suspect": lambda s: rows(s) == {AT: [4, 2, 0]},
    "Outcomes (fleet)": lambda s: rows(s) == {AT: [2, 0, 1, 0, 0, 0, 0, 0, 0, 1]},
    "Tariff execution by concentrator": lambda s: rows(s, "key") == {"c-1": [4, 2, 50]},
    "Tariff execution by district": lambda s: (
        rows(s, "key") == {"east": [3, 1, r3(100 / 3)], "west": [1, 1, 100]}
    ),
    "Tariff execution by manufacturer": lambda s: rows(s, "key") == {"acme": [4, 2, 50]},
    "Tariff execution by model": lambda s: (
        rows(s, "key") == {"DDZY666": [3, 2, r3(200 / 3)], "DTZY": [1, 0, 0]}
    ),
    "Tariff execution rate, daily (30 days)": lambda s: rows(s) == {AT: [50.0]},
    "Meters not OK (see meterlink central tariff workorders)": lambda s: (
        rows(s, "meter")
        == {"m-bad": ["PARAM_MISMATCH", "resident-tou"], "m-unread": ["NOT_READ", "resident-tou"]}
    ),
}


def r3(x: float) -> float:
    return round(x, 4)


async def test_every_tariff_panel_gives_the_known_numbers(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    store = open_store(cfg.store.url, name="setup")
    try:
        _load(store)
    finally:
        store.close()
    async with running_consumer(cfg) as consumer:
        assert await consumer.publish_tariff([D]) == 1
        assert await consumer.publish_tariff([D]) == 0  # nothing changed: not checked again
        consumer.tariffs.record_job("c-1", "m-ok", "workorder", 1, 2, "t", "")
        assert await consumer.publish_tariff([D]) == 1
    assert set(SCOPES) == {"fleet", "concentrator", "district", "manufacturer", "model"}
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    assert {p["title"] for p in panels} == set(EXPECTED)
    for panel in panels:
        for target in panel["targets"]:
            query = target["query"].replace(
                "$timeFilter", THIRTY if panel.get("timeFrom") else ONE_DAY
            )
            series = influxdb.query(query)
            assert series, f"{panel['title']}: no rows for {query}"
            assert EXPECTED[panel["title"]](series), f"{panel['title']}: {query}\n{series}"


async def test_the_consumer_takes_tariff_payloads_from_mqtt(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1
) -> None:
    from protocols.payloads import validate
    from tests.central.helpers import publish, wait_for
    from tests.tariff.test_check import TOU, good

    setup = good(TOU)
    payload = {
        "schema": "meterlink.tariff/1",
        "concentrator": "c-1",
        "meter": "m-ok",
        "read_at": setup.read_at.isoformat(),
        "reason": "first",
        "setup": setup.to_payload(),
        "raw": {"04000201": "03"},
    }
    validate("tariff", payload)
    bad = {**payload, "setup": {**payload["setup"], "counts": {"zones": -1}}}
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, [("c-1", "tariff", payload), ("c-1", "tariff", bad)])
        await wait_for(lambda: consumer.stats.acked == 2, what="both acknowledged")
        rows = consumer.store.rows("SELECT meter, read_at FROM tariff_setup")
        assert rows == [("m-ok", int(setup.read_at.timestamp()))]
        assert consumer.stats.invalid == 1  # the broken one is a dead letter, nothing stored
    series = influxdb.query('SELECT last("unsupported") FROM "tariff_read" GROUP BY "meter"')
    assert series[0]["tags"] == {"meter": "m-ok"}
