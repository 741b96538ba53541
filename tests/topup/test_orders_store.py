"""The order book on both store engines (SQLite, PostgreSQL): acceptance and idempotency,
the (meter, purchase count) refusal, one order in flight per meter in queue order, cancel only
before anything was sent, the audit trail, the daily ESAM count, deadlines, restarts."""

from __future__ import annotations

import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central.store import Store, open_store
from central.topup.orders import (
    ArchiveMeter,
    OrderBook,
    OrderCancelled,
    OrderError,
    State,
    load_archive,
)

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
T0 = 1_796_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/central.sqlite3"
    else:
        server = request.getfixturevalue("postgresql")
        url = server.create_database(f"topup_{uuid.uuid4().hex[:12]}")
    s = open_store(url)
    yield s
    s.close()


def book_of(store: Store, holder: str = "i-1") -> OrderBook:
    book = OrderBook(store, TZ, holder=holder, lease_s=60)
    book.migrate()
    book.set_archive(
        [ArchiveMeter(m, "c-1", f"{i:012d}", "local", "d", "acme", "DDZY666", 2015)
         for i, m in enumerate(("m1", "m2", "m3"), start=1)]
    )  # fmt: skip
    return book


def topup(order_id: str, meter: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "meter": meter, "customer": "1", "amount_fen": 100, **extra}


def test_acceptance_idempotency_and_refusals(store: Store) -> None:
    book = book_of(store)
    first = book.accept("topup", topup("a", purchase_count=5), now=T0, deadline=T0 + 60)
    assert (first.created, first.order.state, first.order.seq) == (True, State.ACCEPTED, 1)
    again = book.accept("topup", topup("a", purchase_count=5), now=T0 + 1, deadline=T0 + 61)
    assert (again.created, again.order.accepted_at) == (False, T0)
    with pytest.raises(OrderError) as conflict:
        book.accept("topup", topup("a", purchase_count=6), now=T0, deadline=T0 + 60)
    assert (conflict.value.status, conflict.value.code) == (409, "order_id_conflict")
    with pytest.raises(OrderError) as taken:
        book.accept("topup", topup("b", purchase_count=5), now=T0, deadline=T0 + 60)
    assert (taken.value.status, taken.value.code) == (409, "purchase_count_taken")
    with pytest.raises(OrderError) as unknown:
        book.accept("topup", topup("c", meter="nope"), now=T0, deadline=T0 + 60)
    assert unknown.value.code == "unknown_meter"
    with pytest.raises(OrderError):  # a relay order with a top-up's id
        book.accept("relay", {"order_id": "a", "meter": "m1", "action": "trip"}, now=T0,
                    deadline=T0 + 60)  # fmt: skip
    # a failed order frees its count
    order = book.get("a")
    assert order is not None
    book.update(order, now=T0 + 2, state=State.FAILED, reason="no_reply")
    assert book.accept("topup", topup("b", purchase_count=5), now=T0, deadline=T0 + 60).created


def test_one_order_in_flight_per_meter_in_queue_order(store: Store) -> None:
    book = book_of(store)
    book.accept("topup", topup("m1-late", purchase_count=9), now=T0, deadline=T0 + 600)
    book.accept("topup", topup("m1-early", purchase_count=8), now=T0 + 1, deadline=T0 + 600)
    book.accept("topup", topup("m1-nocount"), now=T0 + 2, deadline=T0 + 600)
    book.accept("topup", topup("m2-a", "m2"), now=T0 + 3, deadline=T0 + 600)
    claimed = book.claim(now=T0 + 5, limit=10)
    assert [o.order_id for o in claimed] == ["m1-early", "m2-a"]  # lowest count first
    assert all(o.state is State.QUEUED for o in claimed)
    assert book.claim(now=T0 + 5, limit=10) == []  # held
    other = book_of(store, holder="i-2")
    assert other.claim(now=T0 + 5, limit=10) == []  # another instance: held too
    early = claimed[0]
    book.update(early, now=T0 + 6, state=State.CONFIRMED)
    nxt = other.claim(now=T0 + 7, limit=10)
    assert [o.order_id for o in nxt] == ["m1-late"]
    # a waiting head blocks its meter's queue until its next_at
    book.release(claimed[1], now=T0 + 8, state=State.QUEUED, next_at=T0 + 100)
    assert [o.order_id for o in book.claim(now=T0 + 9, limit=10)] == []
    # at T0 + 100 m2-a's wait is over, and i-2's lease on m1-late (60 s) ran out (an instance
    # that died): taken over
    assert [o.order_id for o in book.claim(now=T0 + 100, limit=10)] == ["m1-late", "m2-a"]
    assert book.release_own() == 2
    assert book.next_wake() is not None


