"""Expected-quality parity planning (resilient_tx.resilience.uep)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.errors import ConfigError, InputError
from resilient_tx.resilience import burst, uep
from resilient_tx.transport.channel import ChannelConfig, loss_pattern

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


# ------------------------------------------------------------------ channels


# Plans and losses of the planner before it knew bursts (made by the i.i.d.-only code):
# (ks, packet sizes, context depth, p, floor, plan, expected lost).
IID_GOLDEN = [
    ((13, 9, 9, 12, 8), (944, 1010, 316, 123, 402), 0, 0.023, None, (2, 2, 2, 3, 1),
     0.009303121506120164),
    ((12, 7, 11, 2, 11), (195, 593, 990, 405, 449), 0, 0.168, (1, 1, 0, 0, 0),
     (9, 6, 7, 4, 7), 0.009564831514631986),
    ((13, 6, 7, 7, 8), (690, 640, 1194, 980, 963), 2, 0.594, None, (0, 0, 0, 0, 0),
     0.9746247803879564),
    ((13, 7, 11, 12, 11), (777, 563, 646, 363, 626), 0, 0.027, None, (3, 2, 3, 3, 2),
     0.003220729640984181),
    ((4, 2, 3, 13, 9), (1065, 288, 881, 481, 617), 0, 0.501, (1, 1, 0, 0, 0),
     (14, 12, 12, 29, 21), 0.01377415823131408),
    ((9, 3, 7, 4, 13), (1063, 272, 641, 1131, 1025), 2, 0.45, None, (19, 13, 13, 9, 22),
     0.014278853555575753),
    ((2, 1, 9, 6, 8), (428, 317, 231, 495, 990), 0, 0.588, None, (14, 11, 33, 23, 24),
     0.01682531154174397),
    ((5, 4, 1, 6, 11), (170, 522, 1163, 1144, 305), 0, 0.194, None, (7, 5, 2, 5, 8),
     0.016846176913322457),
    ((9, 7, 12, 2, 9), (667, 210, 1024, 1023, 610), 2, 0.544, (1, 1, 0, 0, 0),
     (27, 26, 22, 9, 25), 0.01679424397688717),
]


@pytest.mark.parametrize(("ks", "sizes", "depth", "p", "floor", "plan", "lost"), IID_GOLDEN)
def test_burst_one_is_the_exact_iid_planner_bit_for_bit(ks, sizes, depth, p, floor, plan,
                                                        lost) -> None:
    stages = quincunx(ks, sizes, depth)
    for channel in (p, uep.Channel(p), uep.Channel(p, 1.0)):
        assert uep.allocate(stages, channel, uep.DistortionModel(), floor) == plan
        assert uep.expected_lost(stages, plan, channel) == lost


def receiver_rule(stages: list[uep.StageShape], parity: tuple[int, ...],
                  lost: np.ndarray) -> float:
    """The receiver's rule on one loss pattern in send order, written out packet by packet
    (independently of uep.receiver_outcome)."""
    where = uep.send_positions([st.k + m for st, m in zip(stages, parity, strict=True)])
    complete, share = [], 0.0
    for stage, m, positions in zip(stages, parity, where, strict=True):
        gone = [bool(lost[pos]) for pos in positions]
        complete.append(sum(gone) <= m)
        if not all(complete[: stage.context]):
            share += stage.share
        elif not complete[-1]:
            share += stage.share * sum(gone[: stage.k]) / stage.k
    return share


@pytest.mark.parametrize(("p", "length", "depth"), [(0.3, 4.0, 2), (0.2, 8.0, 0),
                                                    (0.4, 2.0, 2)])
def test_bursty_estimate_matches_the_channel_simulator(p: float, length: float,
                                                       depth: int) -> None:
    stages = quincunx((1, 1, 2, 3, 5), depth=depth)
    parity = (3, 2, 2, 2, 3)
    estimate = uep.expected_lost(stages, parity, uep.Channel(p, length))
    config = ChannelConfig("gilbert", loss_rate=p, burst_length=length)
    total = sum(st.k for st in stages) + sum(parity)
    runs = np.array([receiver_rule(stages, parity, loss_pattern(total, config, seed))
                     for seed in range(4000)])
    # Both are Monte-Carlo means (4096 and 4000 patterns): 4 standard errors of their gap.
    assert estimate == pytest.approx(runs.mean(), abs=4 * runs.std() * np.sqrt(2 / 4000))
    assert 0 < estimate < 1


def test_bursty_loss_correlates_the_stages() -> None:
    # One packet per stage, spread side by side: a burst takes neighbours together, so
    # "stage 2 lost given stage 1 lost" is far likelier than under independence.
    stages = quincunx((1, 1, 1, 1, 1), depth=0)
    lost = burst.patterns(uep.Channel(0.3, 6.0), 4096, 5)
    outcome = uep.receiver_outcome(stages, (0,) * 5, lost)
    gone = ~outcome.complete
    assert gone[1][gone[0]].mean() > 0.6 > 0.3
    assert outcome.lost.mean() == pytest.approx(
        uep.expected_lost(stages, (0,) * 5, uep.Channel(0.3, 6.0)))


def test_receiver_outcome_by_hand() -> None:
    stages = [uep.StageShape(1, 10, 0.25, 0), uep.StageShape(2, 10, 0.75, 1)]
    # Send order for 2 and 3 packets: s1p0 (1/4), s2p0 (1/6)... -> positions below.
    assert uep.send_positions([2, 3]) == [[1, 3], [0, 2, 4]]
    lost = np.array([[True, False], [True, False], [False, False], [True, True],
                     [False, False]])  # pattern 0: stage 1 lost; pattern 1: all fine
    outcome = uep.receiver_outcome(stages, (1, 1), lost)
    assert outcome.complete.tolist() == [[False, True], [True, True]]
    assert outcome.lost.tolist() == [1.0, 0.0]  # stage 2 is useless without stage 1
    with pytest.raises(InputError, match="positions"):
        uep.receiver_outcome(stages, (1, 1), lost[:4])


def test_bursty_plans_are_deterministic_and_cover_bursts() -> None:
    stages = quincunx((2, 2, 3, 5, 10), (228, 191, 230, 273, 270))
    channel = uep.Channel(0.3, 4.0)
    first = uep.allocate(stages, channel, uep.DistortionModel(), (7, 0, 0, 0, 0))
    uep._sampled_lost.cache_clear()
    burst._patterns.cache_clear()
    burst._block.cache_clear()
    assert uep.allocate(stages, channel, uep.DistortionModel(), (7, 0, 0, 0, 0)) == first
    iid = uep.allocate(stages, 0.3, uep.DistortionModel(), (7, 0, 0, 0, 0))
    assert uep.expected_lost(stages, first, channel) < uep.expected_lost(stages, iid, channel)


def test_expected_lost_validates_parity() -> None:
    with pytest.raises(InputError, match="parity"):
        uep.expected_lost(quincunx((1,) * 5), (1, 1), 0.2)
    with pytest.raises(InputError, match="burst"):
        uep.expected_lost(quincunx((1,) * 5), (1,) * 5, uep.Channel(0.2, 0.5))


# ------------------------------------------------------------------ guard


@pytest.mark.parametrize(("p", "guard", "rate"), [(0.1, 3, 0.3), (0.01, 3, 0.21),
                                                  (0.05, 2, 0.15), (0.3, 3, 0.5),
                                                  (0.6, 3, 0.6), (0.2, 1, 0.2)])
def test_guard_rate(p: float, guard: float, rate: float) -> None:
    assert uep.guard_rate(p, guard) == pytest.approx(rate)


def test_shared_context_is_what_every_later_stage_needs() -> None:
    assert uep.shared_context(quincunx((1,) * 5, depth=2)) == 2
    assert uep.shared_context(quincunx((1,) * 5, depth=0)) == 4
    assert uep.shared_context([uep.StageShape(1, 10, 0.5, 0)] * 2) == 0


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_guard_floor_survives_the_guard_rate(k: int) -> None:
    stages = quincunx((k, k, 4, 8, 16))
    floor = uep.guard_floor(stages, 0.1, 3.0, (0.02, 0.05))
    for m, target in zip(floor[:2], (0.02, 0.05), strict=True):
        assert uep.binomial_tail(k + m, 0.3, m) <= target
        assert m == 0 or uep.binomial_tail(k + m - 1, 0.3, m - 1) > target
    assert floor[2:] == (0, 0, 0)
    assert uep.guard_floor(stages, 0.1, 3.0, (0.02, 1.0))[1] == 0  # 1: no floor
    assert uep.guard_floor(stages, 0.1, 1.0) == (0,) * 5
    assert uep.guard_floor(stages, 0.0, 3.0) == (0,) * 5
    with pytest.raises(InputError, match="guard targets"):
        uep.guard_floor(stages, 0.1, 3.0, (0.0,))


# ------------------------------------------------------------------ byte budget


def exhaustive(stages: list[uep.StageShape], channel: uep.Channel | float, budget: int,
               floor: tuple[int, ...]) -> float | None:
    """The least expected loss over every parity that fits the budget."""
    spare = budget - uep.wire_bytes(stages, floor)
    if spare < 0:
        return None
    ranges = [range(f, f + spare // st.packet_bytes + 1)
              for f, st in zip(floor, stages, strict=True)]
    return min(uep.expected_lost(stages, plan, channel) for plan in itertools.product(*ranges)
               if uep.wire_bytes(stages, plan) <= budget)


def small_instance(rng: np.random.Generator, most: int = 4
                   ) -> tuple[list[uep.StageShape], tuple[int, ...], int]:
    count = int(rng.integers(2, most + 1))
    shares = np.array(SHARES[:count]) / sum(SHARES[:count])
    depth = int(rng.choice([0, 1, 2]))
    stages = [uep.StageShape(int(rng.integers(1, 4)), int(rng.integers(50, 400)),
                             float(shares[s]), s if depth == 0 else min(s, depth))
              for s in range(count)]
    floor = tuple(int(m) for m in rng.integers(0, 3, count))
    budget = int(uep.wire_bytes(stages, floor) * rng.uniform(0.95, 2.0))
    return stages, floor, budget


def test_allocate_within_is_optimal_on_small_iid_instances(rng: np.random.Generator) -> None:
    model = uep.DistortionModel()
    for _ in range(60):
        stages, floor, budget = small_instance(rng)
        p = float(rng.uniform(0.05, 0.5))
        plan = uep.allocate_within(stages, p, model, budget, floor)
        best = exhaustive(stages, p, budget, floor)
        if best is None:
            assert plan is None
            continue
        assert plan is not None and uep.wire_bytes(stages, plan) <= budget
        assert all(m >= f for m, f in zip(plan, floor, strict=True))
        assert uep.expected_lost(stages, plan, p) == pytest.approx(best, abs=1e-9)


def test_allocate_within_is_near_optimal_under_bursts(rng: np.random.Generator) -> None:
    model = uep.DistortionModel()
    for _ in range(12):
        stages, floor, budget = small_instance(rng, most=3)
        floor = (0,) * len(stages)
        budget = max(budget, uep.wire_bytes(stages, floor))
        channel = uep.Channel(float(rng.uniform(0.05, 0.4)), float(rng.uniform(2, 6)))
        plan = uep.allocate_within(stages, channel, model, budget)
        best = exhaustive(stages, channel, budget, floor)
        assert plan is not None and best is not None
        assert uep.wire_bytes(stages, plan) <= budget
        assert uep.expected_lost(stages, plan, channel) <= best + 0.005


def test_allocate_within_edges() -> None:
    stages = quincunx((1, 1, 2, 4, 8), (200, 200, 300, 450, 600))
    model = uep.DistortionModel()
    data = uep.wire_bytes(stages, (0,) * 5)
    assert uep.allocate_within(stages, 0.2, model, data - 1) is None
    assert uep.allocate_within(stages, 0.2, model, data) == (0,) * 5
    assert uep.allocate_within(stages, 0.2, model, data + 1000, (9, 0, 0, 0, 0)) is None
    assert uep.allocate_within(stages, 0.0, model, 10**6, (1, 0, 0, 0, 0)) == (1, 0, 0, 0, 0)
    roomy = uep.allocate_within(stages, 0.2, model, 10**9)
    assert roomy is not None and uep.expected_lost(stages, roomy, 0.2) < 1e-6
    more = [uep.allocate_within(stages, 0.2, model, data + extra) for extra in (600, 2400)]
    lost = [uep.expected_lost(stages, plan, 0.2) for plan in more if plan is not None]
    assert len(lost) == 2 and lost[1] < lost[0]
    assert uep.allocate_within(stages, 0.2, model, data + 2400) == more[1]  # deterministic
    with pytest.raises(InputError, match="budget"):
        uep.allocate_within(stages, 0.2, model, -1)
    with pytest.raises(InputError, match="floor"):
        uep.allocate_within(stages, 0.2, model, data, (1, 2))


def test_allocate_within_handles_contexts_that_do_not_nest() -> None:
    # Stage 2 is in a later stage's context without being conditioned on stage 1: the
    # expected loss does not nest, so only the greedy start plans it.
    shapes = [[uep.StageShape(1, 100, 0.2, 0), uep.StageShape(1, 100, 0.3, 0),
               uep.StageShape(2, 100, 0.5, 2)],
              [uep.StageShape(1, 100, 0.1, 0), uep.StageShape(1, 100, 0.2, 1),
               uep.StageShape(1, 100, 0.3, 1), uep.StageShape(2, 100, 0.4, 3)]]
    assert all(uep._nested(quincunx((1,) * 5, depth=d)) for d in (0, 1, 2))
    for stages in shapes:
        assert not uep._nested(stages)
        plan = uep.allocate_within(stages, 0.3, uep.DistortionModel(), 900)
        best = exhaustive(stages, 0.3, 900, (0,) * len(stages))
        assert plan is not None and best is not None
        assert uep.expected_lost(stages, plan, 0.3) <= best + 1e-3
