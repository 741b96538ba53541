"""The MQTT link against a real Mosquitto: store-and-forward across outages, retained status,
last will and archive, signed commands, refusals, drain; plus the pure signing code and the
published documentation (examples and JSON Schemas)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.mqtt import (
    MIN_PAYLOAD_BYTES,
    LinkSettings,
    MqttLink,
    PublishRefused,
    _Client,
    _report_parts,
    backoff_delay,
)
from agent.outbox import Outbox, OutboxRow
from central.points import Converted, convert
from common.mqtt import tls_context
from protocols.commands import (
    CommandRejected,
    NonceCache,
    canonical_json,
    check_fresh,
    new_command,
    sign_command,
    verify_command,
    verify_signature,
)
from protocols.payloads import SCHEMAS, validate
from tests.agent.helpers_mqtt import (
    ARCHIVE,
    CONCENTRATOR,
    KEY,
    Collector,
    Requester,
    big_round_report,
    eventually,
    fat_reading,
    local_mosquitto,
    make_link,
    make_pki,
    reading,
    reading_key,
    running,
)
from tests.conftest import REPO
from tests.fixtures.services import Mosquitto


class RecordingOutbox(Outbox):
    """Remembers every id the link acknowledges, to prove each row is acked exactly once."""

    def __init__(self, path: Path, *, max_bytes: int, eviction: str) -> None:
        super().__init__(path, max_bytes=max_bytes, eviction=eviction)
        self.acked: list[int] = []

    async def ack(self, ids: Sequence[int]) -> None:
        self.acked.extend(ids)
        await super().ack(ids)


def now() -> datetime:
    return datetime.now(UTC)


def command(**kw: Any) -> dict[str, Any]:
    return new_command(
        kw.pop("name", "read"),
        concentrator=kw.pop("concentrator", CONCENTRATOR),
        key=kw.pop("key", KEY),
        now=kw.pop("at", now()),
        meter="000000000001",
        args=kw.pop("args", {"items": ["energy_import_total_kwh"]}),
        **kw,
    )


# --- store and forward ------------------------------------------------------------------------
async def test_readings_put_during_an_outage_all_arrive_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.mqtt")
    with local_mosquitto(tmp_path, persistence=True) as broker:
        outbox = await RecordingOutbox.open(tmp_path / "outbox.db")
        link = make_link(broker, outbox, batch_size=50)
        try:
            async with (
                Collector(broker, client_id="centre-consumer", persistent=True) as centre,
                running(link),
            ):
                before = await outbox.put_many("readings", [reading(i) for i in range(120)])
                await eventually(lambda: len(centre.readings()) >= 120)

                await asyncio.to_thread(broker.stop)
                # the consumer's session (subscription + queue) must outlive the restart
                assert (tmp_path / "mosquitto.db").exists()
                await eventually(lambda: not link.connected)
                during = await outbox.put_many("readings", [reading(i) for i in range(120, 1120)])
                during.append(await outbox.put("rounds", round_report()))
                during.append(await outbox.put("events", {"at": now().isoformat(), "event": "x"}))
                # several failed attempts while the broker is away ...
                await eventually(lambda: link.stats.connect_failures >= 3)
                assert outbox.depth_now() == {
                    "readings": 1000,
                    "rounds": 1,
                    "events": 1,
                    "tariff": 0,
                }
                await asyncio.to_thread(broker.start)

                await eventually(lambda: sum(outbox.depth_now().values()) == 0, within=30)
                await eventually(lambda: len({reading_key(r) for r in centre.readings()}) == 1120)
                await eventually(
                    lambda: len(centre.of("rounds")) >= 1 and len(centre.of("events")) >= 1
                )
        finally:
            await outbox.close()

    put_ids = before + during
    assert sorted(outbox.acked) == sorted(put_ids)  # every row acked, none twice
    assert link.stats.published_rows == {"readings": 1120, "rounds": 1, "events": 1}
    assert link.reconnects >= 1
    # at-least-once: a batch whose PUBACK was lost in the outage is sent again with the same
    # batch_id; one message is in flight at a time, so at most one batch per reconnect
    seen = centre.readings()
    assert len(seen) - 1120 <= 50 * link.reconnects
    ids = [s.payload["batch_id"] for s in centre.of("readings")]
    assert all(re.fullmatch(r"[0-9a-f]{8}:\d+-\d+:\d+", i) for i in ids)
    assert centre.invalid == []
    assert link.publish_latency_avg_s > 0
    # ... but the state change was logged once, not per retry
    lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1
    assert any("connect attempt failed" in r.getMessage() for r in caplog.records)


class SlowAckOutbox(RecordingOutbox):
    """Forgets acknowledged readings, then holds the publisher there: a stop that comes while
    the outbox is still finishing an ack."""

    def __init__(self, path: Path, *, max_bytes: int, eviction: str) -> None:
        super().__init__(path, max_bytes=max_bytes, eviction=eviction)
        self.hold = asyncio.Event()
        self.readings: set[int] = set()

    async def ack(self, ids: Sequence[int]) -> None:
        await super().ack(ids)
        if self.readings.intersection(ids):
            await self.hold.wait()


async def test_rows_the_broker_acknowledged_are_counted_before_the_outbox_forgets_them(
    tmp_path: Path,
) -> None:
    """Run 7 of a campaign: the link was stopped while its publisher waited for the outbox to
    finish an ack; the batch had left the outbox, and its 50 rows were missing from
    `published_rows`."""
    with local_mosquitto(tmp_path) as broker:
        outbox = await SlowAckOutbox.open(tmp_path / "outbox.db")
        link = make_link(broker, outbox, batch_size=50)
        try:
            async with Collector(broker, client_id="centre-consumer"), running(link):
                ids = await outbox.put_many("readings", [reading(i) for i in range(20)])
                outbox.readings.update(ids)
                await eventually(lambda: outbox.depth_now()["readings"] == 0)
                assert sorted(outbox.acked) == sorted(ids)
                assert link.stats.published_rows == {"readings": 20}
        finally:
            outbox.hold.set()
            await outbox.close()
    assert link.stats.published_rows == {"readings": 20}


def round_report() -> dict[str, Any]:
    return {
        "plan": "daily",
        "round_id": "daily-2026-11-26",
        "data_day": "2026-11-25",
        "final": True,
        "started_at": "2026-11-26T00:05:00+08:00",
        "ended_at": "2026-11-26T00:31:00+08:00",
        "expected": 2,
        "read": 1,
        "failed": [{"meter": "000000000002", "reason": "no_reply", "attempts": 3}],
        "failed_by_reason": {"no_reply": 1},
    }


async def test_a_reading_that_cannot_validate_is_dead_lettered_not_blocking(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        Collector(mosquitto) as centre,
        running(make_link(mosquitto, outbox)) as link,
    ):
        bad = reading(5)
        bad["item"] = "Not An Item"
        ids = await outbox.put_many("readings", [reading(1), bad, reading(2)])
        bad_round = round_report()
        del bad_round["expected"]
        await outbox.put("rounds", bad_round)
        await outbox.put("rounds", round_report())
        await eventually(lambda: sum(outbox.depth_now().values()) == 0)
        await eventually(lambda: len(centre.readings()) == 2 and len(centre.of("rounds")) == 1)
        assert [r["item"] for r in centre.readings()] == ["daily_freeze"] * 2
        assert link.stats.dead_lettered == outbox.dead_letter_rows == 2
        letters = await outbox.dead_letters()
        assert {(kind, row_id) for row_id, kind, _, _ in letters} >= {("readings", ids[1])}
        assert all("invalid" in reason for _, _, reason, _ in letters)
        assert centre.invalid == []


async def test_a_refusing_puback_keeps_the_rows_until_the_broker_accepts(tmp_path: Path) -> None:
    deny_readings = (
        "topic read meterlink/v1/#\n"
        f"topic write meterlink/v1/{CONCENTRATOR}/status\n"
        f"topic write meterlink/v1/{CONCENTRATOR}/archive\n"
    )
    with local_mosquitto(tmp_path, acl=deny_readings) as broker:
        assert broker.acl_file is not None
        async with (
            await RecordingOutbox.open(tmp_path / "o.db") as outbox,
            Collector(broker) as centre,
            running(make_link(broker, outbox)) as link,
        ):
            await outbox.put_many("readings", [reading(i) for i in range(10)])
            await eventually(lambda: link.stats.publishes_refused >= 2)
            # aiomqtt's publish() returned normally for these PUBACKs (reason 0x87): the link
            # must not have taken that for delivery
            assert outbox.depth_now()["readings"] == 10
            assert outbox.acked == []
            assert centre.readings() == []

            broker.acl_file.write_text("topic readwrite #\n")
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL
            await eventually(lambda: outbox.depth_now()["readings"] == 0)
            await eventually(lambda: len(centre.readings()) == 10)
            assert len(outbox.acked) == 10


async def test_a_topic_the_broker_refuses_blocks_only_its_own_kind(tmp_path: Path) -> None:
    # the ACL lets the agent write everything but events: before, the refused events at the
    # head of every publisher pass kept readings and round reports from ever being sent
    deny_events = "topic read meterlink/v1/#\n" + "".join(
        f"topic write meterlink/v1/{CONCENTRATOR}/{kind}\n"
        for kind in ("status", "archive", "readings", "rounds")
    )
    with local_mosquitto(tmp_path, acl=deny_events) as broker:
        assert broker.acl_file is not None
        async with (
            await RecordingOutbox.open(tmp_path / "o.db") as outbox,
            Collector(broker) as centre,
            running(make_link(broker, outbox, dead_letter_after=2)) as link,
        ):
            events = [
                await outbox.put("events", {"at": now().isoformat(), "event": f"e{i}"})
                for i in range(3)
            ]
            await outbox.put_many("readings", [reading(i) for i in range(10)])
            await outbox.put("rounds", round_report())
            await eventually(lambda: len(centre.readings()) == 10 and len(centre.of("rounds")) == 1)
            # the events were refused again and again, and probed past: every message of the
            # topic is refused, so it is the topic (the ACL), not a message: all rows stay
            await eventually(lambda: link.stats.probes >= 2)
            assert link.stats.refused["events"] >= 4
            assert "readings" not in link.stats.refused
            assert outbox.depth_now() == {"readings": 0, "rounds": 0, "events": 3, "tariff": 0}
            assert link.stats.dead_lettered == outbox.dead_letter_rows == 0
            assert centre.of("events") == []

            broker.acl_file.write_text("topic readwrite #\n")
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: outbox.depth_now()["events"] == 0)
            # (a probe may have let e1 overtake e0; the broker took the probe, then e0 too)
            assert sorted(s.payload["event"] for s in centre.of("events")) == ["e0", "e1", "e2"]
            assert link.stats.dead_lettered == outbox.dead_letter_rows == 0
            assert set(events) <= set(outbox.acked)
            assert centre.invalid == []


class HoldingOutbox(RecordingOutbox):
    """Holds the publisher at its next look at a kind while `hold(kind)` is true, until
    `release` is set; `held` says it is holding."""

    def __init__(self, path: Path, *, max_bytes: int, eviction: str) -> None:
        super().__init__(path, max_bytes=max_bytes, eviction=eviction)
        self.hold: Callable[[str], bool] = lambda kind: False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def peek_rows(self, kind: str, limit: int) -> list[OutboxRow]:
        if self.hold(kind) and not self.release.is_set():
            self.held.set()
            await self.release.wait()
        return await super().peek_rows(kind, limit)


async def test_a_probe_the_broker_takes_once_its_acl_is_fixed_dead_letters_nothing(
    tmp_path: Path,
) -> None:
    # the head was refused because of the topic, and the ACL is fixed just before the probe:
    # the probe goes through, but the head gets a last chance before it is dead-lettered
    deny_events = "topic read meterlink/v1/#\n" + "".join(
        f"topic write meterlink/v1/{CONCENTRATOR}/{kind}\n" for kind in ("status", "archive")
    )
    with local_mosquitto(tmp_path, acl=deny_events) as broker:
        assert broker.acl_file is not None
        assert broker.proc is not None
        outbox = await HoldingOutbox.open(tmp_path / "o.db")
        link = make_link(broker, outbox, dead_letter_after=2)
        outbox.hold = lambda kind: kind == "events" and link._publisher._kinds["events"].probe
        try:
            async with Collector(broker) as centre, running(link):
                for i in range(3):
                    await outbox.put("events", {"at": now().isoformat(), "event": f"e{i}"})
                async with asyncio.timeout(30):
                    await outbox.held.wait()  # e0 was refused twice: the probe is next

                broker.acl_file.write_text("topic readwrite #\n")
                broker.proc.send_signal(signal.SIGHUP)
                await until_the_broker_takes_events(broker)
                outbox.release.set()

                await eventually(lambda: outbox.depth_now()["events"] == 0)
                await eventually(lambda: len(centre.of("events")) == 4)  # with the test's "ok"
        finally:
            await outbox.close()
    got = [s.payload["event"] for s in centre.of("events") if s.payload["event"] != "ok"]
    assert got == ["e1", "e0", "e2"]  # the probe overtook the head, which then went through
    assert link.stats.probes == 1
    assert link.stats.dead_lettered == outbox.dead_letter_rows == 0


async def until_the_broker_takes_events(broker: Mosquitto) -> None:
    """Publish to the events topic until the broker acknowledges it (its ACL was reloaded)."""
    message = {"schema": "meterlink.events/1", "concentrator": CONCENTRATOR, "event": "ok"}
    message["at"] = now().isoformat()
    async with _Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        async with asyncio.timeout(30):
            while True:
                try:
                    await client.publish_acked(
                        f"meterlink/v1/{CONCENTRATOR}/events",
                        json.dumps(message).encode(),
                        within_s=10,
                    )
                    return
                except PublishRefused:
                    await asyncio.sleep(0.05)


def _centre_view(centre: Collector) -> Converted:
    """What the central consumer makes of every rounds message received."""
    out = Converted()
    for seen in centre.of("rounds"):
        convert("rounds", seen.payload, out)
    return out


async def test_a_broker_message_size_limit_gets_every_reading_and_the_whole_report(
    tmp_path: Path,
) -> None:
    # Mosquitto 2.0.11 with message_size_limit drops the connection on a larger PUBLISH
    # (no refusing PUBACK): a 2048-meter round report (~600 KB) used to do that forever
    limit = 262144
    with local_mosquitto(tmp_path, extra=(f"message_size_limit {limit}",)) as broker:
        async with (
            await Outbox.open(tmp_path / "o.db", max_bytes=256 * 1024 * 1024) as outbox,
            Collector(broker) as centre,
            running(make_link(broker, outbox, batch_size=500)) as link,
        ):
            report = big_round_report(2048)
            await outbox.put("rounds", report)
            readings = [fat_reading(i) for i in range(1200)]  # ~1.2 KB each
            await outbox.put_many("readings", readings)
            await eventually(lambda: sum(outbox.depth_now().values()) == 0, within=60)
            await eventually(lambda: len(centre.readings()) == 1200)
            assert link.reconnects == 0  # nothing made the broker drop us
    assert {reading_key(r) for r in centre.readings()} == {reading_key(r) for r in readings}
    sizes = [s.size for s in centre.seen if s.kind in ("readings", "rounds")]
    assert max(sizes) <= limit == link.settings.max_payload_bytes
    assert len(centre.of("readings")) > 1200 // 500  # cut by bytes, not only by count
    # the report came in parts: same round, the failed meters split in order, nothing lost
    parts = [s.payload for s in centre.of("rounds")]
    assert len(parts) >= 3
    assert [p["part"] for p in parts] == [
        {"index": i, "of": len(parts), "failed_total": 2048} for i in range(1, len(parts) + 1)
    ]
    assert [f for p in parts for f in p["failed"]] == report["failed"]
    for p in parts:
        assert {k: v for k, v in p.items() if k not in ("failed", "part")} == {
            **{k: v for k, v in report.items() if k != "failed"},
            "schema": "meterlink.rounds/1",
            "concentrator": CONCENTRATOR,
        }
    # and the centre sees one round with 2048 failures, one failure fact per meter
    view = _centre_view(centre)
    rounds = [line for line in view.lines if line.startswith("round,")]
    assert len(set(rounds)) == 1  # every part writes the same point
    assert "failed=2048.0" in rounds[0]
    assert sorted(f.meter for f in view.failures) == sorted(f["meter"] for f in report["failed"])
    assert centre.invalid == []


async def test_a_broker_limit_below_max_payload_bytes_is_learned(tmp_path: Path) -> None:
    limit = 16384  # far below our default 256 KiB, and nobody told the agent
    with local_mosquitto(tmp_path, extra=(f"message_size_limit {limit}",)) as broker:
        async with (
            await Outbox.open(tmp_path / "o.db") as outbox,
            Collector(broker) as centre,
            running(make_link(broker, outbox, batch_size=500)) as link,
        ):
            report = big_round_report(300)  # ~90 KB
            await outbox.put("rounds", report)
            readings = [fat_reading(i) for i in range(600)]
            await outbox.put_many("readings", readings)
            await eventually(lambda: sum(outbox.depth_now().values()) == 0, within=120)
            await eventually(lambda: len(centre.readings()) == 600)
    assert link.reconnects >= 2  # it took dropped connections to learn the limit ...
    assert MIN_PAYLOAD_BYTES <= link.payload_cap <= limit  # ... which is now kept
    assert {reading_key(r) for r in centre.readings()} == {reading_key(r) for r in readings}
    parts = [s.payload for s in centre.of("rounds")]
    assert {f["meter"] for p in parts for f in p["failed"]} == {
        f["meter"] for f in report["failed"]
    }
    assert all(p["part"]["failed_total"] == 300 for p in parts if "part" in p)
    assert all(s.size <= limit for s in centre.seen if s.kind in ("readings", "rounds"))
    assert link.stats.dead_lettered == 0
    assert centre.invalid == []


async def test_the_brokers_maximum_packet_size_is_honoured(tmp_path: Path) -> None:
    # a broker that announces its limit in the CONNACK is never sent a larger packet
    limit = 20000
    with local_mosquitto(tmp_path, extra=(f"max_packet_size {limit}",)) as broker:
        async with (
            await Outbox.open(tmp_path / "o.db") as outbox,
            Collector(broker) as centre,
            running(make_link(broker, outbox, batch_size=500)) as link,
        ):
            await outbox.put("rounds", big_round_report(200))
            await outbox.put_many("readings", [fat_reading(i) for i in range(300)])
            await eventually(lambda: sum(outbox.depth_now().values()) == 0, within=60)
            await eventually(lambda: len(centre.readings()) == 300)
            assert link.reconnects == 0
    assert all(s.size < limit for s in centre.seen)
    assert len(centre.of("rounds")) > 1


async def test_a_message_that_keeps_killing_the_connection_is_dead_lettered(
    tmp_path: Path,
) -> None:
    # one event far over the broker's limit and impossible to split: it costs the connection
    # each time it is sent; the other kinds go first meanwhile, and once it has failed
    # `dead_letter_after` times and the next event goes through, it is moved aside
    with local_mosquitto(tmp_path, extra=("message_size_limit 8192",)) as broker:
        async with (
            await Outbox.open(tmp_path / "o.db") as outbox,
            Collector(broker) as centre,
            running(make_link(broker, outbox, dead_letter_after=2)) as link,
        ):
            huge = {"at": now().isoformat(), "event": "huge", "detail": {"blob": "x" * 20000}}
            huge_id = await outbox.put("events", huge)
            await outbox.put("events", {"at": now().isoformat(), "event": "small"})
            await outbox.put_many("readings", [reading(i) for i in range(5)])
            await eventually(lambda: len(centre.readings()) == 5, within=60)
            await eventually(lambda: outbox.dead_letter_rows == 1, within=60)
            await eventually(lambda: [s.payload["event"] for s in centre.of("events")] == ["small"])
            assert outbox.depth_now() == {"readings": 0, "rounds": 0, "events": 0, "tariff": 0}
            ((row_id, kind, reason, payload),) = await outbox.dead_letters()
    assert (row_id, kind, payload) == (huge_id, "events", huge)
    assert "connection was lost" in reason
    assert link.reconnects >= 4
    assert link.stats.probes >= 1
    assert link.stats.dead_lettered == 1
    assert link.payload_cap == link.settings.max_payload_bytes  # not a size problem to learn


def test_round_report_parts_stay_under_the_cap_and_keep_every_failed_meter() -> None:
    report = {**big_round_report(500), "schema": "meterlink.rounds/1", "concentrator": "c-001"}
    for cap in (8192, 50000, 100000):
        parts = _report_parts(report, cap)
        assert parts is not None
        payloads = [json.loads(p) for p, _ in parts]
        assert all(len(p) <= cap for p, _ in parts)
        assert [n for _, n in parts] == [len(p["failed"]) for p in payloads]
        assert [f for p in payloads for f in p["failed"]] == report["failed"]
        assert [p["part"]["index"] for p in payloads] == list(range(1, len(parts) + 1))
        for p in payloads:
            validate("rounds", p)
    one = len(json.dumps(report["failed"][0])) + 100
    assert _report_parts(report, one) is None  # one failed meter alone does not fit
    assert _report_parts({**report, "failed": []}, 1000) is None


# --- retained status, last will, archive ------------------------------------------------------
async def test_status_and_archive_are_retained_for_late_subscribers(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        running(make_link(mosquitto, outbox)) as link,
    ):
        await eventually(lambda: link.stats.published.get("archive", 0) == 1)
        async with Collector(mosquitto, client_id="late") as late:
            await eventually(lambda: len(late.of("status")) == 1 and len(late.of("archive")) == 1)
            (status,) = late.of("status")
            (archive,) = late.of("archive")
    assert status.retain
    assert archive.retain
    assert status.payload["state"] == "online"
    assert status.payload["version"] == "test"
    assert status.payload["outbox_depth"] == 0
    assert archive.payload == {
        **ARCHIVE,
        "schema": "meterlink.archive/1",
        "concentrator": CONCENTRATOR,
    }
    assert late.invalid == []


async def test_changed_archive_is_published_again(tmp_path: Path, mosquitto: Mosquitto) -> None:
    current = dict(ARCHIVE)
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        Collector(mosquitto) as centre,
        running(make_link(mosquitto, outbox, archive=lambda: current)) as link,
    ):
        await eventually(lambda: len(centre.of("archive")) == 1)
        current = {**ARCHIVE, "version": 4}
        await link.publish_archive()
        await eventually(lambda: len(centre.of("archive")) == 2)
        assert [a.payload["version"] for a in centre.of("archive")] == [3, 4]


async def test_an_invalid_archive_is_not_published_and_the_link_lives_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    broken = {**ARCHIVE, "meters": [{"meter": "1", "protocol": "iec62056", "bus": "b"}]}
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        Collector(mosquitto) as centre,
        running(make_link(mosquitto, outbox, archive=lambda: broken)) as link,
    ):
        await outbox.put("readings", reading(1))
        await eventually(lambda: len(centre.readings()) == 1)
        assert link.stats.payloads_invalid == {"archive": 1}
        assert centre.of("archive") == []


def test_last_will_says_offline_when_the_agent_is_killed(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.agent.helpers_mqtt",
            str(mosquitto.port),
            str(tmp_path / "o.db"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    async def scenario() -> tuple[Collector, Collector]:
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line == b"up\n"
            async with Collector(mosquitto, client_id="watcher") as watcher:
                await eventually(
                    lambda: [s.payload["state"] for s in watcher.of("status")] == ["online"]
                )
                proc.send_signal(signal.SIGKILL)
                await eventually(lambda: len(watcher.of("status")) == 2)
            async with Collector(mosquitto, client_id="late") as late:
                await eventually(lambda: len(late.of("status")) == 1)
            return watcher, late
        finally:
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    watcher, late = asyncio.run(scenario())
    assert [s.payload["state"] for s in watcher.of("status")] == ["online", "offline"]
    (retained,) = late.of("status")
    assert retained.retain
    assert retained.payload["state"] == "offline"
    assert "outbox_depth" not in retained.payload  # a will cannot know it
    assert watcher.invalid == late.invalid == []


async def test_drain_publishes_the_outbox_then_says_offline_cleanly(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox, Collector(mosquitto) as centre:
        link = make_link(mosquitto, outbox)
        task = asyncio.create_task(link.run())
        await eventually(lambda: link.connected)
        await outbox.put_many("readings", [reading(i) for i in range(300)])
        async with asyncio.timeout(30):
            await link.drain(20.0)
            await task  # run() returned by itself
        assert outbox.depth_now()["readings"] == 0
        await eventually(lambda: len(centre.readings()) == 300)
        await eventually(
            lambda: [s.payload["state"] for s in centre.of("status")][-1:] == ["offline"]
        )
        assert not link.connected


async def test_drain_without_a_broker_keeps_the_rows_and_returns(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        link = make_link(mosquitto, outbox)
        task = asyncio.create_task(link.run())
        await eventually(lambda: link.connected)
        await asyncio.to_thread(mosquitto.stop)
        await eventually(lambda: not link.connected)
        await outbox.put_many("readings", [reading(i) for i in range(5)])
        async with asyncio.timeout(30):
            await link.drain(0.5)
            await task
        assert outbox.depth_now()["readings"] == 5


async def test_mutual_tls_connects_with_the_right_ca_and_client_certificate(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    tls = (
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
    )
    with local_mosquitto(tmp_path, extra=tls) as broker:
        async with await Outbox.open(tmp_path / "o.db") as outbox:
            good = make_link(
                broker,
                outbox,
                tls=True,
                ca_file=pki.ca,
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            )
            async with running(good):
                await outbox.put("readings", reading(1))
                # the broker answered the publish over mutual TLS: with nobody subscribed here,
                # "No matching subscribers", and the row stays for a centre to come
                await eventually(lambda: good.stats.no_subscribers >= 1)
                assert outbox.depth_now()["readings"] == 1

            # the certificate names 127.0.0.1 only: by host name it fails the name check,
            # unless tls_insecure skips that check (the chain is still verified, see below)
            def by_name(*, insecure: bool) -> MqttLink:
                return make_link(
                    broker,
                    outbox,
                    host="localhost",
                    tls=True,
                    tls_insecure=insecure,
                    ca_file=pki.ca,
                    cert_file=pki.client_cert,
                    key_file=pki.client_key,
                )

            await never_connects(by_name(insecure=False))
            insecure = by_name(insecure=True)
            async with running(insecure):
                assert insecure.connected

            # the broker's certificate is checked against our CA, even with tls_insecure:
            # the system trust store does not know our CA
            untrusted = make_link(
                broker,
                outbox,
                tls=True,
                tls_insecure=True,
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            )
            # and the broker insists on a client certificate (with TLS 1.3 it says so only
            # after the handshake, so the attempt ends at the CONNACK timeout)
            anonymous = make_link(broker, outbox, tls=True, ca_file=pki.ca, connect_timeout_s=0.5)
            await never_connects(untrusted)
            await never_connects(anonymous)


async def never_connects(link: MqttLink) -> None:
    async with running(link, wait_connected=False):
        await eventually(lambda: link.stats.connect_failures >= 2)
        assert not link.connected
        assert link.stats.published == {}


# --- commands ---------------------------------------------------------------------------------
async def test_signed_command_round_trip_with_correlation_data(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    received: list[dict[str, Any]] = []

    async def handler(cmd: dict[str, Any]) -> dict[str, Any]:
        received.append(cmd)
        return {
            "ok": True,
            "result": {"energy_import_total_kwh": 12.5},
            "frames": [{"dir": "tx", "hex": "68 01"}, {"dir": "rx", "hex": "68 81"}],
        }

    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        running(make_link(mosquitto, outbox, handler=handler)) as link,
        Requester.connect(mosquitto) as centre,
    ):
        cmd = command()
        reply = await centre.request(cmd, b"\x00corr-1\xff")
    assert received == [cmd]
    assert reply.correlation == b"\x00corr-1\xff"
    validate("response", reply.payload)
    assert reply.payload["ok"] is True
    assert reply.payload["command"] == "read"
    assert reply.payload["meter"] == "000000000001"
    assert reply.payload["result"] == {"energy_import_total_kwh": 12.5}
    assert link.stats.responses_sent == 1


async def test_online_means_commands_are_heard(tmp_path: Path, mosquitto: Mosquitto) -> None:
    status = f"meterlink/v1/{CONCENTRATOR}/status"
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        Collector(mosquitto, filters=(status,)) as watcher,
        Requester.connect(mosquitto) as centre,
        running(make_link(mosquitto, outbox), wait_connected=False),
    ):
        # a fresh broker: no session holds the agent's subscription yet
        await eventually(lambda: len(watcher.of("status")) == 1)
        reply = await centre.request(command(), b"right away")
    assert reply.payload["ok"] is True


def _tampered() -> dict[str, Any]:
    cmd = command()
    cmd["args"] = {"items": ["balance_yuan"]}
    return cmd


@pytest.mark.parametrize(
    ("case", "make", "reason", "detail"),
    [
        ("bad signature", _tampered, "unauthorized", "bad signature"),
        ("wrong key", lambda: command(key=b"another key"), "unauthorized", "bad signature"),
        ("stale", lambda: command(at=now() - timedelta(seconds=400)), "unauthorized", "issued_at"),
        ("future", lambda: command(at=now() + timedelta(seconds=400)), "unauthorized", "issued_at"),
        ("other agent", lambda: command(concentrator="c-002"), "unauthorized", "addressed to"),
        ("not json", lambda: b"{read it now", "invalid", "not JSON"),
        (
            "no nonce",
            lambda: {k: v for k, v in command().items() if k != "nonce"},
            "invalid",
            "nonce",
        ),
        ("unknown", lambda: command(name="format_disk"), "invalid", "format_disk"),
    ],
)
async def test_bad_commands_are_refused_and_never_reach_the_handler(
    tmp_path: Path, mosquitto: Mosquitto, case: str, make: Any, reason: str, detail: str
) -> None:
    handled: list[dict[str, Any]] = []

    async def handler(cmd: dict[str, Any]) -> dict[str, Any]:
        handled.append(cmd)
        return {"ok": True}

    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        running(make_link(mosquitto, outbox, handler=handler)) as link,
        Requester.connect(mosquitto) as centre,
    ):
        reply = await centre.request(make(), b"bad")
        assert reply.payload["ok"] is False, case
        assert reply.payload["reason"] == reason
        assert detail in reply.payload["detail"]
        validate("response", reply.payload)
        assert handled == []
        assert link.stats.commands_refused == {reason: 1}
        # the link still serves
        good = await centre.request(command(), b"good")
        assert good.payload["ok"] is True
        assert len(handled) == 1


async def test_a_replayed_nonce_is_refused(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        running(make_link(mosquitto, outbox)),
        Requester.connect(mosquitto) as centre,
    ):
        cmd = command()
        first = await centre.request(cmd, b"1")
        again = await centre.request(cmd, b"2")
    assert first.payload["ok"] is True
    assert again.payload == {
        "schema": "meterlink.response/1",
        "concentrator": CONCENTRATOR,
        "ok": False,
        "command": "read",
        "reason": "unauthorized",
        "detail": "nonce already used",
    }


async def test_without_a_key_every_command_is_refused(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        running(make_link(mosquitto, outbox, key=None)),
        Requester.connect(mosquitto) as centre,
    ):
        reply = await centre.request(command(), b"k")
    assert reply.payload["reason"] == "unauthorized"
    assert "no command key" in reply.payload["detail"]


async def test_handler_failures_become_internal_error_replies(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def handler(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["args"].get("explode"):
            raise RuntimeError("bus exploded")
        return {"ok": "yes"}  # not a valid response

    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        running(make_link(mosquitto, outbox, handler=handler)) as link,
        Requester.connect(mosquitto) as centre,
    ):
        boom = await centre.request(command(args={"explode": True}), b"1")
        junk = await centre.request(command(args={}), b"2")
        assert link.connected
    assert boom.payload["reason"] == "internal_error"
    assert boom.payload["detail"] == "RuntimeError: bus exploded"
    assert junk.payload["reason"] == "internal_error"
    assert "response payload invalid" in junk.payload["detail"]


async def test_commands_without_usable_reply_topic_are_counted_not_answered(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with (
        await Outbox.open(tmp_path / "o.db") as outbox,
        Collector(mosquitto, filters=(f"meterlink/v1/{CONCENTRATOR}/status",)) as watcher,
        running(make_link(mosquitto, outbox)) as link,
        Requester.connect(mosquitto) as centre,
    ):
        await centre.send(b"garbage", None, response_topic=None)
        await centre.send(command(), b"x", response_topic=f"meterlink/v1/{CONCENTRATOR}/status")
        # commands are handled concurrently: the barrier is the counters, then a good request
        await eventually(
            lambda: link.stats.commands_received == 2 and link.stats.responses_dropped == 1
        )
        good = await centre.request(command(), b"after")
    assert good.payload["ok"] is True
    assert link.stats.commands_refused == {"invalid": 1}
    assert [s.payload["state"] for s in watcher.of("status")] == ["online"]
    assert len(centre.replies) == 1


# --- pure pieces ------------------------------------------------------------------------------
def test_signing_is_over_canonical_json_and_detects_any_change() -> None:
    cmd = {"schema": "meterlink.cmd/1", "b": [2, {"z": 1, "a": "电"}], "a": 1}
    signed = sign_command(cmd, KEY)
    assert (
        canonical_json(signed)
        == '{"a":1,"b":[2,{"a":"电","z":1}],"schema":"meterlink.cmd/1"}'.encode()
    )
    assert sign_command(dict(reversed(list(cmd.items()))), KEY) == signed
    assert sign_command(signed, KEY) == signed  # re-signing replaces, does not nest
    verify_signature(signed, KEY)
    for change in ({"a": 2}, {"extra": True}, {"signature": "0" * 64}, {"signature": "ü"}):
        with pytest.raises(CommandRejected, match="bad signature"):
            verify_signature({**signed, **change}, KEY)
    with pytest.raises(CommandRejected, match="bad signature"):
        verify_signature(signed, b"other key")


def test_new_command_validates_and_verifies() -> None:
    at = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    cmd = new_command("relay", concentrator=CONCENTRATOR, key=KEY, now=at, args={"action": "trip"})
    validate("cmd", cmd)
    verify_command(cmd, KEY, now=at + timedelta(seconds=299))
    with pytest.raises(CommandRejected, match="issued_at"):
        verify_command(cmd, KEY, now=at + timedelta(seconds=301))
    with pytest.raises(CommandRejected, match="no command key"):
        verify_command(cmd, b"", now=at)
    with pytest.raises(CommandRejected, match="UTC offset"):
        check_fresh({"issued_at": "2026-11-26T08:00:00"}, now=at)


def test_nonce_cache_forgets_after_its_ttl_and_fails_closed_when_full() -> None:
    cache = NonceCache(ttl_s=600, capacity=2)
    cache.check_and_remember("n-000001", now=0)
    with pytest.raises(CommandRejected, match="already used"):
        cache.check_and_remember("n-000001", now=599)
    cache.check_and_remember("n-000002", now=1)
    with pytest.raises(CommandRejected, match="too many"):
        cache.check_and_remember("n-000003", now=2)
    cache.check_and_remember("n-000001", now=600)  # expired, usable again
    assert len(cache) == 2


async def test_a_stop_hidden_in_a_connect_timeout_still_stops_the_link(tmp_path: Path) -> None:
    """A cancellation whose wait ends in an MQTT error anyway (here a CONNACK timeout) must
    still stop the link's reconnect loop, not start another attempt."""
    attempts = 0

    async def connect_times_out_as_it_is_cancelled() -> None:
        nonlocal attempts
        attempts += 1
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the stop arrives ...
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:  # ... and comes out as wait_for's timeout
            raise aiomqtt.MqttError("Operation timed out") from None

    broker = Mosquitto(tmp_path, 1)  # never started: no connection is attempted
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        link = make_link(broker, outbox, reconnect_min_s=0.01, reconnect_max_s=0.01)
        link._connect_once = connect_times_out_as_it_is_cancelled  # type: ignore[method-assign]
        task = asyncio.create_task(link.run())
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):  # a hang guard: without the fix it never ends
                await task
    assert attempts == 1


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(a, 1.0, 60.0, rng) for a in range(12)]
    for attempt, d in enumerate(delays):
        base = min(60.0, 2.0**attempt)
        assert base / 2 <= d <= base
    assert len({round(d, 6) for d in delays[8:]}) == 4  # capped, but still jittered


