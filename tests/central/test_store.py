"""The central store on both engines: migrations (and a ledger from before the store), leases
between processes, instances racing, PostgreSQL going away under a consumer."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from central.config import CoverageConfig
from central.coverage import compute_day
from central.ledger import Ledger
from central.points import Converted, convert
from central.spool import Spool
from central.store import (
    Migration,
    Schema,
    Store,
    StoreError,
    StoreTooNew,
    StoreUnavailable,
    Tx,
    open_store,
)
from meterlink.cli import main
from tests.central import scenario
from tests.central.helpers import (
    archive,
    batch,
    config,
    meters,
    publish,
    reading,
    running_consumer,
    stamp,
    wait_for,
)
from tests.central.scenario import DAY, M
from tests.fixtures.services import InfluxDB1, Mosquitto, free_port, running_postgresql

REPO = Path(__file__).resolve().parents[2]
OLD_LEDGER = Path(__file__).parent / "data" / "ledger-before-store.sql"


# --- a ledger file from before the store --------------------------------------------------------
def test_a_ledger_from_before_the_store_keeps_its_data_and_is_migrated_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "coverage.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_LEDGER.read_text())
    db.close()
    store = open_store(path, name="upgraded")
    try:
        ledger = Ledger(store)
        assert store.versions() == {"store": 1, "coverage": 2}
        fleet = compute_day(ledger, DAY, CoverageConfig()).fleet()
        assert (fleet.expected, fleet.read, fleet.timely, fleet.complete) == (14, 11, 10, 10)
        assert ledger.published(DAY, "coverage_streak") == {f"concentrator=c-001,meter={M[9]}"}
        assert "2026-11-21" not in ledger.dirty_days()  # the old job had cleaned it
        assert sorted(ledger.dirty_days()) == ["2026-11-22", "2026-11-23", DAY]
        # the old lease table is gone: leases are the store's now, and the old holder's too
        assert not store.rows("SELECT 1 FROM sqlite_master WHERE name = 'lease'")
        assert store.take_lease("coverage", "new-instance", 60)
        applied = store.rows("SELECT component, version, applied_by FROM store_migration")
        assert sorted(applied) == [
            ("coverage", 1, "upgraded"),
            ("coverage", 2, "upgraded"),
            ("store", 1, "upgraded"),
        ]
        ledger.apply(_facts(scenario.backfill()), CoverageConfig().required_values)
        assert compute_day(ledger, DAY, CoverageConfig()).fleet().read == 12
    finally:
        store.close()
    store = open_store(path, name="again")  # and opens again as it is
    try:
        Ledger(store)
        assert len(store.rows("SELECT * FROM store_migration")) == 3
    finally:
        store.close()


def _facts(messages: list[tuple[str, str, dict[str, Any]]]) -> Converted:
    facts = Converted()
    for _, kind, payload in messages:
        convert(kind, payload, facts)
    return facts


# --- how a later module adds its tables ---------------------------------------------------------
def _orders_v3(tx: Tx) -> None:
    """A data migration in Python, as a later module may need one."""
    for (order_id,) in tx.rows("SELECT id FROM example_order WHERE state = 'new'"):
        tx.execute("UPDATE example_order SET attempts = 1 WHERE id = ?", (order_id,))


ORDERS = (
    Migration(
        1,
        "orders",
        {
            "sqlite": "CREATE TABLE example_order (id TEXT PRIMARY KEY, amount_fen INTEGER NOT"
            " NULL, state TEXT NOT NULL)",
            "postgresql": 'CREATE TABLE example_order (id TEXT COLLATE "C" PRIMARY KEY,'
            ' amount_fen BIGINT NOT NULL, state TEXT COLLATE "C" NOT NULL)',
        },
    ),
    Migration(
        2,
        "order attempts",
        "ALTER TABLE example_order ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;\n"
        "CREATE INDEX example_order_state ON example_order (state);\n",
    ),
    Migration(3, "new orders count one attempt", _orders_v3),
)


def test_a_module_adds_its_tables_through_numbered_migrations(store: Store) -> None:
    store.migrate(Schema("example", ORDERS[:2]))
    assert store.versions()["example"] == 2
    store.execute(
        "INSERT INTO example_order (id, amount_fen, state) VALUES (?, ?, 'new')", ("o-1", 5000)
    )
    store.migrate(Schema("example", ORDERS[:2]))  # up to date: nothing happens
    store.migrate(Schema("example", ORDERS))  # a release adds migration 3: only it runs
    assert store.rows("SELECT id, amount_fen, attempts FROM example_order") == [("o-1", 5000, 1)]
    assert store.rows(
        "SELECT version, description FROM store_migration WHERE component = 'example'"
        " ORDER BY version"
    ) == [(1, "orders"), (2, "order attempts"), (3, "new orders count one attempt")]
    with pytest.raises(StoreTooNew, match="example tables are at version 3, this meterlink knows"):
        store.migrate(Schema("example", ORDERS[:1]))  # an older meterlink


def test_a_failed_migration_changes_nothing(store: Store) -> None:
    store.migrate(Schema("example", ORDERS[:1]))
    broken = Migration(
        2,
        "half a change",
        "CREATE TABLE example_attempt (id TEXT PRIMARY KEY);\n"
        "ALTER TABLE example_order ADD COLUMN state TEXT;\n",  # already there: refused
    )
    with pytest.raises(StoreError):
        store.migrate(Schema("example", (ORDERS[0], broken)))
    assert store.versions()["example"] == 1
    # the DDL was in the transaction (both engines have transactional DDL)
    store.migrate(Schema("example", ORDERS))
    store.execute("CREATE TABLE example_attempt (id TEXT PRIMARY KEY)")


def _together(n: int, fn: Callable[[int], object]) -> list[BaseException]:
    """fn(0) .. fn(n-1) in n threads released at once; returns what they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_instances_starting_together_apply_each_migration_once(
    new_store_url: Callable[[], str],
) -> None:
    url = new_store_url()

    def start(i: int) -> None:
        store = open_store(url, name=f"instance-{i}")
        try:
            Ledger(store)
        finally:
            store.close()

    assert _together(4, start) == []
    store = open_store(url)
    try:
        rows = store.rows("SELECT component, version FROM store_migration ORDER BY 1")
    finally:
        store.close()
    assert rows == [("coverage", 1), ("coverage", 2), ("store", 1)]


