"""The agent's ``security`` command as the order service drives it: build the steps, read the
typed reply, settle a top-up by read-back.

    auth = await hsm.identity_auth(meter_number)
    reply = await sender.send(c, "security", meter=m, args=security_args(
        [auth_step(auth), read_step()], not_after=deadline))
    first = parse_security_reply(reply.payload)          # .random2, .esam_serial, .purchase_state()
    macs = await hsm.increase_purse(meter_number, first.random2, amount_fen=…, purchase_count=n + 1,
                                    customer=…)
    reply = await sender.send(c, "security", meter=m, args=security_args(
        [topup_step(macs), read_step()], session=first.random2, not_after=deadline))
    result = parse_security_reply(reply.payload)
    verdict = reconcile(result.purchase_state(), target_count=n + 1, amount_fen=…,
                        accepted_at=…)                     # CONFIRMED / RESEND / NEEDS_REVIEW

The exact sequences and what each fault looks like: docs/topup.md "Executing steps (agent, HSM)".
Pure: no I/O (the sender is `central.commands.CommandSender`, the machine `central.topup.hsm`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from central.topup.hsm import IdentityAuth, PurseMacs
from protocols.payloads import FailureReason
from protocols.topup import PURCHASE_READBACK_ITEMS, SecurityReason, StepOp

__all__ = [
    "PurchaseState",
    "SecurityResult",
    "StepResult",
    "Verdict",
    "auth_end_step",
    "auth_step",
    "auth_validity_step",
    "open_step",
    "parse_security_reply",
    "read_step",
    "readback_step",
    "reconcile",
    "relay_step",
    "security_args",
    "status_step",
    "step_reason",
    "topup_step",
    "write_step",
]

WALLET_READBACK = bytes.fromhex("0010000000000001")
"""a read-back identifier for the wallet file (Le 16, offset 0, file 1): UNCONFIRMED layout; the
simulator echoes any identifier and returns the wallet"""


# --- building the command ---------------------------------------------------------------------
def auth_step(auth: IdentityAuth, *, session_minutes: int | None = None) -> dict[str, Any]:
    """07 00 00 FF with what the machine's identity_auth gave. `session_minutes`: the meter's
    session validity when it is not the default 5 (set earlier with `auth_validity_step`)."""
    step: dict[str, Any] = {"op": StepOp.AUTH.value, "data": auth.data.hex().upper()}
    if session_minutes is not None:
        step["session_minutes"] = session_minutes
    return step


def topup_step(macs: PurseMacs) -> dict[str, Any]:
    """07 01 02 FF 充值 with the machine's increase_purse data."""
    return {"op": StepOp.TOPUP.value, "data": macs.data.hex().upper()}


def open_step(macs: PurseMacs) -> dict[str, Any]:
    """07 01 01 FF 开户 with the machine's open_account data."""
    return {"op": StepOp.OPEN.value, "data": macs.data.hex().upper()}


def relay_step(ciphertext: bytes, *, password: bytes | None = None) -> dict[str, Any]:
    """Level-98 1CH with the machine's user_control ciphertext (20 bytes)."""
    step: dict[str, Any] = {"op": StepOp.RELAY.value, "data": ciphertext.hex().upper()}
    if password is not None:
        step["password"] = password.hex().upper()
    return step


def auth_validity_step(data: bytes) -> dict[str, Any]:
    """07 00 01 FF with the machine's auth_validity data (minutes + MAC)."""
    return {"op": StepOp.AUTH_VALIDITY.value, "data": data.hex().upper()}


def status_step() -> dict[str, Any]:
    """07 81 02 FF 状态查询: wallet with MACs (needs the meter's session)."""
    return {"op": StepOp.STATUS.value}


def readback_step(identifier: bytes = WALLET_READBACK) -> dict[str, Any]:
    """07 80 01 FF 数据回抄 (needs the meter's session)."""
    return {"op": StepOp.READBACK.value, "data": identifier.hex().upper()}


def write_step(di: int, data: bytes, *, level: int) -> dict[str, Any]:
    """14H at password level `level` (0x99 plaintext + MAC, 0x98 ciphertext + MAC) of item
    `di` with the machine's parameter_update bytes (tariff correction)."""
    return {
        "op": StepOp.WRITE.value,
        "di": f"{di:08X}",
        "password": f"{level:02X}000000",
        "data": data.hex().upper(),
    }


