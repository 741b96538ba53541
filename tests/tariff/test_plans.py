"""Tariff plans: the strict file format, f_plan, and replacing them over HTTP (admin only)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from central.config import CentralConfig
from central.panel.app import running
from central.panel.auth import Users
from central.store import Store, open_store
from central.tariff.plans import load_plans, parse_plans, table_vector
from central.tariff.store import TariffStore
from common.config import ConfigError
from tests.panel.test_access import PASSWORDS, Client, _config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "tariff-plans.example.toml"

ONE = """
[[plan]]
name = "p"
  [[plan.version]]
  effective = 2026-01-01
  tariffs = 4
  zones = [ { start = "01-01", table = 1 } ]
    [plan.version.tables]
    1 = [ { start = "08:00", tariff = 3 }, { start = "22:00", tariff = 4 } ]
"""


def test_the_example_loads_and_selects_as_documented() -> None:
    book = load_plans(EXAMPLE)
    assert sorted(book.plans) == ["prepaid-local", "resident-tou"]
    tou = book.plans["resident-tou"]
    # a summer Monday: sharp 11:00-13:00 (table 2)
    monday = dt.date(2026, 7, 6)
    assert [tou.tariff(monday, h * 60) for h in (7, 10, 11, 12, 13, 17, 22)] == [
        4,
        2,
        1,
        1,
        3,
        2,
        4,
    ]
    # Saturday: the weekend table (no peak), a holiday on a Thursday: table 3 too
    assert tou.tariff(dt.date(2026, 7, 4), 11 * 60) == 3
    assert tou.tariff(dt.date(2026, 10, 1), 11 * 60) == 3
    assert tou.tariff(dt.date(2026, 10, 2), 11 * 60) == 2  # Friday after: zone table 1
    # before the first period the last one runs (over midnight)
    one = parse_plans(ONE).plans["p"]
    assert one.tariff(dt.date(2026, 3, 3), 0) == 4
    assert one.tariff(dt.date(2026, 3, 3), 8 * 60) == 3
    assert one.tariff(dt.date(2025, 12, 31), 0) is None  # before the plan
    local = book.plans["prepaid-local"]
    change = local.next_change(dt.date(2026, 12, 1), "price")
    assert change is not None
    assert change.effective == dt.date(2027, 1, 1)
    assert local.next_change(dt.date(2026, 12, 1), "tou") is None  # same tables


def test_table_vectors_agree_with_a_minute_by_minute_lookup() -> None:
    periods = [(8 * 60, 3), (22 * 60, 4), (10 * 60 + 30, 2)]
    vector = table_vector(periods)
    ordered = sorted(periods)
    for minute in range(1440):
        started = [t for s, t in ordered if s <= minute]
        assert vector[minute] == (started[-1] if started else ordered[-1][1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("tariffs = 4", "tariffs = 4\ncolour = 1"), "plan[0].version[0].colour: unknown key"),
        (("tariff = 3 }", "tariff = 5 }"), "tariff 5 at 08:00 is not 1..4"),
        (("tariff = 3 }", 'tariff = "3" }'), "tariff: expected int, got a string"),
        (("table = 1 }", "table = 2 }"), "daily table(s) [2] used but not defined"),
        (('"22:00"', '"08:10"'), ">= 15 minutes apart"),
        (('"22:00"', '"24:00"'), "not a time of day"),
        (('start = "01-01"', 'start = "02-30"'), "not a calendar day"),
        (("effective = 2026-01-01", "effective = 2026-01-01T00:00:00"), "a date (YYYY-MM-DD)"),
        (('name = "p"', 'name = "p q"'), "plan name 'p q'"),
        (("[[plan]]", "[[plan]]\nmode = 'local'"), "needs prices"),
        (("[[plan]]", "[[plans]]"), "plans: unknown key; did you mean plan?"),
    ],
)
def test_a_wrong_plan_file_names_the_key(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_plans(ONE.replace(*change, 1))
    assert message in str(err.value)


def test_a_plan_defined_twice_and_bad_toml_are_refused() -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        parse_plans(ONE + ONE)
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_plans("[[plan]\n")


# --- over HTTP -----------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="test")
    users = Users(s)
    users.add("otto", "operator", PASSWORDS["otto"])
    users.add("ada", "admin", "admin-password-1")
    yield s  # type: ignore[misc]
    s.close()


async def test_plans_are_replaced_over_http_by_an_admin_only(tmp_path: Path, store: Store) -> None:
    cfg: CentralConfig = _config(tmp_path)
    urls: list[str] = []
    async with running(cfg, store, b"k" * 32, urls.append):
        base = urls[0].rstrip("/")
        for user, password in (("otto", PASSWORDS["otto"]), ("ada", "admin-password-1")):
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                client = Client(base, http)
                await client.log_in(user, password)
                token = await client.csrf()
                headers = {"X-CSRF-Token": token, "Content-Type": "application/toml"}
                url = f"{base}/api/tariff/plans"
                async with http.put(url, data=EXAMPLE.read_bytes(), headers=headers) as r:
                    status, text = r.status, await r.text()
                if user == "otto":
                    assert status == 403, text
                    async with http.get(url) as r:
                        assert r.status == 404  # nothing stored
                    continue
                assert status == 200, text
                async with http.put(url, data=b"[[plan]]\nname = 1\n", headers=headers) as r:
                    assert r.status == 400
                    assert "plan[0].name: expected str" in await r.text()
                async with http.put(url, data=EXAMPLE.read_bytes(), headers={}) as r:
                    assert r.status == 403  # no CSRF token
                async with http.get(url) as r:
                    assert r.status == 200
                    assert await r.text() == EXAMPLE.read_text()
    book = TariffStore(store).plans()
    assert book is not None
    assert sorted(book.plans) == ["prepaid-local", "resident-tou"]
    audit = store.rows("SELECT user_name, action, outcome FROM panel_audit WHERE action = ?",
                       ("tariff.plans",))  # fmt: skip
    assert audit == [("otto", "tariff.plans", "refused"), ("ada", "tariff.plans", "ok"),
                     ("ada", "tariff.plans", "failed")]  # fmt: skip
