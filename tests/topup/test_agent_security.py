"""The agent's ``security`` command against simulated prepaid meters, in-process (the agent's
clock is the simulator's world clock, so sessions expire without waiting): the 03H steps with
the machine's bytes relayed verbatim, the validity rules, SERR to reasons, read-back, 1CH."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from central.topup.steps import (
    Verdict,
    auth_end_step,
    auth_step,
    auth_validity_step,
    open_step,
    parse_security_reply,
    read_step,
    readback_step,
    reconcile,
    relay_step,
    security_args,
    status_step,
    topup_step,
    write_step,
)
from protocols.payloads import FailureReason
from protocols.tariff import Period, TouSet
from protocols.tariff_write import machine_plaintext, writable_items
from protocols.topup import SecurityReason, relay_plaintext
from tests.topup.helpers import Executor, LocalHsm, security_agent
from tests.topup.service_stack import fleet_text

START = dt.datetime(2026, 3, 10, 10, 0, 0)
LOCAL = "000000000001"
LOCAL2 = "000000000002"
REMOTE = "000000000011"
OLD = "000000000021"
FLEET = fleet_text(
    local=2,
    first=LOCAL,
    remote_first=REMOTE,
    seed=3,
    balance_yuan=100,
    head=f'start = "{START.isoformat()}"\nfrozen = true',
) + (  # and a DL/T 645-1997 meter
    f"""    [[district.bus.meters]]
    first_address = "{OLD}"
    models = {{ DDS1997 = 1 }}