def auth_end_step() -> dict[str, Any]:
    """07 00 02 FF 身份认证失效: ends the session; returns customer, wallet, key info."""
    return {"op": StepOp.AUTH_END.value}


def read_step(items: Iterable[str] = PURCHASE_READBACK_ITEMS) -> dict[str, Any]:
    """Plain 11H reads; by default the items that settle a top-up (`PurchaseState`)."""
    return {"op": StepOp.READ.value, "items": list(items)}


def security_args(
    steps: Sequence[Mapping[str, Any]],
    *,
    session: bytes | None = None,
    not_after: dt.datetime | None = None,
    operator: bytes | None = None,
) -> dict[str, Any]:
    """The ``args`` of a ``security`` command. `session`: random-2 of the authentication the
    session-bound steps (top-up, opening, relay, validity) were made for. `not_after`: aware;
    the agent sends nothing after it."""
    args: dict[str, Any] = {"steps": [dict(s) for s in steps]}
    if session is not None:
        args["session"] = session.hex().upper()
    if not_after is not None:
        if not_after.tzinfo is None:
            raise ValueError("not_after must be timezone-aware")
        args["not_after"] = not_after.isoformat(timespec="seconds")
    if operator is not None:
        args["operator"] = operator.hex().upper()
    return args


# --- reading the reply --------------------------------------------------------------------------
def step_reason(value: str | None) -> SecurityReason | FailureReason | str | None:
    """A step's reason as its enum (`SecurityReason` or `FailureReason`); ``invalid`` and
    unknown values stay text (a newer agent may add values: treat them as needing review)."""
    if value is None:
        return None
    for enum in (SecurityReason, FailureReason):
        try:
            return enum(value)
        except ValueError:
            continue
    return value


@dataclass(frozen=True)
class StepResult:
    op: str
    ok: bool
    sent: bool
    """False: the agent refused it (deadline, session, an earlier failure): nothing left"""
    reason: SecurityReason | FailureReason | str | None
    detail: str = ""
    serr: int | None = None
    """the meter's SERR word (03H abnormal reply)"""
    sent_at: dt.datetime | None = None
    request: dict[str, Any] = field(default_factory=dict)
    reply: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    frames: list[dict[str, str]] = field(default_factory=list)

    @property
    def outcome_unknown(self) -> bool:
        """Sent, but no answer that says what the meter did (no reply, garbled reply …): only
        a read-back tells."""
        return self.sent and not self.ok and not isinstance(self.reason, SecurityReason)


@dataclass(frozen=True)
class SecurityResult:
    ok: bool
    reason: str | None
    detail: str
    steps: list[StepResult]
    session: dict[str, str] | None
    """the agent's record of the meter's latest authentication after the command"""
    frames: list[dict[str, str]]

    def step(self, op: str | StepOp) -> StepResult | None:
        """The last step of kind `op`."""
        name = op.value if isinstance(op, StepOp) else op
        return next((s for s in reversed(self.steps) if s.op == name), None)

    @property
    def random2(self) -> bytes | None:
        auth = self.step(StepOp.AUTH)
        if auth is None or not auth.ok:
            return None
        return bytes.fromhex(auth.reply["random2"])

    @property
    def esam_serial(self) -> bytes | None:
        auth = self.step(StepOp.AUTH)
        if auth is None or not auth.ok:
            return None
        return bytes.fromhex(auth.reply["esam_serial"])

    def purchase_state(self) -> PurchaseState:
        """What the ``read`` steps found (fields None when not read or not answered)."""
        values: dict[str, Any] = {}
        for step in self.steps:
            for item in step.items.values():
                for name, entry in (item.get("values") or {}).items():
                    values[name] = entry.get("value")
        return PurchaseState.from_values(values)


def _time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_security_reply(payload: Mapping[str, Any]) -> SecurityResult:
    """The typed form of a ``security`` reply (`CommandReply.payload`). A refusal before any
    step (``unauthorized``, ``invalid``) has no steps."""
    result = payload.get("result") or {}
    steps = []
    for raw in result.get("steps") or []:
        serr = raw.get("serr")
        steps.append(
            StepResult(
                op=str(raw.get("op")),
                ok=bool(raw.get("ok")),
                sent=bool(raw.get("sent")),
                reason=step_reason(raw.get("reason")),
                detail=str(raw.get("detail", "")),
                serr=int(serr, 16) if isinstance(serr, str) else None,
                sent_at=_time(raw.get("sent_at")),
                request=dict(raw.get("request") or {}),
                reply=dict(raw.get("reply") or {}),
                items=dict(raw.get("items") or {}),
                frames=list(raw.get("frames") or []),
            )
        )
    return SecurityResult(
        ok=bool(payload.get("ok")),
        reason=payload.get("reason"),
        detail=str(payload.get("detail", "")),
        steps=steps,
        session=result.get("session"),
        frames=list(payload.get("frames") or []),
    )