def test_two_instances_recording_archives_at_once_keep_one_order(
    new_store_url: Callable[[], str],
) -> None:
    """Every instance records the retained archives (unshared subscription): the same copy
    arriving at two instances at once is one version, and different versions get distinct
    places in the order seen."""
    url = new_store_url()
    n = 4
    stores = [open_store(url, name=f"i{i}") for i in range(n)]
    try:
        ledgers = [Ledger(s) for s in stores]
        required = CoverageConfig().required_values
        same = _facts([("c-001", "archive", archive("c-001", 1, scenario.C1, stamp(DAY)))])
        own = [
            _facts([("c-001", "archive", archive("c-001", 2 + i, scenario.C1, stamp(DAY)))])
            for i in range(n)
        ]
        for facts_of in (lambda i: same, lambda i: own[i]):
            errors = _together(n, lambda i, f=facts_of: ledgers[i].apply(f(i), required))
            assert errors == []
        versions = stores[0].rows("SELECT seq, version FROM archive_version ORDER BY seq")
    finally:
        for s in stores:
            s.close()
    assert [seq for seq, _ in versions] == list(range(1, n + 2))
    assert sorted(v for _, v in versions) == [1, *range(2, n + 2)]


# --- leases ------------------------------------------------------------------------------------
def test_a_lease_is_one_holders_until_released_or_run_out(store: Store) -> None:
    assert store.take_lease("coverage", "a", 3600)
    assert not store.take_lease("coverage", "b", 3600)
    assert store.take_lease("coverage", "a", 3600)  # renewed by its holder
    assert store.lease_holder("coverage") == "a"
    store.release_lease("coverage", "b")  # not b's to release
    assert store.lease_holder("coverage") == "a"
    store.release_lease("coverage", "a")
    assert store.lease_holder("coverage") is None
    assert store.take_lease("coverage", "b", -1.0)  # a lease that has already run out
    assert store.lease_holder("coverage") is None
    assert store.take_lease("coverage", "a", 3600)  # is anyone's to take
    assert not store.take_lease("coverage", "b", 3600)


