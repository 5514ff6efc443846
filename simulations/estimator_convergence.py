"""How fast and how well the sender's loss estimator learns its path from feedback.

Every run draws a seeded loss pattern from the channel simulator
(:func:`resilient_tx.transport.channel.loss_pattern`), cuts it into images of
``--image-packets`` packets, feeds the packets that survive into a receiver's
:class:`~resilient_tx.resilience.feedback.LossMonitor` exactly as a receiver would (seq,
total, release when the image is done), and hands every report, through its wire format,
to a :class:`~resilient_tx.resilience.estimator.LossEstimator`. An image that is still
arriving is reported too, unreleased.

Stationary channels (independent losses, and Gilbert-Elliott with mean burst
``--burst``), at each loss rate of ``--rates``, after ``--packets`` packets:

``within``
    share of the runs whose estimate is within ``--tolerance`` of the true rate;
``mae``
    mean absolute error of the estimate;
``cover``
    share of the runs whose ``upper`` bound is at or above the true rate (the posterior
    quantile's coverage; 0.9 is calibrated);
``burst``
    mean of the burst estimates;
``limit``
    share of the runs in which the loss fraction of all the packets sent itself is within
    the tolerance: what a perfect observer without prior or forgetting would reach, the
    statistical limit of ``within``.

Step change (``--step FROM TO``, after ``--warmup`` packets): ``lag`` is the number of
packets after the step until the mean estimate over the runs is within the tolerance of
the new rate; ``median lag`` is the median over runs of the first time each run's
estimate gets there.

    python simulations/estimator_convergence.py                  # 200 runs, 300 packets
    python simulations/estimator_convergence.py --runs 50 --window 150
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.resilience.estimator import LossEstimate, LossEstimator  # noqa: E402
from resilient_tx.resilience.feedback import LossMonitor, Report  # noqa: E402
from resilient_tx.transport.channel import ChannelConfig, loss_pattern  # noqa: E402
from simulations.sim_common import fail, plain  # noqa: E402

PROG = "estimator_convergence.py"
PACKET_BYTES = 1200
PACKET_GAP = 0.001  # seconds between packets: the monitor's clock


@dataclass(frozen=True)
class Stationary:
    """One stationary channel over ``runs`` seeded runs."""

    channel: str
    rate: float
    within: float
    mae: float
    cover: float
    burst: float
    limit: float


@dataclass(frozen=True)
class Step:
    """Tracking of one step change over ``runs`` seeded runs."""

    channel: str
    before: float
    after: float
    lag: int | None  # None: the mean estimate never got within the tolerance
    median_lag: float | None


def channel(name: str, rate: float, burst: float) -> ChannelConfig:
    """``iid`` (independent losses) or ``gilbert`` (mean burst ``burst``) at ``rate``."""
    if name == "iid":
        return ChannelConfig(loss_model="bernoulli", loss_rate=rate)
    return ChannelConfig(loss_model="gilbert", loss_rate=rate, burst_length=burst)


def image_reports(lost: np.ndarray, image_packets: int, monitor: LossMonitor,
                  first_image: int = 0, start: float = 0.0) -> list[tuple[int, Report]]:
    """(packets sent so far, report) after each image of the loss mask ``lost``.

    Packets go through ``monitor`` as a receiver feeds them; a whole image is released
    (a report is due at once), the last one is reported unreleased if it is cut short.
    """
    out = []
    for begin in range(0, len(lost), image_packets):
        image_id = first_image + begin // image_packets
        chunk = lost[begin:begin + image_packets]
        now = start + begin * PACKET_GAP
        for seq, gone in enumerate(chunk):
            now = start + (begin + seq) * PACKET_GAP
            if not gone:
                monitor.observe(image_id, seq, image_packets, PACKET_BYTES, now)
        if len(chunk) == image_packets:
            monitor.release(image_id, now)
        # through the wire format, as a sender would get it
        out.append((begin + len(chunk), Report.parse(bytes(monitor.report(now)))))
    return out


def estimates(lost: np.ndarray, image_packets: int, estimator: LossEstimator,
              monitor: LossMonitor | None = None) -> list[tuple[int, LossEstimate]]:
    """(packets sent so far, estimate) after each image's report."""
    monitor = LossMonitor() if monitor is None else monitor
    out = []
    for sent, report in image_reports(lost, image_packets, monitor):
        estimator.update(report)
        out.append((sent, estimator.estimate()))
    return out