def test_settings_check_their_tls_keys_and_make_the_context() -> None:
    assert tls_context(LinkSettings()) is None
    ctx = tls_context(LinkSettings(tls=True, tls_insecure=True))
    assert ctx is not None
    assert ctx.check_hostname is False
    assert ctx.verify_mode == ssl.CERT_REQUIRED  # the chain is still checked
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="go together"):
        LinkSettings(tls=True, cert_file=Path("c.pem"))
    with pytest.raises(ValueError, match="need tls = true"):
        LinkSettings(ca_file=Path("ca.pem"))
    with pytest.raises(ValueError, match="max_payload_bytes"):
        LinkSettings(max_payload_bytes=MIN_PAYLOAD_BYTES - 1)
    with pytest.raises(ValueError, match="dead_letter_after"):
        LinkSettings(dead_letter_after=0)


# --- documentation ----------------------------------------------------------------------------
DOC = REPO / "docs" / "mqtt.md"


def doc_examples() -> list[tuple[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", text, flags=re.S)
    return [(kind, json.loads(body)) for kind, body in found]


def test_every_payload_example_in_the_docs_validates() -> None:
    examples = doc_examples()
    assert {kind for kind, _ in examples} == set(SCHEMAS)
    for kind, payload in examples:
        validate(kind, payload)


def test_command_example_in_the_docs_is_signed_with_the_documented_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    key = re.search(r"example key \(hex\): `([0-9a-f]+)`", text)
    assert key is not None
    (cmd,) = [p for kind, p in doc_examples() if kind == "cmd"]
    at = datetime.fromisoformat(cmd["issued_at"])
    verify_command(cmd, bytes.fromhex(key.group(1)), now=at)


def test_published_json_schemas_are_up_to_date() -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "gen-schemas"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind, schema in SCHEMAS.items():
        assert json.loads((REPO / "docs" / "schemas" / f"{kind}.json").read_text()) == schema
