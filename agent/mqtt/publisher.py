"""Publishing the outbox (see the package docstring): each kind on its own with its own backoff,
refusals counted as strikes against a message, probes past a repeatedly refused one, dead
letters, the payload cap learned from dropped connections, and acknowledging rows after their
PUBACK. The messages themselves are built in `agent.mqtt.messages`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import common.clock
from agent.mqtt.client import LinkStats, PublishRefused, Sender, _Client, _now_iso
from agent.mqtt.messages import _Outgoing, _readings_batch, _readings_outgoing, _row_messages
from agent.mqtt.settings import (
    MIN_PAYLOAD_BYTES,
    NO_SUBSCRIBERS,
    PUBLISH_OVERHEAD,
    PUMPED_KINDS,
    TRANSIENT_REFUSALS,
    LinkSettings,
    backoff_delay,
)
from agent.outbox import Outbox, OutboxRow
from agent.storage import StorageFull

log = logging.getLogger(__package__)  # "agent.mqtt", as before the split into modules

ACK_RETRY_S = 2.0
"""how long the publisher waits to forget acknowledged rows when the disk had no room"""


@dataclass
class _KindState:
    """How publishing one outbox kind is going; reset by the next accepted message."""

    refusals: int = 0
    """refused publishes in a row: the exponent of this kind's backoff"""
    retry_at: float = 0.0
    """event-loop time before which this kind is not published"""
    head: frozenset[int] = frozenset()
    """rows of the one-row message (or report) the strikes are for"""
    head_key: str = ""
    """the refused message itself (a report's part)"""
    strikes: int = 0
    reason: str = ""
    row_limit: int = 0
    """readings per message while isolating the reading the broker objects to (0: no limit)"""
    probe: bool = False
    """`strikes` reached `dead_letter_after`: send the next message of the kind first"""
    last_chance: bool = False
    """the probe went through: the head is tried once more, and goes if it fails again"""
    condemned: bool = False
    """it did: the head's rows go to the dead-letter table on the next pass"""
    topic_refused: bool = False
    """a probe was refused too: the broker refuses the topic (said once per episode)"""