def stationary(name: str, rate: float, args: argparse.Namespace) -> Stationary:
    final, raw = [], []
    for run in range(args.runs):
        lost = loss_pattern(args.packets, channel(name, rate, args.burst), args.seed + run)
        final.append(estimates(lost, args.image_packets, make_estimator(args))[-1][1])
        raw.append(float(np.mean(lost)))
    err = np.array([e.loss_rate - rate for e in final])
    return Stationary(name, rate, float(np.mean(np.abs(err) <= args.tolerance)),
                      float(np.mean(np.abs(err))),
                      float(np.mean([e.upper >= rate for e in final])),
                      float(np.mean([e.burst for e in final])),
                      float(np.mean(np.abs(np.array(raw) - rate) <= args.tolerance)))


def step(name: str, args: argparse.Namespace) -> Step:
    before, after = args.step
    curves, firsts = [], []
    for run in range(args.runs):
        seed = args.seed + run
        lost = np.concatenate((
            loss_pattern(args.warmup, channel(name, before, args.burst), seed),
            loss_pattern(args.packets_after, channel(name, after, args.burst),
                         seed + 1_000_003)))
        curve = [(sent - args.warmup, e.loss_rate)
                 for sent, e in estimates(lost, args.image_packets, make_estimator(args))
                 if sent > args.warmup]
        curves.append([r for _, r in curve])
        firsts.append(next((t for t, r in curve if abs(r - after) <= args.tolerance), None))
    times = [t for t, _ in curve]
    mean = np.mean(np.array(curves), axis=0)
    lag = next((t for t, r in zip(times, mean, strict=True)
                if abs(r - after) <= args.tolerance), None)
    reached = [t for t in firsts if t is not None]
    median = float(np.median(reached)) if len(reached) * 2 > len(firsts) else None
    return Step(name, before, after, lag, median)


def make_estimator(args: argparse.Namespace) -> LossEstimator:
    return LossEstimator(forgetting=1 - 1 / args.window)


def format_tables(rows: list[Stationary], steps: list[Step], args: argparse.Namespace) -> str:
    lines = [f"after {args.packets} packets ({args.image_packets}-packet images), "
             f"{args.runs} runs, window {args.window:g}, gilbert burst {args.burst:g}",
             f"| channel | p    | within {args.tolerance:g} | mae    | cover | burst | limit |",
             "|---------|------|-------------|--------|-------|-------|-------|"]
    lines += [f"| {r.channel:<7} | {r.rate:.2f} | {r.within:11.3f} | {r.mae:.4f} "
              f"| {r.cover:.3f} | {r.burst:5.2f} | {r.limit:.3f} |" for r in rows]
    if steps:
        lines += ["", f"step after {args.warmup} packets",
                  "| channel | step         | lag (mean) | median lag |",
                  "|---------|--------------|------------|------------|"]
        lines += [f"| {s.channel:<7} | {s.before:.2f} -> {s.after:.2f} | "
                  f"{_packets(s.lag):>10} | {_packets(s.median_lag):>10} |" for s in steps]
    return "\n".join(lines)


def _packets(n: float | None) -> str:
    return "never" if n is None else f"{n:g}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="seeded runs per channel")
    p.add_argument("--packets", type=int, default=300,
                   help="packets before the stationary estimate is read")
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    p.add_argument("--channels", nargs="+", choices=("iid", "gilbert"),
                   default=["iid", "gilbert"])
    p.add_argument("--burst", type=float, default=4.0, help="Gilbert mean burst length")
    p.add_argument("--image-packets", type=int, default=40)
    p.add_argument("--tolerance", type=float, default=0.03)
    p.add_argument("--window", type=float, default=1 / (1 - LossEstimator().forgetting),
                   help="forgetting window W: forgetting = 1 - 1/W")
    p.add_argument("--step", type=float, nargs=2, default=[0.05, 0.40], metavar=("FROM", "TO"))
    p.add_argument("--warmup", type=int, default=1000, help="packets before the step")
    p.add_argument("--packets-after", type=int, default=1000, help="packets after the step")
    p.add_argument("--no-step", action="store_true", help="skip the step-change runs")
    p.add_argument("--seed", type=int, default=0)
    return p


def check(args: argparse.Namespace) -> str | None:
    """A one-line complaint about the arguments, or None."""
    if args.runs < 1 or args.packets < 1 or args.image_packets < 1:
        return "--runs, --packets and --image-packets must be >= 1"
    if args.window < 1:
        return "--window must be >= 1"
    if args.warmup % args.image_packets:
        return "--warmup must be a multiple of --image-packets (the step falls between images)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check(args)
    if problem is not None:
        return fail(PROG, problem)
    try:
        rows = [stationary(c, r, args) for c in args.channels for r in args.rates]
        steps = [] if args.no_step else [step(c, args) for c in args.channels]
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    print(format_tables(rows, steps, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
