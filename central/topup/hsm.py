"""The utility's encryption machine (密码机) as the top-up service sees it.

    async with load_security_module("central.topup.hsm:NetworkHsm", {"url": URL}) as hsm:
        auth = await hsm.identity_auth("000000000123")            # random-1, ciphertext-1
        # agent: security [auth(auth.data)] -> random-2, ESAM serial
        macs = await hsm.increase_purse("000000000123", random2, amount_fen=5000,
                                        purchase_count=8, customer="300000123456")
        # agent: security [topup(macs.data), read(...)] with session=random2

`SecurityModule` is the interface (one coroutine per machine call of topup-tariff.md §A.3);
`NetworkHsm` talks to the software machine ``meterlink sim hsm`` serves (simulators.hsm); a
vendor's machine plugs in through `load_security_module` with a "module:Class" string from the
configuration. Every failure is an `HsmError` whose `reason` is a `SecurityReason` (``hsm_*``):
`HsmUnavailable` (nothing was computed: the machine is down, unreachable or too slow — keep the
order waiting, send nothing to the meter) or `HsmRefused` (the machine answered with an error
code: 161 rights, 165 input, 167 MAC, 171 fault …).

**Never replay stored MACs.** Every value returned here belongs to one identity
authentication: `IdentityAuth` to the one it starts, `PurseMacs` / `user_control` /
`auth_validity` to the session of the random-2 they were made with. Each new 07 00 00 FF resets
the meter's ESAM random (topup-tariff.md §A.4), voiding everything made before it. So: use each
result for exactly one send; a retry re-authenticates and asks the machine again for the same
(amount, count, customer) — never resends bytes from an earlier attempt. The agent enforces its
half (it refuses session-bound steps whose random-2 is not the meter's latest authentication).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from protocols.tariff_write import apdu_header
from protocols.topup import HSM_ERRORS, SecurityReason, hsm_reason

__all__ = [
    "HsmError",
    "HsmRefused",
    "HsmUnavailable",
    "IdentityAuth",
    "NetworkHsm",
    "PurseMacs",
    "SecurityModule",
    "load_security_module",
]


class HsmError(Exception):
    """A machine call that gave no usable result. `reason` is what the order service branches
    on; `code` the machine's own error code when it gave one."""

    reason: SecurityReason = SecurityReason.HSM_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        if code is not None:
            self.reason = hsm_reason(code)


class HsmUnavailable(HsmError):
    """The machine could not be reached or did not answer in time (160, 168, timeouts): nothing
    was computed. Transient: keep the order queued (no meter traffic) and try later."""

    reason = SecurityReason.HSM_UNAVAILABLE
    retryable = True


class HsmRefused(HsmError):
    """The machine answered with an error code (161, 165, 167, 171, 1107 …)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message, code=code)
        # a machine fault may pass; rights, input and MAC errors need a person
        self.retryable = self.reason is SecurityReason.HSM_FAULT


def _error_for(code: int, message: str) -> HsmError:
    if hsm_reason(code) is SecurityReason.HSM_UNAVAILABLE:
        return HsmUnavailable(message, code=code)
    return HsmRefused(message, code=code)


@dataclass(frozen=True, slots=True)
class IdentityAuth:
    """IdentityAuthentication: what 03H 07 00 00 FF carries. Keep `random1`: the read-back MAC
    check of this session needs it."""

    meter: str
    random1: bytes
    ciphertext1: bytes
    diversification: bytes

    @property
    def data(self) -> bytes:
        """The ``auth`` step's data: ciphertext-1 + random-1 + diversification factor."""
        return self.ciphertext1 + self.random1 + self.diversification


@dataclass(frozen=True, slots=True)
class PurseMacs:
    """InCreasePurse (充值) / account opening: the ``topup`` / ``open`` step's `data` (amount +
    count + MAC1 + customer + MAC2, 22 bytes, as the machine laid it out) and its MACs."""

    data: bytes
    mac1: bytes
    mac2: bytes


