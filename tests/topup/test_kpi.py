"""The top-up KPI (远程充值成功率 and what stands beside it) from a known order book: the
formula with pending orders against it, the groupings, `meterlink central report --topups`,
the reconciliation export, the `topup*` points in a real InfluxDB and every panel of the
top-up dashboard run on them."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from central.config import InfluxConfig
from central.store import open_store
from central.topup.kpi import compute, day_lines, rate_line, render
from central.topup.orders import Order, OrderBook, State
from central.topup.reconcile import reconciliation, render_csv
from central.writers import make_writer
from tests.fixtures.services import running_influxdb

REPO = Path(__file__).resolve().parents[2]
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
DAY = "2026-11-24"
T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=TZ).timestamp()


def order(order_id: str, state: State, **kw: Any) -> Order:
    base: dict[str, Any] = dict(  # noqa: C408 - the Order's keyword names
        order_id=order_id, kind="topup", seq=0, meter=f"m-{order_id}", concentrator="c-1",
        address="000000000001", mode="local", district="east", manufacturer="acme",
        model="DDZY666", install_year=2014, customer="1", amount_fen=1000, purchase_count=1,
        count_assigned=False, action=None, body="{}", state=state, reason=None,
        reason_class=None, detail="", day=DAY, accepted_at=T0, deadline=T0 + 86400,
        updated_at=T0, finished_at=None, next_at=T0, attempts=1, esam_failures=0, rechecks=0,
        relay_tries=0, touched=True, uncertain=False, credited=False, result={},
        lease_holder=None, lease_until=None, notify_state="none", notify_attempts=0,
        notify_next_at=None, notify_error="",
    )  # fmt: skip
    base.update(kw)
    return Order(**base)


WEST = {"concentrator": "c-2", "district": "west", "manufacturer": "zeta", "model": "DDZY71",
        "install_year": 2015}  # fmt: skip
ORDERS = [
    order("o1", State.CONFIRMED, finished_at=T0 + 10, credited=True, amount_fen=5000),
    order("o2", State.CONFIRMED, attempts=3, finished_at=T0 + 50, credited=True),
    order("o3", State.FAILED, reason="hoarding_exceeded", reason_class="business", **WEST),
    order(
        "o4",
        State.NEEDS_REVIEW,
        attempts=2,
        reason="out_of_band_purchase",
        reason_class="business",
        **WEST,
    ),
    order("o5", State.QUEUED, attempts=0, touched=False),
    order("o6", State.VERIFYING, **WEST),
    order("o7", State.CANCELLED, attempts=0, touched=False),
    order("r1", State.CONFIRMED, kind="relay", action="close", amount_fen=None),
    order(
        "r2",
        State.FAILED,
        kind="relay",
        action="close",
        amount_fen=None,
        reason="relay_fault",
        reason_class="archive",
    ),
]


def test_the_rate_counts_pending_orders_against_it() -> None:
    k = compute(DAY, ORDERS)
    f = k.fleet()
    assert (f.orders, f.confirmed, f.failed, f.needs_review, f.in_progress, f.waiting) == (
        6, 2, 1, 1, 1, 1,
    )  # fmt: skip
    assert f.rate == 33.33  # 2 / 6: cancelled left out, pending counted
    assert (f.first_attempt_rate, f.attempts_per_order) == (16.67, 1.33)
    assert (f.p50_s, f.p95_s) == (10.0, 50.0)
    assert (f.relay_orders, f.relay_confirmed, f.relay_rate) == (2, 1, 50.0)
    assert dict(f.classes) == {"business": 2}
    assert {s.key: s.rate for s in k.by("concentrator")} == {"c-1": 66.67, "c-2": 0.0}
    assert {s.key: s.orders for s in k.by("install_year")} == {"2014": 3, "2015": 3}
    assert [(m.meter, m.reasons) for m in k.failing] == [
        ("m-o3", "hoarding_exceeded 1"),
        ("m-o4", "out_of_band_purchase 1"),
    ]
    line = rate_line(k)
    assert line.startswith(f"远程充值成功率 {DAY}: 33.33 % (2/6)")
    assert "停复电成功率 50.00 % (1/2)" in line
    assert json.loads(render(k, "json"))["scopes"][0]["rate"] == 33.33
    assert render(k, "csv").splitlines()[1].startswith("fleet,all,6,2,1,1,1,1,33.33")


def test_report_and_reconciliation_from_the_store(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/central.sqlite3"
    store = open_store(url)
    book = OrderBook(store, TZ)
    book.migrate()
    book.insert_many(ORDERS)
    doc = reconciliation(book, DAY)
    store.close()
    assert doc["totals"]["confirmed_topups"] == 2
    assert doc["totals"]["credited_fen"] == 6000
    assert doc["totals"]["by_state"]["topup:cancelled"] == 1
    assert [o["order_id"] for o in doc["orders"]][:3] == ["o1", "o2", "o3"]
    assert render_csv(doc).splitlines()[5] == "# credited_fen,6000"
    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{url}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "meterlink", "central", "report", "--topups", "--day", DAY,
         "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines()[0] == rate_line(compute(DAY, ORDERS))
    assert "m-o3 c-2 west zeta DDZY71 2015: 1 of 1 (hoarding_exceeded 1)" in out
    csv_out = subprocess.run(
        [sys.executable, "-m", "meterlink", "central", "topup", "reconcile", "--day", DAY,
         "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    assert csv_out == render_csv(doc)


EXPECTED: dict[str, Any] = {
    "Remote top-up success rate 远程充值成功率": [[33.33]],
    "Relay orders 停复电成功率": [[50.0]],
    "First-attempt success": [[16.67]],
    "Orders by final state": [[2.0, 1.0, 1.0, 1.0, 1.0]],
    "Time to confirmation p50 / p95, attempts per order": [[10.0, 50.0, 1.33]],
    "Failures by class": {"archive": [0.0], "business": [2.0], "communication": [0.0]},
    "Failures by reason": {"hoarding_exceeded": [1.0], "out_of_band_purchase": [1.0]},
    "Top-up success rate trend (30 days)": [[33.33, 50.0]],
    "By concentrator": {"c-1": [3.0, 2.0, 66.67, 33.33, 50.0], "c-2": [3.0, 0.0, 0.0, 0.0, None]},
    "By district": {"east": [3.0, 2.0, 66.67, 33.33, 50.0], "west": [3.0, 0.0, 0.0, 0.0, None]},
    "By manufacturer": {"acme": [3.0, 2.0, 66.67, 33.33, 50.0], "zeta": [3.0, 0.0, 0.0, 0.0, None]},
    "By model": {"DDZY666": [3.0, 2.0, 66.67, 33.33, 50.0], "DDZY71": [3.0, 0.0, 0.0, 0.0, None]},
    "By install year": {"2014": [3.0, 2.0, 66.67, 33.33, 50.0], "2015": [3.0, 0.0, 0.0, 0.0, None]},
    "Meters whose top-ups failed (replace them)": {
        "m-o3": [1.0, 1.0, "hoarding_exceeded 1", "west", "zeta", "DDZY71", 2015.0],
        "m-o4": [1.0, 1.0, "out_of_band_purchase 1", "west", "zeta", "DDZY71", 2015.0],
    },
}


@pytest.mark.slow
async def test_every_topup_panel_on_the_points_the_service_writes(tmp_path: Path) -> None:
    with running_influxdb(tmp_path) as influx:
        writer = make_writer(InfluxConfig(url=influx.url))
        await writer.start()
        await writer.write(day_lines(compute(DAY, ORDERS)))
        await writer.close()
        dash = json.loads((REPO / "deploy/grafana/dashboards/meterlink-topup.json").read_text())
        titles = [p["title"] for p in dash["panels"]]
        assert sorted(titles) == sorted(EXPECTED)
        one_day = "time >= '2026-11-24T00:00:00Z' AND time < '2026-11-25T00:00:00Z'"
        thirty = "time >= '2026-10-26T00:00:00Z' AND time < '2026-11-25T00:00:00Z'"
        for panel in dash["panels"]:
            query = panel["targets"][0]["query"].replace(
                "$timeFilter", thirty if panel.get("timeFrom") else one_day
            )
            series = influx.query(query)
            assert series, f"{panel['title']}: no rows for {query}"
            expected = EXPECTED[panel["title"]]
            if isinstance(expected, dict):
                got = {}
                for s in series:
                    key = s["tags"].get("key") or s["tags"].get("meter") or s["tags"].get(
                        "reason") if "class" not in s["tags"] else s["tags"]["class"]  # fmt: skip
                    if panel["title"] == "Failures by reason" and not s["values"][0][1]:
                        continue
                    got[key] = s["values"][0][1:]
                assert got == expected, (panel["title"], series)
            else:
                assert [v[1:] for s in series for v in s["values"]] == expected, (
                    panel["title"], series,
                )  # fmt: skip
