"""The panel's "read the set-up now" (tariff.read) against a real agent: the operator's action
sends the `tariff` command, the agent reads the simulated meter, the set-up is stored at once
and the action is audited."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from central.config import CentralConfig
from central.panel.app import running
from central.panel.auth import Users
from central.store import open_store
from central.tariff.store import TariffStore
from common.config import build
from meterlink.services import free_port
from protocols.commands import key_bytes
from tests.central.test_command import CONCENTRATOR, KEY, Stack, stack  # noqa: F401 (fixture)
from tests.panel.test_access import Client


async def test_an_operator_reads_a_meters_tariff_set_up_now(stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    cfg = build(CentralConfig, {
        "mqtt": {"host": "127.0.0.1", "port": stack.broker.port, "client_id": "panel-tariff"},
        "influx": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1.0},
        "store": {"url": f"sqlite://{tmp_path}/store.sqlite3"},
        "panel": {"listen": f"127.0.0.1:{free_port()}", "command_timeout_s": 60.0},
    }, env_prefix="METERLINK", environ={})  # fmt: skip
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="test")
    Users(store).add("otto", "operator", "operator-password-1")
    meter = stack.fleet.meters()[0].identity.meter_id
    urls: list[str] = []
    try:
        async with (
            running(cfg, store, key_bytes(KEY), urls.append),
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            client = Client(urls[0].rstrip("/"), http)
            await client.log_in("otto", "operator-password-1")
            token = await client.csrf()
            async with http.post(
                f"{client.base}/actions/tariff.read",
                data={"csrf": token, "concentrator": CONCENTRATOR, "meter": meter},
                headers={"Accept": "application/json"},
            ) as r:
                reply = await r.json()
        assert reply["ok"], reply
        assert f"{meter}: set-up read at" in reply["summary"]
        rows = store.rows("SELECT concentrator, meter FROM tariff_setup")
        assert rows == [(CONCENTRATOR, meter)]
        stored = TariffStore(store).setups_until(2**40, 0)[(CONCENTRATOR, meter)][0]
        assert stored["sets"][0]["zones"]  # the meter's zone table, as read
        audit = store.rows("SELECT user_name, outcome FROM panel_audit WHERE action = ?",
                           ("tariff.read",))  # fmt: skip
        assert audit == [("otto", "ok")]
    finally:
        store.close()
