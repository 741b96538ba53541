"""The panel's 远程充值 section: configured once the store holds the order service's tables;
the overview figure, a meter's orders and the section page come from the order book (the
same numbers as `meterlink central report --topups`), escaped; served by the real panel."""

from __future__ import annotations

import html
import re
from pathlib import Path

import aiohttp

from central.config import CentralConfig
from central.ledger import Ledger
from central.panel.app import make_registry, running
from central.panel.auth import Users
from central.panel.registry import Figure
from central.store import open_store
from central.topup.kpi import compute, rate_line
from central.topup.orders import OrderBook, State
from tests.panel.test_access import PASSWORDS, Client, _config
from tests.topup.test_kpi import DAY, ORDERS, TZ, order


def test_not_configured_without_the_order_service(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/s.sqlite3")
    try:
        assert not make_registry([]).sections["topup"].configured
        registry = make_registry([], store=store, cfg=CentralConfig())
        assert not registry.sections["topup"].configured  # no topup tables in this store
    finally:
        store.close()


async def test_the_section_from_the_order_book(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="test")
    users = Users(store)
    users.add("vera", "viewer", PASSWORDS["vera"])
    book = OrderBook(store, TZ)
    book.migrate()
    odd = order("o<9>", State.FAILED, meter="m<x>", reason="customer_mismatch",
                reason_class="archive")  # fmt: skip
    book.insert_many([*ORDERS, odd])
    registry = make_registry([], store=store, cfg=CentralConfig())
    section = registry.sections["topup"]
    assert section.configured
    assert section.provider is not None
    k = compute(DAY, [*ORDERS, odd])
    assert await section.provider.figure(DAY) == Figure(k.fleet().rate, 2, 7)
    assert await section.provider.figure("2000-01-01") is None
    block = await section.provider.meter_block("c-1", "m<x>", "en")
    assert block is not None
    assert "o&lt;9&gt;" in block
    assert "<9>" not in block
    assert await section.provider.meter_block("c-1", "nobody", "en") is None
    page = await section.provider.page("zh-CN", {"day": DAY})
    assert page is not None
    assert html.escape(rate_line(k)) in page
    assert "m&lt;x&gt;" in page
    # served by the real panel
    cfg = _config(tmp_path)
    urls: list[str] = []
    async with running(cfg, store, b"k" * 32, urls.append):
        base = urls[0].rstrip("/")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            client = Client(base, http)
            await client.log_in("vera")
            async with http.get(f"{base}/section/topup?day={DAY}") as r:
                text = await r.text()
            assert r.status == 200
            assert re.search(r"远程充值成功率 2026-11-24: 28\.57 % \(2/7\)", text), text[-2000:]
            assert "customer_mismatch" in text
    store.close()


async def test_operator_retry_and_close_through_the_panel(tmp_path: Path) -> None:
    """The buttons on the section page and the meter page for an operator only; a viewer's or
    a forged POST is refused (and audited); an operator's retry and close reach the order
    book, named in the order's trail and in the panel's audit."""
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="test")
    users = Users(store)
    users.add("vera", "viewer", PASSWORDS["vera"])
    users.add("otto", "operator", PASSWORDS["otto"])
    Ledger(store)  # the meter page's archive (as the consumer keeps it)
    store.execute("INSERT INTO archive_meter (concentrator, seq, meter, district, manufacturer,"
                  " bus) VALUES ('c-1', 1, 'm-a', 'east', 'acme', 'b1')")  # fmt: skip
    book = OrderBook(store, TZ)
    book.migrate()
    book.insert_many([
        order("nr", State.NEEDS_REVIEW, meter="m-a", reason="outcome_unknown",
              reason_class="communication", uncertain=True),
        order("nr2", State.NEEDS_REVIEW, meter="m-b", reason="out_of_band_purchase",
              reason_class="business"),
        order("biz", State.FAILED, meter="m-c", reason="hoarding_exceeded",
              reason_class="business"),
    ])  # fmt: skip
    cfg = _config(tmp_path)
    urls: list[str] = []
    async with running(cfg, store, b"k" * 32, urls.append):
        base = urls[0].rstrip("/")
        jar_v, jar_o = aiohttp.CookieJar(unsafe=True), aiohttp.CookieJar(unsafe=True)
        async with (
            aiohttp.ClientSession(cookie_jar=jar_v) as hv,
            aiohttp.ClientSession(cookie_jar=jar_o) as ho,
        ):
            viewer, operator = Client(base, hv), Client(base, ho)
            await viewer.log_in("vera")
            await operator.log_in("otto")
            page = f"{base}/section/topup?day={DAY}"
            async with hv.get(page) as r:
                seen = await r.text()
            assert "nr2" in seen
            assert "/actions/topup." not in seen  # a viewer sees no button
            async with ho.get(page) as r:
                shown = await r.text()
            assert 'id="retry-nr"' in shown
            assert 'id="close-nr2"' in shown
            assert 'id="retry-biz"' not in shown  # a business failure is not retried
            async with ho.get(f"{base}/meters/c-1/m-a?day={DAY}") as r:
                assert 'id="retry-nr"' in await r.text()
            # a viewer's POST with its own valid token, and a POST without a token: refused
            token = await viewer.csrf()
            async with hv.post(f"{base}/actions/topup.retry",
                               data={"csrf": token, "order_id": "nr"}) as r:  # fmt: skip
                assert r.status == 403
            async with ho.post(f"{base}/actions/topup.retry", data={"order_id": "nr"}) as r:
                assert r.status == 403
            assert book.get("nr").state is State.NEEDS_REVIEW  # type: ignore[union-attr]
            token = await operator.csrf()
            json_accept = {"Accept": "application/json"}
            no_note = {"csrf": token, "order_id": "nr2", "note": ""}
            async with ho.post(f"{base}/actions/topup.close", headers=json_accept,
                               data=no_note) as r:  # fmt: skip
                refused = await r.json()
            assert refused["ok"] is False  # the note is mandatory
            again = {"csrf": token, "order_id": "nr", "note": "back"}
            async with ho.post(f"{base}/actions/topup.retry", headers=json_accept,
                               data=again) as r:  # fmt: skip
                retried = await r.json()
            assert retried["ok"] is True, retried
            end = {"csrf": token, "order_id": "nr2", "note": "card top-up"}
            async with ho.post(f"{base}/actions/topup.close", headers=json_accept,
                               data=end) as r:  # fmt: skip
                closed = await r.json()
            assert closed["ok"] is True, closed
    nr, nr2 = book.get("nr"), book.get("nr2")
    assert nr is not None
    assert nr2 is not None
    assert (nr.state, nr.uncertain) == (State.QUEUED, True)
    assert book.exchanges("nr")[-1].request["operator"] == "otto"
    assert (nr2.state, nr2.reason) == (State.FAILED, "closed_by_operator")
    assert nr2.result["closed"]["note"] == "card top-up"
    audit = store.rows("SELECT user_name, action, outcome FROM panel_audit ORDER BY id")
    assert ("vera", "topup.retry", "refused") in audit
    assert ("otto", "topup.retry", "ok") in audit
    assert ("otto", "topup.close", "ok") in audit
    assert ("otto", "topup.close", "failed") in audit
    store.close()


