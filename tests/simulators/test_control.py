"""The control channel (`serve_control`, `meterlink sim serve --control`): a test in another
process injects faults, reads a meter's prepaid state and the credit log, makes card purchases
and moves the world clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import aiohttp

from protocols.dlt645 import IdentityAuthReply, IdentityAuthRequest, ReadRequest
from simulators.control import serve_control
from tests.fixtures.processes import SimProcess
from tests.simulators.conftest import (
    FLEET,
    PREPAID,
    SILENCE_S,
    START,
    DirectMaster,
    TcpMaster,
    make_fleet,
)

OP = b"\0\0\0\0"


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as response:
        return response.status, await response.json()


async def test_control_channel_in_process() -> None:
    fleet = make_fleet()
    direct = DirectMaster(fleet.bus("b1"))
    async with serve_control(fleet) as (host, port), aiohttp.ClientSession() as http:
        base = f"http://{host}:{port}/v1"
        status, state = await _call(http, "GET", f"{base}/meters/{PREPAID}")
        assert status == 200
        wallet = fleet.meter(PREPAID).wallet
        assert wallet is not None
        assert (state["mode"], state["purchase_count"], state["relay"]["open"]) == (
            "local",
            wallet.purchase_count,
            False,
        )
        assert state["esam"]["session_remaining_min"] == 0
        assert state["last_purchase"]["count"] == wallet.purchase_count
        # a fault over the channel hits the next read of that meter
        status, body = await _call(
            http,
            "POST",
            f"{base}/faults",
            {"meter": PREPAID, "action": "drop_request", "on": "read"},
        )
        assert (status, body["fault"]["hits"]) == (201, 0)
        assert await direct.ask(PREPAID, ReadRequest(0x00010000)) == []
        _, listed = await _call(http, "GET", f"{base}/faults")
        assert listed["faults"][0]["hits"] == 1
        _, removed = await _call(http, "DELETE", f"{base}/faults?meter={PREPAID}")
        assert removed == {"removed": 1}
        # a card purchase, and the credit log
        status, bought = await _call(
            http, "POST", f"{base}/meters/{PREPAID}/purchase", {"amount_fen": 1234}
        )
        assert (status, bought["credit"]["source"]) == (201, "card")
        _, log = await _call(http, "GET", f"{base}/credits?meter={PREPAID}")
        assert [c["amount_fen"] for c in log["credits"]] == [1234]
        assert log["repeated"] == []
        status, refused = await _call(
            http, "POST", f"{base}/meters/{PREPAID}/purchase", {"amount_fen": 10**9}
        )
        assert (status, refused) == (409, {"credited": False})
        # the world clock: advance past the session, set to the next midnight
        pending = fleet.encryption_machine().identity_auth(PREPAID)
        _, reply = await direct.one(
            PREPAID,
            IdentityAuthRequest(OP, pending.ciphertext, pending.random, pending.diversification),
        )
        assert isinstance(reply, IdentityAuthReply)
        _, state = await _call(http, "GET", f"{base}/meters/{PREPAID}")
        assert state["esam"]["session_remaining_min"] == 5
        _, clock = await _call(http, "POST", f"{base}/clock", {"advance_s": 301})
        assert clock["now"] == (START + dt.timedelta(seconds=301)).isoformat()
        _, state = await _call(http, "GET", f"{base}/meters/{PREPAID}")
        assert state["esam"]["session_expires"] is None
        _, clock = await _call(http, "POST", f"{base}/clock", {"set": "2026-03-11T00:00:30"})
        assert clock["now"] == "2026-03-11T00:00:30"
        _, pressed = await _call(http, "POST", f"{base}/meters/{PREPAID}/button")
        assert pressed == {"closed": False}
        # errors say what is wrong
        for method, url, body, expected in (
            ("GET", f"{base}/meters/999999999999", None, 404),
            ("POST", f"{base}/faults", {"meter": PREPAID, "action": "nope"}, 400),
            ("POST", f"{base}/faults", {"meter": "999999999999", "action": "drop_reply"}, 404),
            ("POST", f"{base}/faults", [1, 2], 400),
            ("POST", f"{base}/clock", {"advance_s": -1}, 400),
            ("POST", f"{base}/clock", {}, 400),
            ("POST", f"{base}/meters/{PREPAID}/purchase", {"amount_fen": "lots"}, 400),
        ):
            status, body = await _call(http, method, url, body)
            assert (status, "error" in body) == (expected, True), (url, body)


async def test_sim_serve_with_control_and_credit_log(tmp_path: Path) -> None:
    """The real process: faults injected from here act on its meters; its credit log file and
    the channel agree."""
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET)
    credits = tmp_path / "credits.jsonl"
    async with (
        SimProcess.serving(fleet_file, tmp_path, tcp=True, credits=credits, control=True) as sim,
        aiohttp.ClientSession() as http,
    ):
        assert sim.control is not None
        base = f"{sim.control}/v1"
        status, _ = await _call(
            http, "POST", f"{base}/faults", {"meter": PREPAID, "action": "drop_request", "times": 1}
        )
        assert status == 201
        host, port = sim.endpoints["b1"].where.rsplit(":", 1)
        master = TcpMaster(*await asyncio.open_connection(host, int(port)))
        try:
            dropped = await master.ask(PREPAID, ReadRequest(0x00010000), quiet=SILENCE_S)
            assert dropped == []
            assert len(await master.ask(PREPAID, ReadRequest(0x00010000))) == 1
        finally:
            await master.close()
        status, bought = await _call(
            http, "POST", f"{base}/meters/{PREPAID}/purchase", {"amount_fen": 500}
        )
        assert status == 201
        assert await sim.process.stop() == 0
    lines = [json.loads(line) for line in credits.read_text().splitlines()]
    assert lines == [bought["credit"]]
