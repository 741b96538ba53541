"""The order service end to end with real processes (broker, agent, `meterlink central topup
serve`; the simulator and the encryption machine in the test's process): a confirmed top-up,
a lost reply confirmed by read-back without a second credit, relay orders, idempotent
resubmission, refusals at acceptance, cancelling, the bearer token."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from tests.fixtures.pki import self_signed
from tests.topup.service_stack import check_audit, service_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOCAL = "000000000001"
LOCAL_2 = "000000000002"
REMOTE = "000000000101"


async def test_top_up_relay_idempotency_and_cancel(tmp_path: Path) -> None:
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        created = await s.topup("T-1", LOCAL, 5000)
        assert created["state"] == "accepted"
        order = await s.terminal("T-1")
        assert (order["state"], order["purchase_count"], order["attempts"]) == (
            "confirmed", n + 1, 1,
        ), order  # fmt: skip
        assert order["purchase_count_assigned"] is True
        assert s.credits(LOCAL) == [(n + 1, 5000)]
        assert [e["what"] for e in order["exchanges"]] == ["auth+readback", "topup+readback"]
        check_audit(order)
        assert order["result"]["readback"]["purchase_count"] == n + 1

        # the same order again: 200 and the same order; another body: 409
        wallet = s.fleet.meter(LOCAL).wallet
        assert wallet is not None
        body = {"order_id": "T-1", "meter": LOCAL, "customer": wallet.customer_number,
                "amount_fen": 5000}  # fmt: skip
        status, again = await s.post("/v1/topups", body)
        assert (status, again["state"], again["accepted_at"]) == (
            200, "confirmed", order["accepted_at"],
        )  # fmt: skip
        status, conflict = await s.post("/v1/topups", {**body, "amount_fen": 5001})
        assert (status, conflict["error"]["code"]) == (409, "order_id_conflict")
        # a second order for the same (meter, purchase count) is refused at acceptance
        status, taken = await s.post(
            "/v1/topups", {**body, "order_id": "T-2", "purchase_count": n + 1}
        )
        assert (status, taken["error"]["code"]) == (409, "purchase_count_taken")
        status, unknown = await s.post("/v1/topups", {**body, "order_id": "T-3", "meter": "x"})
        assert (status, unknown["error"]["code"]) == (422, "unknown_meter")
        status, bad = await s.post("/v1/topups", {**body, "order_id": "T-4", "amount_fen": -1})
        assert status == 400, bad
        assert s.credits(LOCAL) == [(n + 1, 5000)]

        # relay orders on the remote meter: trip, then close, verified by status word 3
        status, trip = await s.post(
            "/v1/relay-orders", {"order_id": "R-1", "meter": REMOTE, "action": "trip"}
        )
        assert status == 201, trip
        tripped = await s.terminal("R-1", "relay-orders")
        assert tripped["state"] == "confirmed", tripped
        assert tripped["result"]["relay_open"] is True
        assert s.fleet.meter(REMOTE).relay.open
        check_audit(tripped)
        status, _ = await s.post(
            "/v1/relay-orders", {"order_id": "R-1", "meter": REMOTE, "action": "trip"}
        )
        assert status == 200
        await s.post("/v1/relay-orders", {"order_id": "R-2", "meter": REMOTE, "action": "close"})
        closed = await s.terminal("R-2", "relay-orders")
        assert closed["state"] == "confirmed", closed
        assert not s.fleet.meter(REMOTE).relay.open
        # verified by status word 3 and the relay event records
        assert closed["result"]["relay_events"]["1E000001"]["relay_close_count"] == 1
        assert tripped["result"]["relay_events"]["1D000001"]["relay_trip_count"] == 1

        # cancel: only before anything reached the meter (the machine is down: nothing sent)
        s.hsm.fail(160, "error")
        await s.topup("T-5", LOCAL_2, 1200)
        status, cancelled = await s.post("/v1/topups/T-5/cancel", {})
        assert (status, cancelled["state"]) == (200, "cancelled"), cancelled
        s.hsm.heal()
        status, refused = await s.post("/v1/topups/T-1/cancel", {})
        assert (status, refused["error"]["code"]) == (409, "not_cancellable")
        assert s.credits(LOCAL_2) == []

        # lists by day and state; the token
        status, listing = await s.get(f"/v1/topups?day={order['day']}&state=confirmed")
        assert [o["order_id"] for o in listing["orders"]] == ["T-1"]
        assert s.http is not None
        async with s.http.get(f"{s.url}/v1/topups/T-1") as r:
            assert r.status == 401
        async with s.http.get(
            f"{s.url}/v1/topups/T-1", headers={"Authorization": "Bearer wrong"}
        ) as r:
            assert r.status == 401


async def test_lost_reply_is_confirmed_by_read_back_across_a_restart(tmp_path: Path) -> None:
    """§E #1 through the service: the meter credits, its reply is lost; the read-back (in the
    same command) shows count = target and the amount → confirmed, never resent. The service
    is killed while an order waits and taken up again after a restart."""
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        rule = s.fleet.inject(LOCAL, "drop_reply", on="topup")
        await s.topup("L-1", LOCAL, 3300)
        order = await s.terminal("L-1")
        assert rule.hits == 1
        # the read-back in the same command settles it: confirmed, nothing sent again
        assert (order["state"], order["attempts"]) == ("confirmed", 1), order
        assert s.credits(LOCAL) == [(n + 1, 3300)]
        whats = [e["what"] for e in order["exchanges"]]
        assert whats == ["auth+readback", "topup+readback"], whats
        lost = order["exchanges"][1]["reply"]["result"]["steps"][0]
        assert (lost["reason"], lost["sent"]) == ("no_reply", True)
        check_audit(order)

        # the machine is down: the order waits (nothing sent); the service is killed and
        # started again; the order is executed once the machine is back
        s.hsm.fail(160, "error")
        await s.topup("L-2", LOCAL_2, 700)
        await s.kill_service()
        await s.start_service()
        waiting = await s.order("L-2")
        assert waiting["state"] in ("accepted", "queued", "authenticating"), waiting
        s.hsm.heal()
        done = await s.terminal("L-2")
        assert done["state"] == "confirmed", done
        assert len(s.credits(LOCAL_2)) == 1


async def test_starts_while_the_broker_is_down_and_ends_overdue_orders_first(
    tmp_path: Path,
) -> None:
    """A power cut brings the broker and the order service back in any order. An order whose
    deadline passed while no instance ran ends as the restarted service starts, before it has
    a broker; billing's API answers meanwhile and new orders wait, then execute once the
    broker is back (once)."""
    async with service_stack(tmp_path) as s:
        n = s.count(LOCAL)
        s.broker.stop()
        now = dt.datetime.now(dt.UTC)
        await s.topup("B-1", LOCAL, 1500, deadline=(now + dt.timedelta(seconds=3)).isoformat())
        await s.kill_service()  # holding B-1, whose deadline passes while nothing runs
        await asyncio.sleep(3.5)  # real seconds: the deadline is on the real clock here
        started = dt.datetime.now(dt.UTC)
        await s.start_service()  # the broker is still down
        ready = dt.datetime.now(dt.UTC)
        b1 = await s.order("B-1")
        assert (b1["state"], b1["reason"]) == ("failed", "deadline_passed"), b1
        finished = dt.datetime.fromisoformat(b1["finished_at"])
        # finished_at has whole seconds
        assert started.replace(microsecond=0) <= finished <= ready, (started, finished, ready)
        log = s.service.log() if s.service else ""
        assert "not reachable" in log, log[-2000:]
        assert "starting without it" in log, log[-2000:]
        assert "Traceback" not in log, log[-3000:]

        await s.topup("B-2", LOCAL_2, 900)
        waiting = await s.until("B-2", lambda o: o["reason"] == "command_timeout", within=30)
        assert waiting["state"] in ("queued", "authenticating"), waiting
        assert "not connected to the MQTT broker" in waiting["detail"], waiting
        assert s.credits(LOCAL) == s.credits(LOCAL_2) == []

        s.broker.start()
        done = await s.terminal("B-2")
        assert done["state"] == "confirmed", done
        assert len(s.credits(LOCAL_2)) == 1
        assert s.credits(LOCAL) == []
        assert s.count(LOCAL) == n


async def test_webhook_signed_and_retried_and_the_reconciliation_pull(tmp_path: Path) -> None:
    """Billing's endpoint refuses the first delivery (500): the service retries with backoff
    and the second one, signed with the shared secret, is taken; billing can also pull the
    day's reconciliation (JSON and CSV)."""
    import asyncio
    import time

    from aiohttp import web

    from central.topup.webhook import verify

    secret = "webhook-secret-for-the-test"
    received: list[tuple[bytes, str]] = []
    answers = [500]
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((body, request.headers["X-Meterlink-Signature"]))
        status = answers.pop(0) if answers else 200
        if status == 200:
            got.set()
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/billing/topup-result", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    options = {
        "webhook_url": f"http://127.0.0.1:{port}/billing/topup-result",
        "webhook_retry_initial_s": 0.2,
        "webhook_retry_max_s": 1,
    }
    try:
        async with service_stack(
            tmp_path, topup=options, env={"METERLINK_TOPUP_WEBHOOK_SECRET": secret}
        ) as s:
            await s.topup("W-1", LOCAL, 1500)
            order = await s.terminal("W-1")
            assert order["state"] == "confirmed"
            await asyncio.wait_for(got.wait(), 30)
            assert len(received) == 2  # refused once, then delivered
            for body, signature in received:
                assert verify(secret.encode(), body, signature, now=time.time())
                assert not verify(b"another secret", body, signature, now=time.time())
            delivered = json.loads(received[-1][0])
            assert (delivered["event"], delivered["order"]["order_id"]) == ("order.terminal", "W-1")
            assert delivered["order"]["state"] == "confirmed"
            status, doc = await s.get(f"/v1/reconciliation?day={order['day']}")
            assert status == 200
            assert (doc["totals"]["confirmed_topups"], doc["totals"]["credited_fen"]) == (1, 1500)
            assert doc["orders"][0]["readback_amount_fen"] == 1500
            assert s.http is not None
            async with s.http.get(
                f"{s.url}/v1/reconciliation?day={order['day']}&format=csv", headers=s.headers
            ) as r:
                text = await r.text()
            assert "# credited_fen,1500" in text
            assert "W-1,topup," in text
    finally:
        await runner.cleanup()


