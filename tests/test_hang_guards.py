"""The suite's own rules for hang guards (tests/conftest.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@settings(max_examples=1, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=st.just(0))
def test_a_hypothesis_tests_hang_guard_ends_its_worker(
    request: pytest.FixtureRequest, example: int
) -> None:
    """Hypothesis takes pytest-timeout's raised timeout for a failing example and shrinks with
    no guard left; the thread method ends the worker instead (a crashed worker fails the run)."""
    assert example == 0
    guard = request.node.get_closest_marker("timeout")
    assert guard is not None
    assert guard.kwargs == {"method": "thread"}


@pytest.mark.timeout(300)
@settings(max_examples=1, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=st.just(0))
def test_its_own_guard_keeps_its_length(request: pytest.FixtureRequest, example: int) -> None:
    assert example == 0
    guard = request.node.get_closest_marker("timeout")
    assert guard is not None
    assert (guard.args, guard.kwargs) == ((300,), {"method": "thread"})
