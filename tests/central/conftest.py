"""Fixtures of the central side: a private InfluxDB 1.x and VictoriaMetrics per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.services import (
    InfluxDB1,
    VictoriaMetrics,
    running_influxdb,
    running_victoria_metrics,
)


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    with running_influxdb(tmp_path) as server:
        yield server


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with running_victoria_metrics(tmp_path) as server:
        yield server
