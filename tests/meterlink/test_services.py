"""The private servers' helpers (`meterlink.services`), used by the demo, the tests and benches."""

from __future__ import annotations

import itertools
import random

import pytest

from meterlink import services


def test_free_port_never_gives_a_port_it_gave_a_moment_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two calls for one server (influxd's HTTP and RPC ports) drew the same port, still free
    because nothing listened on it yet; influxd could not bind the second and exited 1."""
    first = services.free_port()
    # the draw repeats the port just given, then goes on through other ones
    draws = itertools.chain([first, first], (p for p in range(10000, 65536) if p != first))

    class Replay(random.SystemRandom):
        def randint(self, a: int, b: int) -> int:
            return next(draws)

    monkeypatch.setattr(services.random, "SystemRandom", Replay)
    second = services.free_port()
    assert second != first
    assert services._bindable(second)


def test_free_ports_drawn_in_a_row_are_distinct() -> None:
    ports = [services.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
