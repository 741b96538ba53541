"""Every chaos scenario of topup-tariff.md §E through the order service, with real processes
(Mosquitto, `meterlink agent run`, `meterlink central topup serve`; the simulator's fleet and
the encryption machine in the test's process, where the faults are injected), each asserting
the outcome the table gives. Invariants over all of them: no meter credited twice (the
simulator's credit log, checked when each stack stops), every order terminal by its deadline,
every meter exchange in the order's audit trail with its raw frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from tests.agent.helpers_mqtt import eventually
from tests.topup.service_stack import ServiceStack, check_audit, service_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOCAL = "000000000001"
LOCAL_2 = "000000000002"
REMOTE = "000000000101"
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")


def deadline_in(seconds: float) -> str:
    return (dt.datetime.now(TZ) + dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def invariants(order: dict[str, Any]) -> None:
    """Terminal by its deadline; every exchange with its frames."""
    assert order["state"] in ("confirmed", "failed", "needs_review", "cancelled"), order
    finished = dt.datetime.fromisoformat(order["finished_at"])
    assert finished <= dt.datetime.fromisoformat(order["deadline"]) + dt.timedelta(seconds=1)
    check_audit(order)


def sends(order: dict[str, Any], op: str) -> list[dict[str, Any]]:
    """The steps of kind `op` that went to the meter, in order."""
    out = []
    for e in order["exchanges"]:
        for step in (e["reply"].get("result") or {}).get("steps") or []:
            if step["op"] == op and step["sent"]:
                out.append(step)
    return out


async def done(s: ServiceStack, order_id: str, kind: str = "topups") -> dict[str, Any]:
    order = await s.terminal(order_id, kind)
    invariants(order)
    return order


async def test_e01_reply_lost_after_the_credit(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        s.fleet.inject(LOCAL, "drop_reply", on="topup")
        await s.topup("E1", LOCAL, 1000)
        order = await done(s, "E1")
        assert order["state"] == "confirmed"
        assert len(sends(order, "topup")) == 1  # no resend
        assert sends(order, "topup")[0]["reason"] == "no_reply"
        assert order["result"]["readback"]["purchase_count"] == n + 1
        assert order["result"]["readback"]["last_amount_fen"] == 1000
        assert s.credits(LOCAL) == [(n + 1, 1000)]


async def test_e02_request_lost_before_the_meter(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        s.fleet.inject(LOCAL, "drop_request", on="topup")
        await s.topup("E2", LOCAL, 2000)
        order = await done(s, "E2")
        assert (order["state"], order["attempts"]) == ("confirmed", 2)
        topups = sends(order, "topup")
        assert [t.get("reason") for t in topups] == ["no_reply", None]
        # re-authenticated, fresh MACs: never the stored bytes again
        assert topups[0]["request"] == topups[1]["request"]  # the same purchase ...
        assert topups[0]["frames"][0] != topups[1]["frames"][0]  # ... with new MACs
        auths = sends(order, "auth")
        assert len(auths) == 2
        assert auths[0]["reply"]["random2"] != auths[1]["reply"]["random2"]
        assert s.credits(LOCAL) == [(n + 1, 2000)]


async def test_e03_latency_past_the_session(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        s.fleet.inject(LOCAL, "late", on="topup", late_s=360)
        await s.topup("E3", LOCAL, 3000)
        order = await done(s, "E3")
        assert (order["state"], order["attempts"]) == ("confirmed", 2)
        assert [t.get("reason") for t in sends(order, "topup")] == ["auth_failed", None]
        assert s.credits(LOCAL) == [(n + 1, 3000)]


async def test_e04_agent_restarts_between_sent_and_reply(tmp_path: Path) -> None:
    """The meter credits; the agent dies before it replies (killed the moment the credit is in
    the simulator's log, while it waits for the lost reply): the service has no answer →
    "crediting, outcome unknown" → the next attempt's read-back says count = target → confirmed
    without a resend."""
    # the agent waits 2 s (the stack's reply window) for the lost reply, in which it is killed
    async with service_stack(tmp_path, topup={"command_timeout_s": 3}) as s:
        n = s.count(LOCAL)
        s.fleet.inject(LOCAL, "drop_reply", on="topup")
        await s.topup("E4", LOCAL, 4000)
        await eventually(lambda: s.credits(LOCAL) == [(n + 1, 4000)], within=30)
        assert s.agent.proc is not None
        s.agent.proc.send_signal(signal.SIGKILL)
        await s.agent.proc.wait()
        await eventually_timeout(s, "E4", "topup+readback")
        await s.restart_agent()
        order = await done(s, "E4")
        assert order["state"] == "confirmed", order
        timeouts = [e for e in order["exchanges"] if e["reason"] == "command_timeout"]
        assert timeouts
        assert timeouts[0]["what"] == "topup+readback"
        assert len(sends(order, "topup")) == 0  # the one send's reply never came back
        assert s.credits(LOCAL) == [(n + 1, 4000)]


async def eventually_timeout(s: ServiceStack, order_id: str, what: str) -> dict[str, Any]:
    """The order once the service saw no reply to its `what` command."""
    async with asyncio.timeout(60):
        while True:
            order = await s.order(order_id)
            if any(e["what"] == what and e["reason"] == "command_timeout"
                   for e in order["exchanges"]):  # fmt: skip
                assert order["state"] != "confirmed", order
                return order
            await asyncio.sleep(0.1)


async def test_e05_commands_delivered_after_their_deadline(tmp_path: Path) -> None:
    """The agent hears nothing (stopped: as a broker that holds the commands); the order ends
    failed at its deadline; the agent, resumed, drops every stale command unsent; billing's
    new order goes through with a new authentication."""
    async with service_stack(tmp_path, topup={"command_timeout_s": 2}) as s:
        n = s.count(LOCAL)
        assert s.agent.proc is not None
        s.agent.proc.send_signal(signal.SIGSTOP)
        heard = len(s.fleet.recorder)
        await s.topup("E5", LOCAL, 500, deadline=deadline_in(6))
        order = await done(s, "E5")
        assert (order["state"], order["reason_class"]) == ("failed", "communication"), order
        assert order["credited"] is False
        stale = [e for e in order["exchanges"] if not e["what"].startswith("hsm:")]
        assert stale
        assert all(e["reason"] == "command_timeout" for e in stale)
        s.agent.proc.send_signal(signal.SIGCONT)
        # the agent gets the commands now, each past its not_after: refused, nothing sent
        await eventually(lambda: s.agent.log().count("deadline_passed") >= len(stale), within=30)
        assert len(s.fleet.recorder) == heard
        await s.topup("E5b", LOCAL, 500)
        again = await done(s, "E5b")
        assert again["state"] == "confirmed"
        assert s.credits(LOCAL) == [(n + 1, 500)]


async def test_e06_billing_submits_twice(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        first = await s.topup("E6", LOCAL, 600)
        wallet = s.fleet.meter(LOCAL).wallet
        assert wallet is not None
        body = {"order_id": "E6", "meter": LOCAL, "customer": wallet.customer_number,
                "amount_fen": 600}  # fmt: skip
        status, second = await s.post("/v1/topups", body)
        assert status == 200
        assert second["accepted_at"] == first["accepted_at"]
        order = await done(s, "E6")
        status, third = await s.post("/v1/topups", body)
        assert (status, third["state"]) == (200, "confirmed")
        status, other = await s.post(
            "/v1/topups", {**body, "order_id": "E6-other", "purchase_count": n + 1}
        )
        assert (status, other["error"]["code"]) == (409, "purchase_count_taken")
        status, listing = await s.get(f"/v1/topups?day={order['day']}")
        assert [o["order_id"] for o in listing["orders"]] == ["E6"]  # one ledger row
        assert s.credits(LOCAL) == [(n + 1, 600)]


async def test_e07_two_orders_for_one_meter(tmp_path: Path) -> None:
    """The second purchase (n+2) arrives first: it reaches the meter, finds count n (< n+1),
    waits — never failed — until the first (n+1) is on the meter; then both are confirmed in
    order, one at a time."""
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        await s.topup("E7-2", LOCAL, 702, purchase_count=n + 2)
        waiting = await eventually_reason(s, "E7-2", "waiting_earlier_purchase")
        assert waiting["state"] == "queued"
        await s.topup("E7-1", LOCAL, 701, purchase_count=n + 1)
        one, two = await done(s, "E7-1"), await done(s, "E7-2")
        assert (one["state"], two["state"]) == ("confirmed", "confirmed")
        assert s.credits(LOCAL) == [(n + 1, 701), (n + 2, 702)]
        assert dt.datetime.fromisoformat(one["finished_at"]) <= dt.datetime.fromisoformat(
            two["finished_at"]
        )


async def eventually_reason(s: ServiceStack, order_id: str, reason: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            order = await s.order(order_id)
            if order["reason"] == reason:
                return order
            await asyncio.sleep(0.1)


async def test_e08_out_of_band_purchase(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        assert s.fleet.meter(LOCAL).card_purchase(777) is not None  # a card took n+1
        await s.topup("E8", LOCAL, 800, purchase_count=n + 1)
        order = await done(s, "E8")
        assert (order["state"], order["reason"]) == ("needs_review", "out_of_band_purchase")
        assert order["credited"] is False
        assert sends(order, "topup") == []  # the read-back decided before any send
        assert [(c.source, c.amount_fen) for c in s.fleet.credits.records(LOCAL)] == [("card", 777)]


async def test_e09_wrong_archive_customer_mismatch(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        status, created = await s.post(
            "/v1/topups",
            {"order_id": "E9", "meter": LOCAL, "customer": "999999999999", "amount_fen": 900},
        )
        assert status == 201, created
        order = await done(s, "E9")
        assert (order["state"], order["reason"], order["reason_class"]) == (
            "failed", "customer_mismatch", "archive",
        )  # fmt: skip
        assert order["attempts"] == 2  # one re-check, no retry loop
        assert [t["reason"] for t in sends(order, "topup")] == ["customer_mismatch"] * 2
        assert s.credits(LOCAL) == []


async def test_e10_esam_failures_repeat_and_the_suspended_meter(tmp_path: Path) -> None:
    """A machine whose MACs the meter refuses (a vendor class through the registry point):
    stop after 2 per order → needs_review; the meter's daily cap stops the next order at its
    first failure. A suspended meter (SERR bit8) waits for its next day: nothing is retried
    before, and at the deadline the order is terminal."""
    options = {"hsm": "tests.topup.corrupt_hsm:CorruptMacHsm", "esam_failures_per_meter_day": 3}
    async with service_stack(tmp_path, topup=options) as s:
        await s.topup("E10a", LOCAL, 1000)
        a = await done(s, "E10a")
        assert (a["state"], a["reason"], a["attempts"]) == ("needs_review", "esam_failed", 2)
        await s.topup("E10b", LOCAL, 1000)
        b = await done(s, "E10b")
        assert (b["state"], b["reason"]) == ("needs_review", "esam_daily_cap"), b
        assert len(sends(b, "topup")) == 1
        assert s.fleet.meter(LOCAL).esam is not None
        esam = s.fleet.meter(LOCAL_2).esam
        assert esam is not None
        esam.lock_after = 1
        esam.mac_failed(s.fleet.world.now())
        await s.topup("E10c", LOCAL_2, 1000, deadline=deadline_in(5))
        suspended = await eventually_reason(s, "E10c", "meter_suspended")
        assert suspended["state"] == "queued"
        c = await done(s, "E10c")
        assert (c["state"], c["reason"]) == ("failed", "meter_suspended")
        assert c["attempts"] == 1
        assert s.credits(LOCAL) == []
        assert s.credits(LOCAL_2) == []


async def test_e11_over_the_hoarding_limit(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        wallet = s.fleet.meter(LOCAL).wallet
        assert wallet is not None
        await s.topup("E11", LOCAL, wallet.limits.hoarding_fen)
        order = await done(s, "E11")
        assert (order["state"], order["reason"], order["reason_class"], order["attempts"]) == (
            "failed", "hoarding_exceeded", "business", 1,
        )  # fmt: skip
        assert "remaining" in order["detail"]
        assert s.credits(LOCAL) == []


async def test_e12_top_up_for_a_meter_in_remote_mode(tmp_path: Path) -> None:
    """The archive says local, the meter says remote (status word 3 bits 9-8 = 00): a profile
    error; no remote path (no relay command) until a person confirms the mode."""
    async with service_stack(tmp_path) as s:
        archive = json.loads((tmp_path / "topup-archive.json").read_text())
        for entry in archive:
            if entry["meter"] == REMOTE:
                entry["mode"] = "local"
        (tmp_path / "topup-archive.json").write_text(json.dumps(archive))
        await s.stop_service()
        await s.start_service()
        await s.topup("E12", REMOTE, 1200)
        order = await done(s, "E12")
        assert (order["state"], order["reason"], order["reason_class"]) == (
            "failed", "profile_remote_mode", "archive",
        )  # fmt: skip
        assert sends(order, "topup") == []
        assert sends(order, "relay") == []


async def test_e13_remote_credit_and_a_relay_that_does_not_move(tmp_path: Path) -> None:
    async with service_stack(tmp_path, topup={"remote_restore": "close"}) as s:
        await s.post(
            "/v1/relay-orders", {"order_id": "E13-trip", "meter": REMOTE, "action": "trip"}
        )
        assert (await done(s, "E13-trip", "relay-orders"))["state"] == "confirmed"
        assert s.fleet.meter(REMOTE).relay.open
        s.fleet.inject(REMOTE, "relay_stuck", on="relay")
        await s.topup("E13", REMOTE, 1300)
        order = await done(s, "E13")
        assert (order["state"], order["credited"]) == ("confirmed", True), order
        relays = sends(order, "relay")
        assert len(relays) == 2  # accepted but stuck, then again with a new authentication
        assert relays[0]["frames"][0] != relays[1]["frames"][0]  # a new ciphertext
        assert order["result"]["relay_open"] is False
        assert not s.fleet.meter(REMOTE).relay.open
        assert order["result"]["ledger_credit_fen"] == 1300


async def test_e14_local_meter_tripped_remotely(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        await s.post("/v1/relay-orders", {"order_id": "E14-trip", "meter": LOCAL, "action": "trip"})
        assert (await done(s, "E14-trip", "relay-orders"))["state"] == "confirmed"
        await s.topup("E14", LOCAL, 1400)
        order = await done(s, "E14")
        assert order["state"] == "confirmed", order
        relays = [e["what"] for e in order["exchanges"] if e["what"].startswith("relay:")]
        assert relays == ["relay:close_allowed+relay-state"]
        assert order["result"]["relay"] == "close_allowed"
        assert s.credits(LOCAL) == [(n + 1, 1400)]
        assert not s.fleet.meter(LOCAL).relay.command_open


async def test_e15_encryption_machine_unavailable(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        s.hsm.fail(160, "error")
        await s.topup("E15", LOCAL, 1500, deadline=deadline_in(4))
        waiting = await eventually_reason(s, "E15", "hsm_unavailable")
        assert waiting["state"] in ("queued", "accepted")
        order = await done(s, "E15")
        assert (order["state"], order["reason"], order["reason_class"]) == (
            "failed", "hsm_unavailable", "communication",
        )  # fmt: skip
        assert all(e["what"].startswith("hsm:") for e in order["exchanges"])  # no meter traffic
        assert s.credits(LOCAL) == []


async def test_e16_abnormal_reply_although_the_meter_credited(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        s.fleet.inject(LOCAL, "error_after", on="topup", serr=0x0001)
        await s.topup("E16", LOCAL, 1600)
        order = await done(s, "E16")
        assert (order["state"], order["attempts"]) == ("confirmed", 1)
        assert sends(order, "topup")[0]["reason"] == "security_other"
        assert s.credits(LOCAL) == [(n + 1, 1600)]
