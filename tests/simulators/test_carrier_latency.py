"""The carrier latency models: the fit reproduces the constants, the population quantiles are
the reference's figures exactly, and many seeded draws show them (statistics, not clocks)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from simulators import CarrierRecord
from simulators.carrier import ideal_time, latency
from simulators.carrier.latency import (
    HPLC_HOPS,
    HPLC_POINT,
    HPLC_POINT_TARGETS,
    HPLC_READ,
    HPLC_READ_TARGETS,
    NARROWBAND,
    NARROWBAND_HOPS,
    Mixture,
    fit,
)

DRAWS = 200_000


def _draws(
    model: latency.Mixture | latency.PerHop, hops: dict[int, float], seed: int
) -> list[float]:
    rng = random.Random(seed)
    depths, weights = list(hops), list(hops.values())
    return sorted(model.draw(rng, rng.choices(depths, weights)[0]) for _ in range(DRAWS))


def _quantile(sorted_draws: list[float], p: float) -> float:
    return sorted_draws[int(p * len(sorted_draws))]


def test_a_single_lognormal_cannot_hit_the_three_f1f1_figures() -> None:
    # median 1.4 s and p90 3.3 s fix σ; that lognormal's p99 is far below the captured 12 s
    z90, z99 = statistics.NormalDist().inv_cdf(0.9), statistics.NormalDist().inv_cdf(0.99)
    sigma = math.log(3.3 / 1.4) / z90
    assert sigma == pytest.approx(0.669, abs=1e-3)
    assert 1.4 * math.exp(sigma * z99) < 7.0


def test_the_fit_gives_the_shipped_constants() -> None:
    start = Mixture(1.2, 0.6, 0.03, 10.0, 0.9)
    fitted = fit(HPLC_READ_TARGETS, HPLC_HOPS, start)
    assert fitted.main_median_s == pytest.approx(HPLC_READ.main_median_s, rel=1e-5)
    assert fitted.main_sigma == pytest.approx(HPLC_READ.main_sigma, rel=1e-5)
    assert fitted.tail_share == pytest.approx(HPLC_READ.tail_share, rel=1e-5)
    point = fit(HPLC_POINT_TARGETS, HPLC_HOPS, Mixture(0.6, 0.5, 0.008, 4.0, 0.5))
    assert point.main_median_s == pytest.approx(HPLC_POINT.main_median_s, rel=1e-5)
    assert point.main_sigma == pytest.approx(HPLC_POINT.main_sigma, rel=1e-5)


@pytest.mark.parametrize(
    ("model", "targets"),
    [(HPLC_READ, HPLC_READ_TARGETS), (HPLC_POINT, HPLC_POINT_TARGETS)],
    ids=["F1F1", "13F1"],
)
def test_population_quantiles_are_the_reference_figures(
    model: Mixture, targets: dict[float, float]
) -> None:
    for p, seconds in targets.items():
        assert model.quantile(p, HPLC_HOPS) == pytest.approx(seconds, rel=1e-4)


def test_many_seeded_f1f1_draws_show_median_p90_p99() -> None:
    draws = _draws(HPLC_READ, HPLC_HOPS, seed=1)
    assert _quantile(draws, 0.5) == pytest.approx(1.4, rel=0.02)
    assert _quantile(draws, 0.9) == pytest.approx(3.3, rel=0.03)
    assert _quantile(draws, 0.99) == pytest.approx(12.0, rel=0.06)
    # the tail goes on past the p99 (retransmissions, route repairs) but stays bounded
    assert 20 < _quantile(draws, 0.999) < 90


def test_many_seeded_point_read_draws_show_median_and_p90() -> None:
    draws = _draws(HPLC_POINT, HPLC_HOPS, seed=2)
    assert _quantile(draws, 0.5) == pytest.approx(0.7, rel=0.02)
    assert 1.4 <= _quantile(draws, 0.9) <= 1.8  # the capture's p90 range
    # the capture's maximum of 290 point reads was 10 s: a 290-draw sample rarely goes past it
    rng = random.Random(3)
    maxima = [max(HPLC_POINT.draw(rng, 1) for _ in range(290)) for _ in range(200)]
    assert statistics.median(maxima) < 10.0


def test_deeper_nodes_are_slower_and_fail_over_to_the_tail_more() -> None:
    rng = random.Random(4)
    by_hops = {h: statistics.median(HPLC_READ.draw(rng, h) for _ in range(20_000)) for h in (1, 4)}
    assert by_hops[4] > by_hops[1] * 1.5
    assert HPLC_READ.tail_probability(4) > HPLC_READ.tail_probability(1)


def test_narrowband_is_a_few_seconds_per_hop() -> None:
    draws = _draws(NARROWBAND, NARROWBAND_HOPS, seed=5)
    median = _quantile(draws, 0.5)
    assert 3.0 < median < 8.0  # a few seconds per hop, 2 hops on average
    rng = random.Random(6)
    one_hop = statistics.median(NARROWBAND.draw(rng, 1) for _ in range(20_000))
    assert one_hop == pytest.approx(NARROWBAND.hop_median_s + NARROWBAND.local_s, rel=0.1)
    assert median > _quantile(_draws(HPLC_POINT, HPLC_HOPS, seed=5), 0.5) * 4


def test_draws_are_reproducible_from_the_seed() -> None:
    a = [HPLC_READ.draw(random.Random(9), 2) for _ in range(3)]
    b = [HPLC_READ.draw(random.Random(9), 2) for _ in range(3)]
    assert a == b


def _read(seq: int, t: float, applied: float, *, accepted: bool = True) -> CarrierRecord:
    return CarrierRecord(
        wall_time="2026-03-10T10:00:00", bus="plc", dir="down", seq=seq, afn="F1", fn=1,
        outcome="answered" if accepted else "denied", latency_s=applied * 100,
        applied_s=applied, time_scale=0.01, t_request=t, in_flight=1 if accepted else None,
        request_bytes=47, reply_bytes=53,
    )  # fmt: skip


def test_ideal_times_from_the_record() -> None:
    records = [_read(1, 0.0, 4.0), _read(2, 0.1, 1.0), _read(3, 0.2, 1.0), _read(4, 0.3, 0.5)]
    records.append(_read(5, 0.4, 0.001, accepted=False))  # a deny: no slot, not counted
    one = ideal_time(records, 1)
    assert (one.reads, one.latency_s, one.bound_s, one.schedule_s) == (4, 6.5, 6.5, 6.5)
    two = ideal_time(records, 2)
    assert two.bound_s == 3.25
    # replay: slot A takes read 1 (0 → 4), slot B reads 2, 3, 4 (0 → 1 → 2 → 2.5): done at 4
    assert two.schedule_s == 4.0
    wired = ideal_time(records, 2, baud=9600)
    assert wired.wire_s == pytest.approx(4 * 100 * 11 / 9600)
    assert wired.bound_s == pytest.approx(3.25 + wired.wire_s)
    assert ideal_time(records, 2, bus="other").reads == 0
    with pytest.raises(ValueError, match="window"):
        ideal_time(records, 0)
