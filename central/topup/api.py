"""The billing-facing HTTP/JSON API of the order service (aiohttp, as the panel). Every
``/v1`` path needs ``Authorization: Bearer <token>`` (tokens from METERLINK_TOPUP_TOKENS,
compared in constant time); docs/topup-openapi.yaml is the contract."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from central.topup.orders import OrderBook, OrderError, State
from central.topup.reconcile import reconciliation, render_csv

__all__ = ["make_app", "validate_relay", "validate_topup"]

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_AMOUNT_FEN = 100_000_000  # 1,000,000 yuan: far above any hoarding limit
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _check_keys(body: dict[str, Any], required: set[str], optional: set[str]) -> None:
    missing = required - set(body)
    if missing:
        raise OrderError(400, "invalid", f"missing {', '.join(sorted(missing))}")
    unknown = set(body) - required - optional
    if unknown:
        raise OrderError(400, "invalid", f"unknown keys {', '.join(sorted(unknown))}")
    if not isinstance(body["order_id"], str) or not _ID.match(body["order_id"]):
        raise OrderError(400, "invalid", f"order_id: 1-64 of A-Z a-z 0-9 _ . : - ({_ID.pattern})")
    if not isinstance(body["meter"], str) or not body["meter"]:
        raise OrderError(400, "invalid", "meter: the meter's archive id")


def _deadline(body: dict[str, Any], now: float, settings: dict[str, float]) -> float:
    text = body.get("deadline")
    if text is None:
        return now + settings["default_deadline_s"]
    if not isinstance(text, str):
        raise OrderError(400, "invalid", "deadline: an ISO 8601 time with its offset")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise OrderError(400, "invalid", f"deadline {text!r} is not ISO 8601") from None
    if when.tzinfo is None:
        raise OrderError(400, "invalid", "deadline needs its UTC offset (e.g. +08:00)")
    t = when.timestamp()
    if t <= now:
        raise OrderError(422, "deadline_passed", f"deadline {text} has passed")
    if t > now + settings["max_deadline_s"]:
        raise OrderError(422, "deadline_too_far", f"deadline {text} is beyond max_deadline_s")
    return t


def _int(body: dict[str, Any], key: str, low: int, high: int) -> None:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise OrderError(400, "invalid", f"{key}: an integer {low}..{high}")


def validate_topup(body: Any) -> dict[str, Any]:
    """The top-up request as stored (raises `OrderError` 400)."""
    if not isinstance(body, dict):
        raise OrderError(400, "invalid", "expected a JSON object")
    _check_keys(
        body, {"order_id", "meter", "customer", "amount_fen"}, {"purchase_count", "deadline"}
    )
    if not isinstance(body["customer"], str) or not _DIGITS.match(body["customer"]):
        raise OrderError(400, "invalid", "customer: the customer number (户号), 1-20 digits")
    _int(body, "amount_fen", 1, MAX_AMOUNT_FEN)
    if "purchase_count" in body:
        _int(body, "purchase_count", 1, 2**32 - 1)
    return body


def validate_relay(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OrderError(400, "invalid", "expected a JSON object")
    _check_keys(body, {"order_id", "meter", "action"}, {"deadline"})
    if body["action"] not in ("trip", "allow_close", "close"):
        raise OrderError(400, "invalid", "action: trip | allow_close | close")
    return body


def make_app(
    book: OrderBook,
    tokens: Sequence[bytes],
    *,
    default_deadline_s: float,
    max_deadline_s: float,
    wake: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The API over `book`; `wake` is called after an order is accepted (the executor)."""
    if not tokens:
        raise ValueError("no bearer token: set METERLINK_TOPUP_TOKENS")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            presented = given.strip().encode()
            ok = False
            for token in tokens:  # every token compared, in constant time each
                ok |= hmac.compare_digest(presented, token)
            if scheme.lower() != "bearer" or not ok:
                response = _error(401, "unauthorized", "a valid bearer token is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="meterlink-topup"'
                return response
        try:
            return await handler(request)
        except OrderError as exc:
            return _error(exc.status, exc.code, str(exc))

    app = web.Application(middlewares=[authenticate], client_max_size=64 * 1024)
    settings = {"default_deadline_s": default_deadline_s, "max_deadline_s": max_deadline_s}

    async def body_of(request: web.Request) -> Any:
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError):
            raise OrderError(400, "invalid", "the body is not JSON") from None

    async def submit(request: web.Request, kind: str) -> web.Response:
        raw = await body_of(request)
        body = validate_topup(raw) if kind == "topup" else validate_relay(raw)
        now = clock()
        deadline = _deadline(body, now, settings)
        accepted = book.accept(kind, body, now=now, deadline=deadline)
        if accepted.created:
            wake()
        return web.json_response(
            accepted.order.view(book.tz), status=201 if accepted.created else 200
        )

    async def post_topup(request: web.Request) -> web.Response:
        return await submit(request, "topup")

    async def post_relay(request: web.Request) -> web.Response:
        return await submit(request, "relay")

    def one(request: web.Request, kind: str) -> web.Response:
        order = book.get(request.match_info["order_id"])
        if order is None or order.kind != kind:
            raise OrderError(404, "not_found", f"no {kind} order {request.match_info['order_id']}")
        return web.json_response(order.view(book.tz, book.exchanges(order.order_id)))

    async def get_topup(request: web.Request) -> web.Response:
        return one(request, "topup")

    async def get_relay(request: web.Request) -> web.Response:
        return one(request, "relay")

    def listing(request: web.Request, kind: str) -> web.Response:
        q = request.query
        day, state = q.get("day"), q.get("state")
        if day is not None and not _DAY.match(day):
            raise OrderError(400, "invalid", "day: YYYY-MM-DD")
        if state is not None and state not in {s.value for s in State}:
            raise OrderError(400, "invalid", f"state: one of {', '.join(s.value for s in State)}")
        try:
            limit = int(q.get("limit", "1000"))
        except ValueError:
            raise OrderError(400, "invalid", "limit: an integer") from None
        if not 1 <= limit <= 10000:
            raise OrderError(400, "invalid", "limit: 1..10000")
        orders = book.query(kind=kind, day=day, state=state, limit=limit, after=q.get("after"))
        return web.json_response(
            {
                "orders": [o.view(book.tz) for o in orders],
                "next": orders[-1].order_id if len(orders) == limit else None,
            }
        )

    async def list_topups(request: web.Request) -> web.Response:
        return listing(request, "topup")

    async def list_relays(request: web.Request) -> web.Response:
        return listing(request, "relay")

    async def cancel(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        kind = "topup" if request.path.startswith("/v1/topups/") else "relay"
        existing = book.get(order_id)
        if existing is None or existing.kind != kind:
            raise OrderError(404, "not_found", f"no {kind} order {order_id}")
        order = book.cancel(order_id, now=clock())
        return web.json_response(order.view(book.tz))

    async def operator_action(request: web.Request) -> web.Response:
        """``POST /v1/topups/{id}/retry|close`` (and relay orders): billing's / ops' people act
        on a needs_review order as the panel's operators do; `operator` names them in the
        order's audit trail."""
        order_id = request.match_info["order_id"]
        kind = "topup" if request.path.startswith("/v1/topups/") else "relay"
        existing = book.get(order_id)
        if existing is None or existing.kind != kind:
            raise OrderError(404, "not_found", f"no {kind} order {order_id}")
        raw = await body_of(request)
        if not isinstance(raw, dict):
            raise OrderError(400, "invalid", "expected a JSON object")
        action = request.path.rsplit("/", 1)[1]
        allowed = {"operator", "note"} | ({"deadline"} if action == "retry" else set())
        unknown = set(raw) - allowed
        if unknown:
            raise OrderError(400, "invalid", f"unknown keys {', '.join(sorted(unknown))}")
        operator, note = raw.get("operator"), raw.get("note", "")
        if not isinstance(operator, str) or not 1 <= len(operator) <= 64:
            raise OrderError(400, "invalid", "operator: who acts (1-64 characters)")
        if not isinstance(note, str) or len(note) > 500:
            raise OrderError(400, "invalid", "note: text, at most 500 characters")
        now = clock()
        if action == "retry":
            order = book.retry(order_id, operator=operator, note=note, now=now,
                               deadline=_deadline(raw, now, settings))  # fmt: skip
            wake()
        else:
            order = book.close(order_id, operator=operator, note=note, now=now)
        return web.json_response(order.view(book.tz))

    async def reconcile(request: web.Request) -> web.StreamResponse:
        day = request.query.get("day", "")
        if not _DAY.match(day):
            raise OrderError(400, "invalid", "day: YYYY-MM-DD")
        doc = reconciliation(book, day)
        if request.query.get("format", "json") == "csv":
            return web.Response(text=render_csv(doc), content_type="text/csv", charset="utf-8")
        return web.Response(
            text=json.dumps(doc, ensure_ascii=False), content_type="application/json"
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "active_orders": book.active_count()})

    app.router.add_post("/v1/topups", post_topup)
    app.router.add_get("/v1/topups", list_topups)
    app.router.add_get("/v1/topups/{order_id}", get_topup)
    app.router.add_post("/v1/topups/{order_id}/cancel", cancel)
    app.router.add_post("/v1/topups/{order_id}/retry", operator_action)
    app.router.add_post("/v1/topups/{order_id}/close", operator_action)
    app.router.add_post("/v1/relay-orders", post_relay)
    app.router.add_get("/v1/relay-orders", list_relays)
    app.router.add_get("/v1/relay-orders/{order_id}", get_relay)
    app.router.add_post("/v1/relay-orders/{order_id}/cancel", cancel)
    app.router.add_post("/v1/relay-orders/{order_id}/retry", operator_action)
    app.router.add_post("/v1/relay-orders/{order_id}/close", operator_action)
    app.router.add_get("/v1/reconciliation", reconcile)
    app.router.add_get("/healthz", health)
    return app