async def test_tls(tmp_path: Path) -> None:
    """With tls_cert / tls_key the API speaks HTTPS only; the token is still required."""
    import ssl

    import aiohttp

    crt, key = self_signed(tmp_path, "topup")
    async with service_stack(tmp_path, topup={"tls_cert": str(crt), "tls_key": str(key)}) as s:
        assert s.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(crt))
        trust.check_hostname = False  # the certificate names 127.0.0.1 as CN only
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as https:
            s.http, plain = https, s.http
            await s.topup("S-1", LOCAL, 100)
            assert (await s.terminal("S-1"))["state"] == "confirmed"
            async with https.get(f"{s.url}/v1/topups/S-1") as r:
                assert r.status == 401
            assert plain is not None
            with pytest.raises(aiohttp.ClientError):
                await plain.get(s.url.replace("https://", "http://") + "/healthz")
            s.http = plain


async def test_the_kpi_reaches_influxdb(tmp_path: Path) -> None:
    """The service writes `topup*` points every influx_interval_s: the day's rate with a
    confirmed and a failed order, and the failing meter named."""
    from tests.agent.helpers_mqtt import eventually
    from tests.fixtures.services import running_influxdb

    with running_influxdb(tmp_path / "influx") as influx:
        extra = f'[influx]\nurl = "{influx.url}"\n'
        async with service_stack(
            tmp_path, topup={"influx_interval_s": 0.5}, central_extra=extra
        ) as s:
            await s.topup("K-1", LOCAL, 100)
            await s.post(
                "/v1/topups",
                {"order_id": "K-2", "meter": LOCAL_2, "customer": "999999999999",
                 "amount_fen": 100},
            )  # fmt: skip
            one, two = await s.terminal("K-1"), await s.terminal("K-2")
            assert (one["state"], two["state"]) == ("confirmed", "failed")

            def rate() -> list[list[object]]:
                series = influx.query(
                    "SELECT last(rate), last(orders), last(confirmed), last(failed) FROM topup"
                    " WHERE scope = 'fleet'"
                )
                return [v[1:] for x in series for v in x["values"]]

            # polled: InfluxDB has no event to wait on. `failed` too: the rate is 50 % as soon
            # as K-1 is confirmed, also in a write made while K-2 was still running (its
            # failing-meter line comes with the write that counts it failed)
            await eventually(lambda: rate() == [[50.0, 2.0, 1.0, 1.0]], within=30)
            meters = influx.query("SELECT last(reasons) FROM topup_meter GROUP BY meter")
            assert [(m["tags"]["meter"], m["values"][0][1]) for m in meters] == [
                (LOCAL_2, "customer_mismatch 1")
            ]