class SecurityModule(abc.ABC):
    """The encryption machine's calls a top-up service needs. Meter numbers are the 表号 (12
    digits); byte strings are raw bytes; amounts in fen. Implementations raise `HsmError`
    subclasses only, and are async context managers (`aclose` releases connections)."""

    @abc.abstractmethod
    async def identity_auth(self, meter: str) -> IdentityAuth:
        """Meter_Formal_IdentityAuthentication: a fresh random-1 and ciphertext-1."""

    @abc.abstractmethod
    async def increase_purse(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        """Meter_Formal_InCreasePurse for 07 01 02 FF 充值, in the session of `random2`."""

    @abc.abstractmethod
    async def open_account(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        """The MACs of 07 01 01 FF 开户 (the first purchase), in the session of `random2`."""

    @abc.abstractmethod
    async def user_control(
        self, meter: str, random2: bytes, esam_serial: bytes, plain: bytes
    ) -> bytes:
        """Meter_Formal_UserControl: the 20-byte ciphertext of a level-98 1CH for N1..N8
        `plain` (`protocols.topup.relay_plaintext`), in the session of `random2`."""

    @abc.abstractmethod
    async def mac_check(self, meter: str, random1: bytes, data: bytes, mac: bytes) -> bool:
        """Meter_Formal_MacCheck: whether `mac` is the meter's MAC over read-back `data` in the
        session `random1` started. False is an answer (the data is not to be believed), not
        an error."""

    async def auth_validity(self, meter: str, random2: bytes, minutes: int) -> bytes:
        """The ``auth_validity`` step's data (minutes + MAC, ParameterUpdate with APDU
        04D6812B06) for 07 00 01 FF. Optional: a machine without it raises `HsmRefused`."""
        raise HsmRefused("this encryption machine does not set the session validity")

    async def parameter_update(
        self, meter: str, random2: bytes, di: int, plain: bytes, *, cipher: bool
    ) -> bytes:
        """Meter_Formal_ParameterUpdate (一类, level 99: `plain` + MAC) or
        ParameterElseUpdate (二类, level 98, `cipher`: ciphertext + MAC) for a 14H write of
        `di` in the session of `random2`: the bytes the write carries after DI, password and
        operator code. `plain` is the machine's plaintext (`protocols.tariff_write.
        machine_plaintext`). Optional: a machine without it raises `HsmRefused`."""
        raise HsmRefused("this encryption machine does not make parameter writes")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections (default: nothing to release)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class NetworkHsm(SecurityModule):
    """The software machine of ``meterlink sim hsm`` (JSON over HTTP, simulators.hsm).

    `timeout_s` bounds each call: a machine that does not answer in time is `HsmUnavailable`.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r}: http(s)://host:port of the machine")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        where = f"{self.url}/v1/{name}"
        try:
            async with self._http().post(where, json=dict(body)) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                status = response.status
        except TimeoutError:
            raise HsmUnavailable(
                f"{name}: no answer within {self.timeout_s:g} s", code=160
            ) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise HsmUnavailable(f"{name}: {exc}", code=168) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise HsmUnavailable(f"{name}: {type(exc).__name__}: {exc}", code=160) from None
        if not isinstance(answer, dict):
            raise HsmRefused(f"{name}: HTTP {status}, not a JSON object")
        error = answer.get("error")
        if status >= 300 or error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message", "") if isinstance(error, dict) else ""
            if not isinstance(code, int):
                raise HsmRefused(f"{name}: HTTP {status} {message}".rstrip())
            known = HSM_ERRORS.get(code)
            text = f"{name}: {code} {known[1] if known else ''} {message}".rstrip()
            raise _error_for(code, text)
        return answer

    @staticmethod
    def _bytes(answer: Mapping[str, Any], key: str, size: int | None = None) -> bytes:
        try:
            raw = bytes.fromhex(str(answer[key]))
        except (KeyError, ValueError):
            raise HsmRefused(f"the machine's answer has no hex {key!r}") from None
        if size is not None and len(raw) != size:
            raise HsmRefused(f"the machine's {key} is {len(raw)} bytes, not {size}")
        return raw

    async def identity_auth(self, meter: str) -> IdentityAuth:
        answer = await self._call("identity-auth", {"meter": meter})
        return IdentityAuth(
            meter,
            self._bytes(answer, "random1", 8),
            self._bytes(answer, "ciphertext1", 8),
            self._bytes(answer, "diversification", 8),
        )

    async def _purse(
        self,
        name: str,
        meter: str,
        random2: bytes,
        amount_fen: int,
        purchase_count: int,
        customer: str,
    ) -> PurseMacs:
        answer = await self._call(
            name,
            {
                "meter": meter,
                "random2": random2.hex(),
                "amount_fen": amount_fen,
                "purchase_count": purchase_count,
                "customer": customer,
            },
        )
        return PurseMacs(
            self._bytes(answer, "data", 22),
            self._bytes(answer, "mac1", 4),
            self._bytes(answer, "mac2", 4),
        )

    async def increase_purse(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        return await self._purse(
            "increase-purse", meter, random2, amount_fen, purchase_count, customer
        )

    async def open_account(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        return await self._purse(
            "open-account", meter, random2, amount_fen, purchase_count, customer
        )

    async def user_control(
        self, meter: str, random2: bytes, esam_serial: bytes, plain: bytes
    ) -> bytes:
        answer = await self._call(
            "user-control",
            {
                "meter": meter,
                "random2": random2.hex(),
                "esam_serial": esam_serial.hex(),
                "plain": plain.hex(),
            },
        )
        return self._bytes(answer, "ciphertext", 20)

    async def mac_check(self, meter: str, random1: bytes, data: bytes, mac: bytes) -> bool:
        answer = await self._call(
            "mac-check",
            {"meter": meter, "random1": random1.hex(), "data": data.hex(), "mac": mac.hex()},
        )
        valid = answer.get("valid")
        if not isinstance(valid, bool):
            raise HsmRefused("the machine's mac-check answer has no boolean 'valid'")
        return valid

    async def auth_validity(self, meter: str, random2: bytes, minutes: int) -> bytes:
        answer = await self._call(
            "auth-validity", {"meter": meter, "random2": random2.hex(), "minutes": minutes}
        )
        return self._bytes(answer, "data", 6)

    async def parameter_update(
        self, meter: str, random2: bytes, di: int, plain: bytes, *, cipher: bool
    ) -> bytes:
        body: dict[str, Any] = {
            "meter": meter,
            "random2": random2.hex(),
            "di": f"{di:08X}",
            "plain": plain.hex(),
            "cipher": cipher,
        }
        apdu = apdu_header(di)
        if apdu is not None and not cipher:
            body["apdu"] = apdu.hex()
        answer = await self._call("parameter-update", body)
        data = self._bytes(answer, "data")
        if len(data) < len(plain) + 4:
            raise HsmRefused(f"the machine's parameter data is {len(data)} bytes, too short")
        return data


def load_security_module(spec: str, options: Mapping[str, Any] | None = None) -> SecurityModule:
    """The encryption machine named by a configuration string ``"package.module:Class"``,
    built as ``Class(**options)``. The registry point for a vendor machine: any importable
    class that implements `SecurityModule`. ``"network"`` is short for `NetworkHsm`.

    Raises ValueError (bad spec, not a SecurityModule, options the class refuses) or
    ImportError (the module is not installed)."""
    if spec == "network":
        spec = f"{__name__}:NetworkHsm"
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name.isidentifier():
        raise ValueError(f"security module {spec!r}: expected 'package.module:Class'")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, SecurityModule):
        raise ValueError(f"security module {spec!r} is not a SecurityModule subclass")
    try:
        return cls(**dict(options or {}))
    except TypeError as exc:
        raise ValueError(f"security module {spec!r}: {exc}") from None