class OutboxPublisher:
    """Publishes the outbox over the connection `MqttLink` hands to `pump`, and remembers across
    connections how each kind is going (backoff, strikes, probes) and the payload cap learned."""

    def __init__(
        self,
        settings: LinkSettings,
        outbox: Outbox,
        concentrator: str,
        topics: Mapping[str, str],
        *,
        sender: Sender,
        stats: LinkStats,
        rng: random.Random,
        on_progress: Callable[[], None],
        after_pass: Callable[[_Client], Awaitable[None]],
    ) -> None:
        """`topics` by outbox kind; `on_progress` is called when rows left the outbox (acked
        or dead-lettered); `after_pass` runs after each pass over the kinds (the link's
        retained messages that are due again)."""
        self._settings = settings
        self._outbox = outbox
        self._concentrator = concentrator
        self._topics = topics
        self._sender = sender
        self._stats = stats
        self._rng = rng
        self._on_progress = on_progress
        self._after_pass = after_pass

        self.publish_latency_s = 0.0
        """put-to-PUBACK age of the oldest row in the last acknowledged message"""
        self.publish_latency_avg_s = 0.0
        """mean put-to-PUBACK over every acknowledged row"""
        self.payload_cap = settings.max_payload_bytes
        """largest payload sent: `max_payload_bytes`, halved (down to `MIN_PAYLOAD_BYTES`) each
        time the connection died twice in a row under a message that could be split"""

        self._kinds = {kind: _KindState() for kind in PUMPED_KINDS}
        self._flight: _Outgoing | None = None
        """the outbox message being published (cleared when the broker answered)"""
        self._suspect: str | None = None
        """key of the message in flight when the last connection died"""
        self._latency_rows = 0

    def new_connection(self) -> None:
        """A connection is up: nothing of ours is in flight on it."""
        self._flight = None

    async def pump(self, client: _Client) -> None:
        """Publish each kind on its own: a kind the broker refuses (or whose message keeps
        killing the connection) backs off alone while the other kinds keep flowing."""
        loop = asyncio.get_running_loop()
        while True:
            mark = self._outbox.put_count
            progress = 0
            for kind in PUMPED_KINDS:
                if loop.time() >= self._kinds[kind].retry_at:
                    try:
                        progress += await self._publish_kind(client, kind)
                    except StorageFull:  # a dead letter found no room: said by the watch
                        await asyncio.sleep(ACK_RETRY_S)
            await self._after_pass(client)
            if progress == 0:
                wait = self._settings.idle_poll_s
                pending = self._outbox.depth_now()
                for kind, state in self._kinds.items():
                    if pending.get(kind) and state.retry_at > loop.time():
                        wait = min(wait, state.retry_at - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._outbox.wait_for_put(mark)

    def _limits(self, client: _Client, kind: str) -> tuple[int, int]:
        """(hard, soft) payload limits for `kind` on this connection. Over `hard` a message can
        never be sent: `max_payload_bytes`, or less when the broker announced a Maximum Packet
        Size in its CONNACK. `soft` is lower once the link learned that the broker drops
        connections over smaller messages (see `payload_cap`)."""
        hard = self._settings.max_payload_bytes
        if client.max_packet_size is not None:
            overhead = PUBLISH_OVERHEAD + len(self._topics[kind].encode("utf-8"))
            hard = min(hard, client.max_packet_size - overhead)
        return hard, min(hard, self.payload_cap)

    async def _publish_kind(self, client: _Client, kind: str) -> int:
        """One pass over `kind`; returns rows acknowledged or dead-lettered (0: nothing to do,
        or the kind is backing off)."""
        state = self._kinds[kind]
        progress = 0
        if state.condemned:
            head = sorted(state.head)
            log.error(
                "%d %s row(s) failed %d times (%s), the broker takes other %s messages and"
                " they failed once more: moving them to the dead-letter table",
                len(head),
                kind,
                state.strikes + 1,
                state.reason,
                kind,
            )
            reason = f"failed {state.strikes + 1} times: {state.reason}"
            await self._dead_letter(kind, dict.fromkeys(head, reason), announce=True)
            self._kinds[kind] = state = _KindState()
            progress += len(head)
        messages, dropped = await self._outgoing(client, kind)
        progress += dropped
        probing = False
        if state.probe and messages:
            # The head failed `dead_letter_after` times: is it the message or the topic? Send
            # the next message of the kind first: if the broker takes that one, the head's rows
            # go to the dead-letter table; if it refuses it too, everything stays.
            others = [m for m in messages if not state.head.intersection(r.id for r in m.rows)]
            if others:
                messages, probing = others, True
                self._stats.probes += 1
        for message in messages:
            if not await self._publish_message(client, message, probing=probing):
                break
            if message.last_part:
                await self._acked(kind, list(message.rows))
                progress += len(message.rows)
            if probing:  # the head's turn again: its last chance
                progress += 1
                break
        return progress

    async def _publish_message(self, client: _Client, m: _Outgoing, *, probing: bool) -> bool:
        """Publish one message; False when the broker refused it (the rows stay)."""
        self._flight = m
        try:
            await self._sender.send(
                client, m.kind, self._topics[m.kind], m.payload, need_subscriber=True
            )
        except PublishRefused as exc:
            self._flight = None
            await self._refused(m, exc, probing=probing)
            return False
        self._flight = None
        state = self._kinds[m.kind]
        refusals, state.refusals, state.retry_at = state.refusals, 0, 0.0
        if probing:
            # Not condemned yet: the broker may only just have started to take this topic
            # (an ACL fixed meanwhile). The head is tried once more, and goes if it fails.
            state.probe, state.last_chance = False, True
            log.warning(
                "the broker took the %s message after one that failed %d times (%s): trying"
                " that one a last time",
                m.kind,
                state.strikes,
                state.reason,
            )
        elif m.key == state.head_key or not state.head.intersection(r.id for r in m.rows):
            # (not when another part of a report whose part was refused went through)
            self._kinds[m.kind] = _KindState()
        if refusals:
            log.info("%s messages accepted again after %d failed attempt(s)", m.kind, refusals)
        return True

    async def _refused(self, m: _Outgoing, exc: PublishRefused, *, probing: bool) -> None:
        state = self._kinds[m.kind]
        self._stats.bump(self._stats.refused, m.kind)
        code = exc.reason.value
        if code in TRANSIENT_REFUSALS:
            pass  # a rate limit, nobody subscribed yet: it passes, the message is not to blame
        elif probing:
            # the next message was refused as well: the topic, not the head, is refused
            # (an ACL); every row stays, and the next probe is `dead_letter_after` refusals away
            state.probe, state.strikes = False, 0
            log.log(
                logging.DEBUG if state.topic_refused else logging.ERROR,
                "the broker refuses every %s message (%s), not just one: the rows stay in the"
                " outbox until it takes them",
                m.kind,
                exc.reason,
            )
            state.topic_refused = True
        elif state.last_chance and state.head == frozenset(r.id for r in m.rows):
            state.condemned = True
        else:
            self._strike(m, f"PUBACK {exc.reason} (0x{code:02X})")
        if state.refusals == 0 and code == NO_SUBSCRIBERS:
            log.warning(
                "no central instance is subscribed to %s messages (a broker restart before the"
                " centre reconnected, or the centre is down): the rows stay in the outbox,"
                " retried with backoff",
                m.kind,
            )
        elif state.refusals == 0:
            log.error(
                "%s; the %s rows stay in the outbox, retried with backoff (other kinds go on)",
                exc,
                m.kind,
            )
        self._back_off(m.kind)

    def _strike(self, m: _Outgoing, reason: str) -> None:
        """The broker will not take this message (a non-transient refusal, or the connection
        died under it twice). A readings batch is halved until the row it objects to is
        alone; a message of one row counts strikes, and at `dead_letter_after` the next
        message of its kind is sent first as a probe."""
        state = self._kinds[m.kind]
        state.reason = reason
        if m.kind == "readings" and len(m.rows) > 1:
            state.row_limit = max(1, len(m.rows) // 2)
            return
        ids = frozenset(r.id for r in m.rows)
        if ids != state.head:  # (a probe that fails in turn becomes the head)
            state.head, state.strikes, state.probe, state.last_chance = ids, 0, False, False
        state.head_key = m.key
        state.strikes += 1
        if state.strikes >= self._settings.dead_letter_after:
            state.probe = True

    def _back_off(self, kind: str) -> None:
        state = self._kinds[kind]
        delay = backoff_delay(
            state.refusals,
            self._settings.reconnect_min_s,
            self._settings.reconnect_max_s,
            self._rng,
        )
        state.refusals += 1
        state.retry_at = asyncio.get_running_loop().time() + delay

    def connection_lost(self) -> None:
        """The connection died. If it died twice in a row under the same outbox message, the
        broker probably drops messages that large (Mosquitto's ``message_size_limit`` closes
        the connection instead of refusing the PUBLISH): halve the payload cap if the message
        can be split, else count it against the message and let the other kinds go first."""
        m, self._flight = self._flight, None
        previous, self._suspect = self._suspect, (m.key if m is not None else None)
        if m is None:
            return
        state = self._kinds[m.kind]
        if state.last_chance and state.head == frozenset(r.id for r in m.rows):
            state.condemned = True  # after a probe went through: it is the message
            return
        if m.key != previous:
            return
        self._suspect = None
        size = len(m.payload)
        if m.units > 1 and size > MIN_PAYLOAD_BYTES:
            self.payload_cap = min(self.payload_cap, max(MIN_PAYLOAD_BYTES, size // 2))
            log.warning(
                "the connection was lost twice in a row while a %d-byte %s message was in"
                " flight: sending at most %d bytes per message from now on (does the broker"
                " limit message sizes? set max_payload_bytes below its limit)",
                size,
                m.kind,
                self.payload_cap,
            )
            return
        self._strike(m, f"the connection was lost twice while this {size}-byte message was sent")
        self._back_off(m.kind)

    async def _outgoing(self, client: _Client, kind: str) -> tuple[list[_Outgoing], int]:
        """The next messages of `kind` (oldest rows first), and how many rows were
        dead-lettered on the way (invalid, or too large to ever be sent)."""
        state = self._kinds[kind]
        if kind == "readings":
            return await self._readings_out(client, state.row_limit or self._settings.batch_size)
        rows = await self._outbox.peek_rows(kind, self._settings.batch_size)
        hard, soft = self._limits(client, kind)
        messages, bad = _row_messages(kind, rows, self._concentrator, hard=hard, soft=soft)
        if bad:
            await self._dead_letter(kind, bad, announce=kind != "events")
        return messages, len(bad)

    async def _readings_out(self, client: _Client, limit: int) -> tuple[list[_Outgoing], int]:
        rows = await self._outbox.peek_rows("readings", self._settings.batch_size)
        state = self._kinds["readings"]
        hard, soft = self._limits(client, "readings")
        epoch = self._outbox.epoch
        chosen, bad = _readings_batch(
            rows,
            epoch,
            self._concentrator,
            skip=state.head if state.probe else frozenset(),
            limit=limit,
            hard=hard,
            soft=soft,
        )
        if bad:
            await self._dead_letter("readings", bad, announce=True)
        if not chosen:
            return [], len(bad)
        return [_readings_outgoing(chosen, epoch, self._concentrator)], len(bad)

    async def _dead_letter(self, kind: str, bad: dict[int, str], *, announce: bool) -> None:
        """Move rows out of the queue for good (kept for inspection, counted, logged) and, if
        `announce`, tell the centre with an ``outbox_dead_letter`` event (never for events
        rows: an event about a dead event could be refused and dead-lettered in turn)."""
        for row_id, reason in bad.items():
            await self._outbox.dead_letter([row_id], reason)
        self._stats.dead_lettered += len(bad)
        if announce and kind != "events":
            reasons = sorted(set(bad.values()))
            detail = {"kind": kind, "rows": len(bad), "reason": reasons[0][:500]}
            if len(reasons) > 1:
                detail["other_reasons"] = len(reasons) - 1
            await self._outbox.put(
                "events", {"at": _now_iso(), "event": "outbox_dead_letter", "detail": detail}
            )
        self._on_progress()

    async def _acked(self, kind: str, rows: list[OutboxRow]) -> None:
        """The broker acknowledged `rows`: count them as published, then forget them. Counted
        first: the count is the broker's word, and a stop that cancels the wait for the outbox
        (the rows may already be forgotten) must not lose it."""
        now = common.clock.current().time()
        ages = [max(0.0, now - r.created_at) for r in rows]
        self.publish_latency_s = max(ages)
        total = self.publish_latency_avg_s * self._latency_rows + sum(ages)
        self._latency_rows += len(rows)
        self.publish_latency_avg_s = total / self._latency_rows
        self._stats.bump(self._stats.published_rows, kind, len(rows))
        while True:
            try:
                await self._outbox.ack([r.id for r in rows])
                break
            except StorageFull:
                # the broker has them but the disk has no room to forget them (said by the
                # storage watch): wait rather than send them again
                await asyncio.sleep(ACK_RETRY_S)
        self._on_progress()
