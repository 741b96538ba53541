"""The ``security`` command: 03H security steps and level-98 1CH for remote top-up and 费控 relay
control, with the bytes the centre's encryption machine made relayed verbatim.

A command is a list of steps for one meter (`protocols.topup.StepOp`), run in order as one job
on the meter's bus at command priority. Each step is one exchange (a ``read`` step one per
item); the reply lists every step with what was sent, what came back (raw and decoded) and why
it failed. The rules (docs/mqtt.md "security"):

* **Validity.** A step is not sent once the command's ``not_after`` has passed
  (``deadline_passed``). A step that carries session-bound bytes (``SESSION_OPS``: top-up,
  account opening, session validity, relay) is sent only inside the identity authentication
  it was made for — the ``auth`` step earlier in the same command, or the one whose random-2 the
  command names in ``session`` — and only while that authentication is the meter's latest
  (else ``session_superseded``) and younger than its validity (else ``session_expired``; the
  agent counts from when it *sent* the auth, which is never later than the meter's own start,
  so it errs on the side of refusing). The agent knows the sessions because it records every
  auth it runs, per meter, in memory: a restarted agent knows none (``no_session``) and the
  centre authenticates again — which is what it must do after an unknown outcome anyway.
* **After a failure** no further state-changing step is sent (``not_sent``); reads still are,
  so a command can end with the read-back that settles what happened.
* One security command per meter at a time (others wait); plans wait for the bus.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import MeterConfig
from agent.dlt645 import Dlt645Client, reason_of
from agent.transports import TruncatedReply
from protocols.dlt645 import (
    AccountOpenRequest,
    Address,
    AuthEndReply,
    AuthValidityRequest,
    DataReadbackReply,
    Edition,
    IdentityAuthReply,
    MeterError,
    SecureRemoteControlRequest,
    SecurityRejection,
    SecurityRequest,
    StatusQueryReply,
    TopUpRequest,
    WriteRequest,
    format_di,
    hex_spaced,
    parse_item,
    values_of,
)
from protocols.dlt645.security import (
    DI_ACCOUNT_OPEN,
    DI_AUTH_END,
    DI_AUTH_VALIDITY,
    DI_DATA_READBACK,
    DI_IDENTITY_AUTH,
    DI_STATUS_QUERY,
    DI_TOP_UP,
)
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.topup import (
    DATA_LENGTHS,
    SESSION_OPS,
    WRITE_DATA_MAX,
    WRITE_LEVELS,
    WRITE_OPS,
    SecurityReason,
    StepOp,
    serr_reason,
    serr_reasons,
)

__all__ = ["SecurityCommand", "SecurityRefused", "Session", "SessionBook", "StepsFailed"]

log = logging.getLogger(__name__)

DEFAULT_SESSION_MINUTES = 5
_DI = {
    StepOp.AUTH: DI_IDENTITY_AUTH,
    StepOp.AUTH_VALIDITY: DI_AUTH_VALIDITY,
    StepOp.OPEN: DI_ACCOUNT_OPEN,
    StepOp.TOPUP: DI_TOP_UP,
    StepOp.STATUS: DI_STATUS_QUERY,
    StepOp.READBACK: DI_DATA_READBACK,
    StepOp.AUTH_END: DI_AUTH_END,
}
_RELAY_PASSWORD = b"\x98\x00\x00\x00"


class SecurityRefused(ValueError):
    """The command cannot be run as given (its arguments); nothing is sent."""


class StepsFailed(Exception):
    """The command ran (or was refused as a whole by its validity) and a step failed: the
    reply is ``ok: false`` with `reason`, `detail` and the full `result`."""

    def __init__(self, reason: str, detail: str, result: dict[str, Any]) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.result = result


@dataclass(frozen=True, slots=True)
class Session:
    """An identity authentication the agent ran on a meter."""

    random2: bytes
    esam_serial: bytes
    started_at: dt.datetime
    """when the agent sent the auth (the meter's session starts no earlier)"""
    expires_at: dt.datetime

    def as_json(self) -> dict[str, str]:
        return {
            "random2": self.random2.hex().upper(),
            "esam_serial": self.esam_serial.hex().upper(),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "expires_at": self.expires_at.isoformat(timespec="seconds"),
        }


@dataclass
class SessionBook:
    """The latest identity authentication per meter (in memory only: see the module doc)."""

    sessions: dict[str, Session] = field(default_factory=dict)

    def get(self, meter: str) -> Session | None:
        return self.sessions.get(meter)

    def drop(self, meter: str) -> None:
        self.sessions.pop(meter, None)

    def open(self, meter: str, session: Session) -> None:
        self.sessions[meter] = session


@dataclass(frozen=True, slots=True)
class _Step:
    op: StepOp
    data: bytes = b""
    items: tuple[tuple[str, int], ...] = ()
    session_minutes: int = DEFAULT_SESSION_MINUTES
    password: bytes = _RELAY_PASSWORD
    decoded: dict[str, Any] = field(default_factory=dict)
    """what the request carries, decoded for the audit trail (amount, count, customer …)"""
    di: int = 0
    """write: the item written"""


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise SecurityRefused(f"{what}: not hex") from None
    if size is not None and len(raw) != size:
        raise SecurityRefused(f"{what}: {size} bytes expected, got {len(raw)}")
    return raw


def _frames(frames: list[tuple[str, bytes]]) -> list[dict[str, str]]:
    return [{"dir": d, "hex": hex_spaced(b)} for d, b in frames]


def _time(value: Any, what: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise SecurityRefused(f"{what}: not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise SecurityRefused(f"{what}: needs a UTC offset")
    return when


class SecurityCommand:
    """Plans and runs ``security`` commands; keeps the per-meter sessions (`SessionBook`)."""

    def __init__(self, now: Callable[[], dt.datetime]) -> None:
        self.now = now
        self.sessions = SessionBook()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- planning: everything that can be refused before the bus is asked for ------------------
    def plan(self, meter: MeterConfig, args: dict[str, Any]) -> tuple[list[_Step], dict[str, Any]]:
        if meter.protocol != "dlt645-2007":
            raise SecurityRefused("03H security steps exist only in DL/T 645-2007")
        raw_steps = args.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise SecurityRefused("args.steps: a non-empty list of steps")
        operator = _hex(args.get("operator", "00000000"), "args.operator", 4)
        steps: list[_Step] = []
        auth_at: int | None = None
        for i, raw in enumerate(raw_steps):
            where = f"args.steps[{i}]"
            if not isinstance(raw, dict):
                raise SecurityRefused(f"{where}: an object with 'op'")
            try:
                op = StepOp(str(raw.get("op")))
            except ValueError:
                ops = ", ".join(o.value for o in StepOp)
                raise SecurityRefused(f"{where}.op: one of {ops}") from None
            steps.append(self._step(op, raw, where, operator))
            if op is StepOp.AUTH:
                if auth_at is not None:
                    raise SecurityRefused(f"{where}: one auth per command")
                auth_at = i
            elif op in SESSION_OPS and auth_at is not None:
                # its bytes were made before this command's auth answered: for another random-2
                raise SecurityRefused(
                    f"{where}: a {op.value} step cannot follow an auth in the same command (its"
                    " bytes need the random-2 that auth returns: send them in the next command)"
                )
        session = args.get("session")
        needs_session = any(s.op in SESSION_OPS for s in steps)
        if needs_session and session is None:
            raise SecurityRefused(
                "args.session: the random-2 of the identity authentication the"
                f" {', '.join(sorted({s.op.value for s in steps if s.op in SESSION_OPS}))}"
                " step(s) were made for"
            )
        options: dict[str, Any] = {"operator": operator}
        if session is not None:
            options["session"] = _hex(session, "args.session", 4)
        if args.get("not_after") is not None:
            options["not_after"] = _time(args["not_after"], "args.not_after")
        return steps, options

    def _step(self, op: StepOp, raw: dict[str, Any], where: str, operator: bytes) -> _Step:
        size = DATA_LENGTHS.get(op)
        if op is StepOp.WRITE:
            return self._write_step(raw, where)
        if "di" in raw:
            raise SecurityRefused(f"{where}: only write takes a di")
        if size is None:
            if raw.get("data"):
                raise SecurityRefused(f"{where}: {op.value} takes no data")
            data = b""
        else:
            data = _hex(raw.get("data", ""), f"{where}.data", size)
        if "password" in raw and op is not StepOp.RELAY:
            raise SecurityRefused(f"{where}: only relay takes a password")
        if "items" in raw and op is not StepOp.READ:
            raise SecurityRefused(f"{where}: only read takes items")
        if "session_minutes" in raw and op is not StepOp.AUTH:
            raise SecurityRefused(f"{where}: only auth takes session_minutes")
        decoded: dict[str, Any] = {}
        items: tuple[tuple[str, int], ...] = ()
        if op is StepOp.READ:
            names = raw.get("items")
            if not isinstance(names, list) or not names:
                raise SecurityRefused(f"{where}.items: DIs (hex) or measurement names")
            try:
                items = tuple((str(n), parse_item(str(n), Edition.V2007)) for n in names)
            except LocalProtocolError as exc:
                raise SecurityRefused(f"{where}.items: {exc}") from None
        elif op in (StepOp.TOPUP, StepOp.OPEN):
            cls = TopUpRequest if op is StepOp.TOPUP else AccountOpenRequest
            try:
                message = cls.parse(operator + data)
            except RemoteProtocolError as exc:  # e.g. a customer number that is not BCD
                raise SecurityRefused(f"{where}.data: {exc}") from None
            assert isinstance(message, TopUpRequest | AccountOpenRequest)
            decoded = {
                "amount_fen": message.amount_fen,
                "purchase_count": message.purchase_count,
                "customer": message.customer_number,
            }
        elif op is StepOp.AUTH_VALIDITY:
            try:
                validity = AuthValidityRequest.parse(operator + data)
            except RemoteProtocolError as exc:
                raise SecurityRefused(f"{where}.data: {exc}") from None
            assert isinstance(validity, AuthValidityRequest)
            decoded = {"minutes": validity.minutes}
        minutes = raw.get("session_minutes", DEFAULT_SESSION_MINUTES)
        if not isinstance(minutes, int) or not 1 <= minutes <= 9999:
            raise SecurityRefused(f"{where}.session_minutes: 1..9999")
        password = _hex(raw["password"], f"{where}.password", 4) if "password" in raw else None
        return _Step(
            op,
            data,
            items,
            minutes,
            password if password is not None else _RELAY_PASSWORD,
            decoded,
        )

    @staticmethod
    def _write_step(raw: dict[str, Any], where: str) -> _Step:
        """14H at level 98/99: `di`, `password` (level + P0..P2) and the machine's `data`."""
        for key in ("items", "session_minutes"):
            if key in raw:
                raise SecurityRefused(f"{where}: write takes no {key}")
        di_raw = _hex(raw.get("di", ""), f"{where}.di", 4)
        password = _hex(raw.get("password", ""), f"{where}.password", 4)
        if password[0] not in WRITE_LEVELS:
            raise SecurityRefused(
                f"{where}.password: level 98 (ciphertext + MAC) or 99 (plaintext + MAC)"
            )
        data = _hex(raw.get("data", ""), f"{where}.data")
        if not 5 <= len(data) <= WRITE_DATA_MAX:
            raise SecurityRefused(f"{where}.data: 5..{WRITE_DATA_MAX} bytes (value + MAC)")
        di = int.from_bytes(di_raw, "big")
        decoded = {"di": f"{di:08X}", "level": f"{password[0]:02X}", "bytes": len(data)}
        return _Step(StepOp.WRITE, data, password=password, decoded=decoded, di=di)

    # -- running ------------------------------------------------------------------------------
    async def run(
        self,
        meter: MeterConfig,
        args: dict[str, Any],
        frames: list[tuple[str, bytes]],
        on_bus: Callable[[Callable[[Dlt645Client], Awaitable[Any]]], Awaitable[Any]],
    ) -> dict[str, Any]:
        """Run the command; the result, or `StepsFailed` with it when a step failed."""
        steps, options = self.plan(meter, args)
        mid = meter.meter_id
        assert meter.address is not None
        address = Address.parse(meter.address)
        results: list[dict[str, Any]] = []

        async def job(client: Dlt645Client) -> None:
            await self._run_steps(client, mid, address, steps, options, results, frames)

        lock = self._locks.setdefault(mid, asyncio.Lock())
        not_after: dt.datetime | None = options.get("not_after")
        if not_after is not None and self.now() > not_after:
            # refused on arrival (e.g. delivered late by the broker): not even queued
            results.extend(
                self._not_sent(step, SecurityReason.DEADLINE_PASSED, not_after) for step in steps
            )
        else:
            async with lock:
                await on_bus(job)
        session = self.sessions.get(mid)
        result: dict[str, Any] = {
            "steps": results,
            "session": session.as_json() if session is not None else None,
        }
        failed = next(
            ((i, r) for i, r in enumerate(results) if not r["ok"]),
            None,
        )
        if failed is not None:
            i, step_result = failed
            detail = f"step {i} ({step_result['op']}): {step_result.get('detail', '')}".rstrip()
            raise StepsFailed(step_result["reason"], detail, result)
        return result

    def _not_sent(
        self, step: _Step, reason: SecurityReason, not_after: dt.datetime | None = None
    ) -> dict[str, Any]:
        deadline = not_after.isoformat() if not_after is not None else ""
        detail = {
            SecurityReason.DEADLINE_PASSED: f"not_after {deadline} has passed",
            SecurityReason.NOT_SENT: "an earlier step failed",
        }.get(reason, "")
        out: dict[str, Any] = {
            "op": step.op.value,
            "ok": False,
            "sent": False,
            "reason": reason.value,
            "detail": detail,
            "frames": [],
        }
        if step.decoded:
            out["request"] = step.decoded
        return out

    def _session_refusal(
        self, mid: str, options: dict[str, Any]
    ) -> tuple[SecurityReason, str] | None:
        """Why a session-bound step must not be sent now, or None. (`plan` refused session
        steps after an auth of the same command: they always name `session`.)"""
        wanted: bytes | None = options.get("session")
        current = self.sessions.get(mid)
        if current is None:
            return SecurityReason.NO_SESSION, "no identity authentication of this meter is known"
        if wanted is None or current.random2 != wanted:
            return (
                SecurityReason.SESSION_SUPERSEDED,
                f"random-2 {wanted.hex().upper() if wanted else '?'} is not the meter's latest"
                f" authentication ({current.random2.hex().upper()})",
            )
        now = self.now()
        if now >= current.expires_at:
            return (
                SecurityReason.SESSION_EXPIRED,
                f"the authentication of {current.started_at.isoformat(timespec='seconds')}"
                f" expired at {current.expires_at.isoformat(timespec='seconds')}",
            )
        return None

    async def _run_steps(
        self,
        client: Dlt645Client,
        mid: str,
        address: Address,
        steps: list[_Step],
        options: dict[str, Any],
        results: list[dict[str, Any]],
        frames: list[tuple[str, bytes]],
    ) -> None:
        failed = False
        not_after: dt.datetime | None = options.get("not_after")
        for step in steps:
            if not_after is not None and self.now() > not_after:
                results.append(self._not_sent(step, SecurityReason.DEADLINE_PASSED, not_after))
                failed = True
                continue
            if failed and step.op in WRITE_OPS:
                results.append(self._not_sent(step, SecurityReason.NOT_SENT))
                continue
            if step.op in SESSION_OPS:
                refusal = self._session_refusal(mid, options)
                if refusal is not None:
                    out = self._not_sent(step, refusal[0])
                    out["detail"] = refusal[1]
                    results.append(out)
                    failed = True
                    continue
            step_frames: list[tuple[str, bytes]] = []
            out = await self._exchange(client, mid, address, step, options, step_frames)
            frames.extend(step_frames)
            out["frames"] = _frames(step_frames)
            results.append(out)
            failed = failed or not out["ok"]

    async def _exchange(
        self,
        client: Dlt645Client,
        mid: str,
        address: Address,
        step: _Step,
        options: dict[str, Any],
        frames: list[tuple[str, bytes]],
    ) -> dict[str, Any]:
        sent_at = self.now()
        out: dict[str, Any] = {
            "op": step.op.value,
            "ok": True,
            "sent": True,
            "sent_at": sent_at.isoformat(timespec="seconds"),
        }
        if step.decoded:
            out["request"] = step.decoded
        if step.op is StepOp.READ:
            return await self._read(client, address, step, out, frames)
        operator: bytes = options["operator"]
        if step.op is StepOp.AUTH:
            # any auth the meter may have heard resets its ESAM random: the old session is gone
            self.sessions.drop(mid)
        if step.op is StepOp.AUTH_END:
            self.sessions.drop(mid)
        message: SecurityRequest | SecureRemoteControlRequest | WriteRequest
        if step.op is StepOp.RELAY:
            message = SecureRemoteControlRequest(step.data, step.password, operator)
        elif step.op is StepOp.WRITE:
            message = WriteRequest(step.di, step.password, step.data, operator)
        else:
            message = SecurityRequest(_DI[step.op], operator, step.data)
        try:
            answer = await client.call(address, message, Edition.V2007, frames=frames)
        except SecurityRejection as exc:
            out.update(
                ok=False,
                reason=serr_reason(exc.code).value,
                reasons=[r.value for r in serr_reasons(exc.code)],
                serr=f"{exc.code:04X}",
                flags=list(exc.flag_names),
                detail=f"SERR {exc.code:04X} {','.join(exc.flag_names)}".rstrip(),
            )
            return out
        except MeterError as exc:
            refusal = SecurityReason.OTHER
            if step.op is StepOp.WRITE:
                refused = "unauthorized" in exc.flag_names
                refusal = SecurityReason.WRITE_REFUSED if refused else SecurityReason.WRITE_INVALID
            elif step.op is StepOp.RELAY:
                refusal = SecurityReason.RELAY_REFUSED
            out.update(
                ok=False,
                reason=refusal.value,
                err=f"{exc.code:02X}",
                flags=list(exc.flag_names),
                detail=str(exc),
            )
            return out
        except Exception as exc:
            if isinstance(exc, TruncatedReply) and exc.received:
                frames.append(("rx", exc.received))
            reason, detail = reason_of(exc)
            out.update(ok=False, reason=reason.value, detail=detail)
            return out
        assert answer is not None
        _, reply = answer
        out["reply"] = self._decoded(step, reply)
        if step.op is StepOp.AUTH and isinstance(reply, IdentityAuthReply):
            session = Session(
                reply.random,
                reply.esam_serial,
                sent_at,
                sent_at + dt.timedelta(minutes=step.session_minutes),
            )
            self.sessions.open(mid, session)
            out["session"] = session.as_json()
        return out

    @staticmethod
    def _decoded(step: _Step, reply: Any) -> dict[str, Any]:
        if isinstance(reply, IdentityAuthReply):
            return {
                "random2": reply.random.hex().upper(),
                "esam_serial": reply.esam_serial.hex().upper(),
            }
        if isinstance(reply, StatusQueryReply):
            return {
                "remaining_fen": reply.remaining_fen,
                "mac1": reply.mac1.hex().upper(),
                "purchase_count": reply.purchase_count,
                "mac2": reply.mac2.hex().upper(),
                "customer": reply.customer_number,
                "key_info": reply.key_info.hex().upper(),
            }
        if isinstance(reply, AuthEndReply):
            return {
                "customer": reply.customer_number,
                "remaining_fen": reply.remaining_fen,
                "purchase_count": reply.purchase_count,
                "key_info": reply.key_info.hex().upper(),
            }
        if isinstance(reply, DataReadbackReply):
            out: dict[str, Any] = {
                "identifier": reply.identifier.hex().upper(),
                "data": reply.data.hex().upper(),
            }
            if len(reply.data) == 16:  # the wallet file: remaining + MAC + count + MAC
                out.update(
                    remaining_fen=int.from_bytes(reply.data[:4], "little"),
                    mac1=reply.data[4:8].hex().upper(),
                    purchase_count=int.from_bytes(reply.data[8:12], "little"),
                    mac2=reply.data[12:16].hex().upper(),
                )
            return out
        return {}

    async def _read(
        self,
        client: Dlt645Client,
        address: Address,
        step: _Step,
        out: dict[str, Any],
        frames: list[tuple[str, bytes]],
    ) -> dict[str, Any]:
        items: dict[str, Any] = {}
        first_failure: tuple[str, str] | None = None
        for name, di in step.items:
            key = format_di(di, Edition.V2007)
            try:
                result = await client.read(address, di, Edition.V2007, frames=frames)
            except Exception as exc:
                reason, detail = reason_of(exc)
                items[key] = {"item": name, "error": {"reason": reason.value, "detail": detail}}
                first_failure = first_failure or (reason.value, f"{key}: {detail}")
                continue
            try:
                values = values_of(di, result.value, Edition.V2007)
            except Exception as exc:
                reason, detail = reason_of(exc)
                items[key] = {"item": name, "error": {"reason": reason.value, "detail": detail}}
                first_failure = first_failure or (reason.value, f"{key}: {detail}")
                continue
            items[key] = {"item": name, "values": values, "raw": result.value.hex().upper()}
        out["items"] = items
        if first_failure is not None:
            out.update(ok=False, reason=first_failure[0], detail=first_failure[1])
        return out
