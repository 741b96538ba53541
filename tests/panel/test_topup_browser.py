"""The panel's top-up actions in a real browser (Debian's headless Chromium) against the real
order service (tests/topup/service_stack.py: Mosquitto, `meterlink agent run`, `meterlink
central topup serve`, the simulator's fleet and encryption machine) and `meterlink central
panel` on the same store.

An order whose credit reached the meter but whose reply was lost (the agent killed, as in chaos
scenario E04) ends needs_review / outcome_unknown at its deadline. An operator retries it from
the meter page: the service's next attempt reads the meter back first and confirms it without
a second send — the simulator's credit log holds one credit. Another order, refused by the
read-back (a card purchase took its count, E08), is closed from the section page with a note.
A viewer sees no button; a viewer's POST and a POST without the CSRF token are refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import zoneinfo
from pathlib import Path

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from central.ledger import Ledger
from central.panel.auth import Users
from central.store import open_store
from meterlink.services import free_port
from tests.agent.helpers_mqtt import eventually
from tests.fixtures.processes import MeterlinkProcess
from tests.panel.browser import chromium, log_in, screenshot, wait
from tests.panel.test_access import Client
from tests.topup.service_stack import CONCENTRATOR, service_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
LOCAL = "000000000001"
LOCAL_2 = "000000000002"
USERS = {"vera": ("viewer", "viewer-password-1"), "otto": ("operator", "operator-password-1")}
NOTE = "card purchase 7.77 yuan took the count; refund via billing"


def deadline_in(seconds: float) -> str:
    return (dt.datetime.now(TZ) + dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _viewer(base: str, shots: Path) -> int:
    """The viewer's section page: the orders, no action button. Returns the forms seen."""
    with chromium() as driver:
        log_in(driver, base, "vera", USERS["vera"][1])
        driver.get(f"{base}/section/topup")
        wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-order]")))
        screenshot(driver, shots, "topup-viewer", visible=("section-body",))
        return len(driver.find_elements(By.CSS_SELECTOR, "form[action^='/actions/topup.']"))


def _operator(base: str, shots: Path) -> tuple[str, str]:
    """Retry BR-1 from its meter page, close BR-2 with a note on the section page. Returns
    the two result lines the panel showed."""
    with chromium() as driver:
        log_in(driver, base, "otto", USERS["otto"][1])
        driver.get(f"{base}/meters/{CONCENTRATOR}/{LOCAL}")
        wait(driver).until(ec.presence_of_element_located((By.ID, "retry-BR-1")))
        assert not driver.find_elements(By.ID, "close-BR-2")  # another meter's order
        screenshot(driver, shots, "topup-meter-actions", visible=("block-topup", "retry-BR-1"))
        driver.find_element(By.CSS_SELECTOR, "#retry-BR-1 button").click()
        result = wait(driver).until(ec.presence_of_element_located((By.ID, "action-result")))
        retried = result.text
        assert result.get_attribute("data-outcome") == "ok", retried
        screenshot(driver, shots, "topup-meter-retried", visible=("action-result",))

        driver.get(f"{base}/section/topup")
        wait(driver).until(ec.presence_of_element_located((By.ID, "close-BR-2")))
        assert not driver.find_elements(By.ID, "retry-BR-1")  # queued or confirmed now
        note = driver.find_element(By.CSS_SELECTOR, "#close-BR-2 input[name=note]")
        assert note.get_attribute("required") is not None
        note.send_keys(NOTE)
        screenshot(driver, shots, "topup-section-actions", visible=("section-body", "close-BR-2"))
        driver.find_element(By.CSS_SELECTOR, "#close-BR-2 button").click()
        result = wait(driver).until(ec.presence_of_element_located((By.ID, "action-result")))
        closed = result.text
        assert result.get_attribute("data-outcome") == "ok", closed
        screenshot(driver, shots, "topup-section-closed", visible=("action-result",))
        return retried, closed