async def test_two_instances_share_the_store(tmp_path: Path) -> None:
    """Two service instances (their own MQTT identities) on one store: orders submitted to
    either are executed once each, one at a time per meter, whichever instance takes them."""
    import asyncio

    from tests.fixtures.processes import MeterlinkProcess
    from tests.topup.service_stack import KEY, TOKEN

    async with service_stack(tmp_path) as s:
        second_config = tmp_path / "central-2.toml"
        second_config.write_text(
            s.central_config.read_text().replace('"test-topup-central"', '"test-topup-central-2"')
        )
        second = MeterlinkProcess(
            ["central", "topup", "serve", "--config", str(second_config)],
            tmp_path / "topup-second.log",
            {"METERLINK_MQTT_COMMAND_KEY": KEY, "METERLINK_TOPUP_TOKENS": TOKEN},
        )
        await second.start(stdout=asyncio.subprocess.PIPE)
        assert second.proc is not None
        assert second.proc.stdout is not None
        url2 = ""
        while True:
            line = (await asyncio.wait_for(second.proc.stdout.readline(), 60)).decode().strip()
            assert line, second.log()
            if line.startswith("topup "):
                url2 = line.split()[1].rstrip("/")
            if line == "ready":
                break
        try:
            first_url = s.url
            before = {m: s.count(m) for m in (LOCAL, LOCAL_2, "000000000003")}
            ids = []
            for i in range(6):
                meter = ("000000000001", "000000000002", "000000000003")[i % 3]
                s.url = first_url if i % 2 == 0 else url2
                await s.topup(f"M-{i}", meter, 100 + i)
                ids.append(f"M-{i}")
            s.url = first_url
            for order_id in ids:
                assert (await s.terminal(order_id))["state"] == "confirmed"
            for j, meter in enumerate(("000000000001", "000000000002", "000000000003")):
                n = before[meter]
                assert s.credits(meter) == [(n + 1, 100 + j), (n + 2, 100 + j + 3)]
        finally:
            assert await second.stop() == 0, second.log()
