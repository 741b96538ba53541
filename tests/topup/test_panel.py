"""The panel's 远程充值 section: configured once the store holds the order service's tables;
the overview figure, a meter's orders and the section page come from the order book (the
same numbers as `meterlink central report --topups`), escaped; served by the real panel."""

from __future__ import annotations

import html
import re
from pathlib import Path

import aiohttp

from central.config import CentralConfig
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