"""
)


@pytest.fixture
async def agent(tmp_path: Path) -> Any:
    async with security_agent(FLEET, tmp_path) as executor:
        yield executor


REMOTE_ITEMS = ["04000503", "02800022"]  # a remote meter answers no purchase items


async def _auth(run: Executor, hsm: LocalHsm, meter: str, **extra: Any) -> Any:
    auth = await hsm.identity_auth(meter)
    items = REMOTE_ITEMS if meter == REMOTE else read_step()["items"]
    reply = await run(
        "security", meter, security_args([auth_step(auth), read_step(items)], **extra)
    )
    result = parse_security_reply(reply)
    assert result.ok, reply
    return auth, result


async def test_local_top_up_end_to_end(agent: Executor) -> None:
    """auth + read → HSM InCreasePurse with random-2 → topup + read → confirmed by read-back."""
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    meter = fleet.meter(LOCAL)
    wallet = meter.wallet
    assert wallet is not None
    accepted = fleet.world.now()
    auth, first = await _auth(agent, hsm, LOCAL)
    state = first.purchase_state()
    n = state.purchase_count
    assert n == wallet.purchase_count
    assert state.local_prepaid is True
    assert state.session_remaining_min == 5
    assert meter.esam is not None
    assert first.esam_serial == meter.esam.serial
    # the auth step relayed the machine's bytes verbatim: they are in the request frame
    tx = first.step("auth").frames[0]["hex"].replace(" ", "")
    scrambled = bytes((b + 0x33) & 0xFF for b in auth.data).hex().upper()
    assert scrambled in tx
    assert first.session is not None
    assert first.session["random2"] == first.random2.hex().upper()

    macs = await hsm.increase_purse(
        LOCAL, first.random2, amount_fen=5000, purchase_count=n + 1, customer=wallet.customer_number
    )
    reply = await agent(
        "security",
        LOCAL,
        security_args([topup_step(macs), read_step(), status_step()], session=first.random2),
    )
    result = parse_security_reply(reply)
    assert result.ok, reply
    topup = result.step("topup")
    assert topup is not None
    assert topup.request == {
        "amount_fen": 5000,
        "purchase_count": n + 1,
        "customer": wallet.customer_number,
    }
    assert [f["dir"] for f in topup.frames] == ["tx", "rx"]
    assert bytes((b + 0x33) & 0xFF for b in macs.data).hex().upper() in topup.frames[0][
        "hex"
    ].replace(" ", "")
    state = result.purchase_state()
    assert (state.purchase_count, state.last_amount_fen) == (n + 1, 5000)
    assert (
        reconcile(state, target_count=n + 1, amount_fen=5000, accepted_at=accepted)
        is Verdict.CONFIRMED
    )
    # the status query's MACs verify at the machine with random-1 of this session
    status = result.step("status")
    assert status is not None
    remaining = status.reply["remaining_fen"]
    assert await hsm.mac_check(
        LOCAL, auth.random1, remaining.to_bytes(4, "little"), bytes.fromhex(status.reply["mac1"])
    )
    assert not await hsm.mac_check(
        LOCAL,
        auth.random1,
        (remaining + 1).to_bytes(4, "little"),
        bytes.fromhex(status.reply["mac1"]),
    )
    # every frame of every step is in the reply's audit trail, in order
    assert reply["frames"] == [f for s in reply["result"]["steps"] for f in s["frames"]]
    assert [(c.meter, c.purchase_count, c.source) for c in fleet.credits.records()] == [
        (LOCAL, n + 1, "remote")
    ]


async def test_refused_not_sent_deadline_and_sessions(agent: Executor) -> None:
    """A command past its not_after, or whose session expired / was superseded / is unknown,
    is refused and nothing reaches the meter."""
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    wallet = fleet.meter(LOCAL).wallet
    assert wallet is not None
    n, customer = wallet.purchase_count, wallet.customer_number
    now = agent.sa.ctx.clock.now()
    heard = len(fleet.recorder)

    auth = await hsm.identity_auth(LOCAL)
    late = await agent(
        "security", LOCAL, security_args([auth_step(auth)], not_after=now - dt.timedelta(seconds=1))
    )
    assert (late["ok"], late["reason"]) == (False, "deadline_passed")
    assert late["frames"] == []
    assert late["result"]["steps"][0]["sent"] is False
    assert len(fleet.recorder) == heard  # the meter heard nothing

    # no session known to the agent (never authenticated here, or an agent restart)
    macs = await hsm.increase_purse(
        LOCAL, b"\0" * 4, amount_fen=100, purchase_count=n + 1, customer=customer
    )
    reply = await agent("security", LOCAL, security_args([topup_step(macs)], session=b"\0" * 4))
    assert reply["reason"] == "no_session"

    _, first = await _auth(agent, hsm, LOCAL)
    macs = await hsm.increase_purse(
        LOCAL, first.random2, amount_fen=100, purchase_count=n + 1, customer=customer
    )
    # superseded: another auth since
    _, second = await _auth(agent, hsm, LOCAL)
    heard = len(fleet.recorder)
    reply = await agent(
        "security",
        LOCAL,
        security_args([topup_step(macs), read_step(["03330201"])], session=first.random2),
    )
    result = parse_security_reply(reply)
    assert result.reason == "session_superseded"
    assert result.steps[0].sent is False
    assert result.steps[1].ok  # reads still go: the read-back that settles things
    assert len(fleet.recorder) == heard + 1
    # expired: 5 minutes after the auth was sent
    macs = await hsm.increase_purse(
        LOCAL, second.random2, amount_fen=100, purchase_count=n + 1, customer=customer
    )
    fleet.world.advance(5 * 60)
    heard = len(fleet.recorder)
    reply = await agent(
        "security", LOCAL, security_args([topup_step(macs)], session=second.random2)
    )
    assert (reply["reason"], reply["frames"]) == ("session_expired", [])
    assert len(fleet.recorder) == heard
    assert wallet.purchase_count == n

    # a longer session set with 07 00 01 FF is honoured when the auth says so
    auth, third = await _auth(agent, hsm, LOCAL)
    data = await hsm.auth_validity(LOCAL, third.random2, 30)
    reply = await agent(
        "security", LOCAL, security_args([auth_validity_step(data)], session=third.random2)
    )
    assert reply["ok"], reply
    assert reply["result"]["steps"][0]["request"] == {"minutes": 30}
    _, fourth = await _auth(agent, hsm, LOCAL, not_after=None)
    assert fourth.session is not None
    assert dt.datetime.fromisoformat(fourth.session["expires_at"]) - dt.datetime.fromisoformat(
        fourth.session["started_at"]
    ) == dt.timedelta(minutes=5)  # the agent assumes 5 unless told
    auth = await hsm.identity_auth(LOCAL)
    reply = await agent("security", LOCAL, security_args([auth_step(auth, session_minutes=30)]))
    fifth = parse_security_reply(reply)
    macs = await hsm.increase_purse(
        LOCAL, fifth.random2, amount_fen=100, purchase_count=n + 1, customer=customer
    )
    fleet.world.advance(10 * 60)
    reply = await agent("security", LOCAL, security_args([topup_step(macs)], session=fifth.random2))
    assert reply["ok"], reply


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"steps": []}, "non-empty"),
        ({"steps": [{"op": "explode"}]}, "op: one of"),
        ({"steps": [{"op": "topup", "data": "00"}]}, "22 bytes"),
        ({"steps": [{"op": "topup", "data": "00" * 22}]}, "args.session"),
        (
            {
                "steps": [{"op": "auth", "data": "00" * 24}, {"op": "topup", "data": "00" * 22}],
                "session": "00000000",
            },
            "cannot follow an auth",
        ),
        (
            {"steps": [{"op": "auth", "data": "00" * 24}, {"op": "auth", "data": "00" * 24}]},
            "one auth",
        ),
        ({"steps": [{"op": "read"}]}, "items"),
        ({"steps": [{"op": "read", "items": ["no_such_thing"]}]}, "no_such_thing"),
        ({"steps": [{"op": "status", "data": "00"}]}, "takes no data"),
        ({"steps": [{"op": "status"}], "not_after": "2026-03-10T10:00:00"}, "UTC offset"),
        (
            {
                "steps": [{"op": "topup", "data": "00" * 12 + "FF" * 6 + "00" * 4}],
                "session": "00000000",
            },
            "not BCD",
        ),
    ],
)
async def test_invalid_commands_are_refused_as_a_whole(
    agent: Executor, args: dict[str, Any], message: str
) -> None:
    heard = len(agent.sa.fleet.recorder)
    reply = await agent("security", LOCAL, args)
    assert (reply["ok"], reply["reason"]) == (False, "invalid")
    assert message in reply["detail"]
    assert len(agent.sa.fleet.recorder) == heard


async def test_only_2007_meters_of_the_archive(agent: Executor) -> None:
    reply = await agent("security", OLD, {"steps": [{"op": "status"}]})
    assert (reply["reason"], "2007" in reply["detail"]) == ("invalid", True)
    reply = await agent("security", "000000000099", {"steps": [{"op": "status"}]})
    assert reply["reason"] == "invalid"


async def test_meter_refusals_map_to_reasons_and_stop_the_writes(agent: Executor) -> None:
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    meter = fleet.meter(LOCAL)
    wallet = meter.wallet
    assert wallet is not None
    n, customer = wallet.purchase_count, wallet.customer_number
    wallet.limits.hoarding_fen = 20000
    _, first = await _auth(agent, hsm, LOCAL)
    r2 = first.random2

    async def topup(amount: int, count: int, cust: str = customer) -> Any:
        macs = await hsm.increase_purse(
            LOCAL, r2, amount_fen=amount, purchase_count=count, customer=cust
        )
        reply = await agent(
            "security",
            LOCAL,
            security_args([topup_step(macs), read_step(["03330201"])], session=r2),
        )
        return parse_security_reply(reply)

    cases = [
        ((100, n + 2), SecurityReason.PURCHASE_COUNT_ERROR, 0x0020),
        ((100, n), SecurityReason.DUPLICATE_TOP_UP, 0x0002),
        ((100, n + 1, "999999999999"), SecurityReason.CUSTOMER_MISMATCH, 0x0010),
        ((50000, n + 1), SecurityReason.HOARDING_EXCEEDED, 0x0040),
    ]
    for call, reason, serr in cases:
        result = await topup(*call)
        assert (result.reason, result.steps[0].reason, result.steps[0].serr) == (
            reason.value,
            reason,
            serr,
        )
        assert result.steps[0].sent
        assert not result.steps[0].outcome_unknown
        assert result.steps[1].ok  # the read-back ran after the refusal
        assert result.purchase_state().purchase_count == n
    # MACs of another session: ESAM failure
    other = await hsm.increase_purse(
        LOCAL, b"\x01\x02\x03\x04", amount_fen=100, purchase_count=n + 1, customer=customer
    )
    reply = await agent(
        "security",
        LOCAL,
        security_args(
            [topup_step(other), relay_step(b"\0" * 20), read_step(["03330201"])], session=r2
        ),
    )
    result = parse_security_reply(reply)
    assert [s.reason for s in result.steps] == [
        SecurityReason.ESAM_FAILED,
        SecurityReason.NOT_SENT,
        None,
    ]
    assert result.steps[1].sent is False
    # a remote-prepaid meter refuses 03H top-up with SERR 0001
    _, remote = await _auth(agent, hsm, REMOTE)
    assert remote.purchase_state().local_prepaid is False
    macs = await hsm.increase_purse(
        REMOTE, remote.random2, amount_fen=100, purchase_count=1, customer=customer
    )
    reply = await agent(
        "security", REMOTE, security_args([topup_step(macs)], session=remote.random2)
    )
    assert reply["reason"] == SecurityReason.OTHER.value == "security_other"
    assert wallet.purchase_count == n


async def test_account_opening_status_readback_and_auth_end(agent: Executor) -> None:
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    wallet = fleet.meter(LOCAL2).wallet
    assert wallet is not None
    wallet.opened = False
    wallet.purchase_count = 0
    _, first = await _auth(agent, hsm, LOCAL2)
    macs = await hsm.open_account(
        LOCAL2, first.random2, amount_fen=3000, purchase_count=1, customer="000000123456"
    )
    reply = await agent(
        "security",
        LOCAL2,
        security_args(
            [open_step(macs), status_step(), readback_step(), auth_end_step()],
            session=first.random2,
        ),
    )
    result = parse_security_reply(reply)
    assert result.ok, reply
    status, readback, end = result.step("status"), result.step("readback"), result.step("auth_end")
    assert status is not None
    assert readback is not None
    assert end is not None
    assert (status.reply["purchase_count"], status.reply["customer"]) == (1, "000000123456")
    assert readback.reply["purchase_count"] == 1
    assert readback.reply["mac2"] == status.reply["mac2"]
    assert end.reply["customer"] == "000000123456"
    assert result.session is None  # 身份认证失效 ended it, and the agent knows


async def test_secure_relay_on_remote_and_local_meters(agent: Executor) -> None:
    """1CH level 98 with the machine's UserControl ciphertext: on a remote meter every trip and
    close; on a local meter a remote trip survives a credit and needs its 1B."""
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    until = START + dt.timedelta(minutes=30)
    words = ["04000503", "1D000001", "1E000001"]

    async def relay(meter: str, action: str) -> Any:
        _, a = await _auth(agent, hsm, meter)
        assert a.esam_serial is not None
        cipher = await hsm.user_control(
            meter, a.random2, a.esam_serial, relay_plaintext(action, until)
        )
        reply = await agent(
            "security",
            meter,
            security_args([relay_step(cipher), read_step(words)], session=a.random2),
        )
        return parse_security_reply(reply)

    result = await relay(REMOTE, "trip")
    assert result.ok
    state = result.purchase_state()
    assert (state.relay_open, state.relay_command_open) == (True, True)
    result = await relay(REMOTE, "direct_close")
    assert result.purchase_state().relay_open is False
    items = result.step("read").items if result.step("read") else {}
    assert items["1D000001"]["values"]["relay_trip_count"]["value"] == 1
    assert items["1E000001"]["values"]["relay_close_count"]["value"] == 1
    reply = await agent("security", REMOTE, {"steps": [read_step(["1D00FF01", "1E00FF01"])]})
    records = parse_security_reply(reply).steps[0].items
    trip = records["1D00FF01"]["values"]["relay_event_time"]["value"]
    close = records["1E00FF01"]["values"]["relay_event_time"]["value"]
    assert trip == close == START.isoformat()  # the world clock stands still here

    meter = fleet.meter(LOCAL)
    wallet = meter.wallet
    assert wallet is not None
    assert (await relay(LOCAL, "trip")).ok
    _, a = await _auth(agent, hsm, LOCAL)
    macs = await hsm.increase_purse(
        LOCAL,
        a.random2,
        amount_fen=5000,
        purchase_count=wallet.purchase_count + 1,
        customer=wallet.customer_number,
    )
    reply = await agent(
        "security", LOCAL, security_args([topup_step(macs), read_step()], session=a.random2)
    )
    state = parse_security_reply(reply).purchase_state()
    assert (state.relay_open, state.relay_command_open) == (True, True)  # credited, still cut off
    allowed = await relay(LOCAL, "close_allowed")
    state = allowed.purchase_state()
    assert (state.relay_open, state.relay_command_open) == (True, False)  # waits for the button
    assert meter.press_button()
    # a ciphertext for another session is refused by the meter: relay_refused
    _, a = await _auth(agent, hsm, LOCAL)
    stale = await hsm.user_control(
        LOCAL, b"\x09\x09\x09\x09", a.esam_serial or b"", relay_plaintext("trip", until)
    )
    reply = await agent("security", LOCAL, security_args([relay_step(stale)], session=a.random2))
    assert reply["reason"] == "relay_refused"
    assert not meter.relay.open


async def test_chaos_primitives_as_the_agent_sees_them(agent: Executor) -> None:
    """topup-tariff.md §E, seen through the agent: what the step says, what the read-back in
    the same command shows."""
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    wallet = fleet.meter(LOCAL).wallet
    assert wallet is not None
    customer = wallet.customer_number
    accepted = fleet.world.now()

    async def attempt(amount: int) -> Any:
        n = wallet.purchase_count
        _, a = await _auth(agent, hsm, LOCAL)
        macs = await hsm.increase_purse(
            LOCAL, a.random2, amount_fen=amount, purchase_count=n + 1, customer=customer
        )
        reply = await agent(
            "security", LOCAL, security_args([topup_step(macs), read_step()], session=a.random2)
        )
        return n, parse_security_reply(reply)

    # §E #1 reply lost after the credit: no_reply, read-back count n+1 and amount → confirmed
    fleet.inject(LOCAL, "drop_reply", on="topup")
    n, result = await attempt(1100)
    step = result.steps[0]
    assert (step.reason, step.sent, step.outcome_unknown) == (FailureReason.NO_REPLY, True, True)
    assert (
        reconcile(
            result.purchase_state(), target_count=n + 1, amount_fen=1100, accepted_at=accepted
        )
        is Verdict.CONFIRMED
    )
    # §E #2 request lost: no_reply, count n → resend (a new auth, new MACs)
    fleet.inject(LOCAL, "drop_request", on="topup")
    n, result = await attempt(1200)
    assert result.steps[0].reason is FailureReason.NO_REPLY
    assert (
        reconcile(
            result.purchase_state(), target_count=n + 1, amount_fen=1200, accepted_at=accepted
        )
        is Verdict.RESEND
    )
    # §E #3 delivered past the session: SERR bit3, nothing credited → resend
    fleet.inject(LOCAL, "late", on="topup", late_s=400)
    n, result = await attempt(1300)
    assert result.steps[0].reason is SecurityReason.AUTH_FAILED
    assert result.purchase_state().purchase_count == n
    # §E #16 an error although the meter credited: read-back says confirmed
    fleet.inject(LOCAL, "error_after", on="topup")
    n, result = await attempt(1400)
    assert result.steps[0].reason is SecurityReason.OTHER
    assert (
        reconcile(
            result.purchase_state(), target_count=n + 1, amount_fen=1400, accepted_at=accepted
        )
        is Verdict.CONFIRMED
    )
    # §E #8 an out-of-band purchase first: 重复充值, and the last purchase is not this order's
    n = wallet.purchase_count
    _, a = await _auth(agent, hsm, LOCAL)
    macs = await hsm.increase_purse(
        LOCAL, a.random2, amount_fen=1500, purchase_count=n + 1, customer=customer
    )
    assert fleet.meter(LOCAL).card_purchase(2000) is not None
    reply = await agent(
        "security", LOCAL, security_args([topup_step(macs), read_step()], session=a.random2)
    )
    result = parse_security_reply(reply)
    assert result.steps[0].reason is SecurityReason.DUPLICATE_TOP_UP
    assert (
        reconcile(
            result.purchase_state(), target_count=n + 1, amount_fen=1500, accepted_at=accepted
        )
        is Verdict.NEEDS_REVIEW
    )
    assert fleet.credits.repeated_counts() == []


async def test_sessions_are_per_meter(agent: Executor) -> None:
    """An authentication of one meter does not touch another's: the agent keys sessions by the
    meter's archive id."""
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    wallet = fleet.meter(LOCAL).wallet
    assert wallet is not None
    _, first = await _auth(agent, hsm, LOCAL)
    _, other = await _auth(agent, hsm, LOCAL2)
    assert other.session is not None
    assert other.session["random2"] != first.random2.hex().upper()
    macs = await hsm.increase_purse(
        LOCAL, first.random2, amount_fen=100, purchase_count=wallet.purchase_count + 1,
        customer=wallet.customer_number,
    )  # fmt: skip
    reply = await agent("security", LOCAL, security_args([topup_step(macs)], session=first.random2))
    assert reply["ok"], reply
    assert agent.run.security.sessions.get(LOCAL) is not None
    assert agent.run.security.sessions.get(LOCAL2) is not None