@dataclass(frozen=True)
class PurchaseState:
    """A local meter's purchase state from plain reads (`PURCHASE_READBACK_ITEMS`)."""

    purchase_count: int | None = None
    """03 33 02 01: the meter's purchase count (= the count of its last purchase)"""
    last_amount_fen: int | None = None
    """03 33 03 01: the last purchase's amount"""
    last_time: dt.datetime | None = None
    """03 33 01 01: the last purchase's time, the meter's local clock (minute resolution)"""
    remaining_fen: int | None = None
    """00 90 02 00: remaining amount (after overdraft netting: do not reconcile on it)"""
    status_word_3: int | None = None
    session_remaining_min: int | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PurchaseState:
        def fen(name: str) -> int | None:
            v = values.get(name)
            return round(float(v) * 100) if isinstance(v, int | float) else None

        def integer(name: str) -> int | None:
            v = values.get(name)
            return int(v) if isinstance(v, int | float) else None

        return cls(
            purchase_count=integer("purchase_count"),
            last_amount_fen=fen("purchase_amount_yuan"),
            last_time=_time(values.get("purchase_time")),
            remaining_fen=fen("balance_yuan"),
            status_word_3=integer("status_word_3"),
            session_remaining_min=integer("auth_session_remaining_min"),
        )

    def _bit(self, n: int) -> bool | None:
        return None if self.status_word_3 is None else bool(self.status_word_3 >> n & 1)

    @property
    def relay_open(self) -> bool | None:
        """status word 3 bit4: the contact is open (load disconnected)"""
        return self._bit(4)

    @property
    def relay_command_open(self) -> bool | None:
        """status word 3 bit6: the last relay command asks for open (a trip stands)"""
        return self._bit(6)

    @property
    def local_prepaid(self) -> bool | None:
        """status word 3 bits 9-8 = 10: local (本地费控, money); 00 on a remote meter"""
        if self.status_word_3 is None:
            return None
        return self.status_word_3 >> 8 & 0b11 == 0b10


class Verdict(StrEnum):
    CONFIRMED = "confirmed"
    """the order's purchase is on the meter: stop, never resend"""
    RESEND = "resend"
    """the meter is still one purchase behind: re-authenticate, new MACs, send again"""
    NEEDS_REVIEW = "needs_review"
    """anything else (an out-of-band purchase, a count further on, an amount or time that does
    not fit): a person decides; never resend, never call it success"""
    UNKNOWN = "unknown"
    """the read-back is incomplete (count, amount or time missing): read again"""


def reconcile(
    state: PurchaseState,
    *,
    target_count: int,
    amount_fen: int,
    accepted_at: dt.datetime,
    clock_tolerance: dt.timedelta = dt.timedelta(minutes=5),
) -> Verdict:
    """The read-back rule of docs/topup.md (issue 10 §2):

    * count = target and last amount = the order's and last time ≥ acceptance → CONFIRMED
    * count = target − 1 → RESEND (after a new authentication and new MACs)
    * anything else → NEEDS_REVIEW ("duplicate top-up" from the meter is never success alone)

    `accepted_at` is when the order was accepted, in the **meter's** local time (naive, or
    aware in the meter's zone: the offset is dropped); the meter stamps purchases to the minute
    with its own clock, so the comparison allows `clock_tolerance` for the meter's clock error
    (widen it for a meter whose offset is known to be larger).
    """
    if state.purchase_count is None:
        return Verdict.UNKNOWN
    if state.purchase_count == target_count - 1:
        return Verdict.RESEND
    if state.purchase_count != target_count:
        return Verdict.NEEDS_REVIEW
    if state.last_amount_fen is None or state.last_time is None:
        return Verdict.UNKNOWN
    accepted = accepted_at.replace(tzinfo=None, second=0, microsecond=0)
    if state.last_amount_fen == amount_fen and state.last_time >= accepted - clock_tolerance:
        return Verdict.CONFIRMED
    return Verdict.NEEDS_REVIEW
