"""The sender's loss estimator: its prior, the Beta quantile, how reports are taken, and
convergence on seeded channels fed through a real LossMonitor (simulations/
estimator_convergence.py, whose command line is checked here too)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.errors import InputError
from resilient_tx.resilience.estimator import (
    MAX_RECORDS,
    LossEstimate,
    LossEstimator,
    beta_cdf,
    beta_quantile,
)
from resilient_tx.resilience.feedback import ImageStats, Report
from resilient_tx.transport.channel import ChannelConfig, loss_pattern
from tests.helpers import load_simulation

NO_FORGETTING = dict(forgetting=1.0)


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    return load_simulation("estimator_convergence")


def final_image(image_id: int, total: int, received: int, runs: int,
                expected: int | None = None) -> ImageStats:
    return ImageStats(image_id, total, total if expected is None else expected, received,
                      runs, 5, True)


def run(sim: ModuleType, lost: np.ndarray, estimator: LossEstimator | None = None,
        image_packets: int = 40) -> list[tuple[int, LossEstimate]]:
    return list(sim.estimates(lost, image_packets, estimator or LossEstimator()))


def gilbert(p: float, burst: float = 4.0) -> ChannelConfig:
    return ChannelConfig(loss_model="gilbert", loss_rate=p, burst_length=burst)


def iid(p: float) -> ChannelConfig:
    return ChannelConfig(loss_model="bernoulli", loss_rate=p)


# --- the prior and the description ----------------------------------------------------

def test_no_reports_gives_the_prior() -> None:
    e = LossEstimator().estimate()
    assert e.loss_rate == pytest.approx(0.1)
    assert e.upper == pytest.approx(beta_quantile(0.9, 2.0, 18.0))
    assert (e.burst, e.packets, e.reports, e.quantile) == (1.0, 0.0, 0, 0.9)
    custom = LossEstimator(prior_loss=0.3, prior_weight=10, prior_burst=2.5).estimate()
    assert (custom.loss_rate, custom.burst) == (pytest.approx(0.3), pytest.approx(2.5))


def test_description() -> None:
    e = LossEstimate(0.2834, 0.331, 3.71, 412.3, 9)
    assert str(e) == e.describe() == "loss 0.28 (90% <= 0.33), mean burst 3.7, from 412 packets"


@pytest.mark.parametrize("kwargs", [
    dict(prior_loss=0.0), dict(prior_loss=1.0), dict(prior_weight=0.0),
    dict(forgetting=0.0), dict(forgetting=1.01), dict(quantile=1.0), dict(quantile=0),
    dict(prior_burst=0.5), dict(burst_prior_weight=-1), dict(prior_loss=float("nan")),
    dict(forgetting=True),
])
def test_bad_parameters_are_input_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError):
        LossEstimator(**kwargs)


def test_update_wants_a_report() -> None:
    with pytest.raises(InputError):
        LossEstimator().update(bytes(Report(0)))  # type: ignore[arg-type]


# --- the Beta distribution ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.floats(0.05, 500), st.floats(0.01, 0.99))
def test_beta_cdf_closed_forms(a: float, x: float) -> None:
    assert beta_cdf(x, a, 1.0) == pytest.approx(x ** a, abs=1e-9)
    assert beta_cdf(x, 1.0, a) == pytest.approx(1 - (1 - x) ** a, abs=1e-9)
    assert beta_cdf(x, a, a + 1) + beta_cdf(1 - x, a + 1, a) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.05, 500), st.floats(0.001, 0.999))
def test_beta_quantile_inverts_closed_forms(a: float, q: float) -> None:
    assert beta_quantile(q, a, 1.0) == pytest.approx(q ** (1 / a), abs=1e-6)
    assert beta_quantile(q, 1.0, a) == pytest.approx(1 - (1 - q) ** (1 / a), abs=1e-6)


@pytest.mark.parametrize(("a", "b"), [(0.1, 0.9), (2, 18), (1, 9), (6, 54), (30, 70),
                                      (100, 100), (3, 400), (150, 50), (2000, 8000)])
def test_beta_quantile_matches_monte_carlo(a: float, b: float) -> None:
    draws = np.random.default_rng(0).beta(a, b, 200_000)
    for q in (0.1, 0.5, 0.9, 0.95):
        assert beta_quantile(q, a, b) == pytest.approx(float(np.quantile(draws, q)), abs=0.01)


def test_beta_rejects_bad_arguments() -> None:
    with pytest.raises(InputError):
        beta_cdf(0.5, 0.0, 1.0)
    with pytest.raises(InputError):
        beta_quantile(1.5, 1.0, 1.0)
    assert beta_cdf(0.0, 2, 3) == 0.0 and beta_cdf(1.0, 2, 3) == 1.0


# --- taking reports ---------------------------------------------------------------------

def test_counts_enter_the_posterior() -> None:
    est = LossEstimator(**NO_FORGETTING)
    est.update(Report(0, images=(final_image(1, 40, 30, 4),)))
    e = est.estimate()
    assert e.loss_rate == pytest.approx((2 + 10) / (20 + 40))
    assert e.burst == pytest.approx((2 * 1 + 10) / (2 + 4))
    assert (e.packets, e.reports) == (40, 1)


def test_the_tail_of_a_released_image_counts_as_lost() -> None:
    # 40 sent, the last arrival was seq 29: seqs 30..39 were lost in one more run
    tail = LossEstimator(**NO_FORGETTING)
    tail.update(Report(0, images=(final_image(1, 40, 25, 2, expected=30),)))
    assert tail.estimate().loss_rate == pytest.approx((2 + 15) / (20 + 40))
    assert tail.estimate().burst == pytest.approx((2 + 15) / (2 + 3))
    # not released yet: those packets may still come, only 0..29 are counted
    open_ = LossEstimator(**NO_FORGETTING)
    open_.update(Report(0, images=(ImageStats(1, 40, 30, 25, 2),)))
    assert open_.estimate().loss_rate == pytest.approx((2 + 5) / (20 + 30))


def test_unsequenced_images_teach_nothing() -> None:
    est = LossEstimator()
    est.update(Report(0, images=(ImageStats(1, received=40, final=True),)))
    assert est.estimate().loss_rate == pytest.approx(0.1)
    assert est.estimate().reports == 1


def test_a_newer_report_replaces_an_image() -> None:
    est = LossEstimator(**NO_FORGETTING)
    est.update(Report(0, images=(ImageStats(1, 40, 20, 10, 3),)))
    est.update(Report(1, images=(final_image(1, 40, 36, 2),)))
    e = est.estimate()
    assert e.packets == 40  # the image counted once, with its latest stats
    assert e.loss_rate == pytest.approx((2 + 4) / (20 + 40))
    assert est.images == 1


def test_duplicate_and_late_reports_change_nothing() -> None:
    est = LossEstimator(**NO_FORGETTING)
    newer = Report(6, images=(final_image(1, 40, 36, 2), ImageStats(2, 40, 20, 19, 1)))
    est.update(newer)
    before = est.estimate()
    est.update(newer)  # a duplicate
    est.update(Report(3, images=(ImageStats(1, 40, 10, 9, 1), ImageStats(2, 40, 5, 5, 0))))
    after = est.estimate()  # a late report: older news of the same images
    assert (after.loss_rate, after.packets, after.burst) == (before.loss_rate, before.packets,
                                                             before.burst)


def test_a_restarted_receiver_or_a_new_socket_is_heard_at_once() -> None:
    est = LossEstimator(**NO_FORGETTING)
    est.update(Report(500, images=(final_image(1, 40, 40, 0),)))
    est.update(Report(0, images=(final_image(2, 40, 20, 1),)))  # counts start again
    assert est.estimate().packets == 80 and est.images == 2
    assert est.estimate().loss_rate == pytest.approx((2 + 20) / (20 + 80))


def test_an_image_forgotten_is_not_taken_again() -> None:
    est = LossEstimator(**NO_FORGETTING)
    for i in range(MAX_RECORDS + 1):
        est.update(Report(i, images=(final_image(i, 40, 40, 0),)))
    assert est.images == MAX_RECORDS
    before = est.estimate()
    est.update(Report(999, images=(final_image(0, 40, 1, 1),)))  # image 0 was forgotten
    assert est.estimate().loss_rate == before.loss_rate and est.images == MAX_RECORDS


def test_counts_that_go_down_do_not_replace() -> None:
    est = LossEstimator(**NO_FORGETTING)
    est.update(Report(1, images=(final_image(1, 40, 36, 2),)))
    est.update(Report(2, images=(ImageStats(1, 40, 10, 9, 1),)))  # replayed older news
    assert est.estimate().loss_rate == pytest.approx((2 + 4) / (20 + 40))


def test_at_most_a_bounded_number_of_images_is_kept() -> None:
    est = LossEstimator(**NO_FORGETTING)
    for i in range(MAX_RECORDS + 30):
        est.update(Report(i, images=(final_image(i, 10, 10, 0),)))
    assert est.images == MAX_RECORDS
    assert est.estimate().packets == 10 * MAX_RECORDS


def test_older_images_weigh_less() -> None:
    # a lossy image followed by clean ones fades; without forgetting it does not
    reports = [Report(0, images=(final_image(0, 40, 10, 5),))]
    reports += [Report(i, images=(final_image(i, 40, 40, 0),)) for i in range(1, 20)]
    rates = []
    for kwargs in ({"forgetting": 0.99}, NO_FORGETTING):
        est = LossEstimator(**kwargs, detect_changes=False)  # forgetting alone
        for r in reports:
            est.update(r)
        rates.append(est.estimate().loss_rate)
    forgetting, keeping = rates
    assert keeping == pytest.approx((2 + 30) / (20 + 800))
    assert forgetting < 0.6 * keeping


def test_bursty_losses_widen_the_upper_bound() -> None:
    spread, bursty = LossEstimator(), LossEstimator()
    images = [(i, 40, 28) for i in range(10)]  # 30 % lost
    spread.update(Report(0, images=tuple(final_image(i, t, r, 10) for i, t, r in images)))
    bursty.update(Report(0, images=tuple(final_image(i, t, r, 2) for i, t, r in images)))
    s, b = spread.estimate(), bursty.estimate()
    assert s.loss_rate == pytest.approx(b.loss_rate)
    assert b.burst > 4 > 1.5 > s.burst
    assert b.upper - b.loss_rate > 1.8 * (s.upper - s.loss_rate)


# --- seeded channels, through a real LossMonitor --------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_converges_on_an_iid_channel(sim: ModuleType, p: float) -> None:
    errors = [run(sim, loss_pattern(300, iid(p), seed))[-1][1].loss_rate - p
              for seed in range(10)]
    assert np.mean(np.abs(errors) <= 0.03) >= 0.6
    assert np.max(np.abs(errors)) < 0.08


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_converges_on_a_gilbert_channel(sim: ModuleType, p: float) -> None:
    # bursts make each packet worth less: the error after 300 packets is larger, and
    # the mean over runs after more packets carries no bias
    short = [run(sim, loss_pattern(300, gilbert(p), seed))[-1][1].loss_rate - p
             for seed in range(10)]
    assert np.mean(np.abs(short)) < 0.07
    long = [run(sim, loss_pattern(2000, gilbert(p), seed))[-1][1] for seed in range(10)]
    assert abs(np.mean([e.loss_rate for e in long]) - p) < 0.02
    assert np.mean([e.upper >= p for e in long]) >= 0.7


def test_burst_estimate_on_a_gilbert_channel(sim: ModuleType) -> None:
    bursts = [run(sim, loss_pattern(2560, gilbert(0.3), seed),
                  LossEstimator(**NO_FORGETTING))[-1][1].burst for seed in range(3)]
    assert all(3.3 < b < 4.5 for b in bursts)
    independent = run(sim, loss_pattern(2560, iid(0.3), 0), LossEstimator(**NO_FORGETTING))
    assert independent[-1][1].burst == pytest.approx(1 / 0.7, abs=0.15)


def test_follows_a_step_change(sim: ModuleType) -> None:
    before, after = [], []
    for seed in range(5):
        lost = np.concatenate((loss_pattern(1000, iid(0.05), seed),
                               loss_pattern(600, iid(0.40), seed + 99)))
        trace = dict(run(sim, lost))
        before.append(trace[1000].loss_rate)
        after.append(trace[1600].loss_rate)
    assert abs(np.mean(before) - 0.05) < 0.02
    assert abs(np.mean(after) - 0.40) < 0.04


def test_a_step_is_detected_within_a_few_images_and_drops_the_old_evidence(
        sim: ModuleType) -> None:
    lags = {True: [], False: []}
    for seed in range(5):
        lost = np.concatenate((loss_pattern(800, iid(0.05), seed),
                               loss_pattern(400, iid(0.40), seed + 99)))
        for detect in (True, False):
            est = LossEstimator(detect_changes=detect)
            trace = run(sim, lost, est, image_packets=10)
            lags[detect].append(next(n - 800 for n, e in trace
                                     if n > 800 and e.loss_rate > 0.35))
            assert est.changes >= 1 if detect else est.changes == 0
    # Detected: within 8 images of 10 packets; by forgetting alone it takes 30 or more.
    assert max(lags[True]) <= 80 and min(lags[False]) >= 300


@pytest.mark.parametrize("channel", ["iid", "gilbert"])
def test_a_steady_channel_raises_no_change(sim: ModuleType, channel: str) -> None:
    make = iid if channel == "iid" else gilbert
    for p in (0.1, 0.3, 0.5):
        for seed in range(5):
            est = LossEstimator()
            run(sim, loss_pattern(2000, make(p), seed), est, image_packets=10)
            assert est.changes == 0, (channel, p, seed)


def test_change_point_needs_enough_packets_on_both_sides() -> None:
    from resilient_tx.resilience.estimator import _Counts, change_point

    clean, lossy = _Counts(10, 0, 0), _Counts(10, 5, 5)  # half lost, one at a time
    assert change_point([lossy, lossy] + [clean] * 10) == 2
    assert change_point([lossy] + [clean] * 10) is None  # 10 new packets: too few
    assert change_point([lossy, lossy, clean]) is None  # 10 old packets: too few
    assert change_point([clean] * 12) is None and change_point([]) is None


def test_the_simulation_prints_its_tables(sim: ModuleType,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert sim.main(["--runs", "2", "--packets", "80", "--rates", "0.2", "--warmup", "80",
                     "--packets-after", "120"]) == 0
    out = capsys.readouterr().out
    assert "| iid     | 0.20 |" in out and "| gilbert | 0.20 |" in out
    assert out.count("0.05 -> 0.40") == 2 and "2 runs, window 200" in out
    assert sim.main(["--runs", "0"]) == 2
    assert sim.main(["--warmup", "50"]) == 2
    assert "error" in capsys.readouterr().err
