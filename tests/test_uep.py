"""Expected-quality parity planning (resilient_tx.resilience.uep)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.errors import ConfigError, InputError
from resilient_tx.resilience import uep

SHARES = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


def quincunx(ks: tuple[int, ...], sizes: tuple[int, ...] | None = None,
             depth: int = 2) -> list[uep.StageShape]:
    sizes = sizes or (400,) * len(ks)
    return [uep.StageShape(k, size, share, s - 1 if depth == 0 else min(s - 1, depth))
            for s, (k, size, share) in enumerate(zip(ks, sizes, SHARES, strict=True), start=1)]


def simulated_lost(stages: list[uep.StageShape], parity: tuple[int, ...], p: float,
                   rng: np.random.Generator, runs: int) -> float:
    """The receiver's rule (reassembly.decode), by brute force over erasure draws."""
    total = 0.0
    for _ in range(runs):
        complete, lost = [], 0.0
        for stage, m in zip(stages, parity, strict=True):
            gone = rng.random(stage.k + m) < p
            complete.append(gone.sum() <= m)
            if not all(complete[: stage.context]):
                lost += stage.share
            elif not complete[-1]:
                lost += stage.share * gone[: stage.k].mean()  # lost data chunks stay lost
        total += lost
    return total / runs


@pytest.mark.parametrize("depth", [0, 2])
def test_expected_lost_matches_simulation(rng: np.random.Generator, depth: int) -> None:
    stages = quincunx((1, 1, 2, 3, 5), depth=depth)
    parity = (2, 2, 1, 1, 2)
    exact = uep.expected_lost(stages, parity, 0.3)
    assert exact == pytest.approx(simulated_lost(stages, parity, 0.3, rng, 20000), abs=0.01)
    assert 0 < exact < 1


def test_no_loss_or_full_protection_loses_nothing() -> None:
    stages = quincunx((1, 1, 2, 4, 8))
    assert uep.expected_lost(stages, (0,) * 5, 0.0) == 0.0
    assert uep.expected_lost(stages, (0,) * 5, 0.3) > uep.expected_lost(stages, (3,) * 5, 0.3)


@settings(max_examples=30, deadline=None)
@given(ks=st.tuples(*[st.integers(1, 12)] * 5), sizes=st.tuples(*[st.integers(60, 1200)] * 5),
       p=st.floats(0.02, 0.6), depth=st.sampled_from([0, 2]))
def test_allocate_is_a_local_optimum_above_its_floor(ks, sizes, p, depth) -> None:
    stages = quincunx(ks, sizes, depth)
    model = uep.DistortionModel()
    floor = (1, 1, 0, 0, 0)
    best = uep.allocate(stages, p, model, floor)
    assert all(m >= f for m, f in zip(best, floor, strict=True))
    assert all(stage.k + m <= 255 for stage, m in zip(stages, best, strict=True))
    here = uep.cost(stages, best, p, model)
    for s in range(5):
        for step in (-1, 1):
            other = list(best)
            other[s] += step
            if other[s] >= floor[s]:
                assert uep.cost(stages, other, p, model) >= here - 1e-12


def test_allocate_beats_flat_protection_at_equal_bytes() -> None:
    stages = quincunx((1, 1, 2, 4, 8), (200, 200, 300, 450, 600))
    model = uep.DistortionModel()
    best = uep.allocate(stages, 0.3, model)
    assert uep.cost(stages, best, 0.3, model) < uep.cost(stages, (2, 2, 2, 2, 2), 0.3, model)
    assert uep.cost(stages, best, 0.3, model) < uep.cost(stages, (4, 3, 2, 2, 1), 0.3, model)


def test_allocate_caps_at_the_codeword_and_is_deterministic() -> None:
    stages = [uep.StageShape(240, 100, 1.0, 0)]  # wants more than the 15 GF(256) leaves
    assert uep.allocate(stages, 0.05, uep.DistortionModel(db_per_lost=1e5)) == (15,)
    again = quincunx((1, 2, 3, 4, 5))
    assert uep.allocate(again, 0.3, uep.DistortionModel()) == uep.allocate(
        again, 0.3, uep.DistortionModel())
    assert uep.allocate(again, 0.0, uep.DistortionModel(), (1, 0, 0, 0, 0)) == (1, 0, 0, 0, 0)


@pytest.mark.parametrize("p", [-0.1, 1.0, float("nan"), True])
def test_allocate_rejects_bad_loss_rates(p: float) -> None:
    with pytest.raises(InputError, match="loss rate"):
        uep.allocate(quincunx((1,) * 5), p, uep.DistortionModel())


def test_bad_shapes_floors_and_models_are_refused() -> None:
    with pytest.raises(InputError):
        uep.StageShape(0, 100, 0.5, 0)
    with pytest.raises(InputError):
        uep.StageShape(2, 100, 1.5, 0)
    with pytest.raises(InputError, match="floor"):
        uep.allocate(quincunx((1,) * 5), 0.2, uep.DistortionModel(), (1, 1))
    with pytest.raises(ConfigError, match="db_per_lost"):
        uep.DistortionModel(db_per_lost=0)


def test_score_ranks_plans_of_one_cut_like_cost() -> None:
    stages = quincunx((1, 1, 2, 4, 8), (200, 200, 300, 450, 600))
    model = uep.DistortionModel()
    a, b = (2, 2, 1, 1, 1), (4, 4, 2, 3, 5)
    diff = uep.score(stages, a, 0.3, model) - uep.cost(stages, a, 0.3, model)
    assert uep.score(stages, b, 0.3, model) - uep.cost(stages, b, 0.3, model) == pytest.approx(
        diff)
