"""Results pushed to billing: every order that reaches a terminal state is POSTed to
`[topup] webhook_url`, signed, and retried with exponential backoff until billing answers 2xx
(the outbox is in the store, so a restart loses nothing; billing may also pull).

Signature: ``X-Meterlink-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
with the secret from METERLINK_TOPUP_WEBHOOK_SECRET; billing recomputes it over the raw body and
refuses a stale ``t``. ``X-Meterlink-Delivery`` is ``<order_id>/<attempt>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable

import aiohttp

from central.topup.orders import Order, OrderBook

__all__ = ["Webhook", "sign", "verify"]

log = logging.getLogger(__name__)


def sign(secret: bytes, body: bytes, t: int) -> str:
    mac = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: bytes, body: bytes, header: str, *, now: float, tolerance_s: float = 300
) -> bool:
    """What billing does with a delivery (and the tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Webhook:
    def __init__(
        self,
        book: OrderBook,
        url: str,
        secret: bytes,
        *,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 600.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs METERLINK_TOPUP_WEBHOOK_SECRET")
        self.book = book
        self.url = url
        self.secret = secret
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._wake = asyncio.Event()
        self.delivered = 0

    def wake(self, order: Order | None = None) -> None:
        if order is None or order.terminal:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        ) as http:
            while not stop.is_set():
                self._wake.clear()
                await self.deliver_due(http)
                nxt = self.book.next_notification()
                wait = 5.0 if nxt is None else min(5.0, max(0.05, nxt - self.clock()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await _either(self._wake, stop)

    async def deliver_due(self, http: aiohttp.ClientSession) -> int:
        done = 0
        for order in self.book.due_notifications(now=self.clock()):
            body = json.dumps(
                {"event": "order.terminal", "order": order.view(self.book.tz)}, ensure_ascii=False
            ).encode()
            t = int(self.clock())
            headers = {
                "Content-Type": "application/json",
                "X-Meterlink-Signature": sign(self.secret, body, t),
                "X-Meterlink-Delivery": f"{order.order_id}/{order.notify_attempts + 1}",
            }
            error = ""
            try:
                async with http.post(self.url, data=body, headers=headers) as response:
                    ok = 200 <= response.status < 300
                    if not ok:
                        error = f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            delay = min(self.retry_max_s, self.retry_initial_s * 2**order.notify_attempts)
            self.book.notified(order, now=self.clock(), ok=ok, error=error,
                               next_at=self.clock() + delay)  # fmt: skip
            if ok:
                done += 1
                self.delivered += 1
            else:
                log.warning("webhook for %s: %s; again in %.0f s", order.order_id, error, delay)
        return done


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
