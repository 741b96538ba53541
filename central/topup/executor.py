"""The order executor: takes the head order of each meter's queue and drives it to a known end
with the agent's ``security`` command and the encryption machine, by the read-back rule.

Every attempt starts with a new identity authentication **and a read-back** (purchase count,
last purchase amount and time, status word 3) in the same command, and decides on the
read-back before anything is sent: count = target and the last purchase is this order's →
confirmed without resending; count = target − 1 → new MACs for this authentication, send;
count further back → an earlier purchase is not on the meter yet: wait; anything else →
needs_review. Stored MACs are never sent again: a retry is a new attempt. See docs/topup.md
"The order service" for the full table (reasons, classes, waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import common.clock
from central.commands import CommandSender, CommandTimeout
from central.topup.config import TopupConfig
from central.topup.hsm import HsmError, SecurityModule
from central.topup.orders import FailureClass, Order, OrderBook, OrderCancelled, State
from central.topup.steps import (
    PurchaseState,
    SecurityResult,
    Verdict,
    auth_step,
    open_step,
    parse_security_reply,
    read_step,
    reconcile,
    relay_step,
    security_args,
    topup_step,
)
from protocols.topup import SecurityReason, relay_plaintext

__all__ = [
    "RELAY_ACTIONS",
    "Channel",
    "Executor",
    "MqttChannel",
    "reason_class",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the API's relay actions → the 1CH command (protocols.topup.RelayCommand names)
RELAY_ACTIONS = {"trip": "trip", "allow_close": "close_allowed", "close": "direct_close"}
RELAY_ITEMS = ("04000503",)
#: after a 1CH: status word 3 and the relay event counts (跳闸 / 合闸 总次数); an item a meter
#: does not have fails alone, status word 3 still decides
RELAY_VERIFY_ITEMS = ("04000503", "1D000001", "1E000001")

#: reasons of the service itself (beside `SecurityReason` and the communication reasons)
SERVICE_REASONS = {
    "out_of_band_purchase": "the meter's count/last purchase is not this order's (§E #8)",
    "profile_remote_mode": "a 03H top-up for a meter in remote mode (status word 3, §E #12)",
    "not_opened": "the meter's account is not opened (充值次数错误 at count target − 1)",
    "waiting_earlier_purchase": "the meter's count is below target − 1: an earlier purchase",
    "outcome_unknown": "a state-changing send whose effect no read-back settled by the deadline",
    "relay_fault": "the relay accepted the command but status word 3 did not change",
    "restore_pending": "credited; the relay command that restores the supply is not confirmed",
    "command_timeout": "no reply from the agent within command_timeout_s",
    "readback_incomplete": "the read-back lacked the count, amount or time",
    "deadline_passed": "the order's deadline passed before it could be executed",
    "esam_daily_cap": "the meter's ESAM failures today reached esam_failures_per_meter_day",
    "agent_refused": "the agent refused the command as a whole (invalid, unauthorized)",
    "closed_by_operator": "an operator closed the needs_review order, with a note",
}
_ARCHIVE = {
    "customer_mismatch", "auth_failed", "profile_remote_mode", "not_opened", "relay_fault",
    "esam_failed", "esam_daily_cap", "address_error", "security_other",
}  # fmt: skip
_BUSINESS = {
    "hoarding_exceeded", "out_of_band_purchase", "waiting_earlier_purchase",
    "purchase_count_error", "duplicate_top_up", "closed_by_operator",
}  # fmt: skip


def reason_class(reason: str | None) -> FailureClass:
    """The class a failure reason counts in (the KPI's failures by class)."""
    if reason in _ARCHIVE:
        return FailureClass.ARCHIVE
    if reason in _BUSINESS:
        return FailureClass.BUSINESS
    return FailureClass.COMMUNICATION


class Channel(Protocol):
    """How a security command reaches a concentrator's agent: the reply payload, or
    `CommandTimeout` (the outcome is then unknown)."""

    async def security(
        self, concentrator: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]: ...


class MqttChannel:
    """`Channel` over `CommandSender` (signed MQTT v5 request/response)."""

    def __init__(self, sender: CommandSender) -> None:
        self.sender = sender

    async def security(
        self, concentrator: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]:
        reply = await self.sender.send(
            concentrator, "security", meter=meter, args=args, wait_s=wait_s
        )
        return reply.payload


_NEW_SESSION = (
    SecurityReason.RELAY_REFUSED,
    SecurityReason.NO_SESSION,
    SecurityReason.SESSION_SUPERSEDED,
    SecurityReason.SESSION_EXPIRED,
)


class _Stop(Exception):
    """The order was released (waiting or terminal): this claim ends."""


class Executor:
    def __init__(
        self,
        book: OrderBook,
        cfg: TopupConfig,
        hsm: SecurityModule,
        channel: Channel,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.cfg = cfg
        self.hsm = hsm
        self.channel = channel
        self.clock = clock
        self.tz = book.tz
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        #: the most immediate re-attempts in one claim before a backoff
        self.max_immediate = 4

    def wake(self) -> None:
        self._wake.set()

    # --- the scheduler -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Claim and execute orders until `stop`; then let running attempts end (they are
        short) or cancel them (their orders are taken up again by the read-back rule)."""
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:  # the store was busy or down: the next pass tries again
                    log.exception("top-up scheduler")
                await self._sleep(stop)
        finally:
            for task in list(self.running.values()):
                task.cancel()
            for task in list(self.running.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def tick(self) -> int:
        """One scheduling pass: end expired orders, start what may start. Returns the number
        started."""
        now = self.end_overdue()
        free = self.cfg.concurrency - len(self.running)
        if free <= 0:
            return 0
        claimed = self.book.claim(now=now, limit=free, busy_meters=self.running.keys())
        for order in claimed:
            task = asyncio.create_task(self._execute(order), name=f"topup-{order.order_id}")
            self.running[order.meter] = task
        return len(claimed)

    def end_overdue(self) -> float:
        """End the active orders past their deadline that no instance holds (the service was
        down, or busy, at their deadline): only the store, no broker, no encryption machine,
        so a restarted service does it first. Returns the time it looked at."""
        now = self.clock()
        for order in self.book.expired(now=now):
            if order.meter not in self.running and self.book.take_expired(order, now=now):
                with contextlib.suppress(_Stop, OrderCancelled):
                    self._end_at_deadline(order)
        return now

    async def _sleep(self, stop: asyncio.Event) -> None:
        now = self.clock()
        wake = self.book.next_wake()
        timeout = self.cfg.poll_s  # real seconds; the next wake is on the run's clock
        if wake is not None:
            timeout = min(timeout, common.clock.current().real_seconds(max(0.0, wake - now)))
        self._wake.clear()
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(timeout, 0.01), return_when="FIRST_COMPLETED")
        finally:
            for w in waiters:
                w.cancel()

    async def _execute(self, order: Order) -> None:
        try:
            await self.drive(order)
        except (_Stop, OrderCancelled):
            pass
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._release(order, State.QUEUED if not order.touched else order.state)
            raise
        except Exception as exc:
            log.exception("order %s: %s", order.order_id, exc)
            with contextlib.suppress(Exception):
                self._wait(order, self.cfg.retry_max_s, "internal_error", f"{exc}")
        finally:
            self.running.pop(order.meter, None)
            self._wake.set()

    # --- one claim -----------------------------------------------------------------------------
    async def drive(self, order: Order) -> None:
        """Attempts until the order is released (waiting) or terminal (raises `_Stop`)."""
        if order.state is State.ACCEPTED:  # claimed by another path than `claim`
            self.book.update(order, now=self.clock(), state=State.QUEUED)
        immediate = 0
        while True:
            if self.clock() >= order.deadline:
                self._end_at_deadline(order)
            immediate += 1
            if immediate > self.max_immediate:
                self._comm_wait(order, order.reason or "command_timeout", order.detail)
            if order.kind == "relay":
                action = str(order.action)
                await self._relay_attempt(order, RELAY_ACTIONS[action])
            elif order.mode == "remote":
                if not order.credited:  # the credit notice: a ledger entry of this service
                    self.book.update(
                        order, now=self.clock(), state=State.CREDITING, credited=True,
                        result={**order.result, "ledger_credit_fen": order.amount_fen},
                    )  # fmt: skip
                await self._relay_attempt(order, RELAY_ACTIONS[self.cfg.remote_restore],
                                          restore=True)  # fmt: skip
            elif order.credited:  # confirmed on the meter, tripped remotely: allow closing
                await self._relay_attempt(order, "close_allowed", restore=True)
            else:
                await self._local_attempt(order)

    # --- helpers -------------------------------------------------------------------------------
    def _local_time(self, t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, self.tz).replace(tzinfo=None)

    def _not_after(self, order: Order, session_end: str | None = None) -> dt.datetime:
        end = dt.datetime.fromtimestamp(order.deadline, dt.UTC)
        if session_end:
            with contextlib.suppress(ValueError):
                session = dt.datetime.fromisoformat(session_end)
                if session.tzinfo is not None:
                    end = min(end, session)
        return end

    def _release(self, order: Order, state: State, **changes: Any) -> None:
        self.book.release(order, now=self.clock(), state=state, **changes)

    def _finish(
        self,
        order: Order,
        state: State,
        reason: str | None = None,
        detail: str = "",
        **changes: Any,
    ) -> None:
        cls = None if state is State.CONFIRMED else reason_class(reason).value
        changes.setdefault("uncertain", False if state is State.CONFIRMED else order.uncertain)
        self.book.update(
            order, now=self.clock(), state=state, reason=reason, reason_class=cls,
            detail=detail, **changes,
        )  # fmt: skip
        log.info("order %s: %s %s %s", order.order_id, state.value, reason or "", detail)
        raise _Stop

    def _wait(self, order: Order, delay: float, reason: str, detail: str = "") -> None:
        now = self.clock()
        next_at = min(now + delay, order.deadline)
        self._release(
            order, State.QUEUED if not order.uncertain else State.VERIFYING,
            next_at=next_at, reason=reason, detail=detail,
        )  # fmt: skip
        raise _Stop

    def _comm_wait(self, order: Order, reason: str, detail: str = "") -> None:
        failures = int(order.result.get("comm_failures", 0)) + 1
        delay = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** (failures - 1))
        order.result = {**order.result, "comm_failures": failures}
        self.book.update(order, now=self.clock(), result=order.result)
        self._wait(order, delay, reason, detail)

    def _next_day(self, order: Order, detail: str) -> None:
        """A suspended meter (SERR bit8) accepts no secure operation before 00:05 next day."""
        local = dt.datetime.fromtimestamp(self.clock(), self.tz)
        tomorrow = (local + dt.timedelta(days=1)).replace(hour=0, minute=5, second=0, microsecond=0)
        self._wait(order, tomorrow.timestamp() - self.clock(), "meter_suspended", detail)

    def _end_at_deadline(self, order: Order) -> None:
        """Make an order terminal at its deadline (it holds the order)."""
        last = order.reason
        if order.kind == "topup" and order.credited:
            detail = f"credited; supply not restored by the deadline (last: {last})"
            self._finish(order, State.NEEDS_REVIEW, "restore_pending", detail)
        if order.uncertain:
            detail = f"deadline passed with a send not settled by read-back (last: {last})"
            self._finish(order, State.NEEDS_REVIEW, "outcome_unknown", detail)
        reason = last if last and last not in ("cancelled",) else "deadline_passed"
        self._finish(order, State.FAILED, reason, f"deadline passed; last: {order.detail}".strip())

    async def _hsm(self, order: Order, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except HsmError as exc:
            now = self.clock()
            self.book.record(
                order, at=now, what=f"hsm:{what}", ok=False, reason=exc.reason.value,
                detail=str(exc), request={}, reply={"code": exc.code},
            )  # fmt: skip
            self._wait(order, self.cfg.hsm_retry_s, exc.reason.value, str(exc))
            raise AssertionError("unreachable") from None

    async def _command(
        self,
        order: Order,
        what: str,
        args: dict[str, Any],
        after: dict[str, Any] | None = None,
    ) -> SecurityResult:
        """Send one security command; its exchange is in the audit trail before anything is
        decided on it (with `after`, changes of the order, in the same transaction). No reply
        → the order waits (`_Stop`), in VERIFYING if `uncertain`."""
        if not order.touched:  # a cancel and the first send are serialised in the store
            self.book.update(order, now=self.clock(), touched=True)
        # no reply by the deadline: the order ends then (a late reply finds it terminal). The
        # wait is real time: what is left to the deadline on the run's clock (common.clock: a
        # run clock faster than real time leaves less), at most command_timeout_s
        run = common.clock.current()
        left = run.real_seconds(order.deadline - self.clock())
        wait_s = max(run.real_seconds(0.2), min(self.cfg.command_timeout_s, left))
        try:
            payload = await self.channel.security(order.concentrator, order.meter, args, wait_s)
        except (CommandTimeout, TimeoutError) as exc:
            self.book.record(
                order, at=self.clock(), what=what, ok=False, reason="command_timeout",
                detail=str(exc), request=args, reply={},
            )  # fmt: skip
            self._comm_wait(order, "command_timeout", str(exc))
            raise AssertionError("unreachable") from None
        except Exception as exc:  # the broker is down: nothing was published
            self.book.record(order, at=self.clock(), what=what, ok=False,
                             reason="command_timeout", detail=f"{type(exc).__name__}: {exc}",
                             request=args, reply={})  # fmt: skip
            self._comm_wait(order, "command_timeout", f"{type(exc).__name__}: {exc}")
            raise AssertionError("unreachable") from None
        result = parse_security_reply(payload)
        self.book.record(
            order, at=self.clock(), what=what, ok=result.ok, reason=result.reason,
            detail=result.detail, request=args, reply=payload, changes=after,
        )  # fmt: skip
        if not result.steps and result.reason in ("invalid", "unauthorized"):
            self._comm_wait(order, "agent_refused", f"{result.reason}: {result.detail}")
        return result

    def _state_view(self, state: PurchaseState) -> dict[str, Any]:
        return {
            "purchase_count": state.purchase_count,
            "last_amount_fen": state.last_amount_fen,
            "last_time": state.last_time.isoformat() if state.last_time else None,
            "remaining_fen": state.remaining_fen,
            "status_word_3": state.status_word_3,
        }

    def _verdict(self, order: Order, state: PurchaseState) -> Verdict:
        assert order.purchase_count is not None
        assert order.amount_fen is not None
        return reconcile(
            state,
            target_count=order.purchase_count,
            amount_fen=order.amount_fen,
            accepted_at=self._local_time(order.accepted_at),
            clock_tolerance=dt.timedelta(seconds=self.cfg.clock_tolerance_s),
        )

    def _auth_refused(self, order: Order, result: SecurityResult) -> None:
        """The auth step did not succeed: wait, fail or go on (returns only to try again)."""
        step = result.step("auth")
        reason = step.reason if step is not None else result.reason
        text = str(getattr(reason, "value", reason))
        detail = step.detail if step is not None else result.detail
        if reason is SecurityReason.METER_SUSPENDED:
            self._next_day(order, detail)
        if reason is SecurityReason.AUTH_FAILED:
            order.rechecks += 1
            self.book.update(order, now=self.clock(), rechecks=order.rechecks)
            if order.rechecks >= 2 and not order.uncertain:
                self._finish(order, State.FAILED, "auth_failed",
                             "identity authentication refused twice: keys or archive")  # fmt: skip
            return
        if reason is SecurityReason.DEADLINE_PASSED:
            self._end_at_deadline(order)
        self._comm_wait(order, text, detail)

    # --- local top-up (本地费控) ------------------------------------------------------------------
    async def _local_attempt(self, order: Order) -> None:
        assert order.amount_fen is not None
        assert order.customer is not None
        auth = await self._hsm(order, "identity_auth", self.hsm.identity_auth(order.address))
        self.book.update(
            order, now=self.clock(), state=State.AUTHENTICATING, attempts=order.attempts + 1,
            touched=True,
        )  # fmt: skip
        first = await self._command(
            order, "auth+readback",
            security_args([auth_step(auth), read_step()], not_after=self._not_after(order)),
        )  # fmt: skip
        state = first.purchase_state()
        if state.local_prepaid is False and not order.uncertain:
            self._finish(order, State.FAILED, "profile_remote_mode",
                         "status word 3 bits 9-8 = 00: the meter is in remote mode; a person"
                         " confirms the mode, billing resubmits on the remote path")  # fmt: skip
        if state.purchase_count is not None:
            if order.purchase_count is None:  # the service assigns the count: meter's + 1
                self.book.update(order, now=self.clock(), purchase_count=state.purchase_count + 1,
                                 count_assigned=True)  # fmt: skip
            verdict = self._settle(order, state)
            if verdict is Verdict.CONFIRMED:
                return  # credited, the relay to restore: the next pass does it
            if verdict is Verdict.UNKNOWN:
                self._comm_wait(order, "readback_incomplete", "count, amount or time not read")
        auth_ok = first.random2 is not None and first.esam_serial is not None
        if not auth_ok:
            self._auth_refused(order, first)
            return
        if state.purchase_count is None:
            self._comm_wait(order, "readback_incomplete", "the purchase count was not read")
        if self.book.esam_failures_on(order.meter, order.day) >= (
            self.cfg.esam_failures_per_meter_day
        ):
            self._finish(order, State.NEEDS_REVIEW, "esam_daily_cap",
                         f"{self.cfg.esam_failures_per_meter_day} ESAM failures of the meter"
                         " today")  # fmt: skip
        assert first.random2 is not None
        assert order.purchase_count is not None
        opening = state.purchase_count == 0
        purse = self.hsm.open_account if opening else self.hsm.increase_purse
        macs = await self._hsm(
            order, "open_account" if opening else "increase_purse",
            purse(order.address, first.random2, amount_fen=order.amount_fen,
                  purchase_count=order.purchase_count, customer=order.customer),
        )  # fmt: skip
        session_end = (first.session or {}).get("expires_at")
        op = open_step(macs) if opening else topup_step(macs)
        self.book.update(order, now=self.clock(), state=State.CREDITING, uncertain=True)
        second = await self._command(
            order, "topup+readback",
            security_args([op, read_step()], session=first.random2,
                          not_after=self._not_after(order, session_end)),
            after={"state": State.VERIFYING},
        )  # fmt: skip
        after = second.purchase_state()
        verdict = self._settle(order, after)
        if verdict is Verdict.CONFIRMED:
            return
        if verdict is Verdict.UNKNOWN:
            await self._verify_reads(order)
            return
        # count = target - 1: not credited; why
        step = second.step("open" if opening else "topup")
        reason = step.reason if step is not None else second.reason
        detail = step.detail if step is not None else second.detail
        self._refused(order, reason, detail, after)

    def _settle(self, order: Order, state: PurchaseState) -> Verdict:
        """Decide on a read-back: confirmed / needs_review end the order (`_Stop`); RESEND
        clears `uncertain`; UNKNOWN is returned for the caller."""
        if state.purchase_count is None:
            return Verdict.UNKNOWN
        assert order.purchase_count is not None
        if state.purchase_count < order.purchase_count - 1:
            if order.uncertain:  # a count that went back: nothing the rule explains
                self._finish(order, State.NEEDS_REVIEW, "out_of_band_purchase",
                             f"read-back {self._state_view(state)}")  # fmt: skip
            self._wait(order, self.cfg.retry_initial_s, "waiting_earlier_purchase",
                       f"meter count {state.purchase_count}, this order's"
                       f" {order.purchase_count}")  # fmt: skip
        verdict = self._verdict(order, state)
        view = self._state_view(state)
        if verdict is Verdict.CONFIRMED:
            result = {**order.result, "readback": view}
            if state.relay_command_open:  # tripped remotely: the credit does not close it
                self.book.update(order, now=self.clock(), credited=True, uncertain=False,
                                 state=State.VERIFYING, reason="restore_pending",
                                 result={**result, "restore": "allow_close"})  # fmt: skip
                return verdict
            self._finish(order, State.CONFIRMED, None, "", credited=True, result=result)
        if verdict is Verdict.NEEDS_REVIEW:
            self._finish(order, State.NEEDS_REVIEW, "out_of_band_purchase", f"read-back {view}",
                         result={**order.result, "readback": view})  # fmt: skip
        if verdict is Verdict.RESEND and order.uncertain:
            self.book.update(order, now=self.clock(), uncertain=False)
        return verdict

    async def _verify_reads(self, order: Order) -> None:
        """The outcome is unknown and the read-back incomplete: read again (no session)."""
        for _ in range(2):
            result = await self._command(
                order, "readback", security_args([read_step()], not_after=self._not_after(order))
            )
            if self._settle(order, result.purchase_state()) is not Verdict.UNKNOWN:
                return
        self._comm_wait(order, "readback_incomplete", "count, amount or time not read")

    def _refused(self, order: Order, reason: object, detail: str, state: PurchaseState) -> None:
        """The send did not credit (read-back: count = target − 1). Returns to try again."""
        text = str(getattr(reason, "value", reason))
        if reason in (SecurityReason.ESAM_FAILED, SecurityReason.OTHER):
            if reason is SecurityReason.OTHER and state.local_prepaid is False:
                self._finish(order, State.FAILED, "profile_remote_mode", detail)
            order.esam_failures += 1
            day_total = self.book.esam_failure(order.meter, order.day)
            self.book.update(order, now=self.clock(), esam_failures=order.esam_failures)
            if order.esam_failures >= self.cfg.esam_failures_per_order:
                self._finish(order, State.NEEDS_REVIEW, text,
                             f"{order.esam_failures} failures of this order: {detail}")  # fmt: skip
            if day_total >= self.cfg.esam_failures_per_meter_day:
                self._finish(order, State.NEEDS_REVIEW, "esam_daily_cap",
                             f"{day_total} ESAM failures of the meter today")  # fmt: skip
            return
        if reason is SecurityReason.CUSTOMER_MISMATCH:
            order.rechecks += 1
            self.book.update(order, now=self.clock(), rechecks=order.rechecks)
            if order.rechecks >= 2:
                self._finish(order, State.FAILED, text, f"after one re-check: {detail}")
            return
        if reason is SecurityReason.HOARDING_EXCEEDED:
            self._finish(order, State.FAILED, text,
                         f"remaining {state.remaining_fen} fen + {order.amount_fen} fen is over"
                         " the meter's hoarding limit", result={**order.result,
                         "readback": self._state_view(state)})  # fmt: skip
        if reason is SecurityReason.PURCHASE_COUNT_ERROR:
            self._finish(order, State.FAILED, "not_opened",
                         f"充值次数错误 at count target − 1: {detail}")  # fmt: skip
        if reason is SecurityReason.METER_SUSPENDED:
            self._next_day(order, detail)
        if reason in (SecurityReason.ADDRESS_ERROR, SecurityReason.DUPLICATE_TOP_UP):
            self._finish(order, State.NEEDS_REVIEW, text, detail)
        if reason in (
            SecurityReason.AUTH_FAILED,
            SecurityReason.NO_SESSION,
            SecurityReason.SESSION_SUPERSEDED,
            SecurityReason.SESSION_EXPIRED,
            SecurityReason.NOT_SENT,
        ):
            return  # a new authentication, at once
        if reason is SecurityReason.DEADLINE_PASSED:
            self._end_at_deadline(order)
        self._comm_wait(order, text or "no_reply", detail)

    # --- relay (停电/复电) ------------------------------------------------------------------------
    @staticmethod
    def _satisfied(command: str, state: PurchaseState) -> bool | None:
        if state.status_word_3 is None:
            return None
        if command == "trip":
            return bool(state.relay_command_open and state.relay_open)
        if command == "close_allowed":
            return state.relay_command_open is False
        return state.relay_command_open is False and state.relay_open is False

    async def _relay_attempt(self, order: Order, command: str, *, restore: bool = False) -> None:
        auth = await self._hsm(order, "identity_auth", self.hsm.identity_auth(order.address))
        self.book.update(
            order, now=self.clock(), attempts=order.attempts + 1, touched=True,
            state=State.AUTHENTICATING if not restore else State.VERIFYING,
        )  # fmt: skip
        first = await self._command(
            order, "auth+relay-state",
            security_args([auth_step(auth), read_step(RELAY_ITEMS)],
                          not_after=self._not_after(order)),
        )  # fmt: skip
        state = first.purchase_state()
        done = self._satisfied(command, state)
        if done:
            self._relay_done(order, command, state)
        if first.random2 is None or first.esam_serial is None:
            self._auth_refused(order, first)
            return
        if done is None:
            self._comm_wait(order, "readback_incomplete", "status word 3 not read")
        if order.relay_tries >= self.cfg.relay_attempts:
            self._finish(order, State.NEEDS_REVIEW if order.credited else State.FAILED,
                         "relay_fault", f"{order.relay_tries} relay commands, status word 3"
                         f" {state.status_word_3}: the relay does not move")  # fmt: skip
        if not restore:
            self.book.update(order, now=self.clock(), state=State.CREDITING)
        until = dt.datetime.fromtimestamp(self.clock(), self.tz).replace(
            tzinfo=None
        ) + dt.timedelta(minutes=self.cfg.relay_valid_minutes)
        cipher = await self._hsm(
            order, "user_control",
            self.hsm.user_control(order.address, first.random2, first.esam_serial,
                                  relay_plaintext(command, until)),
        )  # fmt: skip
        session_end = (first.session or {}).get("expires_at")
        self.book.update(order, now=self.clock(), uncertain=True,
                         relay_tries=order.relay_tries + 1)  # fmt: skip
        second = await self._command(
            order, f"relay:{command}+relay-state",
            security_args([relay_step(cipher), read_step(RELAY_VERIFY_ITEMS)],
                          session=first.random2,
                          not_after=self._not_after(order, session_end)),
            after={"state": State.VERIFYING},
        )  # fmt: skip
        after = second.purchase_state()
        if self._satisfied(command, after):
            self._relay_done(order, command, after, _events(second))
        if after.status_word_3 is not None:
            self.book.update(order, now=self.clock(), uncertain=False)
        step = second.step("relay")
        reason = step.reason if step is not None else second.reason
        if reason is SecurityReason.METER_SUSPENDED:
            self._next_day(order, step.detail if step else "")
        if step is not None and step.ok:
            return  # accepted but did not move: again with a new authentication (§E #13)
        if reason in _NEW_SESSION:
            return
        text = str(getattr(reason, "value", reason) or "no_reply")
        self._comm_wait(order, text, step.detail if step else second.detail)

    def _relay_done(
        self,
        order: Order,
        command: str,
        state: PurchaseState,
        events: dict[str, Any] | None = None,
    ) -> None:
        result = {**order.result, "relay": command, "status_word_3": state.status_word_3,
                  "relay_open": state.relay_open}  # fmt: skip
        if events:
            result["relay_events"] = events
        self._finish(order, State.CONFIRMED, None, "", uncertain=False, result=result)


def _events(result: SecurityResult) -> dict[str, Any]:
    """The relay event counts read after a 1CH (1D 00 00 01 trips, 1E 00 00 01 closings):
    their decoded values, by item."""
    out: dict[str, Any] = {}
    for step in result.steps:
        for item, entry in step.items.items():
            if item in ("1D000001", "1E000001") and entry.get("values"):
                out[item] = {k: v.get("value") for k, v in entry["values"].items()}
    return out
