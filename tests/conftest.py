"""Shared fixtures. Component fixtures (Mosquitto, InfluxDB, ptys) live in tests/fixtures/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS_FILE = REPO.parent / "shared" / "vectors" / "dlt645-public.json"
LOCAL_VECTORS = REPO / "tests" / "data" / "dlt645-public.json"


def load_vectors() -> list[dict[str, Any]]:
    """The public frame vectors. A copy is kept in tests/data so a clean clone has them."""
    path = VECTORS_FILE if VECTORS_FILE.exists() else LOCAL_VECTORS
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


@pytest.fixture(scope="session")
def vectors() -> list[dict[str, Any]]:
    return load_vectors()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Any:
    """A Mosquitto of the test's own on a free loopback port."""
    from tests.fixtures.services import running_mosquitto

    with running_mosquitto(tmp_path) as broker:
        yield broker