def test_cancel_only_before_anything_was_sent(store: Store) -> None:
    book = book_of(store)
    book.accept("topup", topup("x"), now=T0, deadline=T0 + 60)
    book.accept("topup", topup("y", "m2"), now=T0, deadline=T0 + 60)
    (x,) = [o for o in book.claim(now=T0, limit=5) if o.order_id == "x"]
    cancelled = book.cancel("x", now=T0 + 1)  # claimed, but nothing sent yet
    assert cancelled.state is State.CANCELLED
    with pytest.raises(OrderCancelled):  # the executor's send is refused after it
        book.update(x, now=T0 + 2, touched=True)
    y = book.get("y")
    assert y is not None
    book.update(y, now=T0 + 1, touched=True, state=State.AUTHENTICATING)
    with pytest.raises(OrderError) as refused:
        book.cancel("y", now=T0 + 2)
    assert refused.value.code == "not_cancellable"
    with pytest.raises(OrderError) as missing:
        book.cancel("zz", now=T0)
    assert missing.value.status == 404


def test_audit_trail_esam_count_deadlines_and_outbox(store: Store) -> None:
    book = book_of(store)
    order = book.accept("topup", topup("e"), now=T0, deadline=T0 + 10).order
    book.record(order, at=T0 + 1, what="auth+readback", ok=True, reason=None, detail="",
                request={"steps": []}, reply={"frames": [{"dir": "tx", "hex": "68"}]},
                changes={"state": State.VERIFYING})  # fmt: skip
    book.record(order, at=T0 + 2, what="topup+readback", ok=False, reason="no_reply",
                detail="", request={}, reply={})  # fmt: skip
    trail = book.exchanges("e")
    assert [(e.n, e.what, e.ok) for e in trail] == [
        (1, "auth+readback", True), (2, "topup+readback", False)
    ]  # fmt: skip
    assert trail[0].view(TZ)["frames"] == [{"dir": "tx", "hex": "68"}]
    assert book.get("e").state is State.VERIFYING  # type: ignore[union-attr]
    assert [book.esam_failure("m1", "2026-12-03") for _ in range(3)] == [1, 2, 3]
    assert book.esam_failures_on("m1", "2026-12-03") == 3
    assert book.esam_failures_on("m1", "2026-12-04") == 0
    assert [o.order_id for o in book.expired(now=T0 + 10)] == ["e"]
    assert book.take_expired(order, now=T0 + 10)
    assert not book_of(store, "i-2").take_expired(order, now=T0 + 10)
    book.update(order, now=T0 + 11, state=State.FAILED, reason="deadline_passed")
    due = book.due_notifications(now=T0 + 11)
    assert [o.order_id for o in due] == ["e"]
    book.notified(due[0], now=T0 + 12, ok=False, error="HTTP 500", next_at=T0 + 20)
    assert book.due_notifications(now=T0 + 13) == []
    assert book.next_notification() == T0 + 20
    book.notified(due[0], now=T0 + 20, ok=True)
    assert book.due_notifications(now=T0 + 99) == []
    assert book.days() == [book.day_of(T0)]


def test_archive_file_is_checked() -> None:
    ok = load_archive([{"meter": "m", "concentrator": "c", "address": "000000000001",
                        "mode": "remote", "install_year": 2014}])  # fmt: skip
    assert ok[0].mode == "remote"
    for bad, words in (
        ({"meter": "m", "concentrator": "c", "address": "1", "mode": "local"}, "12-digit"),
        ({"meter": "m", "concentrator": "c", "address": "000000000001", "mode": "x"}, "mode"),
        (
            {
                "meter": "m",
                "concentrator": "c",
                "address": "000000000001",
                "mode": "local",
                "colour": 1,
            },
            "unknown keys",
        ),
        ({"concentrator": "c", "address": "000000000001", "mode": "local"}, "meter"),
    ):
        with pytest.raises(ValueError, match=words):
            load_archive([bad])


def _needs_review(book: OrderBook, order_id: str, *, at: float, **changes: Any) -> None:
    order = book.get(order_id)
    assert order is not None
    book.update(order, now=at, state=State.NEEDS_REVIEW, reason="outcome_unknown",
                reason_class="communication", touched=True, **changes)  # fmt: skip


def test_operator_retry_keeps_what_the_read_back_decides_on(store: Store) -> None:
    book = book_of(store)
    book.accept("topup", topup("r", purchase_count=7), now=T0, deadline=T0 + 60)
    _needs_review(
        book,
        "r",
        at=T0 + 60,
        uncertain=True,
        attempts=3,
        esam_failures=2,
        rechecks=1,
        result={"comm_failures": 4, "readback": {"purchase_count": 6}},
    )
    assert book.due_notifications(now=T0 + 60)  # needs_review is terminal: billing is told
    assert book.claim(now=T0 + 61, limit=5) == []  # terminal: never claimed
    order = book.retry("r", operator="alice", note="meter back online", now=T0 + 100,
                       deadline=T0 + 500)  # fmt: skip
    assert order.state is State.QUEUED
    got = book.get("r")
    assert got is not None
    # what the executor's read-back rule needs is kept; the per-order counts start again
    assert (got.purchase_count, got.touched, got.uncertain, got.credited) == (7, True, True, False)
    assert (got.esam_failures, got.rechecks, got.relay_tries, got.attempts) == (0, 0, 0, 3)
    assert got.result == {"readback": {"purchase_count": 6}}
    assert (got.deadline, got.next_at, got.finished_at) == (T0 + 500, T0 + 100, None)
    assert got.reason is None
    assert got.detail == "retried by alice: meter back online"
    assert book.due_notifications(now=T0 + 100) == []  # not terminal any more
    (trail,) = book.exchanges("r")
    assert (trail.what, trail.request["operator"], trail.reply["was"]["state"]) == (
        "operator:retry", "alice", "needs_review")  # fmt: skip
    # back in its meter's queue, claimed like any order (the executor reads back first)
    assert [o.order_id for o in book.claim(now=T0 + 100, limit=5)] == ["r"]
    with pytest.raises(OrderError) as twice:  # queued now: a second retry is refused
        book.retry("r", operator="bob", now=T0 + 101, deadline=T0 + 500)
    assert (twice.value.status, twice.value.code) == (409, "not_retryable")
    with pytest.raises(OrderError) as nobody:
        book.retry("r", operator="", now=T0 + 101, deadline=T0 + 500)
    assert nobody.value.status == 400
    with pytest.raises(OrderError) as missing:
        book.retry("zz", operator="alice", now=T0 + 101, deadline=T0 + 500)
    assert missing.value.status == 404


