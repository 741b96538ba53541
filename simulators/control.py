"""The simulator's control channel: a small HTTP/JSON API a test in another process uses to
inject faults, look at a meter's prepaid state, read the credit log, make card purchases and move
the world clock of a running ``meterlink sim serve --control HOST:PORT``.

    GET    /v1/meters/{meter}            prepaid state: count, wallet, last purchase, relay, session
    POST   /v1/meters/{meter}/purchase   {"amount_fen": 3000}: an out-of-band card purchase now
    POST   /v1/meters/{meter}/button     the customer presses the close button
    GET    /v1/credits[?meter=M]         the credit log (+ "repeated": (meter, count) booked twice)
    POST   /v1/meters/{meter}/tariff/visit  a technician carries out a work order: the tariff
                                         set-up reprogrammed as planned, a bad clock set
    GET    /v1/tariff[?day=YYYY-MM-DD]   the tariff plans (plan-file TOML) and, per meter, what
                                         was done to its set-up and the expected check outcome
    GET    /v1/faults                    the injected faults with their hit counts
    POST   /v1/faults                    {"meter", "action", "on", "times", "skip", "late_s",
                                          "serr", "err"}: inject a fault (simulators.faults)
    DELETE /v1/faults[?meter=M]          remove (one meter's) injected faults
    GET    /v1/clock                     the world clock
    POST   /v1/clock                     {"advance_s": 86400} or {"set": "2026-03-11T00:00:30"}

No authentication: bind it to the loopback interface (the default). Errors: 400 (bad body,
with a message), 404 (no such meter). It runs in the simulator's event loop, so a request
never sees a meter half way through an exchange.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from simulators.faults import InjectedFault
from simulators.fleet import Fleet
from simulators.meter import Meter

__all__ = ["control_app", "meter_state", "serve_control"]


def meter_state(meter: Meter) -> dict[str, Any]:
    """What a chaos test checks on a meter (the same numbers the meter would answer)."""
    now = meter.tick()
    ident = meter.identity
    out: dict[str, Any] = {
        "meter": ident.meter_id,
        "mode": meter.mode,
        "meter_time": now.replace(microsecond=0).isoformat(),
    }
    values = meter.values(now)
    out["status_word_3"] = values["status_word_3"]
    relay = meter.relay
    out["relay"] = {
        "open": relay.open,
        "command_open": relay.command_open,
        "close_allowed": relay.close_allowed,
        "keep_power": relay.keep_power,
        "trips": meter.relay_counts["relay_trip"],
        "closes": meter.relay_counts["relay_close"],
    }
    wallet = meter.wallet
    if wallet is not None:
        energies = meter.importer.tariffs_at(now)
        last = wallet.record(1)
        out.update(
            customer=wallet.customer_number,
            opened=wallet.opened,
            purchase_count=wallet.purchase_count,
            remaining_fen=wallet.remaining_fen(energies),
            overdraft_fen=wallet.overdraft_fen(energies),
            hoarding_limit_fen=wallet.limits.hoarding_fen,
            last_purchase=None
            if last is None
            else {
                "count": last.count,
                "amount_fen": last.amount_fen,
                "time": last.time.replace(second=0, microsecond=0).isoformat(),
            },
        )
    esam = meter.esam
    if esam is not None:
        session = esam.active(now)
        out["esam"] = {
            "serial": esam.serial.hex().upper(),
            "session_expires": None
            if session is None
            else session.expires.replace(microsecond=0).isoformat(),
            "session_remaining_min": esam.remaining_minutes(now),
            "mac_failures": esam.mac_failures,
            "suspended": esam.suspended(now),
        }
    out["credits"] = [c.as_json() for c in meter.credits]
    return out


def control_app(fleet: Fleet) -> web.Application:
    routes = web.RouteTableDef()

    def _meter(request: web.Request) -> Meter:
        try:
            return fleet.meter(request.match_info["meter"])
        except KeyError as exc:
            raise web.HTTPNotFound(
                text=_text({"error": str(exc.args[0])}), content_type="application/json"
            ) from None

    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise _bad("the body is a JSON object")
        return body

    @routes.get("/v1/meters/{meter}")
    async def get_meter(request: web.Request) -> web.Response:
        return web.json_response(meter_state(_meter(request)))

    @routes.post("/v1/meters/{meter}/purchase")
    async def purchase(request: web.Request) -> web.Response:
        meter = _meter(request)
        body = await _body(request)
        amount = body.get("amount_fen")
        if not isinstance(amount, int) or amount <= 0:
            raise _bad("amount_fen: a positive integer")
        record = meter.card_purchase(amount)
        if record is None:
            return web.json_response({"credited": False}, status=409)
        return web.json_response({"credited": True, "credit": record.as_json()}, status=201)

    @routes.post("/v1/meters/{meter}/button")
    async def button(request: web.Request) -> web.Response:
        return web.json_response({"closed": _meter(request).press_button()})

    @routes.get("/v1/credits")
    async def credits(request: web.Request) -> web.Response:
        meter = request.query.get("meter")
        return web.json_response(
            {
                "credits": [c.as_json() for c in fleet.credits.records(meter)],
                "repeated": [list(k) for k in fleet.credits.repeated_counts()],
            }
        )

    @routes.post("/v1/meters/{meter}/tariff/visit")
    async def tariff_visit(request: web.Request) -> web.Response:
        meter = _meter(request)
        if meter.tariff is None:
            raise web.HTTPBadRequest(text=f"meter {meter.identity.meter_id} keeps no tariff set-up")
        return web.json_response({"moved": meter.technician_visit()})

    @routes.get("/v1/tariff")
    async def tariff(request: web.Request) -> web.Response:
        day_text = request.query.get("day")
        try:
            day = dt.date.fromisoformat(day_text) if day_text else None
        except ValueError:
            raise web.HTTPBadRequest(text=f"day: an ISO date, not {day_text!r}") from None
        truth = fleet.tariff_truth(day)
        return web.json_response(
            {
                "plans_toml": fleet.tariff_plans_toml(),
                "truth": {meter: t.as_json() for meter, t in truth.items()},
            }
        )

    @routes.get("/v1/faults")
    async def faults(request: web.Request) -> web.Response:
        return web.json_response({"faults": fleet.injected.as_list()})

    @routes.post("/v1/faults")
    async def add_fault(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            rule = InjectedFault.from_dict(body)
            fleet.meter(rule.meter)
        except KeyError as exc:
            raise web.HTTPNotFound(
                text=_text({"error": str(exc.args[0])}), content_type="application/json"
            ) from None
        except (ValueError, TypeError) as exc:
            raise _bad(str(exc)) from None
        fleet.injected.add(rule)
        return web.json_response({"fault": rule.as_dict()}, status=201)

    @routes.delete("/v1/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        return web.json_response({"removed": fleet.clear_faults(request.query.get("meter"))})

    @routes.get("/v1/clock")
    async def clock(request: web.Request) -> web.Response:
        return web.json_response(_clock(fleet))

    @routes.post("/v1/clock")
    async def set_clock(request: web.Request) -> web.Response:
        body = await _body(request)
        if "advance_s" in body:
            step = body["advance_s"]
            if not isinstance(step, int | float) or step < 0:
                raise _bad("advance_s: seconds, not negative")
            fleet.world.advance(float(step))
        elif "set" in body:
            try:
                when = dt.datetime.fromisoformat(str(body["set"]))
            except ValueError:
                raise _bad("set: a local date-time like 2026-03-11T00:00:30") from None
            fleet.world.set(when.replace(tzinfo=None))
        else:
            raise _bad("advance_s or set")
        return web.json_response(_clock(fleet))

    app = web.Application()
    app.add_routes(routes)
    return app


def _clock(fleet: Fleet) -> dict[str, Any]:
    return {
        "now": fleet.world.now().replace(microsecond=0).isoformat(),
        "frozen": fleet.world.frozen,
        "timezone": str(fleet.world.tz),
    }


def _text(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=_text({"error": message}), content_type="application/json")


@contextlib.asynccontextmanager
async def serve_control(
    fleet: Fleet, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[str, int]]:
    """Serve the control channel in the running loop; yields the bound (host, port)."""
    runner = web.AppRunner(control_app(fleet), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        bound = runner.addresses[0]
        yield str(bound[0]), int(bound[1])
    finally:
        await runner.cleanup()
