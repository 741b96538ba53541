"""The panel in a real browser (Debian's headless Chromium) against the seeded stack: the
numbers equal `meterlink central report`, drill-down by clicks, the CSV equals the table, a
viewer cannot act, an operator's "read now" reaches the simulator, CSRF, live updates.
Every page is saved as a screenshot (artifacts/panel/) and checked."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from tests.panel.browser import chromium, cjk_font, console_errors, log_in, screenshot, wait
from tests.panel.stack import HIST, LIVE, USERS, Stack, day, late_reading

pytestmark = pytest.mark.slow


@pytest.fixture
def viewer(stack: Stack) -> Any:
    with chromium() as driver:
        log_in(driver, stack.url, "vera", USERS["vera"][1])
        yield driver


@pytest.fixture
def operator(stack: Stack) -> Any:
    with chromium() as driver:
        log_in(driver, stack.url, "otto", USERS["otto"][1])
        yield driver


def _read(driver: WebDriver, css: str, attribute: str | None = None) -> str:
    """An element's attribute (its rendered text without one), found and read in one step in
    the page: the overview replaces its live region (`innerHTML`) on every refresh, so an
    element found in one WebDriver call can be gone by the next (a stale element, run 97)."""
    found, value = driver.execute_script(
        "const [css, name] = arguments; const e = document.querySelector(css);"
        " if (e === null) return [false, null];"
        " return [true, name === null ? e.innerText.trim() : e.getAttribute(name)];",
        css,
        attribute,
    )
    if not found:
        raise NoSuchElementException(f"no element {css!r} on the page")
    return str(value)


def _value(driver: WebDriver, css: str) -> str:
    return _read(driver, css, "data-value")


def _num(text: str) -> float | None:
    return float(text) if text not in ("", "None") else None


def _fleet(report: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in report["scopes"] if s["scope"] == "fleet")


def _post(driver: WebDriver, path: str, fields: dict[str, str], token: str | None) -> int:
    """A request forged in the page (the session cookie goes with it): its HTTP status."""
    script = """
      const [path, fields, token, done] = arguments;
      const body = new URLSearchParams(fields);
      const headers = {"Accept": "application/json"};
      if (token !== null) headers["X-CSRF-Token"] = token;
      fetch(path, {method: "POST", body, headers, credentials: "same-origin", redirect: "manual"})
        .then(r => done(r.status), e => done(String(e)));
    """
    status: int = driver.execute_async_script(script, path, fields, token)
    return status


def _audit(stack: Stack, action: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(stack.store) as db:
        return db.execute(
            "SELECT user_name, role, outcome, detail FROM panel_audit WHERE action = ?"
            " ORDER BY id", (action,)
        ).fetchall()  # fmt: skip


def _requests_to(stack: Stack, meter: str) -> int:
    return sum(1 for r in stack.records() if r["meter"] == meter and r["function"] == "read")


def test_a_cjk_font_is_installed() -> None:
    """Without one, every Chinese label renders as boxes (scripts/setup installs it)."""
    assert cjk_font(), "no CJK font: apt-get install fonts-wqy-microhei"


def test_overview_equals_the_report(stack: Stack, viewer: WebDriver, shots: Path) -> None:
    viewer.get(stack.url + "/")
    for kpi, offset in (("kpi-today", 0), ("kpi-yesterday", -1)):
        report = _fleet(stack.report(day(offset)))
        assert _read(viewer, f"#{kpi}", "data-day") == day(offset)
        assert _num(_value(viewer, f"#{kpi} .v-rate")) == report["rate"]
        assert _num(_value(viewer, f"#{kpi} .v-timely")) == report["timeliness_rate"]
        assert _num(_value(viewer, f"#{kpi} .v-complete")) == report["completeness_rate"]
        read = _read(viewer, f"#{kpi} .v-read")
        expected = _read(viewer, f"#{kpi} .v-expected")
        assert (int(read), int(expected)) == (report["read"], report["expected"])
        text = _read(viewer, f"#{kpi} .v-rate")
        assert text == f"{report['rate']:.2f}"
    today = _fleet(stack.report(day(0)))
    rows = viewer.execute_script(
        "return [...document.querySelectorAll('#reasons tbody tr')]"
        ".map(r => [r.dataset.reason, r.cells[1].innerText]);"
    )
    shown = {reason: int(count) for reason, count in rows}
    assert shown == today["failed_by_reason"]
    # the top-up slot is there, not configured; the tariff section is (central.tariff.panel),
    # with no figure: this stack has no tariff plans (tests/panel/test_tariff_browser.py has)
    assert "未配置" in _read(viewer, "#kpi-topup")
    tariff = _read(viewer, "#kpi-tariff")
    assert "未配置" not in tariff
    assert tariff.endswith("-")
    # both agents' retained status: c-live online; c-hist never had an agent here
    assert _read(viewer, "#agents-online") == "1"
    assert _read(viewer, "#agents-unknown") == "1"
    # the trend: days before yesterday are the coverage job's points in InfluxDB
    three_days_ago = day(-3)
    dot = _value(viewer, f'#trend circle.s-rate[data-x="{three_days_ago}"]')  # no dot: raises
    assert float(dot) == _fleet(stack.report(three_days_ago))["rate"]
    screenshot(viewer, shots, "overview", visible=("kpi-today", "kpi-yesterday", "trend",
                                                   "agents", "reasons", "worst"))  # fmt: skip


def test_concentrators_and_failures_equal_the_report(
    stack: Stack, viewer: WebDriver, shots: Path
) -> None:
    report = stack.report(day(0), "--min-days", "1")
    viewer.get(stack.url + "/concentrators")
    rows = viewer.find_elements(By.CSS_SELECTOR, "#concentrators tbody tr")
    shown = {r.get_attribute("data-key"): r.find_elements(By.TAG_NAME, "td") for r in rows}
    expected = {s["key"]: s for s in report["scopes"] if s["scope"] == "concentrator"}
    assert set(shown) == set(expected)
    for key, cells in shown.items():
        s = expected[key]
        assert [int(cells[1].text), int(cells[2].text), int(cells[6].text)] == [
            s["expected"],
            s["read"],
            s["failed"],
        ]
        assert cells[3].text == f"{s['rate']:.2f}"
    rates = [float(cells[3].text) for cells in shown.values()]
    assert rates == sorted(rates), "worst first"
    assert "在线" in shown[LIVE][7].text
    screenshot(viewer, shots, "concentrators", visible=("concentrators",))

    viewer.get(stack.url + "/failures?days=1")
    listed = [
        [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        for row in viewer.find_elements(By.CSS_SELECTOR, "#failures tbody tr")
    ]
    streaks = report["consecutive_failures"]
    assert [(r[0], r[1], int(r[4])) for r in listed] == [
        (s["meter"], s["concentrator"], s["days"]) for s in streaks
    ]
    assert [r[6] for r in listed] == [s["last_success"] or "从未" for s in streaks]
    screenshot(viewer, shots, "failures", visible=("filters", "failures", "csv"))


def test_drill_down_from_the_overview_to_a_failing_meter(
    stack: Stack, viewer: WebDriver, shots: Path
) -> None:
    viewer.get(stack.url + "/")
    worst = viewer.find_element(By.CSS_SELECTOR, "#worst tbody tr a")
    assert worst.text == HIST  # 5 of 12 failing today: the worst
    worst.click()
    wait(viewer).until(ec.presence_of_element_located((By.ID, "meters")))
    assert viewer.find_element(By.TAG_NAME, "h1").text.startswith(f"集中器 {HIST}")
    failing = viewer.find_elements(By.CSS_SELECTOR, "#meters tbody tr.failing")
    assert {r.get_attribute("data-meter") for r in failing} == {
        "000000000001", "000000000002", "000000000003", "000000000004"
    }  # fmt: skip
    screenshot(viewer, shots, "concentrator", visible=("meters",))
    # meter 3: failing four days (route_failure), read before: it has a history to draw
    row = next(r for r in failing if r.get_attribute("data-meter") == "000000000003")
    cells = row.find_elements(By.TAG_NAME, "td")
    assert cells[5].text == day(-4)
    assert cells[7].text == "4"
    assert "route_failure" in cells[6].text
    row.find_element(By.TAG_NAME, "a").click()
    wait(viewer).until(ec.presence_of_element_located((By.ID, "meter-facts")))
    assert viewer.find_element(By.TAG_NAME, "h1").text == "电能表 000000000003"
    assert viewer.find_element(By.ID, "last-success").text == day(-4)
    failures = viewer.find_elements(By.CSS_SELECTOR, "#meter-failures tbody tr")
    assert [f.find_elements(By.TAG_NAME, "td")[0].text for f in failures] == [
        day(0),
        day(-1),
        day(-2),
        day(-3),
    ]
    points = viewer.find_elements(By.CSS_SELECTOR, "#history circle")
    assert [p.get_attribute("data-x") for p in points] == [day(o) for o in range(-9, -3)]
    assert float(str(points[-1].get_attribute("data-value"))) == 1000.0 + 7.5 * 6 + 3
    assert "未配置" in viewer.find_element(By.ID, "block-topup").text
    assert viewer.find_elements(By.ID, "read-now") == []  # a viewer is not offered actions
    screenshot(viewer, shots, "meter", visible=("meter-facts", "history", "meter-failures"))


def test_the_csv_equals_the_table(stack: Stack, viewer: WebDriver) -> None:
    viewer.get(stack.url + "/failures")
    Select(viewer.find_element(By.ID, "f-district")).select_by_value("east")
    days = viewer.find_element(By.ID, "f-days")
    days.clear()
    days.send_keys("1")
    viewer.find_element(By.ID, "apply").click()
    wait(viewer).until(lambda d: "district=east" in d.current_url)
    header = [th.text for th in viewer.find_elements(By.CSS_SELECTOR, "#failures thead th")]
    table = [
        [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        for row in viewer.find_elements(By.CSS_SELECTOR, "#failures tbody tr")
    ]
    assert table
    assert {r[2] for r in table} == {"east"}
    href = viewer.find_element(By.ID, "csv").get_attribute("href")
    text = viewer.execute_async_script(
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text())"
        ".then(arguments[1], e => arguments[1](String(e)))",
        href,
    )
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0] == header
    assert rows[1:] == table
    report = stack.report(day(0), "--min-days", "1")["consecutive_failures"]
    assert [r[0] for r in table] == [s["meter"] for s in report if s["district"] == "east"]


def test_a_viewer_cannot_act(stack: Stack, viewer: WebDriver) -> None:
    meter = "410100000001"
    viewer.get(f"{stack.url}/meters/{LIVE}/{meter}")
    assert viewer.find_elements(By.ID, "read-now") == []
    assert viewer.find_elements(By.ID, "read-now-form") == []
    token = viewer.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    before = _requests_to(stack, meter)
    status = _post(viewer, "/actions/read_now", {"concentrator": LIVE, "meter": meter}, token)
    assert status == 403
    refused = [a for a in _audit(stack, "read_now") if a[0] == "vera"]
    assert refused
    assert refused[-1][1:3] == ("viewer", "refused")
    assert _requests_to(stack, meter) == before
    viewer.get(stack.url + "/audit")  # the audit trail is for operators
    assert viewer.find_element(By.ID, "error-code").text == "403"


def test_an_operators_read_now_reaches_the_simulator(
    stack: Stack, operator: WebDriver, shots: Path
) -> None:
    meter = "410100000002"
    operator.get(f"{stack.url}/meters/{LIVE}/{meter}")
    before = _requests_to(stack, meter)
    operator.find_element(By.ID, "read-now").click()
    result = wait(operator, 60).until(ec.presence_of_element_located((By.ID, "action-result")))
    assert result.get_attribute("data-outcome") == "ok", result.text
    assert "energy_import_total_kwh" in result.text
    asked = [r for r in stack.records() if r["meter"] == meter and r["function"] == "read"]
    assert len(asked) > before
    assert asked[-1]["di"] == "00010000"
    assert asked[-1]["outcome"] == "answered"
    done = [a for a in _audit(stack, "read_now") if a[0] == "otto"]
    assert done[-1][1:3] == ("operator", "ok")
    screenshot(operator, shots, "meter-read-now", visible=("action-result", "meter-facts"))
    operator.get(stack.url + "/audit")
    first = operator.find_element(By.CSS_SELECTOR, "#audit tbody tr")
    assert first.get_attribute("data-action") == "read_now"
    screenshot(operator, shots, "audit", visible=("audit",))


def test_an_action_without_the_csrf_token_is_refused(stack: Stack, operator: WebDriver) -> None:
    meter = "410100000003"
    operator.get(f"{stack.url}/meters/{LIVE}/{meter}")
    before = _requests_to(stack, meter)
    fields = {"concentrator": LIVE, "meter": meter}
    assert _post(operator, "/actions/read_now", fields, None) == 403
    assert _post(operator, "/actions/read_now", fields, "forged-token") == 403
    assert _post(operator, "/logout", {}, None) == 403
    refused = [a for a in _audit(stack, "/actions/read_now") if a[0] == "otto"]
    assert len(refused) >= 2
    assert all(a[2] == "refused" for a in refused)
    assert _requests_to(stack, meter) == before
    operator.get(f"{stack.url}/meters/{LIVE}/{meter}")  # still logged in
    assert operator.find_elements(By.ID, "read-now")


def test_the_overview_follows_new_data_without_a_reload(
    stack: Stack, viewer: WebDriver, shots: Path
) -> None:
    viewer.get(stack.url + "/")
    viewer.execute_script("window.__same_page = 'yes'")
    before = _value(viewer, "#kpi-today .v-rate")
    stack.publish(late_reading())  # meter 4 of c-hist, unexplained until now
    deadline = time.monotonic() + 60
    while _fleet(stack.report(day(0)))["rate"] == _num(before):
        assert time.monotonic() < deadline, "the consumer did not record the late reading"
        time.sleep(0.2)
    expected = _fleet(stack.report(day(0)))["rate"]
    wait(viewer, 60).until(lambda d: _num(_value(d, "#kpi-today .v-rate")) == expected)
    assert viewer.execute_script("return window.__same_page") == "yes"
    assert int(str(viewer.find_element(By.ID, "live").get_attribute("data-refreshed"))) >= 1
    assert not console_errors(viewer)
    screenshot(viewer, shots, "overview-live", visible=("kpi-today",))


def test_english(stack: Stack, viewer: WebDriver, shots: Path) -> None:
    viewer.get(stack.url + "/")
    viewer.find_element(By.CSS_SELECTOR, "a.lang").click()
    wait(viewer).until(lambda d: "Full-coverage reading success rate" in d.page_source)
    assert "Timeliness" in viewer.find_element(By.ID, "kpi-today").text
    screenshot(viewer, shots, "overview-en", visible=("kpi-today", "trend"))
    viewer.find_element(By.CSS_SELECTOR, "a.lang").click()  # back to Chinese for the rest
    wait(viewer).until(lambda d: "全口径抄表成功率" in d.page_source)
