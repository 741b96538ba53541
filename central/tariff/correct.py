"""Tariff correction orders (docs/tariff.md "Correction"): bring a meter whose check failed back to
its plan by writing its tariff items remotely, through the same encryption-machine path as a
top-up — or, where the meter cannot be written remotely, put it on the technicians' work-order
list with the reason.

One order, for one meter:

1. read the set-up now (the agent's ``tariff`` command), store it, run the check on it;
2. decide: OK → nothing to do; CLOCK_DRIFT, ENERGY_MISALLOCATED, UNSUPPORTED_DI, a firmware model
   without secure writes, or items the firmware denies → work order (no meter traffic);
   PARAM_MISMATCH, SWITCH_PENDING, SWITCH_MISSED, PRICE_MISMATCH, PROGRAMMED_OUTSIDE_PLAN → write;
3. build what the meter must hold from the plan (`target_setup`): the active set = the version
   in force, the backup set = the next time-of-use version with its switch times (the meter
   flips at the planned date, CLDC sequence), weekend rule, holidays, and for local meters the
   backup prices with their switch time (the current price set is read-only; current prices
   that are wrong are fixed by writing the right ones as backup with a switch a few minutes
   ahead); write only the items whose bytes differ (`protocols.tariff_write.writable_items`);
4. per attempt: identity authentication (machine → agent ``auth``), then for each item the
   machine's ParameterUpdate (一类, level 99) / ParameterElseUpdate (二类, level 98) in that
   session, sent as ``write`` steps with a ``read`` of the same items in the same command; an
   item is done when its read-back bytes equal what was meant. Communication failures, lost
   sessions and machine outages are retried with a fresh authentication (never old MACs), up
   to `attempts`; a meter that refuses a write (ERR 04: MAC, level) is not retried (review);
5. read the set-up again and re-run the check: ``verified`` when it says OK.

Every exchange — machine calls, each command with its raw frames, the set-up reads and the
checks — is kept in ``tariff_correction_audit``; the order's programming is a ``tariff_job``
so the programming events it causes are not "outside plan".
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import common.clock
from central.commands import CommandSender, CommandTimeout
from central.points import Converted, convert
from central.store import Store
from central.tariff.check import CheckSettings, MeterFacts, check_meter, tou_digest
from central.tariff.expect import expected_set, to_write, weekend_word
from central.tariff.plans import Plan
from central.tariff.store import Outcome, TariffStore
from central.topup.hsm import HsmError, SecurityModule
from central.topup.steps import (
    SecurityResult,
    auth_step,
    parse_security_reply,
    read_step,
    security_args,
    write_step,
)
from protocols.payloads import FailureReason
from protocols.tariff import Holiday, TariffPayloadError, TariffSetup, TouSet
from protocols.tariff_write import (
    LEVEL_CIPHER,
    WriteItemError,
    machine_plaintext,
    password_level,
    read_only,
    writable_items,
)
from protocols.topup import SecurityReason

__all__ = [
    "CORRECTABLE",
    "NO_SECURE_WRITE_MODELS",
    "WORKORDER_ONLY",
    "Channel",
    "CorrectionResult",
    "Corrector",
    "SenderChannel",
    "items_to_write",
    "target_setup",
    "workorder_csv",
]

CORRECTABLE = (
    "PARAM_MISMATCH",
    "SWITCH_PENDING",
    "SWITCH_MISSED",
    "PRICE_MISMATCH",
    "PROGRAMMED_OUTSIDE_PLAN",
)
WORKORDER_ONLY: dict[str, str] = {
    "CLOCK_DRIFT": "clock drift beyond what 08H broadcast can fix (5 min): set the clock on site",
    "ENERGY_MISALLOCATED": "firmware books energy into the wrong register: no parameter fixes"
    " it (replace or reflash on site)",
    "UNSUPPORTED_DI": "old firmware: tariff items unknown to the meter",
}
NO_SECURE_WRITE_MODELS = frozenset({"DDS-2009"})
"""archive models whose firmware takes no secure (98/99) tariff writes (2009-era firmware)"""
WRITES_PER_COMMAND = 8
"""write steps per security command (+ one read of the same items: the command's limit is 16)"""
PRICE_FLIP_AHEAD = dt.timedelta(minutes=3)


class Channel(Protocol):
    """How commands reach a concentrator's agent: the reply payload, or `CommandTimeout`."""

    async def command(
        self, concentrator: str, name: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]: ...


@dataclass
class SenderChannel:
    """`Channel` over `CommandSender` (signed MQTT v5 request/response)."""

    sender: CommandSender

    async def command(
        self, concentrator: str, name: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]:
        reply = await self.sender.send(concentrator, name, meter=meter, args=args, wait_s=wait_s)
        return reply.payload


# --- what to write ------------------------------------------------------------------------------
def target_setup(plan: Plan, day: dt.date, meter: TariffSetup, now: dt.datetime) -> TariffSetup:
    """What `meter` must hold on `day` to execute `plan` (its own active-set numbering kept):
    the version in force as its active set, the next time-of-use change as its backup set with
    the switch times, weekend rule and holidays of the version in force, and on a local meter
    the backup prices (the next price change with its switch time; the version in force with a
    switch `PRICE_FLIP_AHEAD` after `now` — meter time — when the current prices are wrong)."""
    version = plan.in_force(day)
    if version is None:
        raise ValueError(f"plan {plan.name} is not in force on {day}")
    tou_next = plan.next_change(day, "tou")
    active = expected_set(version)
    backup = expected_set(tou_next) if tou_next is not None else active
    index = meter.active_table_set - 1
    sets = [active, active]
    sets[1 - index] = backup
    switch = dt.datetime.combine(tou_next.effective, dt.time()) if tou_next is not None else None
    holidays = tuple(
        Holiday(h.date, h.table) for h in sorted(version.holidays, key=lambda h: h.date)
    )
    numbers = [n for tou in sets for n in tou.tables]
    target = replace(
        meter,
        zone_count=max(len(tou.zones) for tou in sets),
        table_count=max(numbers) if numbers else meter.table_count,
        period_count=max(len(p) for tou in sets for p in tou.tables.values()),
        holiday_count=len(holidays),
        sets=(TouSet(sets[0].zones, sets[0].tables), TouSet(sets[1].zones, sets[1].tables)),
        switch_zones=switch,
        switch_tables=switch,
        weekend_workdays=weekend_word(version),
        weekend_table=version.weekend_table if version.weekend_table is not None else 1,
        holidays=holidays,
    )
    if meter.prices_current is not None and version.prices is not None:
        from decimal import Decimal

        def dec(prices: Sequence[float]) -> tuple[Decimal, ...]:
            return tuple(Decimal(str(p)).quantize(Decimal("0.0001")) for p in prices)

        price_next = plan.next_change(day, "price")
        if meter.prices_current != dec(version.prices):
            flip = (now + PRICE_FLIP_AHEAD).replace(second=0, microsecond=0, tzinfo=None)
            target = replace(target, prices_backup=dec(version.prices), switch_prices=flip)
        elif price_next is not None and price_next.prices is not None:
            stamp = dt.datetime.combine(price_next.effective, dt.time())
            target = replace(target, prices_backup=dec(price_next.prices), switch_prices=stamp)
        else:
            target = replace(target, prices_backup=dec(version.prices), switch_prices=None)
    return target


def items_to_write(meter: TariffSetup, target: TariffSetup) -> dict[int, bytes]:
    """The items whose bytes in `target` differ from what `meter` holds, in write order: the
    backup set and counts first, switch times last (CLDC: the set, then its switch time), so a
    meter never flips to a half-written set."""
    have = writable_items(meter)
    want = writable_items(target)
    out = {di: v for di, v in want.items() if have.get(di) != v and not read_only(di)}
    switches = {di: out.pop(di) for di in (0x04000106, 0x04000107, 0x04000108) if di in out}
    return out | switches


# --- the order ----------------------------------------------------------------------------------
@dataclass
class CorrectionResult:
    id: int
    concentrator: str
    meter: str
    state: str
    """nothing | workorder | verified | written | refused | failed"""
    outcome_before: str
    outcome_after: str | None = None
    reason: str = ""
    items: list[str] = field(default_factory=list)
    attempts: int = 0
    workorder: list[str] | None = None
    """the work-order row (WORKORDER_CSV_COLUMNS) when the meter goes to a technician"""


WORKORDER_CSV_COLUMNS = ("meter", "concentrator", "outcome", "why_not_remote", "to_write")


def workorder_csv(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(WORKORDER_CSV_COLUMNS)
    w.writerows(rows)
    return buf.getvalue()


_NO_ESAM = (
    SecurityReason.AUTH_FAILED,
    SecurityReason.OTHER,
    SecurityReason.ESAM_FAILED,
    SecurityReason.METER_SUSPENDED,
)


class _Retry(Exception):
    """This attempt ended without an answer that settles it: authenticate again."""


class _Final(Exception):
    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass
class Corrector:
    """Runs correction orders. `store` holds the tariff tables; `hsm` the encryption machine;
    `channel` reaches the agents. Times: `common.clock`; the meters' dates in `timezone`."""

    store: Store
    hsm: SecurityModule
    channel: Channel
    settings: CheckSettings
    timezone: str
    attempts: int = 3
    wait_s: float = 60.0
    by: str = "cli"

    def __post_init__(self) -> None:
        self.tariffs = TariffStore(self.store)
        self.tz = zoneinfo.ZoneInfo(self.timezone)

    # -- audit ----------------------------------------------------------------------------------
    def _audit(self, order: int, kind: str, body: Mapping[str, Any]) -> None:
        self.tariffs.audit_correction(order, kind, dict(body))

    async def _send(
        self, order: int, c: str, m: str, name: str, args: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._audit(order, f"command:{name}", {"args": dict(args)})
        try:
            reply = await self.channel.command(c, name, m, args, self.wait_s)
        except CommandTimeout as exc:
            self._audit(order, f"reply:{name}", {"timeout": str(exc)})
            raise _Retry(f"{name}: no reply ({exc})") from None
        self._audit(order, f"reply:{name}", reply)
        return reply

    async def _hsm(self, order: int, what: str, call: Any, **shown: Any) -> Any:
        try:
            answer = await call
        except HsmError as exc:
            self._audit(order, f"hsm:{what}", {**shown, "error": str(exc), "code": exc.code})
            if exc.retryable:
                raise _Retry(f"encryption machine: {exc}") from None
            raise _Final("failed", f"encryption machine refused: {exc}") from None
        self._audit(order, f"hsm:{what}", shown)
        return answer

    # -- reading and checking ----------------------------------------------------------------------
    async def _read_setup(self, order: int, c: str, m: str) -> dict[str, Any]:
        reply = await self._send(order, c, m, "tariff", {})
        result = reply.get("result")
        if not reply.get("ok") or not isinstance(result, dict):
            raise _Retry(f"tariff read: {reply.get('reason')} {reply.get('detail', '')}".strip())
        facts = Converted()
        try:
            convert("tariff", {"concentrator": c, **result}, facts)
        except ValueError as exc:
            raise _Final("failed", f"the set-up read cannot be used: {exc}") from None
        await asyncio.to_thread(self.tariffs.apply_converted, facts)
        return dict(result["setup"])

    async def _read_kept(self, order: int, c: str, m: str, tries: int = 10) -> dict[str, Any]:
        """A set-up read that the store keeps: the store keys set-ups by the second, so a read
        in the same second as the one before it (a fast bus) would be dropped there, and the
        next day's check would see the set-up from before the writes. Read again then (each
        read takes its bus time: the next one lands in a later second)."""
        fresh: dict[str, Any] = {}
        for _ in range(tries):
            fresh = await self._read_setup(order, c, m)
            at = dt.datetime.fromisoformat(str(fresh.get("read_at")))
            second = int(at.timestamp())
            kept = self.tariffs.setups_until(second, second, c).get((c, m), [])
            if any(p == fresh for p in kept):
                return fresh
            self._audit(order, "reread", {"why": "a set-up of the same second is stored"})
        return fresh

    def _check(
        self, c: str, m: str, plan: Plan, day: dt.date, fresh: dict[str, Any]
    ) -> tuple[Outcome, TariffSetup]:
        """The check of `day` on the set-ups stored and `fresh`, the one just read (the store
        keys set-ups by the second: a read in the same second as the one before is not kept
        there, but it is the one that counts here)."""
        now = common.clock.current().time()
        day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), self.tz)
        until = max(int(day_end.timestamp()), int(now))
        oldest = day_end - dt.timedelta(days=self.settings.max_setup_age_days + 31)
        since = int(oldest.timestamp())
        try:
            latest = TariffSetup.from_payload(fresh)
        except (TariffPayloadError, KeyError, TypeError) as exc:
            raise _Final("failed", f"the set-up read cannot be used: {exc}") from None
        payloads = [
            p
            for p in self.tariffs.setups_until(until, since, c).get((c, m), [])
            if dt.datetime.fromisoformat(str(p.get("read_at"))) < latest.read_at
        ]
        payloads.append(fresh)
        setups = []
        for p in payloads:
            try:
                setups.append(TariffSetup.from_payload(p))
            except (TariffPayloadError, KeyError, TypeError):
                continue
        if not setups:
            raise _Final("failed", "no usable set-up read")
        days = [str(day - dt.timedelta(days=n)) for n in (2, 1, 0)]
        facts = MeterFacts(
            c,
            m,
            plan,
            setups,
            self.tariffs.freezes(days, c).get((c, m), {}),
            self.tariffs.jobs(since).get((c, m), []),
            tou_digest(payloads[-1]),
        )
        end = max(day_end, dt.datetime.fromtimestamp(now, self.tz) + dt.timedelta(seconds=1))
        return check_meter(facts, day, end, self.tz, self.settings), setups[-1]

    # -- the order ------------------------------------------------------------------------------
    async def correct(
        self,
        concentrator: str,
        meter: str,
        plan: Plan,
        *,
        model: str = "",
        meter_number: str | None = None,
        day: dt.date | None = None,
    ) -> CorrectionResult:
        """One correction order for `meter` (the 表号 for the machine is `meter_number`,
        default the meter id)."""
        c, m = concentrator, meter
        number = meter_number or meter
        now = common.clock.current().time()
        day = day or dt.datetime.fromtimestamp(now, self.tz).date()
        order = self.tariffs.start_correction(c, m, str(day), self.by)
        result = CorrectionResult(order, c, m, "failed", "")
        job: int | None = None
        try:
            fresh = await self._read_setup(order, c, m)
            before, setup = self._check(c, m, plan, day, fresh)
            result.outcome_before = before.outcome
            self._audit(order, "check", {"outcome": before.outcome, "detail": before.detail})
            why = self._not_remote(before, setup, model)
            if before.outcome == "OK":
                raise _Final("nothing", "the check says OK")
            if why is not None:
                raise _Final("workorder", why)
            if before.outcome not in CORRECTABLE:
                raise _Final("nothing", f"{before.outcome}: nothing a write can fix")
            meter_now = setup.meter_time or dt.datetime.fromtimestamp(now, self.tz)
            try:
                target = target_setup(plan, day, setup, meter_now)
                items = items_to_write(setup, target)
            except (ValueError, WriteItemError) as exc:
                raise _Final("failed", f"cannot build the write from the plan: {exc}") from None
            result.items = [f"{di:08X}" for di in items]
            self.tariffs.update_correction(order, items=result.items)
            if not items:
                raise _Final("nothing", "the set-up already holds the plan's items")
            job = self.tariffs.start_job(c, m, "correction", self.by, f"correction {order}")
            await self._write(order, c, m, number, items, result)
            fresh = await self._read_kept(order, c, m)
            after, _ = self._check(c, m, plan, day, fresh)
            result.outcome_after = after.outcome
            self._audit(order, "check", {"outcome": after.outcome, "detail": after.detail})
            result.state = "verified" if after.outcome == "OK" else "written"
            result.reason = "" if after.outcome == "OK" else f"the check now says {after.outcome}"
        except _Final as exc:
            result.state, result.reason = exc.state, exc.reason
            if exc.state == "workorder":
                version = plan.in_force(day)
                what = "; ".join(f"{k}={v}" for k, v in to_write(version, day).items()) if (
                    version is not None) else ""  # fmt: skip
                result.workorder = [m, c, result.outcome_before, exc.reason, what]
        except _Retry as exc:
            result.state, result.reason = "failed", str(exc)
        finally:
            if job is not None:
                self.tariffs.end_job(job, result.state, f"correction {order}: {result.reason}")
            self.tariffs.finish_correction(order, result)
        return result

    @staticmethod
    def _not_remote(outcome: Outcome, setup: TariffSetup, model: str) -> str | None:
        if outcome.outcome in WORKORDER_ONLY:
            return WORKORDER_ONLY[outcome.outcome]
        if model in NO_SECURE_WRITE_MODELS:
            return f"firmware model {model} takes no secure tariff writes"
        if setup.unsupported and outcome.outcome in CORRECTABLE:
            denied = ", ".join(sorted(setup.unsupported))
            return f"the firmware denies tariff items ({denied}): program on site"
        return None

    async def _write(
        self,
        order: int,
        c: str,
        m: str,
        number: str,
        items: dict[int, bytes],
        result: CorrectionResult,
    ) -> None:
        pending = dict(items)
        last = ""
        for attempt in range(1, self.attempts + 1):
            result.attempts = attempt
            self.tariffs.update_correction(order, attempts=attempt)
            try:
                await self._attempt(order, c, m, number, pending)
                return
            except _Retry as exc:
                last = str(exc)
                self._audit(order, "retry", {"attempt": attempt, "why": last})
        raise _Final("failed", f"{self.attempts} attempts: {last}")

    async def _attempt(
        self, order: int, c: str, m: str, number: str, pending: dict[int, bytes]
    ) -> None:
        auth = await self._hsm(order, "identity_auth", self.hsm.identity_auth(number), meter=number)
        # the auth, and a read-back of what is still to write: after a reply that was lost,
        # what the meter took is not written again
        dis = [f"{di:08X}" for di in pending]
        reads = [read_step(dis[i : i + 16]) for i in range(0, len(dis), 16)][:15]
        first = parse_security_reply(
            await self._send(order, c, m, "security", security_args([auth_step(auth), *reads]))
        )
        auth_result = first.step("auth")
        if auth_result is None or not auth_result.ok or first.random2 is None:
            self._settle(first, "identity authentication")
            raise _Retry("identity authentication: no random-2")
        random2 = first.random2
        self._prune(first, pending)
        while pending:
            chunk = list(pending.items())[:WRITES_PER_COMMAND]
            steps = []
            for di, value in chunk:
                cipher = password_level(di) == LEVEL_CIPHER
                data = await self._hsm(
                    order,
                    "parameter_update",
                    self.hsm.parameter_update(
                        number, random2, di, machine_plaintext(di, value), cipher=cipher
                    ),
                    di=f"{di:08X}",
                    value=value.hex().upper(),
                    cipher=cipher,
                )
                steps.append(write_step(di, data, level=password_level(di)))
            steps.append(read_step([f"{di:08X}" for di, _ in chunk]))
            reply = await self._send(order, c, m, "security", security_args(steps, session=random2))
            done = parse_security_reply(reply)
            self._prune(done, pending)
            if not done.ok:
                self._settle(done, "write")
            if any(di in pending for di, _ in chunk):
                raise _Retry("read-back does not show every item written")

    @staticmethod
    def _prune(result: SecurityResult, pending: dict[int, bytes]) -> None:
        """Drop from `pending` the items whose read-back bytes are what is to be written."""
        for step in result.steps:
            if step.op != "read":
                continue
            for key, item in step.items.items():
                di = int(key, 16)
                if di in pending and (item or {}).get("raw") == pending[di].hex().upper():
                    pending.pop(di)

    @staticmethod
    def _settle(result: SecurityResult, what: str) -> None:
        """Raise for a failed command: `_Final` when the meter refused (no retry can help),
        `_Retry` for communication, sessions and anything whose outcome is unknown."""
        failed = next((s for s in result.steps if not s.ok), None)
        reason = failed.reason if failed is not None else result.reason
        detail = failed.detail if failed is not None else result.detail
        if reason in (SecurityReason.WRITE_REFUSED, SecurityReason.WRITE_INVALID):
            raise _Final("refused", f"{what}: the meter refused ({reason}): {detail}")
        if what == "identity authentication" and reason in _NO_ESAM:
            raise _Final(
                "workorder", f"identity authentication refused ({reason}): no ESAM or keys"
            )
        if reason == "invalid":
            raise _Final("failed", f"{what}: the agent refused the command: {detail}")
        if isinstance(reason, FailureReason) and reason is FailureReason.NO_REPLY:
            raise _Retry(f"{what}: no reply from the meter")
        raise _Retry(f"{what}: {reason}: {detail}")


def dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, sort_keys=True, default=str)
