"""The software encryption machine (软件密码机) of a simulated fleet, served over HTTP/JSON:
``meterlink sim hsm --fleet F --listen HOST:PORT``.

It holds the fleet's ESAM master key and answers the calls of the State-Grid encryption-service
API that a top-up service needs (topup-tariff.md §A.3), with the simulated scheme of
`simulators.esam` (SM4; **not** the State-Grid algorithm). Stateless, like the real machine:
every call carries what it needs. All byte strings are hex (upper or lower case), amounts in
fen; ``data`` in a reply is the 03H request's data after DI and operator code, exactly as the
agent's ``security`` step relays it.

    POST /v1/identity-auth   {"meter"}                                  IdentityAuthentication
         -> {"random1", "ciphertext1", "diversification", "data"}      data = c1 + r1 + factor
    POST /v1/increase-purse  {"meter", "random2", "amount_fen",         InCreasePurse (充值)
                              "purchase_count", "customer"}
         -> {"mac1", "mac2", "data"}          data = amount + count + MAC1 + customer + MAC2
    POST /v1/open-account    same as increase-purse                    开户 (07 01 01 FF)
    POST /v1/user-control    {"meter", "random2", "esam_serial", "plain"}   UserControl (1CH)
         -> {"ciphertext"}                     plain = N1..N8 (`protocols.topup.relay_plaintext`)
    POST /v1/auth-validity   {"meter", "random2", "minutes"}            ParameterUpdate 07 00 01 FF
         -> {"mac", "data"}                    data = minutes (BCD) + MAC
    POST /v1/parameter-update {"meter", "random2", "di", "plain",      ParameterUpdate (一类,
                              "cipher": false|true [, "apdu"]}         level 99) / ParameterElse-
         -> {"data"}                           Update (二类, level 98): data = plaintext or
                                               ciphertext + MAC, what the 14H write carries
                                               after DI, password and operator code
    POST /v1/mac-check       {"meter", "random1", "data", "mac"}        MacCheck (read-back)
         -> {"valid": true|false}
    GET  /v1/health          -> {"ok": true, "meters": n}

``meter`` is the meter number (表号, 12 digits); the factor is 00 00 + it. Errors: a non-2xx
status with ``{"error": {"code": N, "message": "…"}}``, N from the machine's table
(`protocols.topup.HSM_ERRORS`): 165 for input it will not take (HTTP 400), the outage's code
while one is injected (HTTP 503).

Chaos control (tests): ``PUT /v1/control/outage {"code": 171, "mode": "error"|"hang"|"close",
"calls": n}`` — every call fails with `code` (``error``), never answers (``hang``: the caller's
timeout fires) or has its connection dropped (``close``), for `calls` calls or until
``DELETE /v1/control/outage``; ``GET /v1/control/stats`` counts calls and failures per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from protocols.dlt645 import (
    AccountOpenRequest,
    AuthValidityRequest,
    Edition,
    TopUpRequest,
)
from protocols.errors import LocalProtocolError
from protocols.topup import HSM_ERRORS
from simulators.esam import EncryptionMachine, diversification
from simulators.fleet import Fleet

__all__ = ["OUTAGE_MODES", "HsmService", "Outage", "serve_hsm"]

OUTAGE_MODES = ("error", "hang", "close")
_METER = re.compile(r"^\d{1,12}$")
_OPERATOR = b"\x00\x00\x00\x00"  # the layouts need one; `data` starts after it


class _Refused(Exception):
    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Outage:
    code: int = 171
    mode: str = "error"
    calls: int | None = None
    """how many calls it still lasts (None: until lifted)"""


class HsmService:
    """The machine and its HTTP application; `outage` is the injected fault (None: healthy)."""

    def __init__(self, fleet: Fleet) -> None:
        self.machine: EncryptionMachine = fleet.encryption_machine()
        self.meters = len([m for m in fleet.meters() if m.esam is not None])
        self.outage: Outage | None = None
        self._lifted = asyncio.Event()
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    # -- chaos ----------------------------------------------------------------------------------
    def fail(self, code: int = 171, mode: str = "error", calls: int | None = None) -> None:
        if mode not in OUTAGE_MODES:
            raise ValueError(f"mode is one of {', '.join(OUTAGE_MODES)}")
        if calls is not None and calls < 1:
            raise ValueError("calls: at least 1 (or none: until lifted)")
        self.outage = Outage(code, mode, calls)
        self._lifted.clear()

    def heal(self) -> None:
        """End the outage; calls hanging in it are answered (168) now."""
        self.outage = None
        self._lifted.set()

    async def _outage(self, request: web.Request, name: str) -> web.Response | None:
        outage = self.outage
        if outage is None:
            return None
        if outage.calls is not None:
            outage.calls -= 1
            if outage.calls <= 0:
                self.outage = None  # the next call is served; a hanging one still hangs
        self.failures[name] += 1
        if outage.mode == "hang":
            await self._lifted.wait()  # until `heal` (or shutdown): the caller's timeout fires
            return _error(168, "the machine was unavailable", 503)
        if outage.mode == "close":
            if request.transport is not None:
                request.transport.abort()
            return _error(168, "connection dropped", 503)
        text = _message(outage.code)
        return _error(outage.code, f"injected outage: {text}", 503)

    # -- the calls ------------------------------------------------------------------------------
    def identity_auth(self, body: dict[str, Any]) -> dict[str, Any]:
        meter = _meter(body)
        auth = self.machine.identity_auth(meter)
        return {
            "random1": _hex(auth.random),
            "ciphertext1": _hex(auth.ciphertext),
            "diversification": _hex(auth.diversification),
            "data": _hex(auth.ciphertext + auth.random + auth.diversification),
        }

    def _purse(self, body: dict[str, Any], opening: bool) -> dict[str, Any]:
        meter = _meter(body)
        random2 = _bytes(body, "random2", 4)
        amount = _int(body, "amount_fen", 1)
        count = _int(body, "purchase_count", 0)
        customer = str(body.get("customer", ""))
        if not re.fullmatch(r"\d{1,12}", customer):
            raise _Refused(165, "customer: 1-12 digits")
        customer = customer.rjust(12, "0")
        mac1, mac2 = self.machine.session(meter, random2).top_up_macs(amount, count, customer)
        cls = AccountOpenRequest if opening else TopUpRequest
        data = cls(_OPERATOR, amount, count, mac1, customer, mac2).payload(Edition.V2007)[8:]
        return {"mac1": _hex(mac1), "mac2": _hex(mac2), "data": _hex(data)}

    def increase_purse(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._purse(body, opening=False)

    def open_account(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._purse(body, opening=True)

    def user_control(self, body: dict[str, Any]) -> dict[str, Any]:
        meter = _meter(body)
        random2 = _bytes(body, "random2", 4)
        serial = _bytes(body, "esam_serial", 8)
        plain = _bytes(body, "plain", 8)
        cipher = self.machine.session(meter, random2).relay_ciphertext(plain, serial)
        return {"ciphertext": _hex(cipher)}

    def auth_validity(self, body: dict[str, Any]) -> dict[str, Any]:
        meter = _meter(body)
        random2 = _bytes(body, "random2", 4)
        minutes = _int(body, "minutes", 1)
        if minutes > 9999:
            raise _Refused(165, "minutes: 1..9999")
        mac = self.machine.session(meter, random2).validity_mac(minutes)
        data = AuthValidityRequest(_OPERATOR, minutes, mac).payload(Edition.V2007)[8:]
        return {"mac": _hex(mac), "data": _hex(data)}

    def parameter_update(self, body: dict[str, Any]) -> dict[str, Any]:
        meter = _meter(body)
        random2 = _bytes(body, "random2", 4)
        di = int.from_bytes(_bytes(body, "di", 4), "big")
        plain = _bytes(body, "plain")
        cipher = body.get("cipher")
        if not isinstance(cipher, bool):
            raise _Refused(165, "cipher: true (level 98) or false (level 99)")
        if not 1 <= len(plain) <= 200:
            raise _Refused(165, "plain: 1..200 bytes")
        if body.get("apdu") is not None:
            apdu = _bytes(body, "apdu", 5)
            if not cipher and apdu[4] != len(plain) + 4:
                raise _Refused(165, f"apdu: LC {apdu[4]} is not the data length + 4")
        data = self.machine.session(meter, random2).parameter_update(di, plain, cipher=cipher)
        return {"data": _hex(data)}

    def mac_check(self, body: dict[str, Any]) -> dict[str, Any]:
        meter = _meter(body)
        random1 = _bytes(body, "random1", 8)
        data = _bytes(body, "data")
        mac = _bytes(body, "mac", 4)
        return {"valid": self.machine.mac_ok(meter, random1, data, mac)}

    # -- HTTP -----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "identity-auth": self.identity_auth,
            "increase-purse": self.increase_purse,
            "open-account": self.open_account,
            "user-control": self.user_control,
            "auth-validity": self.auth_validity,
            "mac-check": self.mac_check,
            "parameter-update": self.parameter_update,
        }
        for name, call in calls.items():
            app.router.add_post(f"/v1/{name}", self._handler(name, call))
        app.router.add_get("/v1/health", self._health)
        app.router.add_put("/v1/control/outage", self._set_outage)
        app.router.add_delete("/v1/control/outage", self._lift_outage)
        app.router.add_get("/v1/control/stats", self._stats)
        return app

    def _handler(
        self, name: str, call: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            self.calls[name] += 1
            down = await self._outage(request, name)
            if down is not None:
                return down
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise _Refused(165, "the body is a JSON object")
                return web.json_response(call(body))
            except ValueError:
                self.failures[name] += 1
                return _error(165, "the body is not JSON", 400)
            except (_Refused, LocalProtocolError) as exc:
                self.failures[name] += 1
                code = exc.code if isinstance(exc, _Refused) else 165
                return _error(code, str(exc), 400)

        return handle

    async def _health(self, request: web.Request) -> web.Response:
        outage = self.outage
        return web.json_response(
            {"ok": outage is None, "meters": self.meters}
            | ({"outage": outage.__dict__} if outage is not None else {})
        )

    async def _set_outage(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.fail(int(body.get("code", 171)), str(body.get("mode", "error")), body.get("calls"))
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(165, f"outage: {exc}", 400)
        assert self.outage is not None
        return web.json_response({"outage": self.outage.__dict__})

    async def _lift_outage(self, request: web.Request) -> web.Response:
        self.heal()
        return web.json_response({"outage": None})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": dict(self.calls), "failures": dict(self.failures)})


def _message(code: int) -> str:
    entry = HSM_ERRORS.get(code)
    return entry[1] if entry is not None else f"error {code}"


def _error(code: int, message: str, status: int) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json"
    )


def _hex(data: bytes) -> str:
    return data.hex().upper()


def _meter(body: dict[str, Any]) -> str:
    meter = body.get("meter")
    if not isinstance(meter, str) or not _METER.match(meter):
        raise _Refused(165, "meter: the meter number, 1-12 digits")
    meter = meter.rjust(12, "0")
    diversification(meter)  # the factor must be buildable
    return meter


def _bytes(body: dict[str, Any], key: str, size: int | None = None) -> bytes:
    value = body.get(key)
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise _Refused(165, f"{key}: hex") from None
    if value is None or (size is not None and len(raw) != size):
        raise _Refused(165, f"{key}: {size} bytes (hex)" if size else f"{key}: hex bytes")
    return raw


def _int(body: dict[str, Any], key: str, low: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 1 << 32:
        raise _Refused(165, f"{key}: an integer {low}..2^32-1")
    return value


@contextlib.asynccontextmanager
async def serve_hsm(
    fleet: Fleet, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[HsmService, str]]:
    """Serve the machine in the running loop; yields the service and its base URL."""
    service = HsmService(fleet)
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        bound = runner.addresses[0]
        yield service, f"http://{bound[0]}:{bound[1]}"
    finally:
        service.heal()  # let hanging calls end
        await runner.cleanup()