async def test_retry_and_close_in_the_order_service_api(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from central.topup.api import make_app

    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="test")
    book = OrderBook(store, TZ)
    book.migrate()
    book.insert_many([
        order("nr", State.NEEDS_REVIEW, meter="m-a", reason="outcome_unknown",
              reason_class="communication"),
        order("nr2", State.NEEDS_REVIEW, meter="m-b", reason="restore_pending",
              reason_class="communication", credited=True),
    ])  # fmt: skip
    woken: list[bool] = []
    app = make_app(book, [b"tok"], default_deadline_s=600, max_deadline_s=3600,
                   wake=lambda: woken.append(True))  # fmt: skip
    auth = {"Authorization": "Bearer tok"}
    async with TestClient(TestServer(app)) as http:
        r = await http.post("/v1/topups/nr/retry", json={"operator": "ops"})
        assert r.status == 401
        r = await http.post("/v1/topups/nr/retry", json={"note": "x"}, headers=auth)
        assert r.status == 400  # who retries is required
        r = await http.post("/v1/relay-orders/nr/retry", json={"operator": "o"}, headers=auth)
        assert r.status == 404  # a top-up, not a relay order
        r = await http.post("/v1/topups/nr/retry", json={"operator": "ops"}, headers=auth)
        body = await r.json()
        assert (r.status, body["state"]) == (200, "queued"), body
        assert woken == [True]
        r = await http.post("/v1/topups/nr/retry", json={"operator": "ops"}, headers=auth)
        assert (r.status, (await r.json())["error"]["code"]) == (409, "not_retryable")
        r = await http.post("/v1/topups/nr2/close", json={"operator": "ops"}, headers=auth)
        assert r.status == 400  # the note is mandatory
        r = await http.post("/v1/topups/nr2/close", headers=auth,
                            json={"operator": "ops", "note": "relay closed on site"})  # fmt: skip
        body = await r.json()
        # credited by a read-back: closing never turns it into a failure billing refunds
        assert (r.status, body["state"], body["reason"]) == (200, "confirmed", "closed_by_operator")
    store.close()
