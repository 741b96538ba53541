"""The order service with real processes: a private Mosquitto, `meterlink agent run`,
`meterlink central topup serve` (the service under test), the simulator's fleet on a TCP serial
server and the software encryption machine over HTTP — the last two in the test's own process
so that a test injects faults (`Fleet.inject`, the machine's outage) and reads the wallets and
the credit log directly (the invariant: no meter credited twice)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from simulators import Fleet, parse_fleet, serve_fleet
from simulators.hsm import HsmService, serve_hsm
from tests.agent.helpers_mqtt import Collector, eventually
from tests.fixtures.processes import MeterlinkProcess, meterlink, start_topup, topup_url
from tests.fixtures.services import Mosquitto, running_mosquitto

KEY = "8c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f" * 2
TOKEN = "billing-token-0123456789abcdef"
CONCENTRATOR = "c-topup"
TERMINAL = {"confirmed", "failed", "needs_review", "cancelled"}


def topup_archive(fleet: Fleet, concentrator: str = CONCENTRATOR) -> list[dict[str, Any]]:
    """The top-up archive of a fleet's prepaid DL/T 645 meters (mode from the meter itself:
    a wallet = local)."""
    out = []
    for i, m in enumerate(fleet.meters()):
        ident = m.identity
        if not ident.prepaid or ident.protocol != "dlt645-2007":
            continue
        out.append(
            {
                "meter": ident.meter_id,
                "concentrator": concentrator,
                "address": ident.meter_number,
                "mode": "local" if m.wallet is not None else "remote",
                "district": ident.district,
                "manufacturer": ident.manufacturer,
                "model": ident.model,
                "install_year": 2012 + i % 10,
            }
        )
    return out


def fleet_text(
    local: int = 3,
    remote: int = 1,
    first: str = "000000000001",
    *,
    remote_first: str | None = None,
    seed: int = 21,
    balance_yuan: int = 80,
    head: str = "",
) -> str:
    """One bus of DL/T 645-2007 prepaid meters on exact clocks: `local` with a wallet from
    `first`, `remote` remote-prepaid from `remote_first` (default: `first` + 100); `head`: more
    top-level lines (e.g. `start`, `frozen`)."""
    remote_first = remote_first or f"{int(first) + 100:012d}"
    return f"""
seed = {seed}
{head}
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = {local}
    first_address = "{first}"
    models = {{ DDZY666 = 1 }}
    balance_yuan = {balance_yuan}
    offset_s = 0
    drift_ppm = 0
    [[district.bus.meters]]
    count = {remote}
    first_address = "{remote_first}"
    models = {{ DDZY666 = 1 }}
    remote = 1.0
    offset_s = 0
    drift_ppm = 0
"""


@dataclass
class ServiceStack:
    tmp: Path
    fleet: Fleet
    broker: Mosquitto
    hsm: HsmService
    hsm_url: str
    agent: MeterlinkProcess
    agent_config: Path
    central_config: Path
    service: MeterlinkProcess | None = None
    url: str = ""
    http: aiohttp.ClientSession | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """more environment for the service (e.g. METERLINK_TOPUP_WEBHOOK_SECRET)"""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    async def start_service(self) -> None:
        self.restarts += 1
        env = {"METERLINK_MQTT_COMMAND_KEY": KEY, "METERLINK_TOPUP_TOKENS": TOKEN, **self.env}
        log = self.tmp / f"topup-{self.restarts}.log"
        self.service = process = await start_topup(self.central_config, log, env)
        self.url = await topup_url(process)

    async def stop_service(self) -> int:
        assert self.service is not None
        code = await self.service.stop()
        self.service = None
        return code

    async def kill_service(self) -> None:
        assert self.service is not None
        await self.service.kill()
        self.service = None

    async def restart_agent(self) -> None:
        """Stop the agent (unless it is dead already) and start it again."""
        if self.agent.proc is not None and self.agent.proc.returncode is None:
            assert await self.agent.stop() == 0, self.agent.log()[-2000:]
        self.restarts += 1
        seen = Collector(self.broker, filters=(f"meterlink/v1/{CONCENTRATOR}/status",))
        async with seen:
            self.agent = MeterlinkProcess(
                ["agent", "run", "--config", str(self.agent_config)],
                self.tmp / f"agent-{self.restarts}.log",
                {"METERLINK_MQTT_COMMAND_KEY": KEY},
            )
            await self.agent.start()
            await eventually(
                lambda: any(s.payload["state"] == "online" for s in seen.of("status")), within=30
            )

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert self.http is not None
        async with self.http.post(f"{self.url}{path}", json=body, headers=self.headers) as r:
            return r.status, await r.json()

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        assert self.http is not None
        async with self.http.get(f"{self.url}{path}", headers=self.headers) as r:
            return r.status, await r.json()

    async def topup(
        self, order_id: str, meter: str, amount_fen: int, **extra: Any
    ) -> dict[str, Any]:
        wallet = self.fleet.meter(meter).wallet
        customer = wallet.customer_number if wallet is not None else "300000000000"
        body = {"order_id": order_id, "meter": meter, "customer": customer,
                "amount_fen": amount_fen, **extra}  # fmt: skip
        status, order = await self.post("/v1/topups", body)
        assert status == 201, order
        return order

    async def order(self, order_id: str, kind: str = "topups") -> dict[str, Any]:
        status, order = await self.get(f"/v1/{kind}/{order_id}")
        assert status == 200, order
        return order

    async def until(
        self,
        order_id: str,
        ok: Callable[[dict[str, Any]], bool],
        kind: str = "topups",
        within: float = 90.0,
    ) -> dict[str, Any]:
        """The order's view once `ok` holds (polled: the API is what billing sees)."""
        async with asyncio.timeout(within):
            while True:
                order = await self.order(order_id, kind)
                if ok(order):
                    return order
                await asyncio.sleep(0.1)

    async def terminal(
        self, order_id: str, kind: str = "topups", within: float = 90.0
    ) -> dict[str, Any]:
        """The order once terminal."""
        return await self.until(order_id, lambda o: o["state"] in TERMINAL, kind, within)

    async def view(self, order_id: str, kind: str = "topups") -> dict[str, Any]:
        return await self.order(order_id, kind)

    def credits(self, meter: str) -> list[tuple[int, int]]:
        return [(c.purchase_count, c.amount_fen) for c in self.fleet.credits.records(meter)]

    def count(self, meter: str) -> int:
        wallet = self.fleet.meter(meter).wallet
        assert wallet is not None
        return wallet.purchase_count


