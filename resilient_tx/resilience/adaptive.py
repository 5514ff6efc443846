"""Closed-loop FEC: the sender plans each image for the loss its receiver reports.

A receiver sends feedback reports (:mod:`.feedback`); :class:`AdaptivePlanner` parses
them (with the shared key, if any: a report that fails its CRC or tag is ignored and
counted), feeds a :class:`~.estimator.LossEstimator`, and for ``--fec auto`` turns the
current :class:`~.estimator.LossEstimate` into the next image's profile:
``for_loss:P,burst:L`` (:func:`~.fec.for_loss`) with P the posterior mean of the loss
rate and L the estimated mean burst length. Planning at the mean, not at an upper
quantile, spends no more bytes than a sender that knew the loss would; the guard of
``for_loss`` (:func:`~.uep.guard_floor`) protects the stages every later stage depends
on against a rate several times the estimate, which is what keeps a step up in loss, or
an estimate that is still the prior, from losing the whole picture.

With no report yet (a receiver that sends none, feedback blocked on the path, or the
first image) the estimate is the estimator's prior, so a sender without feedback plans
every image for that prior: the README states it. A fixed spec (``light``,
``for_loss:0.3``, ...) ignores the reports for planning but still records them, so
``send --json`` can tell what the receiver saw.

:class:`Plan` is what a sender says about each image: the rate point, the profile, the
estimate it came from, and for a byte budget (``--budget``), the budget and the
expected share of tokens lost of the chosen rate point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resilient_tx.errors import FeedbackError
from resilient_tx.resilience import fec
from resilient_tx.resilience.auth import PacketKey
from resilient_tx.resilience.estimator import LossEstimate, LossEstimator
from resilient_tx.resilience.feedback import Report

AUTO = "auto"
MAX_PLANNED_LOSS = 0.8  # past it nothing useful gets through anyway
MAX_PLANNED_BURST = 16.0  # a longer estimated burst is planned as this (the spread order
# already scatters each stage's packets over the whole image)
IID_MARGIN = 0.25  # bursts within this of i.i.d.'s 1 / (1 - p) are planned as i.i.d.


@dataclass(frozen=True)
class Plan:
    """How one image was sent, for the sender's report line and ``--json``."""

    rate: str
    fec: str  # the profile's name, e.g. ``for_loss(0.12,burst:1.8)``
    estimate: LossEstimate | None  # what ``auto`` planned from; None for a fixed profile
    budget: int | None = None  # bytes allowed on the wire (``--budget``), if any
    expected_lost: float | None = None  # planned share of tokens lost (budget plans)

    def describe(self) -> str:
        text = f"rate {self.rate}, fec {self.fec}"
        if self.budget is not None:
            text += f", budget {self.budget} bytes"
        if self.estimate is not None:
            text += f" (estimate: {self.estimate.describe()})"
        return text

    def as_dict(self) -> dict[str, Any]:
        est = self.estimate
        return {"rate": self.rate, "fec": self.fec, "budget": self.budget,
                "expected_lost": self.expected_lost,
                "estimate": None if est is None else {
                    "loss_rate": round(est.loss_rate, 4), "upper": round(est.upper, 4),
                    "burst": round(est.burst, 3), "packets": round(est.packets, 1),
                    "reports": est.reports}}


class AdaptivePlanner:
    """Parses feedback and chooses each image's FEC profile (module docstring)."""

    def __init__(self, spec: str, key: PacketKey | None = None,
                 estimator: LossEstimator | None = None) -> None:
        self.auto = spec == AUTO
        self.fixed = None if self.auto else fec.parse_spec(spec)  # bad specs fail here
        self.key = key
        self.estimator = LossEstimator() if estimator is None else estimator
        self.reports = 0
        self.rejected = 0
        self.last_report: Report | None = None

    def feed(self, messages: Iterable[bytes]) -> int:
        """Take the feedback messages received since the last call; returns how many were
        valid reports (the others are counted in :attr:`rejected`)."""
        taken = 0
        for data in messages:
            try:
                report = Report.parse(data, self.key)
            except FeedbackError:
                self.rejected += 1
                continue
            self.estimator.update(report)
            self.last_report = report
            taken += 1
        self.reports += taken
        return taken

    def estimate(self) -> LossEstimate:
        return self.estimator.estimate()

    def profile(self) -> tuple[fec.FecProfile, LossEstimate | None]:
        """The next image's profile, and the estimate it was planned from (None: fixed)."""
        if self.fixed is not None:
            return self.fixed, None
        est = self.estimate()
        # Rounded: the plan cannot tell 0.3012 from 0.3, and the name stays readable.
        p = round(min(est.loss_rate, MAX_PLANNED_LOSS), 3)
        burst = math.ceil(planned_burst(p, est.burst) * 100) / 100  # up: stays valid
        return fec.for_loss(p, burst=burst), est


def planned_burst(p: float, burst: float) -> float:
    """The burst length to plan with: 1 (the exact i.i.d. planner) when the estimate is
    about what independent losses give, 1 / (1 - p); else the estimate, kept where a
    Gilbert-Elliott channel with loss rate ``p`` exists (mean burst >= p / (1 - p))."""
    if burst <= 1 / (1 - p) + IID_MARGIN:
        return 1.0
    return min(max(burst, p / (1 - p), 1.0), MAX_PLANNED_BURST)