async def test_secure_tariff_write_with_read_back(agent: Executor) -> None:
    """14H level 98 (二类, ciphertext + MAC) and 99 (一类, plaintext + MAC) with the machine's
    ParameterUpdate bytes, session-bound like a top-up, read back raw in the same command; a
    write whose MAC is not the session's is refused by the meter (write_refused)."""
    fleet = agent.sa.fleet
    hsm = LocalHsm(fleet)
    meter = fleet.meter(LOCAL)
    assert meter.tariff is not None
    table = 0x04020002
    periods = (Period(0, 0, 4), Period(8, 0, 2), Period(21, 30, 3))
    first = meter.tariff.programmed.sets[0]
    target = replace(meter.tariff.programmed, sets=(first, TouSet(tables={2: periods})))
    value = writable_items(target)[table]
    _, a = await _auth(agent, hsm, LOCAL)
    data = await hsm.parameter_update(
        LOCAL, a.random2, table, machine_plaintext(table, value), cipher=True
    )
    # a write step needs the session it was made for
    reply = await agent("security", LOCAL, {"steps": [write_step(table, data, level=0x98)]})
    assert reply["reason"] == "invalid"
    reply = await agent(
        "security",
        LOCAL,
        security_args(
            [write_step(table, data, level=0x98), read_step([f"{table:08X}"])], session=a.random2
        ),
    )
    result = parse_security_reply(reply)
    assert result.ok, reply
    write = result.step("write")
    assert write is not None
    assert write.request == {"di": f"{table:08X}", "level": "98", "bytes": len(data)}
    assert [f["dir"] for f in write.frames] == ["tx", "rx"]
    read = result.step("read")
    assert read is not None
    assert read.items[f"{table:08X}"]["raw"] == value.hex().upper()
    # the same bytes with one MAC bit flipped: the ESAM refuses, nothing changes
    before = meter.tariff.programmed
    _, a = await _auth(agent, hsm, LOCAL)
    data = await hsm.parameter_update(
        LOCAL, a.random2, table, machine_plaintext(table, value[::-1]), cipher=True
    )
    bad = data[:-1] + bytes([data[-1] ^ 1])
    reply = await agent(
        "security",
        LOCAL,
        security_args(
            [write_step(table, bad, level=0x98), read_step([f"{table:08X}"])], session=a.random2
        ),
    )
    result = parse_security_reply(reply)
    assert reply["reason"] == SecurityReason.WRITE_REFUSED.value
    assert meter.tariff.programmed is before
    read = result.step("read")
    assert read is not None
    assert read.items[f"{table:08X}"]["raw"] == value.hex().upper()
