"""Closed-loop planning (resilient_tx.resilience.adaptive): reports in, profiles out."""

from __future__ import annotations

import pytest

from resilient_tx.errors import ConfigError, InputError
from resilient_tx.resilience.adaptive import AdaptivePlanner, Plan, planned_burst
from resilient_tx.resilience.auth import PacketKey
from resilient_tx.resilience.feedback import ImageStats, Report

KEY = PacketKey.from_secret(b"k" * 32)


def lossy_reports(n: int, lost: int, first_seq: int = 0) -> list[Report]:
    """``n`` reports, each of one final 40-packet image with ``lost`` lost in one run."""
    return [Report(first_seq + i, images=(ImageStats(100 + i, 40, 40, 40 - lost,
                                                     1 if lost else 0, 5, True),))
            for i in range(n)]


def test_auto_plans_for_the_prior_until_reports_come() -> None:
    planner = AdaptivePlanner("auto")
    profile, est = planner.profile()
    assert est is not None and est.reports == 0
    assert profile.loss_rate == pytest.approx(0.1) and profile.burst == 1.0
    assert profile.guard > 1  # the guard is on: the prior may be far too low


def test_auto_follows_the_reported_loss() -> None:
    planner = AdaptivePlanner("auto")
    assert planner.feed(bytes(r) for r in lossy_reports(10, 12)) == 10
    profile, est = planner.profile()
    assert est is not None and 0.25 < est.loss_rate < 0.31
    assert profile.loss_rate == pytest.approx(round(est.loss_rate, 3))


def test_a_fixed_spec_records_reports_but_plans_as_told() -> None:
    planner = AdaptivePlanner("for_loss:0.3")
    planner.feed(bytes(r) for r in lossy_reports(5, 0))
    profile, est = planner.profile()
    assert est is None and profile.loss_rate == 0.3 and planner.reports == 5
    with pytest.raises(ConfigError):
        AdaptivePlanner("medium")
    with pytest.raises(InputError):
        AdaptivePlanner("for_loss:2")


def test_bogus_and_unsigned_feedback_is_counted_and_ignored() -> None:
    planner = AdaptivePlanner("auto", key=KEY)
    good = [r.encode(KEY) for r in lossy_reports(3, 20)]
    bad = [b"", b"RTXF", b"x" * 300, bytes(lossy_reports(1, 39)[0]),  # unsigned
           lossy_reports(1, 39)[0].encode(PacketKey.from_secret(b"z" * 32))]  # other key
    assert planner.feed([*bad, *good]) == 3
    assert planner.rejected == len(bad) and planner.reports == 3
    assert planner.estimate().loss_rate < 0.5  # the forged 39-of-40 losses changed nothing


@pytest.mark.parametrize(("p", "burst", "planned"), [
    (0.3, 1.0, 1.0), (0.3, 1.45, 1.0), (0.3, 4.0, 4.0), (0.3, 100.0, 16.0),
    (0.7, 2.0, 1.0), (0.7, 5.0, 5.0), (0.0, 1.0, 1.0)])
def test_planned_burst_is_iid_near_iid_and_always_a_valid_channel(p: float, burst: float,
                                                                   planned: float) -> None:
    got = planned_burst(p, burst)
    assert got == pytest.approx(planned, abs=0.01)
    assert got >= 1 and (got == 1 or got >= p / (1 - p))


def test_plans_describe_themselves() -> None:
    planner = AdaptivePlanner("auto")
    profile, est = planner.profile()
    plan = Plan("low", profile.name, est, budget=5000, expected_lost=0.01)
    text = plan.describe()
    assert "rate low" in text and "budget 5000" in text and "loss 0.10" in text
    d = plan.as_dict()
    assert d["estimate"]["loss_rate"] == pytest.approx(0.1) and d["budget"] == 5000
