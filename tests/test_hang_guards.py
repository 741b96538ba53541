"""The suite's own hang guard for Hypothesis tests (tests/conftest.py)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import HANG_GUARD_S, HangGuard, hang_guard


def test_a_hypothesis_test_ends_at_its_guard_without_shrinking() -> None:
    """pytest-timeout's raised timeout is a failing example to Hypothesis: it replays and shrinks
    it, with no guard left. `HangGuard` ends the test at the first expiry."""
    calls = []

    @settings(max_examples=20, deadline=None, database=None)
    @given(st.integers())
    def stuck(x: int) -> None:
        calls.append(x)
        time.sleep(60)  # the guard's signal interrupts the sleep

    with pytest.raises(HangGuard, match=r"after its 0\.2 s hang guard"), hang_guard(0.2):
        stuck()
    assert len(calls) == 1


@settings(max_examples=1, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=st.just(0))
def test_hypothesis_tests_get_the_guard(request: pytest.FixtureRequest, example: int) -> None:
    assert example == 0
    assert request.node.stash[HANG_GUARD_S] == 120.0  # the suite's timeout
    backstop = request.node.get_closest_marker("timeout")
    assert backstop is not None
    assert backstop.args == (240.0,)  # pytest-timeout: set-up and teardown


@pytest.mark.timeout(300)
@settings(max_examples=1, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=st.just(0))
def test_a_tests_own_timeout_is_its_guard(request: pytest.FixtureRequest, example: int) -> None:
    assert example == 0
    assert request.node.stash[HANG_GUARD_S] == 300.0


def test_other_tests_keep_pytest_timeout_alone(request: pytest.FixtureRequest) -> None:
    assert HANG_GUARD_S not in request.node.stash