def check_audit(order: dict[str, Any]) -> None:
    """Every exchange that reached the agent carries the frames of its steps, in order."""
    for e in order["exchanges"]:
        if e["what"].startswith("hsm:") or e["reason"] == "command_timeout":
            continue
        steps = (e["reply"].get("result") or {}).get("steps") or []
        assert e["frames"] == [f for s in steps for f in s["frames"]], e
        if any(s.get("sent") for s in steps):
            assert e["frames"], e


@contextlib.asynccontextmanager
async def service_stack(
    tmp_path: Path,
    fleet_toml: str | None = None,
    *,
    topup: dict[str, Any] | None = None,
    agent_reply_timeout_ms: int = 2000,
    env: dict[str, str] | None = None,
    central_extra: str = "",
) -> AsyncIterator[ServiceStack]:
    """`topup`: [topup] keys over the test defaults (short retries and waits). The agent
    listens 2 s for a meter's reply (the in-process simulator answers late on a loaded machine;
    200 ms, as this stack once had, was missed by the same agent in `test_e2e_security.py`)."""
    fleet = parse_fleet(fleet_toml or fleet_text())
    archive = tmp_path / "archive.json"
    archive.write_text(json.dumps(fleet.archive()))
    topup_archive_path = tmp_path / "topup-archive.json"
    topup_archive_path.write_text(json.dumps(topup_archive(fleet)))
    with running_mosquitto(tmp_path / "broker") as broker:
        async with (
            serve_fleet(fleet, transport="tcp") as serving,
            serve_hsm(fleet) as (hsm, hsm_url),
        ):
            endpoint = serving.endpoint("b1")
            assert endpoint.address is not None
            opts = (
                f"parity=N&reply_timeout_ms={agent_reply_timeout_ms}&byte_gap_ms=100"
                "&frame_gap_ms=0&baud=9600"
            )
            url = f"tcp://{endpoint.address[0]}:{endpoint.address[1]}?{opts}"
            agent_config = tmp_path / "agent.toml"
            agent_config.write_text(
                f'[agent]\nconcentrator = "{CONCENTRATOR}"\nstate_dir = "{tmp_path / "state"}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min_s = 0.2\n'
                f'[metrics]\nlisten = ""\n[[buses]]\nname = "b1"\nurl = "{url}"\n'
                f'[archive]\nfile = "{archive}"\n'
                "[plans.daily]\nenabled = false\n[plans.clock]\nenabled = false\n"
            )
            central_config = tmp_path / "central.toml"
            options: dict[str, Any] = {
                "listen": "127.0.0.1:0", "archive": str(topup_archive_path), "hsm_url": hsm_url,
                "hsm_timeout_s": 3, "influx_interval_s": 0, "poll_s": 0.2,
                "retry_initial_s": 0.2, "retry_max_s": 1, "hsm_retry_s": 0.3,
                "command_timeout_s": 15, **(topup or {}),
            }  # fmt: skip
            central_config.write_text(
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                'client_id = "test-topup-central"\nreconnect_min_s = 0.2\n'
                f'[store]\nurl = "sqlite://{tmp_path}/central.sqlite3"\n[topup]\n'
                + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items())
                + central_extra
            )
            async with (
                Collector(broker, filters=(f"meterlink/v1/{CONCENTRATOR}/status",)) as seen,
                meterlink(
                    ["agent", "run", "--config", str(agent_config)],
                    tmp_path / "agent.log",
                    env={"METERLINK_MQTT_COMMAND_KEY": KEY},
                ) as agent,
                aiohttp.ClientSession() as http,
            ):
                await eventually(
                    lambda: any(s.payload["state"] == "online" for s in seen.of("status")),
                    within=30,
                )
                stack = ServiceStack(tmp_path, fleet, broker, hsm, hsm_url, agent, agent_config,
                                     central_config, http=http, env=env or {})  # fmt: skip
                await stack.start_service()
                try:
                    yield stack
                finally:
                    if stack.service is not None:
                        code = await stack.stop_service()
                        assert code == 0, (tmp_path / f"topup-{stack.restarts}.log").read_text()
                    await stack.agent.kill()
        # the invariant of every scenario: no meter booked one purchase count twice
        assert fleet.credits.repeated_counts() == []
