"""`meterlink central topup serve` under its systemd unit's rules (deploy/systemd/
meterlink-topup.service): SIGTERM while a security command is in flight (the agent is gone,
so the command would wait `command_timeout_s` for a reply) and a billing client holds a
keep-alive connection → the process ends with 0 within the unit's TimeoutStopSec (after which
systemd would SIGKILL it); the order it held is taken up again at the next start, read back
first, and credited once."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import signal
import sqlite3
from pathlib import Path

import pytest

from central.config import load
from tests.topup.service_stack import service_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "meterlink-topup.service"
LOCAL = "000000000001"


def _service() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    return unit["Service"]


def test_the_unit_file() -> None:
    service = _service()
    assert "meterlink central topup serve --config" in service["ExecStart"]
    assert service["EnvironmentFile"] == "/etc/meterlink/topup.env"  # tokens: not in the TOML
    assert service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    example = load(REPO / "deploy" / "central.example.toml")
    assert example.topup.stop_timeout_s < float(service["TimeoutStopSec"])


async def test_sigterm_with_a_command_in_flight_stops_within_timeout_stop_sec(
    tmp_path: Path,
) -> None:
    timeout_stop_s = float(_service()["TimeoutStopSec"])
    # the command would wait 120 s for the (dead) agent: far beyond TimeoutStopSec
    async with service_stack(tmp_path, topup={"command_timeout_s": 120}) as s:
        n = s.count(LOCAL)
        await s.agent.kill()
        await s.topup("STOP-1", LOCAL, 1500)

        # in flight: the auth + read-back command went out and waits for its reply
        async def in_flight() -> None:
            async with asyncio.timeout(60):
                while True:  # touched: set in the store just before the command goes out
                    with contextlib.closing(sqlite3.connect(tmp_path / "central.sqlite3")) as db:
                        row = db.execute(
                            "SELECT state, touched FROM topup_order WHERE order_id = 'STOP-1'"
                        ).fetchone()
                    if row == ("authenticating", 1):
                        return
                    await asyncio.sleep(0.1)

        await in_flight()
        assert s.service is not None
        # the API client's keep-alive connection stays open across the stop
        started = asyncio.get_running_loop().time()
        code = await s.service.stop(signal.SIGTERM, within=timeout_stop_s)
        took = asyncio.get_running_loop().time() - started
        print(f"SIGTERM → exit {code} after {took:.2f} s (TimeoutStopSec {timeout_stop_s:g})")
        log = s.service.log()
        s.service = None
        assert code == 0, log[-3000:]
        assert "topup: stopped" in log
        assert s.credits(LOCAL) == []  # nothing reached the meter

        await s.restart_agent()
        await s.start_service()
        order = await s.terminal("STOP-1")
        assert order["state"] == "confirmed", order
        assert s.credits(LOCAL) == [(n + 1, 1500)]


async def test_sigterm_with_a_webhook_that_never_answers(tmp_path: Path) -> None:
    """Billing's webhook endpoint accepts the connection and never answers (webhook_timeout_s
    far beyond TimeoutStopSec): the delivery is cut at stop_timeout_s, the process exits 0
    within TimeoutStopSec, and the result stays due (delivered after the next start)."""
    timeout_stop_s = float(_service()["TimeoutStopSec"])
    held: list[asyncio.StreamWriter] = []
    got_request = asyncio.Event()

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.readline()
        got_request.set()  # read the request line; never answer

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with service_stack(
            tmp_path,
            topup={"webhook_url": f"http://127.0.0.1:{port}/hook", "webhook_timeout_s": 600,
                   "stop_timeout_s": 3},
            env={"METERLINK_TOPUP_WEBHOOK_SECRET": "hook-secret-0123456789"},
        ) as s:  # fmt: skip
            await s.topup("HOOK-1", LOCAL, 1200)
            assert (await s.terminal("HOOK-1"))["state"] == "confirmed"
            await asyncio.wait_for(got_request.wait(), 60)  # the delivery hangs now
            assert s.service is not None
            started = asyncio.get_running_loop().time()
            code = await s.service.stop(signal.SIGTERM, within=timeout_stop_s)
            took = asyncio.get_running_loop().time() - started
            print(f"SIGTERM, webhook hanging → exit {code} after {took:.2f} s (stop_timeout_s 3)")
            log = s.service.log()
            s.service = None
            assert code == 0, log[-3000:]
            assert "still busy after stop_timeout_s" in log
            with contextlib.closing(sqlite3.connect(tmp_path / "central.sqlite3")) as db:
                (state,) = db.execute(
                    "SELECT notify_state FROM topup_order WHERE order_id = 'HOOK-1'"
                ).fetchone()
            assert state == "pending"  # not lost: due again at the next start
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