def test_two_processes_never_hold_the_lease_at_the_same_time(store: Store, store_url: str) -> None:
    store.write(
        lambda tx: tx.script(
            "CREATE TABLE lease_log (id INTEGER PRIMARY KEY AUTOINCREMENT, holder TEXT NOT NULL,"
            " event TEXT NOT NULL)"
            if tx.dialect == "sqlite"
            else "CREATE TABLE lease_log (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " holder TEXT NOT NULL, event TEXT NOT NULL)"
        )
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.central.lease_worker", store_url, name, "15"],
            cwd=REPO,
            stderr=subprocess.PIPE,
        )
        for name in ("host-a", "host-b")
    ]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode()[-2000:]
    log = store.rows("SELECT holder, event FROM lease_log ORDER BY id")
    # each hold is a start and an end of one holder, never another's start in between
    assert [e for _, e in log] == ["start", "end"] * (len(log) // 2)
    assert all(log[i][0] == log[i + 1][0] for i in range(0, len(log), 2))
    holders = [h for h, e in log if e == "start"]
    assert holders.count("host-a") >= 15
    assert holders.count("host-b") >= 15


# --- PostgreSQL away under a consumer ------------------------------------------------------------
async def test_postgresql_down_holds_the_batch_unacknowledged_and_loses_nothing(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB1,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_postgresql(tmp_path / "pg") as pg:
        cfg = config(tmp_path, mosquitto.port, influxdb.url, store=pg.url)
        ids = meters(300)
        data = [
            ("c-001", "readings", batch("c-001", [reading(m, DAY) for m in ids[k : k + 100]],
                                        f"b{k}"))
            for k in range(0, 300, 100)
        ]  # fmt: skip
        with caplog.at_level(logging.INFO):
            async with running_consumer(cfg) as consumer:
                await publish(mosquitto.port, data[:1])
                await wait_for(lambda: consumer.stats.acked == 1, what="the first batch")
                pg.stop()
                await publish(mosquitto.port, data[1:])
                await wait_for(lambda: consumer.stats.messages == 3, what="the rest taken")
                await wait_for(
                    lambda: any("holding the batch" in r.getMessage() for r in caplog.records),
                    what="the store found down",
                )
                assert consumer.stats.acked == 1  # nothing acknowledged without the store
                pg.start()
                await wait_for(lambda: consumer.stats.acked == 3, what="the rest acknowledged")
                reads = consumer.ledger.rows("SELECT count(*) FROM daily_read")[0][0]
    assert reads == 300
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # one error per episode, not one per try
    assert any("takes the facts again" in r.getMessage() for r in caplog.records)


async def test_a_nul_in_a_string_is_a_dead_letter_on_either_store(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, store_url: str
) -> None:
    """JSON may carry U+0000; PostgreSQL's text cannot (SQLite's can): refused alike on both
    engines, never a batch the store refuses again and again."""
    cfg = config(tmp_path, mosquitto.port, influxdb.url, store=store_url)
    nul = batch("c-001", [reading("0000\x000001", DAY)], "nul")
    good = batch("c-001", [reading("000000000001", DAY)], "good")
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, [("c-001", "readings", nul), ("c-001", "readings", good)])
        await wait_for(lambda: consumer.stats.acked == 2, what="both acknowledged")
        assert consumer.stats.invalid == 1
        assert consumer.ledger.rows("SELECT meter FROM daily_read") == [("000000000001",)]
    spool = Spool(cfg.consumer.spool)
    try:
        (dead,) = spool.dead_letters()
    finally:
        spool.close()
    assert "U+0000" in dead.error


async def test_an_archive_listing_a_meter_twice_is_a_dead_letter_not_a_crash_loop(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, store_url: str
) -> None:
    """The ledger keys an archive's meters by id: such an archive used to fail the batch's
    transaction, stop the consumer, and stop it again each time the retained copy came back."""
    cfg = config(tmp_path, mosquitto.port, influxdb.url, store=store_url)
    twice = archive("c-001", 1, [(M[1], "east", "acme"), (M[1], "west", "acme")], stamp(DAY))
    good = archive("c-002", 1, scenario.C2, stamp(DAY))
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, [("c-001", "archive", twice), ("c-002", "archive", good)])
        await wait_for(lambda: consumer.stats.acked == 2, what="both acknowledged")
        assert consumer.stats.invalid == 1
        assert consumer.ledger.rows("SELECT concentrator FROM archive_version") == [("c-002",)]
    spool = Spool(cfg.consumer.spool)
    try:
        (dead,) = spool.dead_letters()
    finally:
        spool.close()
    assert f"archive lists meter '{M[1]}' more than once" in dead.error


# --- the command line against either store -------------------------------------------------------
def test_report_says_when_postgresql_cannot_be_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[store]\nurl = "postgresql://meterlink@127.0.0.1:{free_port()}/meterlink"\n'
        "connect_timeout_s = 2\n"
    )
    assert main(["central", "report", "--config", str(path)]) == 69
    err = capsys.readouterr().err
    assert "meterlink central: store postgresql://meterlink@127.0.0.1:" in err
    assert "cannot connect" in err


def test_central_run_exits_69_while_the_store_cannot_be_reached(tmp_path: Path) -> None:
    """EX_UNAVAILABLE: systemd starts it again later (a bad config would be 78, no restart)."""
    path = tmp_path / "central.toml"
    path.write_text(
        f'[store]\nurl = "postgresql://meterlink@127.0.0.1:{free_port()}/meterlink"\n'
        f'[consumer]\nspool = "{tmp_path}/spool.sqlite3"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "meterlink", "central", "run", "--config", str(path)],
        cwd=REPO, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 69, done.stderr.decode()[-2000:]
    assert b"cannot connect" in done.stderr
    assert b"Traceback" not in done.stderr


def test_a_store_migrated_by_a_newer_meterlink_is_refused(
    store: Store, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Ledger(store)
    store.execute(
        "UPDATE store_migration SET version = 9 WHERE component = 'coverage' AND version = 2"
    )
    path = tmp_path / "central.toml"
    path.write_text(f'[store]\nurl = "{store_url}"\n')
    assert main(["central", "report", "--config", str(path)]) == 78
    assert "coverage tables are at version 9, this meterlink knows up to 2" in (
        capsys.readouterr().err
    )


def test_the_unreachable_store_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        open_store(f"postgresql://meterlink@127.0.0.1:{free_port()}/x", connect_timeout_s=2)
