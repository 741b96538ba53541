"""The panel's tariff section in a real browser (Debian's headless Chromium): the overview's
电价执行正确率 and the section page equal `meterlink central report --tariff`, a meter's page
explains its outcome, an operator re-checks a day (audited), a viewer sees no action.

The store is seeded as in tests/central/test_tariff_day.py (four meters with a plan: OK, a
wrong period boundary, unread, a local meter OK); `meterlink central panel` runs as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from central.panel.auth import Users
from central.store import open_store
from meterlink.services import die_with_parent, free_port
from tests.central.test_tariff_day import D, _load
from tests.panel.browser import chromium, console_errors, log_in, screenshot, wait

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
USERS = {"vera": ("viewer", "viewer-password-1"), "otto": ("operator", "operator-password-1")}


@pytest.fixture
def panel(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    store_path = tmp_path / "store.sqlite3"
    store = open_store(store_path, name="seed")
    try:
        _load(store)
        users = Users(store)
        for name, (role, password) in USERS.items():
            users.add(name, role, password)
    finally:
        store.close()
    port = free_port()
    config = tmp_path / "central.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n[influx]\n'
        f'url = "http://127.0.0.1:{free_port()}"\n[store]\nurl = "sqlite://{store_path}"\n'
        f'[panel]\nlisten = "127.0.0.1:{port}"\ntimezone = "Asia/Shanghai"\n'
    )
    subprocess.run([sys.executable, "-m", "meterlink", "central", "report", "--tariff",
                    "--config", str(config), "--day", D], check=True, capture_output=True,
                   cwd=REPO)  # fmt: skip
    log = (tmp_path / "panel.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterlink", "central", "panel", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=log, cwd=REPO, preexec_fn=die_with_parent(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("panel http://"), (tmp_path / "panel.log").read_text()
        yield f"http://127.0.0.1:{port}", config, store_path
    finally:
        # 30 s, as the panel stack gives it: on a starved machine (its start took 5.5 s) 10 s
        # was once too short; a panel that does not stop at all still fails the test
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the panel did not stop within 30 s of SIGTERM; see {tmp_path}/panel.log")
        finally:
            log.close()


def _report(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "meterlink", "central", "report", "--tariff", "--config",
         str(config), "--day", D, "--format", "json"],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_the_tariff_section_equals_the_report_and_an_operator_rechecks(
    panel: tuple[str, Path, Path], tmp_path: Path
) -> None:
    base, config, store_path = panel
    report = _report(config)
    fleet = report["scopes"][0]
    not_ok = {m["meter"]: m["outcome"] for m in report["meters"] if m["outcome"] != "OK"}
    with chromium() as driver:
        log_in(driver, base, "otto", USERS["otto"][1])
        driver.get(f"{base}/?day={D}")
        card = wait(driver).until(ec.presence_of_element_located((By.ID, "kpi-tariff")))
        text = card.text
        screenshot(driver, tmp_path, "tariff-overview", visible=("kpi-tariff",))
        # the overview shows today's figure; the section page the latest checked day
        driver.get(f"{base}/section/tariff")
        body = wait(driver).until(ec.presence_of_element_located((By.ID, "section-body")))
        rows = body.find_elements(By.CSS_SELECTOR, "tr")[1:]
        cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows]
        shown = {c[0]: c[2] for c in cells}
        assert shown == not_ok
        assert D in body.text
        screenshot(driver, tmp_path, "tariff-section", visible=("section-body",))
        # an operator re-checks the day: the same numbers, audited
        form = driver.find_element(By.ID, "action-tariff-recheck")
        day_input = form.find_element(By.NAME, "day")
        day_input.clear()
        day_input.send_keys(D)
        form.find_element(By.TAG_NAME, "button").click()
        result = wait(driver).until(ec.presence_of_element_located((By.ID, "action-result")))
        assert result.get_attribute("data-outcome") == "ok"
        assert f"{fleet['ok']}/{fleet['meters']} meters OK" in result.text
        screenshot(driver, tmp_path, "tariff-recheck", visible=("action-result",))
        # a meter's page explains its outcome
        driver.get(f"{base}/meters/c-1/m-bad?day={D}")
        page = wait(driver).until(ec.presence_of_element_located((By.CLASS_NAME, "tariff-outcome")))
        assert "PARAM_MISMATCH" in page.text
        assert "set 1 table 1: expected" in driver.page_source.replace("&gt;", ">")
        assert not console_errors(driver)
    assert text  # the overview card rendered (its figure is today's: none for a past day)
    with chromium() as driver:
        log_in(driver, base, "vera", USERS["vera"][1])
        driver.get(f"{base}/section/tariff")
        wait(driver).until(ec.presence_of_element_located((By.ID, "section-body")))
        assert not driver.find_elements(By.ID, "action-tariff-recheck")
    store = open_store(store_path, name="check")
    try:
        audit = store.rows("SELECT user_name, outcome FROM panel_audit WHERE action = ?",
                           ("tariff.recheck",))  # fmt: skip
    finally:
        store.close()
    assert audit == [("otto", "ok")]
