"""Every InfluxQL query in deploy/grafana runs on the real influxd and gives the known numbers.

The scenario fleet (tests/central/scenario.py) goes through the whole pipeline — MQTT, the
consumer, the ledger, the coverage job, the v1 writer — then each panel's query is run with
Grafana's variables substituted the way Grafana does for InfluxQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.central import scenario
from tests.central.helpers import config, publish, running_consumer, wait_for
from tests.fixtures.services import InfluxDB1, Mosquitto

REPO = Path(__file__).resolve().parents[2]
#: the coverage dashboards (the top-up one is checked against its own data in
#: tests/topup/test_kpi.py, the tariff one in tests/central/test_tariff_dashboard.py)
DASHBOARDS = sorted(
    p
    for p in (REPO / "deploy" / "grafana" / "dashboards").glob("*.json")
    if "topup" not in p.stem and "tariff" not in p.stem
)
ONE_DAY = "time >= '2026-11-24T00:00:00Z' AND time < '2026-11-25T00:00:00Z'"
THIRTY_DAYS = "time >= '2026-10-26T00:00:00Z' AND time < '2026-11-25T00:00:00Z'"
VARIABLES = {"$concentrator": "(c-001)", "$min_days": "3"}


def r4(x: float) -> float:
    return round(100 * x, 4)


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            yield f"{path.stem}: {panel['title']}", panel


def render(panel: dict[str, Any], query: str) -> str:
    query = query.replace("$timeFilter", THIRTY_DAYS if panel.get("timeFrom") else ONE_DAY)
    for name, value in VARIABLES.items():
        query = query.replace(name, value)
    assert not re.search(r"\$[a-zA-Z_]", query), query
    return query


def rows(series: list[dict[str, Any]], *tags: str) -> dict[Any, list[Any]]:
    """{tag values (or the time for an untagged series): the row's values without time}."""
    out: dict[Any, list[Any]] = {}
    for s in series:
        for values in s["values"]:
            key = tuple(s["tags"][t] for t in tags) if tags else values[0]
            key = key[0] if isinstance(key, tuple) and len(key) == 1 else key
            out[key] = values[1:]
    return out


def day(n: int) -> int:
    return 1795132800 + 86400 * (n - 20)  # 2026-11-20T00:00Z is 1795132800


QUIET = ["abnormal_reply", "address_mismatch", "bus_busy", "bus_error", "checksum"]
QUIET += ["frame_error", "implausible_value", "meter_offline", "not_attempted", "timeout"]
QUIET += ["module_busy", "module_deny", "module_timeout"]  # a carrier module's
QUIET += ["storage_full"]  # a concentrator whose disk is full
REASONS_0 = dict.fromkeys(QUIET, 0)

EXPECTED: dict[str, Any] = {
    "Fleet full-coverage rate 全口径抄表成功率": lambda s: rows(s) == {day(24): [r4(11 / 14)]},
    "Timely 及时率": lambda s: rows(s) == {day(24): [r4(10 / 14)]},
    "Complete 完整率": lambda s: rows(s) == {day(24): [r4(10 / 14)]},
    "Meters expected / read / failed": lambda s: list(rows(s).values()) == [[14, 11, 3]],
    "Daily trend (30 days)": lambda s: (
        rows(s)
        == {
            day(21): [r4(9 / 14)] * 3,
            day(22): [r4(8 / 14)] * 3,
            day(23): [r4(8 / 14)] * 3,
            day(24): [r4(11 / 14), r4(10 / 14), r4(10 / 14)],
        }
    ),
    "By concentrator": lambda s: (
        rows(s, "key") == {"c-001": [10, 8, 80, 70, 70], "c-002": [4, 3, 75, 75, 75]}
    ),
    "By district": lambda s: (
        rows(s, "key")
        == {"east": [5, 5, 100, 100, 100], "west": [9, 6, r4(6 / 9), r4(5 / 9), r4(5 / 9)]}
    ),
    "By manufacturer": lambda s: (
        rows(s, "key")
        == {"acme": [9, 7, r4(7 / 9), r4(7 / 9), r4(6 / 9)], "zeta": [5, 4, 80, 60, 80]}
    ),
    "Concentrator trend ($concentrator)": lambda s: (
        rows(s) == {day(21): [90], day(22): [80], day(23): [80], day(24): [80]}
    ),
    "Failures by reason (fleet)": lambda s: (
        {k: v[0] for k, v in rows(s, "reason").items()}
        == {**REASONS_0, "no_reply": 1, "route_failure": 1, "unexplained": 1}
    ),
    "Failures by reason, $concentrator (30 days)": lambda s: (
        {(tags["reason"], t): v for x in s for tags in [x["tags"]] for t, v in x["values"] if v}
        == {
            ("unexplained", day(21)): 1,
            ("unexplained", day(22)): 1,
            ("unexplained", day(23)): 1,
            ("unexplained", day(24)): 1,
            ("no_reply", day(22)): 1,
            ("no_reply", day(23)): 1,
            ("no_reply", day(24)): 1,
        }
    ),
    "Consecutive failures 连续失败明细 (>= $min_days days)": lambda s: (
        rows(s, "meter")
        == {
            scenario.M[9]: [3, "no_reply", "2026-11-21", "west", "acme"],
            scenario.M[10]: [4, "unexplained", "never", "west", "zeta"],
            scenario.M[104]: [4, "route_failure", "never", "west", "acme"],
        }
    ),
}


@pytest.fixture
async def published(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1) -> InfluxDB1:
    cfg = config(tmp_path, mosquitto.port, influxdb.url)
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, scenario.messages())
        await wait_for(lambda: consumer.stats.acked == len(scenario.messages()), what="acks")
        await wait_for(lambda: not consumer.ledger.dirty_days(), what="coverage published")
    return influxdb


def test_every_panel_has_an_expectation() -> None:
    assert DASHBOARDS
    titles = {panel["title"] for _, panel in panels()}
    assert titles == set(EXPECTED)


async def test_every_dashboard_query_gives_the_known_numbers(published: InfluxDB1) -> None:
    checked = 0
    for name, panel in panels():
        for target in panel["targets"]:
            query = render(panel, target["query"])
            series = published.query(query)
            assert series, f"{name}: no rows for {query}"
            assert EXPECTED[panel["title"]](series), f"{name}: {query}\n{series}"
            checked += 1
    assert checked == len(EXPECTED)


async def test_the_panel_variables_resolve(published: InfluxDB1) -> None:
    dash = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "concentrator"]
    series = published.query(var["query"])
    assert [v[1] for v in series[0]["values"]] == ["c-001", "c-002"]
