"""Outbox rows as MQTT messages under the payload limits: an event or a round report per message
(a report too large for one in parts), readings batched by bytes. No I/O: rows that can never be
sent (invalid, or too large) are handed back, with why, for the dead-letter table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.mqtt.client import _header, _json_bytes, _now_iso
from agent.outbox import OutboxRow
from protocols.payloads import PayloadInvalid, validate


@dataclass(frozen=True)
class _Outgoing:
    """One message built from outbox rows."""

    kind: str
    key: str
    """names the message: the same rows (and part) give the same key"""
    payload: bytes
    rows: tuple[OutboxRow, ...]
    units: int
    """readings, or failed meters of a report part, it carries: more than 1 can be split"""
    last_part: bool = True
    """the rows are acknowledged after this message (a report's last part)"""


def _report_parts(message: dict[str, Any], cap: int) -> list[tuple[bytes, int]] | None:
    """A round report too large for one message, as parts of at most `cap` bytes: the same
    report, its `failed` list cut in order, each with ``part`` = {index (from 1), of,
    failed_total}; with each part's number of failed meters. None when that cannot be done
    (no failed meters to spread, or one alone is too large)."""
    failed = message["failed"]
    total = len(failed)
    # the envelope with part numbers as wide as any split of this report can have
    widest = {"index": max(total, 1), "of": max(total, 1), "failed_total": total}
    envelope = len(_json_bytes({**message, "failed": [], "part": widest}))
    chunks: list[list[Any]] = [[]]
    size = envelope
    for entry in failed:
        grow = len(_json_bytes(entry))
        if chunks[-1] and size + 1 + grow > cap:
            chunks.append([])
            size = envelope
        if chunks[-1]:
            grow += 1  # the comma
        if size + grow > cap:
            return None
        chunks[-1].append(entry)
        size += grow
    if len(chunks) < 2:
        return None
    n = len(chunks)
    return [
        (
            _json_bytes(
                {**message, "failed": chunk, "part": {"index": i, "of": n, "failed_total": total}}
            ),
            len(chunk),
        )
        for i, chunk in enumerate(chunks, 1)
    ]


def _row_messages(
    kind: str, rows: Sequence[OutboxRow], concentrator: str, *, hard: int, soft: int
) -> tuple[list[_Outgoing], dict[int, str]]:
    """Events or round reports, one row per message of at most `soft` bytes (a report over it
    in parts; anything else up to `hard`), and the rows that can never be sent, with why."""
    messages: list[_Outgoing] = []
    bad: dict[int, str] = {}
    for row in rows:
        message = {**row.payload, **_header(kind, concentrator)}
        try:
            validate(kind, message)
        except PayloadInvalid as exc:
            bad[row.id] = str(exc)
            continue
        payload = _json_bytes(message)
        if len(payload) <= soft:
            units = len(message["failed"]) if kind == "rounds" else 1
            messages.append(_Outgoing(kind, f"{kind}:{row.id}", payload, (row,), units))
            continue
        parts = _report_parts(message, soft) if kind == "rounds" else None
        if parts is None and len(payload) > hard:
            bad[row.id] = f"payload of {len(payload)} bytes is over the {hard} byte limit"
            continue
        if parts is None:  # over what the broker seems to take, under what it announced
            parts = [(payload, 1)]
        for i, (part, units) in enumerate(parts, 1):
            key = f"{kind}:{row.id}:{i}/{len(parts)}"
            messages.append(_Outgoing(kind, key, part, (row,), units, i == len(parts)))
    return messages, bad


def _readings_message(rows: Sequence[OutboxRow], epoch: str, concentrator: str) -> dict[str, Any]:
    # Same rows -> same id, so a batch re-sent after a lost PUBACK can be recognised. The
    # rows of one batch are all the readings left in [first, last] (peek takes the oldest,
    # dead letters are removed first, ids are never reused), so (first, last, count)
    # names the set; the epoch separates a rebuilt outbox file.
    ids = [r.id for r in rows]
    return {
        **_header("readings", concentrator),
        "batch_id": f"{epoch}:{ids[0]}-{ids[-1]}:{len(ids)}",
        "sent_at": _now_iso(),
        "readings": [r.payload for r in rows],
    }


def _readings_batch(
    rows: Sequence[OutboxRow],
    epoch: str,
    concentrator: str,
    *,
    skip: frozenset[int],
    limit: int,
    hard: int,
    soft: int,
) -> tuple[list[OutboxRow], dict[int, str]]:
    """The oldest readings that go in one message of at most `soft` bytes (at most `limit` of
    them, none of `skip`: the refused rows a probe goes past), and the rows that can never be
    sent (invalid, or alone over `hard`), with why."""
    if not rows:
        return [], {}
    message = _readings_message(rows, epoch, concentrator)
    bad: dict[int, str] = {}
    try:
        validate("readings", message)
    except PayloadInvalid:
        for row in rows:
            try:
                validate("readings", {**message, "readings": [row.payload]})
            except PayloadInvalid as exc:
                bad[row.id] = str(exc)
        rows = [r for r in rows if r.id not in bad]
    if skip and any(r.id not in skip for r in rows):
        rows = [r for r in rows if r.id not in skip]  # the probe: the rows after it
    rows = rows[:limit]
    # The batch as large as `soft` allows: the envelope (with an id at least as long as the
    # final one) plus each reading as it is encoded inside the message, comma separated.
    envelope = (
        len(_json_bytes({**_readings_message(rows, epoch, concentrator), "readings": []}))
        if rows
        else 0
    )
    size, taken = envelope, 0
    for row in rows:
        grow = len(_json_bytes(row.payload)) + (1 if taken else 0)
        if taken and size + grow > soft:
            break
        size += grow
        taken += 1
    if taken == 1 and size > hard:  # this reading alone can never be sent
        bad[rows[0].id] = f"a reading of {size} bytes is over the {hard} byte limit"
        taken = 0
    return list(rows[:taken]), bad


def _readings_outgoing(rows: Sequence[OutboxRow], epoch: str, concentrator: str) -> _Outgoing:
    """The readings message for the rows `_readings_batch` chose."""
    message = _readings_message(rows, epoch, concentrator)
    validate("readings", message)  # each reading passed alone: cannot fail together
    payload = _json_bytes(message)
    return _Outgoing("readings", message["batch_id"], payload, tuple(rows), len(rows))
