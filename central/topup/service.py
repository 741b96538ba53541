"""`meterlink central topup serve`: the order service as its own process — the billing-facing
HTTP API, the executor (agent commands over MQTT, the encryption machine), the webhook and the
KPI points, all state in the central store.

Why its own process (not inside `meterlink central run`): billing talks to it over HTTP with
its own tokens and TLS, so that surface stays apart from the ingest path (a flood of readings
or an ingest restart never delays a customer's power; a bug in the API cannot stall ingest);
it is scaled on its own (one or two instances per utility, while ingest scales with the
fleet); and everything it knows is in the shared store, so any instance can be restarted or
replaced at any time (an interrupted attempt is taken up by the read-back rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import common.clock
from central.commands import CommandSender
from central.config import CentralConfig
from central.store import Store
from central.topup.api import make_app
from central.topup.executor import Executor, MqttChannel
from central.topup.hsm import load_security_module
from central.topup.kpi import compute, day_lines
from central.topup.orders import OrderBook, load_archive
from central.topup.webhook import Webhook
from common.config import parse_listen

__all__ = ["read_archive", "serve"]

log = logging.getLogger(__name__)


def read_archive(path: Path) -> list[Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    return load_archive(doc, str(path))


async def _influx_loop(
    cfg: CentralConfig, book: OrderBook, stop: asyncio.Event, clock: Callable[[], float]
) -> None:
    from central.writers import WriteError, make_writer

    writer = make_writer(cfg.influx)
    started = False
    try:
        while not stop.is_set():
            try:
                if not started:
                    await writer.start()
                    started = True
                today = book.day_of(clock())
                days = [d for d in book.days() if d >= _days_before(today, 2)]
                lines: list[str] = []
                for day in days:
                    lines += day_lines(compute(day, book.orders_of_days([day])))
                if lines:
                    await writer.write(lines)
            except (WriteError, OSError) as exc:
                log.warning("topup KPI to InfluxDB: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.topup.influx_interval_s):
                    await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await writer.close()


def _days_before(day: str, n: int) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(day) - dt.timedelta(days=n)).isoformat()


async def serve(cfg: CentralConfig, store: Store, *, stop: asyncio.Event | None = None) -> None:
    t = cfg.topup
    tokens = t.token_list()
    if not tokens:
        raise ValueError("no bearer token for billing: set METERLINK_TOPUP_TOKENS")
    if t.webhook_url and t.webhook_secret is None:
        raise ValueError(
            "[topup] webhook_url is set but not its secret: set METERLINK_TOPUP_WEBHOOK_SECRET"
        )
    if cfg.mqtt.command_key is None:
        raise ValueError("no command key: set METERLINK_MQTT_COMMAND_KEY (the agents' key)")
    from protocols.commands import key_bytes

    key = key_bytes(cfg.mqtt.command_key.reveal())
    tz = zoneinfo.ZoneInfo(t.timezone)
    book = OrderBook(store, tz, holder=f"{cfg.mqtt.client_id}-topup", lease_s=t.lease_s)
    book.migrate()
    if book.release_own():
        log.info("orders this instance held before it stopped are taken up again")
    if t.archive is not None:
        n = book.set_archive(read_archive(t.archive))
        log.info("top-up archive %s: %d meters", t.archive, n)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    hsm = load_security_module(t.hsm, {"url": t.hsm_url, "timeout_s": t.hsm_timeout_s})
    clock = common.clock.current().time
    # the broker may be down or slow when the service starts (a power cut brings both back):
    # billing's API and the deadlines do not wait for it, orders wait (command_timeout) until
    # the sender has connected in the background
    sender = CommandSender(
        cfg.mqtt, key, client_id=f"{cfg.mqtt.client_id}-topup", start_offline=True
    )
    executor = Executor(book, t, hsm, MqttChannel(sender), clock=clock)
    # the orders whose deadline passed while no instance ran end now, before anything waits
    # on the network (a killed instance's orders were released above)
    executor.end_overdue()
    async with hsm, sender:
        book.listeners.append(lambda order: executor.wake())
        app = make_app(
            book, tokens, default_deadline_s=t.default_deadline_s,
            max_deadline_s=t.max_deadline_s, wake=executor.wake, clock=clock,
        )  # fmt: skip
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = None
        if t.tls_cert is not None and t.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(t.tls_cert, t.tls_key)
        host, port = parse_listen(t.listen)
        site = web.TCPSite(
            runner, host, port, ssl_context=context, shutdown_timeout=t.stop_timeout_s / 3
        )
        await site.start()
        bound = runner.addresses[0]
        scheme = "https" if context else "http"
        print(f"topup {scheme}://{bound[0]}:{bound[1]}/", flush=True)
        tasks = [asyncio.create_task(executor.run(stop), name="topup-executor")]
        if t.webhook_url:
            secret = t.webhook_secret.reveal().encode() if t.webhook_secret else b""
            hook = Webhook(
                book, t.webhook_url, secret, retry_initial_s=t.webhook_retry_initial_s,
                retry_max_s=t.webhook_retry_max_s, timeout_s=t.webhook_timeout_s, clock=clock,
            )  # fmt: skip
            book.listeners.append(hook.wake)
            tasks.append(asyncio.create_task(hook.run(stop), name="topup-webhook"))
        if t.influx_interval_s > 0:
            tasks.append(asyncio.create_task(_influx_loop(cfg, book, stop, clock)))
        print("ready", flush=True)
        log.info("top-up service on %s://%s:%d", scheme, bound[0], bound[1])
        try:
            await stop.wait()
        finally:
            stop.set()
            # one budget for everything: the open requests (the site's shutdown_timeout), then
            # the tasks; what is left is cancelled (an attempt cut short is read back later)
            loop_time = asyncio.get_running_loop().time
            end = loop_time() + t.stop_timeout_s
            await runner.cleanup()
            _done, pending = await asyncio.wait(tasks, timeout=max(0.1, end - loop_time()))
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if pending:
                log.warning("stopped %d task(s) still busy after stop_timeout_s", len(pending))
    print("topup: stopped", file=sys.stderr)
