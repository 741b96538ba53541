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


@pytest.fixture(scope="session")
def postgresql(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PostgreSQL cluster of the session's own on a free loopback port (never the machine's
    own on 5432), started the first time a test needs it; each test takes a new database of it
    (`PostgreSQL.create_database`)."""
    from tests.fixtures.services import running_postgresql

    with running_postgresql(tmp_path_factory.mktemp("postgresql")) as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order and group for `scripts/test`'s parallel workers (pytest-xdist, ``--dist loadgroup``).

    - The longest tests start first (slow-marked ones, those with the longest hang guard first),
      so no worker begins a 2-minute soak when the others are nearly done.
    - Tests sharing a module- or class-scoped fixture (the panel's seeded stack, a PKI) stay on
      one worker: the fixture is built once and the tests see it in their written order.
    - A Hypothesis test's hang guard ends its worker (pytest-timeout's thread method) instead of
      raising in the test: Hypothesis takes the raised timeout for a failing example and starts
      shrinking, with no guard left, and the whole run hung (seen: the fleet fuzz test on a
      two-million-meter typo).
    """
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            guard = item.get_closest_marker("timeout")
            seconds = guard.args if guard is not None and guard.args else ()
            item.add_marker(pytest.mark.timeout(*seconds, method="thread"), append=False)
        defs = getattr(item, "_fixtureinfo", None)
        scopes = (
            {d[-1].scope for d in defs.name2fixturedefs.values() if d}
            if defs is not None
            else set()
        )
        if scopes & {"module", "class", "package"}:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def expected_length(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is None:
            return 0
        guard = item.get_closest_marker("timeout")
        return 1 + (int(guard.args[0]) if guard is not None and guard.args else 120)

    items.sort(key=expected_length, reverse=True)  # stable: a module keeps its order