def test_operator_retry_of_failed_orders(store: Store) -> None:
    book = book_of(store)
    for oid, meter, cls in (("comm", "m1", "communication"), ("biz", "m2", "business")):
        book.accept("topup", topup(oid, meter, purchase_count=3), now=T0, deadline=T0 + 60)
        o = book.get(oid)
        assert o is not None
        book.update(o, now=T0 + 60, state=State.FAILED, reason="x", reason_class=cls)
    with pytest.raises(OrderError) as business:  # a permanent refusal is not retried
        book.retry("biz", operator="alice", now=T0 + 70, deadline=T0 + 200)
    assert business.value.code == "not_retryable"
    # billing resubmitted the purchase under another id (a failed order frees its count)
    book.accept("topup", topup("again", "m1", purchase_count=3), now=T0 + 65, deadline=T0 + 600)
    with pytest.raises(OrderError) as taken:
        book.retry("comm", operator="alice", now=T0 + 70, deadline=T0 + 200)
    assert (taken.value.status, taken.value.code) == (409, "purchase_count_taken")
    book.cancel("again", now=T0 + 71)
    # another order of the meter is being executed (held by an instance): not now
    book.accept("topup", topup("later", "m1", purchase_count=4), now=T0 + 71, deadline=T0 + 600)
    assert [o.order_id for o in book.claim(now=T0 + 71, limit=5)] == ["later"]
    with pytest.raises(OrderError) as busy:
        book.retry("comm", operator="alice", now=T0 + 72, deadline=T0 + 200)
    assert (busy.value.status, busy.value.code) == (409, "meter_busy")
    later = book.get("later")
    assert later is not None
    book.release(later, now=T0 + 72, next_at=T0 + 100)
    assert book.retry("comm", operator="alice", now=T0 + 72, deadline=T0 + 200).state is (
        State.QUEUED
    )
    # and the retried order, the lower count, is its meter's head again
    assert [o.order_id for o in book.claim(now=T0 + 100, limit=5)] == ["comm"]
    with pytest.raises(OrderError) as refused:  # and its count is held again
        book.accept("topup", topup("third", "m1", purchase_count=3), now=T0 + 73,
                    deadline=T0 + 600)  # fmt: skip
    assert refused.value.code == "purchase_count_taken"


def test_operator_close_needs_a_note_and_follows_the_credit(store: Store) -> None:
    book = book_of(store)
    book.accept("topup", topup("n", "m1"), now=T0, deadline=T0 + 60)
    book.accept("topup", topup("c", "m2"), now=T0, deadline=T0 + 60)
    book.accept("topup", topup("q", "m3"), now=T0, deadline=T0 + 60)
    _needs_review(book, "n", at=T0 + 60, uncertain=True)
    _needs_review(book, "c", at=T0 + 60, credited=True)  # restore_pending: on the meter
    with pytest.raises(OrderError) as no_note:
        book.close("n", operator="alice", note="  ", now=T0 + 70)
    assert no_note.value.status == 400
    with pytest.raises(OrderError) as active:
        book.close("q", operator="alice", note="x", now=T0 + 70)
    assert (active.value.status, active.value.code) == (409, "not_closable")
    failed = book.close("n", operator="alice", note="meter replaced; refund", now=T0 + 70)
    assert (failed.state, failed.reason, failed.reason_class) == (
        State.FAILED, "closed_by_operator", "business")  # fmt: skip
    assert failed.result["closed"]["uncertain"] is True
    confirmed = book.close("c", operator="bob", note="relay closed on site", now=T0 + 71)
    assert (confirmed.state, confirmed.reason_class) == (State.CONFIRMED, None)
    got = book.get("n")
    assert got is not None
    assert got.finished_at == T0 + 70
    assert got.detail.startswith("closed by")
    assert [e.what for e in book.exchanges("n")] == ["operator:close"]
    assert {o.order_id for o in book.due_notifications(now=T0 + 71)} == {"n", "c"}
    with pytest.raises(OrderError) as again:
        book.close("n", operator="alice", note="x", now=T0 + 72)
    assert again.value.code == "not_closable"