async def test_operator_retries_and_closes_needs_review_orders(tmp_path: Path) -> None:
    port = free_port()
    extra = (
        f'[panel]\nlisten = "127.0.0.1:{port}"\ntimezone = "Asia/Shanghai"\n'
        f'[influx]\nurl = "http://127.0.0.1:{free_port()}"\ntimeout_s = 1.0\n'
    )
    # the agent waits 2 s (the stack's reply window) for the lost reply: killed in it (as E04)
    async with service_stack(tmp_path, topup={"command_timeout_s": 3}, central_extra=extra) as s:
        n = s.count(LOCAL)
        s.fleet.inject(LOCAL, "drop_reply", on="topup")
        await s.topup("BR-1", LOCAL, 4000, deadline=deadline_in(30))
        await eventually(lambda: s.credits(LOCAL) == [(n + 1, 4000)], within=30)
        assert s.agent.proc is not None
        s.agent.proc.send_signal(signal.SIGKILL)
        await s.agent.proc.wait()
        first = await s.terminal("BR-1", within=90)
        assert (first["state"], first["reason"]) == ("needs_review", "outcome_unknown"), first
        await s.restart_agent()

        n2 = s.count(LOCAL_2)
        assert s.fleet.meter(LOCAL_2).card_purchase(777) is not None  # a card took n2 + 1
        await s.topup("BR-2", LOCAL_2, 800, purchase_count=n2 + 1)
        second = await s.terminal("BR-2")
        assert (second["state"], second["reason"]) == ("needs_review", "out_of_band_purchase")

        # the panel on the service's store, with its users and the meters' archive
        store = open_store(tmp_path / "central.sqlite3", name="seed")
        try:
            for name, (role, password) in USERS.items():
                Users(store).add(name, role, password)
            Ledger(store)
            for meter in (LOCAL, LOCAL_2):
                store.execute(
                    "INSERT INTO archive_meter (concentrator, seq, meter, district,"
                    " manufacturer, bus) VALUES (?, 1, ?, 'd', 'acme', 'b1')",
                    (CONCENTRATOR, meter),
                )
        finally:
            store.close()
        panel = MeterlinkProcess(
            ["central", "panel", "--config", str(s.central_config)], tmp_path / "panel.log"
        )
        await panel.start(stdout=asyncio.subprocess.PIPE)
        try:
            assert panel.proc is not None
            assert panel.proc.stdout is not None
            line = (await asyncio.wait_for(panel.proc.stdout.readline(), 60)).decode()
            assert line.startswith("panel http://"), panel.log()
            base = f"http://127.0.0.1:{port}"

            # the simulator serves in this loop: the browser runs in a thread
            assert await asyncio.to_thread(_viewer, base, tmp_path) == 0
            jar_v, jar_o = aiohttp.CookieJar(unsafe=True), aiohttp.CookieJar(unsafe=True)
            async with (
                aiohttp.ClientSession(cookie_jar=jar_v) as hv,
                aiohttp.ClientSession(cookie_jar=jar_o) as ho,
            ):
                viewer, operator = Client(base, hv), Client(base, ho)
                await viewer.log_in("vera", USERS["vera"][1])
                await operator.log_in("otto", USERS["otto"][1])
                token = await viewer.csrf()
                forged = {"csrf": token, "order_id": "BR-1", "note": "x"}
                async with hv.post(f"{base}/actions/topup.retry", data=forged) as r:
                    assert r.status == 403  # a viewer never acts
                async with ho.post(f"{base}/actions/topup.retry", data={"order_id": "BR-1"}) as r:
                    assert r.status == 403  # no CSRF token
            assert (await s.order("BR-1"))["state"] == "needs_review"

            retried, closed = await asyncio.to_thread(_operator, base, tmp_path)
            assert "BR-1" in retried
            assert "closed_by_operator" in closed
        finally:
            assert await panel.stop() == 0, panel.log()[-2000:]

        done = await s.terminal("BR-1", within=90)
        assert done["state"] == "confirmed", done
        trail = done["exchanges"]
        (i,) = [k for k, e in enumerate(trail) if e["what"] == "operator:retry"]
        assert trail[i]["request"]["operator"] == "otto"
        assert trail[i]["request"]["via"] == "panel"
        after = trail[i + 1 :]
        assert [e["what"] for e in after] == ["auth+readback"]  # read back, confirmed, no send
        assert done["result"]["readback"]["purchase_count"] == n + 1
        assert s.credits(LOCAL) == [(n + 1, 4000)]  # one credit: the simulator's own record

        ended = await s.order("BR-2")
        assert (ended["state"], ended["reason"]) == ("failed", "closed_by_operator")
        assert ended["result"]["closed"]["note"] == NOTE
        assert ended["exchanges"][-1]["request"]["operator"] == "otto"
        assert [(c.source, c.amount_fen) for c in s.fleet.credits.records(LOCAL_2)] == [
            ("card", 777)
        ]
