"""Shared fixtures. Component fixtures (Mosquitto, InfluxDB, ptys) live in tests/fixtures/."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import Phase, settings

REPO = Path(__file__).resolve().parent.parent
VECTORS_FILE = REPO.parent / "shared" / "vectors" / "dlt645-public.json"
LOCAL_VECTORS = REPO / "tests" / "data" / "dlt645-public.json"


# Hypothesis's explain phase traces every line the test runs once a failure is found, its
# shrinking included: a heavy property test (the tariff minute list: 2880 selections per
# example) then ran into its hang guard on a loaded machine and the failing example was never
# printed. Without it a failure reports its shrunk example (and `.hypothesis/` replays it).
settings.register_profile("meterlink", phases=[p for p in Phase if p is not Phase.explain])
settings.load_profile("meterlink")


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


class HangGuard(BaseException):
    """A test ran past its hang guard. A BaseException, as KeyboardInterrupt is, so Hypothesis
    does not take it for a failing example."""


HANG_GUARD_S = pytest.StashKey[float]()


@contextlib.contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Raise `HangGuard` in the main thread after `seconds`: the hang guard of Hypothesis tests.
    pytest-timeout raises its timeout as a test failure, which Hypothesis takes for a failing
    example and replays and shrinks with no guard left (the whole run hung: the fleet fuzz test
    drew a count of two million meters)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise HangGuard(f"still running after its {seconds:g} s hang guard")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    seconds = item.stash.get(HANG_GUARD_S, None)
    if seconds is None:
        return (yield)
    with hang_guard(seconds):
        return (yield)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order and group for `scripts/test`'s parallel workers (pytest-xdist, ``--dist loadgroup``).

    - The longest tests start first (slow-marked ones, those with the longest hang guard first),
      so no worker begins a 2-minute soak when the others are nearly done.
    - Tests sharing a module- or class-scoped fixture (the panel's seeded stack, a PKI) stay on
      one worker: the fixture is built once and the tests see it in their written order.
    - A Hypothesis test's call is guarded by `hang_guard` (below) at its timeout; pytest-timeout
      keeps twice that for its set-up and teardown.
    """
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            guard = item.get_closest_marker("timeout")
            seconds = float(guard.args[0]) if guard is not None and guard.args else 0.0
            seconds = seconds or float(config.getini("timeout") or 0) or 120.0
            item.stash[HANG_GUARD_S] = seconds
            item.add_marker(pytest.mark.timeout(2 * seconds), append=False)
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
