"""Fixtures of the central side: a private InfluxDB 1.x and VictoriaMetrics per test, and the
central store on either engine (`store_url`: each test that takes it runs on SQLite and on
PostgreSQL)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from central.store import Store, open_store
from tests.fixtures.services import (
    InfluxDB1,
    VictoriaMetrics,
    running_influxdb,
    running_victoria_metrics,
)

ENGINES = ("sqlite", "postgresql")


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    with running_influxdb(tmp_path) as server:
        yield server


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with running_victoria_metrics(tmp_path) as server:
        yield server


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store_url(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], str]:
    """Makes the URL of a new, empty store: a SQLite file in the test's temp dir, or a new
    database in the session's private PostgreSQL."""
    n = itertools.count(1)
    server = request.getfixturevalue("postgresql") if engine == "postgresql" else None

    def make() -> str:
        if server is None:
            return f"sqlite://{tmp_path}/store-{next(n)}.sqlite3"
        return str(server.create_database(f"t_{uuid.uuid4().hex[:16]}"))

    return make


@pytest.fixture
def store_url(new_store_url: Callable[[], str]) -> str:
    return new_store_url()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url, name="test")
    yield opened
    opened.close()
