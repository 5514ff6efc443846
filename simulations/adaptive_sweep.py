"""Closed loop over a changing channel: a camera-like sequence whose FEC follows feedback.

``--frames`` frames (seeded ``--size`` x ``--size`` crops of the images in ``--images``,
cycled) cross a channel whose loss rate changes in steps, one equal segment of the
sequence per rate of ``--steps``, with independent or Gilbert-Elliott loss (``--burst``).
Each strategy runs the real sans-IO pieces: a
:class:`~resilient_tx.resilience.endpoint.Sender` packetizes frame i,
:func:`~resilient_tx.transport.channel.transmit` applies the frame's channel, and a
:class:`~resilient_tx.resilience.collector.Collector` with a
:class:`~resilient_tx.resilience.feedback.FeedbackHub` collects the arrivals, releases the
image and makes the reports a receiver sends. They reach the sender before it plans frame
i + 1 + ``--feedback-delay``, each lost with probability ``--feedback-loss``; the receiver
decodes what arrived and inpaints the rest (``--inpainter``). The clock is simulated:
frame i leaves at i / ``--fps`` s (or once the last one is done), its packets
:data:`PACKET_GAP` apart, an incomplete image is released :data:`DEADLINE` after its last
packet, and reports are paced every :data:`REPORT_INTERVAL`. A frame's channel seed
depends only on (``--seed``, frame, trial), so every strategy meets the same losses.

Strategies: ``auto`` (the default sender, planning for the loss its receiver reports);
fixed plans ``for_loss:P[,burst:L]`` (default 0.1 and 0.5); ``auto@SPEC`` (default
:data:`~simulations.adaptive_report.BUDGETED`, ``auto@for_loss:0.1``): ``auto`` within a
constant byte budget per frame, the mean wire bytes per frame that strategy SPEC spent in
the same channel and trial, choosing the rate point together with the parity
(``SenderConfig(budget=...)``, PSNR as the quality), so it is compared with SPEC at equal
bytes; ``oracle``, planned for the true loss of the frame's segment (``,burst:L`` under
Gilbert loss); and the classical ``avif`` and ``webp``: the file at the bytes ``auto``
spent on the frame, with Reed-Solomon parity across it planned once for the scenario's
average loss (:func:`~resilient_tx.eval.file_fec.tuned_for_loss`), sent with the same
seeds.

Each (channel, trial, strategy) sequence is appended to ``OUT/runs.jsonl`` when done, so
``--resume`` (with the journal's settings) skips it. At the end
(:mod:`simulations.adaptive_report`): a table (mean and 5th-percentile PSNR, share of
frames below :data:`~simulations.adaptive_report.LOW_PSNR` dB, bytes, wire bpp, PSNR per
wire bpp, PSNR per segment), each adaptive strategy's estimate against the true loss, the
targets met or missed (``auto`` against the oracle, the fixed plans and the files; each
``auto@SPEC`` against SPEC at SPEC's bytes, and against the fixed plans on PSNR per wire
bpp), ``adaptive_sweep.json``, ``adaptive_sweep.csv`` (every frame),
``adaptive_summary.csv`` and ``adaptive_sweep.png`` (PSNR per frame, true loss, estimate).

    python simulations/adaptive_sweep.py --quick
    python simulations/adaptive_sweep.py --quick --strategies for_loss:0.1 auto@for_loss:0.1
    python simulations/adaptive_sweep.py --inpainter neighbor --feedback-delay 1
    python simulations/adaptive_sweep.py --strategies auto --forgetting 0.98
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from resilient_tx.codec.inpaint import get_inpainter  # noqa: E402
from resilient_tx.config import DEFAULT_MAX_PACKET, DEFAULT_RATE, SenderConfig  # noqa: E402
from resilient_tx.errors import InputError, ResilientTxError  # noqa: E402
from resilient_tx.eval import classical, file_fec, metrics  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.resilience import fec  # noqa: E402
from resilient_tx.resilience.adaptive import AUTO, AdaptivePlanner  # noqa: E402
from resilient_tx.resilience.collector import Collector, DueImage  # noqa: E402
from resilient_tx.resilience.endpoint import Receiver, Sender  # noqa: E402
from resilient_tx.resilience.estimator import LossEstimator  # noqa: E402
from resilient_tx.resilience.feedback import FeedbackHub  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.transport.channel import ChannelConfig, transmit  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.adaptive_report import (  # noqa: E402
    FILE_CODECS,
    ORACLE,
    STRATEGIES,
    budget_source,
    plot,
    print_table,
    summarise,
    verdicts,
    write_outputs,
)
from simulations.sim_common import SAMPLES, fail, image_files, plain, shared_data  # noqa: E402

PROG = "adaptive_sweep.py"
PACKET_GAP = 0.001  # seconds between two packets of a frame on the simulated clock
DEADLINE = 0.2  # seconds after its last packet that an incomplete image is released
REPORT_INTERVAL = 0.1  # the receiver's report pacing
PEER = "sender"  # the one sender's address, as the collector and the hub key it
JOURNAL = "runs.jsonl"
RUNTIME = ("resume", "quiet", "threads", "device", "out")  # never compared on --resume
UnitKey = tuple[str, int, str]  # channel (loss model), trial, strategy


# ----------------------------------------------------------------------------- scenario
@dataclass(frozen=True)
class Scenario:
    """The channel over the sequence: segment s of the frames has loss ``steps[s]``."""

    steps: tuple[float, ...]
    frames: int
    loss_model: str  # "bernoulli" or "gilbert"
    burst: float  # mean burst of the gilbert model (1 for bernoulli)

    def segment(self, frame: int) -> int:
        return frame * len(self.steps) // self.frames

    def loss(self, frame: int) -> float:
        return self.steps[self.segment(frame)]

    def config(self, frame: int) -> ChannelConfig:
        return ChannelConfig(loss_model=self.loss_model, loss_rate=self.loss(frame),
                             burst_length=self.burst)

    @property
    def average_loss(self) -> float:
        """The loss averaged over every frame: what a plan made once would assume."""
        return float(np.mean([self.loss(i) for i in range(self.frames)]))

    def oracle_spec(self, frame: int) -> str:
        burst = f",burst:{self.burst:g}" if self.loss_model == "gilbert" else ""
        return f"for_loss:{self.loss(frame):g}{burst}"


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    models = ["bernoulli", "gilbert"] if args.loss_model == "both" else [args.loss_model]
    out = [Scenario(tuple(args.steps), args.frames, m, args.burst if m == "gilbert" else 1.0)
           for m in models]
    for sc in out:  # an impossible Gilbert channel fails now, not after an hour
        for p in sc.steps:
            ChannelConfig(loss_model=sc.loss_model, loss_rate=p, burst_length=sc.burst)
    return out


def frame_seed(base: int, frame: int, trial: int) -> int:
    """The channel seed of one frame: the same for every strategy (common random numbers)."""
    return base * 1_000_003 + trial * 10_007 + frame * 101


@dataclass(frozen=True)
class Frame:
    name: str  # source image and crop corner, e.g. ``kodim05@120,64``
    image: np.ndarray


def make_frames(files: Sequence[Path], count: int, size: int, seed: int) -> list[Frame]:
    """``count`` seeded ``size`` x ``size`` crops of the images, cycled through in order."""
    sources = [(f.stem, load_rgb(f)) for f in files]
    out = []
    for i in range(count):
        stem, img = sources[i % len(sources)]
        h, w = img.shape[:2]
        if size > min(h, w):
            raise InputError(f"--size {size} is larger than {stem} ({w}x{h})")
        rng = np.random.default_rng([seed, i])
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append(Frame(f"{stem}@{x},{y}", np.ascontiguousarray(img[y:y + size, x:x + size])))
    return out


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FrameResult:
    """One frame of one strategy's sequence."""

    channel: str
    trial: int
    strategy: str
    frame: int
    segment: int
    true_loss: float  # the segment's loss rate
    channel_loss: float  # the share of this frame's packets the channel dropped
    packets: int
    bytes: int  # on the wire: headers and parity included
    wire_bpp: float
    psnr: float
    fec: str  # the profile sent with (file baselines: codec, quality, k + parity)
    est_loss: float | None = None  # auto, auto@SPEC: the estimate this frame was planned with
    est_burst: float | None = None
    inpainted: float | None = None  # ours: share of the tokens left to the inpainter
    rate: str | None = None  # ours: the rate point sent (auto@SPEC chooses it per frame)


@dataclass
class Setup:
    """What every unit needs; ``encodes`` keeps each frame's classical encodes (quality ->
    file) across units: they are most of the classical baseline's time."""

    args: argparse.Namespace
    frames: list[Frame]
    receiver: Receiver
    device: torch.device
    out: Path
    encodes: dict[tuple[str, int], dict[int, bytes]] = dataclasses.field(
        default_factory=lambda: defaultdict(dict))

    @property
    def journal(self) -> Path:
        return self.out / JOURNAL


def _receive(collector: Collector, hub: FeedbackHub, arrived: list[bytes], t0: float,
             image_id: int) -> tuple[DueImage | None, list[bytes]]:
    """Feed one frame's arrivals to the receiver side: the frame's released image (None
    when no packet arrived) and the reports the receiver sent meanwhile."""
    due: list[DueImage] = []
    reports: list[bytes] = []
    now = t0
    for j, datagram in enumerate(arrived):
        now = t0 + j * PACKET_GAP
        if (got := collector.feed(datagram, PEER, now)) is not None:
            due.append(got)
        reports += [r for _, r in hub.due_reports(now)]
    # The deadline timer fires a hair late: (t + d) - t can round below d, which would
    # leave the image open into the next frame.
    end = now + DEADLINE * (1 + 1e-9)
    due += collector.expired(end)
    reports += [r for _, r in hub.due_reports(end)]
    mine = [d for d in due if d.key[1] == image_id]
    return (mine[0] if mine else None), reports


def _returned(reports: list[bytes], s: Setup, frame: int, trial: int) -> list[bytes]:
    """The reports that survive the feedback path (each lost with --feedback-loss)."""
    if not s.args.feedback_loss:
        return reports
    rng = np.random.default_rng([s.args.seed, trial, frame, 1])
    return [r for r in reports if rng.random() >= s.args.feedback_loss]


def _sender(s: Setup, sc: Scenario, strategy: str, budget: int | None) -> Sender:
    """The strategy's sender; with a byte budget it picks each frame's rate point by the
    PSNR it expects after loss (as ``resilient-tx send --budget`` does)."""
    if strategy == ORACLE:
        spec = sc.oracle_spec(0)
    else:
        spec = AUTO if budget_source(strategy) is not None else strategy
    cfg = SenderConfig(rate=s.args.rate, fec=spec, max_packet=s.args.max_packet, budget=budget)
    sender = Sender(cfg, s.device, quality=None if budget is None else metrics.psnr)
    if spec == AUTO and s.args.forgetting is not None:  # an experiment: another memory
        sender.planner = AdaptivePlanner(AUTO, estimator=LossEstimator(
            forgetting=s.args.forgetting))
    return sender


def run_ours(s: Setup, sc: Scenario, strategy: str, trial: int, bar: tqdm,
             budget: int | None = None) -> list[FrameResult]:
    """One sequence of the sender in closed loop with its receiver, each frame within
    ``budget`` wire bytes if given."""
    sender = _sender(s, sc, strategy, budget)
    hub = FeedbackHub(REPORT_INTERVAL)
    collector = Collector(s.receiver.stage_count, deadline=DEADLINE,
                          stage_tokens=s.receiver.stage_tokens, feedback=hub)
    pending: dict[int, list[bytes]] = defaultdict(list)  # frame -> reports back by then
    out = []
    clock = 0.0  # when the receiver is done with the last frame: a frame waits for it
    for i, frame in enumerate(s.frames):
        sender.feedback(pending.pop(i, []))
        if strategy == ORACLE:  # the oracle's plan follows the segment, not the reports
            sender.planner = AdaptivePlanner(sc.oracle_spec(i))
        sent = sender.packets(frame.image, i)
        datagrams = sender.datagrams(sent.packets)
        arrived, stats = transmit(datagrams, sc.config(i), frame_seed(s.args.seed, i, trial))
        start = max(i / s.args.fps, clock)
        due, reports = _receive(collector, hub, arrived, start, i)
        clock = start + len(arrived) * PACKET_GAP + DEADLINE
        pending[i + 1 + s.args.feedback_delay] += _returned(reports, s, i, trial)
        out.append(_ours_result(s, sc, strategy, trial, i, sender, due, datagrams,
                                stats.loss_rate))
        bar.update(1)
    return out


def _ours_result(s: Setup, sc: Scenario, strategy: str, trial: int, i: int, sender: Sender,
                 due: DueImage | None, datagrams: list[bytes], loss: float) -> FrameResult:
    img = s.frames[i].image
    h, w = img.shape[:2]
    if due is None:  # nothing arrived: the receiver has nothing to show but grey
        picture, inpainted = file_fec.fallback(w, h), 1.0
    else:
        got = s.receiver.finish(due)
        picture, inpainted = got.image, got.report.tokens_inpainted / got.report.tokens
    plan = sender.last_plan
    est = None if plan is None else plan.estimate
    nbytes = sum(len(d) for d in datagrams)
    return FrameResult(sc.loss_model, trial, strategy, i, sc.segment(i), sc.loss(i), loss,
                       len(datagrams), nbytes, metrics.bpp(nbytes, w, h),
                       metrics.psnr(img, picture), "" if plan is None else plan.fec,
                       None if est is None else est.loss_rate,
                       None if est is None else est.burst, inpainted,
                       None if plan is None else plan.rate)


def run_file(s: Setup, sc: Scenario, strategy: str, trial: int, budgets: Sequence[int],
             bar: tqdm) -> list[FrameResult]:
    """The classical baseline's sequence, frame i at ``budgets[i]`` bytes on the wire."""
    codec = FILE_CODECS[strategy]
    burst = sc.burst if sc.loss_model == "gilbert" else 1.0
    out = []
    for i, frame in enumerate(s.frames):
        img = frame.image
        h, w = img.shape[:2]
        fp = file_fec.tuned_for_loss(img, codec, budgets[i], sc.average_loss,
                                     s.args.max_packet, burst, s.encodes[(codec, i)])
        cfg, seed = sc.config(i), frame_seed(s.args.seed, i, trial)
        if fp is None:  # not even the lowest quality fits: nothing is sent
            picture, nbytes, n, lost, name = file_fec.fallback(w, h), 0, 0, 0.0, "nothing fits"
        else:
            arrived = file_fec.arrivals(fp, cfg, seed)
            picture, nbytes, n = file_fec.receive(fp, arrived), fp.total_bytes, fp.n
            lost, name = 1 - len(arrived) / fp.n, f"{codec} q{fp.quality} {fp.k}+{fp.parity}"
        out.append(FrameResult(sc.loss_model, trial, strategy, i, sc.segment(i), sc.loss(i),
                               lost, n, nbytes, metrics.bpp(nbytes, w, h),
                               metrics.psnr(img, picture), name))
        bar.update(1)
    return out


# ----------------------------------------------------------------------------- journal
def _units(args: argparse.Namespace) -> list[tuple[Scenario, int, str]]:
    """Every unit, in order: the strategies whose bytes others spend first (``auto`` for
    the file baselines, SPEC for ``auto@SPEC``), then ``auto@SPEC``, then the files."""
    order = sorted(args.strategies,
                   key=lambda st: 2 if st in FILE_CODECS else int(budget_source(st) is not None))
    return [(sc, t, st) for sc in scenarios(args) for t in range(args.trials) for st in order]


def _key(sc: Scenario, trial: int, strategy: str) -> UnitKey:
    return (sc.loss_model, trial, strategy)


def read_journal(path: Path) -> tuple[dict[str, Any], dict[UnitKey, list[FrameResult]]]:
    """The arguments and finished units of a journal (a line cut by a kill is dropped)."""
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist")
    lines: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # the unit being written when the sweep was killed
            break
    if not lines or lines[0].get("kind") != "header":
        raise InputError(f"{path} is not an adaptive sweep journal")
    units = {(str(r["key"][0]), int(r["key"][1]), str(r["key"][2])):
             [FrameResult(**f) for f in r["frames"]] for r in lines[1:] if r["kind"] == "unit"}
    return lines[0]["args"], units


def open_journal(s: Setup) -> dict[UnitKey, list[FrameResult]]:
    """The units already done (--resume), or none and a fresh journal; a resumed journal
    is rewritten without a cut-off last line, so the units appended next start clean."""
    settings = {k: v for k, v in vars(s.args).items() if k not in RUNTIME}
    units = read_journal(s.journal)[1] if s.args.resume else {}
    s.out.mkdir(parents=True, exist_ok=True)
    s.journal.write_text(json.dumps({"kind": "header", "args": settings}) + "\n"
                         + "".join(_unit_line(k, v) for k, v in units.items()))
    return units


def _unit_line(key: UnitKey, frames: list[FrameResult]) -> str:
    return json.dumps({"kind": "unit", "key": list(key),
                       "frames": [dataclasses.asdict(f) for f in frames]}) + "\n"


def append_unit(path: Path, key: UnitKey, frames: list[FrameResult]) -> None:
    with path.open("a") as fh:  # one write per unit: a kill loses at most this one
        fh.write(_unit_line(key, frames))


# ----------------------------------------------------------------------------- main
QUICK = {"frames": 12, "size": 192, "inpainter": "neighbor", "loss_model": "bernoulli"}


def _steps(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected rates like 0.05,0.4,0.15: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    kodak = shared_data("kodak")
    p.add_argument("--images", metavar="DIR", default=str(kodak if kodak.is_dir() else SAMPLES),
                   help="source images (default: shared Kodak, else the bundled photo)")
    p.add_argument("--frames", type=int, default=60, help="frames in the sequence (default 60)")
    p.add_argument("--size", type=int, default=384, help="side of the square crops (384)")
    p.add_argument("--steps", type=_steps, default=[0.05, 0.40, 0.15], help="segment losses")
    p.add_argument("--loss-model", choices=["bernoulli", "gilbert", "both"], default="both")
    p.add_argument("--burst", type=float, default=4.0, help="gilbert mean burst (default 4)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                   help=f"default: {' '.join(STRATEGIES)} (any for_loss:P[,burst:L] spec, "
                   "and auto@SPEC for any SPEC of ours given, too)")
    p.add_argument("--inpainter", default="mim", help="mim (default), ar, neighbor, none")
    p.add_argument("--trials", type=int, default=1, help="seeded trials (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second of the clock")
    p.add_argument("--feedback-delay", type=int, default=0, help="frames reports come late")
    p.add_argument("--feedback-loss", type=float, default=0.0, help="share of reports lost")
    p.add_argument("--forgetting", type=float, help="auto's estimator forgets with this "
                   "factor per packet instead of the library's (an experiment)")
    p.add_argument("--rate", default=DEFAULT_RATE, help="codec rate point (default low)")
    p.add_argument("--max-packet", type=int, default=DEFAULT_MAX_PACKET)
    p.add_argument("--quick", action="store_true", help=f"a first look in a minute: {QUICK}")
    p.add_argument("--resume", action="store_true", help="continue the sweep stopped in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # One thread: on a shared machine torch's intra-op threads wait on one another and a
    # frame takes many times longer than with one.
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--out", default="out/adaptive_sweep", help="output folder")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, over a resumed sweep's settings, over --quick, over the defaults;
    InputError if --resume finds no journal, or flags that differ from its settings."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.resume:
        old = read_journal(Path(args.out) / JOURNAL)[0]
        p.set_defaults(**old)
        args = p.parse_args(argv)
        changed = [f"--{k.replace('_', '-')}" for k in old if getattr(args, k, None) != old[k]]
        if changed:
            raise InputError(f"{', '.join(changed)} differ from the sweep being resumed in "
                             f"{args.out}: give the same, or drop --resume to start afresh")
    _check(args)
    return args


def _check(args: argparse.Namespace) -> None:
    if not args.steps or not all(0 <= x < 1 for x in args.steps):
        raise InputError(f"--steps must be loss rates in [0, 1), got {args.steps}")
    if args.frames < len(args.steps):
        raise InputError(f"--frames {args.frames} < {len(args.steps)} segments")
    for name, ok in (("trials", args.trials >= 1), ("size", args.size >= 32),
                     ("fps", args.fps > 0), ("feedback_delay", args.feedback_delay >= 0),
                     ("feedback_loss", 0 <= args.feedback_loss < 1), ("seed", args.seed >= 0),
                     ("forgetting", args.forgetting is None or 0 < args.forgetting <= 1)):
        if not ok:
            raise InputError(f"--{name.replace('_', '-')} out of range: {getattr(args, name)}")
    for st in args.strategies:
        if (src := budget_source(st)) is not None:
            _check_source(st, src, args.strategies)
        elif st not in (ORACLE, AUTO, *FILE_CODECS):
            fec.parse_spec(st)  # an unknown spec fails here
    if any(st in FILE_CODECS for st in args.strategies) and AUTO not in args.strategies:
        raise InputError("the avif/webp baselines spend auto's bytes: add auto to --strategies")
    if len(set(args.strategies)) != len(args.strategies):
        raise InputError(f"a strategy is given twice: {args.strategies}")


def _check_source(st: str, src: str, strategies: Sequence[str]) -> None:
    """``auto@SPEC`` spends SPEC's mean bytes: SPEC must run too, and be one of ours that
    does not itself spend another's bytes."""
    if src in FILE_CODECS or budget_source(src) is not None:
        raise InputError(f"{st}: SPEC of auto@SPEC must be auto, oracle or a for_loss plan, "
                         f"not {src}")
    if src not in strategies:
        raise InputError(f"{st} spends the mean bytes per frame of {src or 'SPEC'}, which "
                         f"is not among --strategies: add it (e.g. for_loss:0.1 "
                         f"auto@for_loss:0.1)")


def setup(args: argparse.Namespace) -> Setup:
    """Load and check everything, so a mistake fails before the long part."""
    if "avif" in args.strategies and not classical.avif_available():
        print(f"{PROG}: this Pillow has no AVIF support: the avif baseline is skipped",
              file=sys.stderr)
        args.strategies = [st for st in args.strategies if st != "avif"]
    scenarios(args)
    set_threads(args.threads)
    device = resolve_device(args.device)
    frames = make_frames(image_files(args.images), args.frames, args.size, args.seed)
    get_inpainter(args.inpainter, get_model(args.rate), device)  # unknown names fail here
    return Setup(args, frames, Receiver(args.inpainter, device), device, Path(args.out))


def run_all(s: Setup, done: dict[UnitKey, list[FrameResult]], bar: tqdm) -> None:
    """Every unit not done yet, each journaled as it finishes (``done`` grows)."""
    for sc, trial, st in _units(s.args):
        key = _key(sc, trial, st)
        if key in done:
            continue
        bar.set_postfix_str(f"{sc.loss_model} trial {trial} {st}")
        if st in FILE_CODECS:
            budgets = [r.bytes for r in done[_key(sc, trial, AUTO)]]
            frames = run_file(s, sc, st, trial, budgets, bar)
        elif (src := budget_source(st)) is not None:
            # A constant budget, rounded down: on average auto@SPEC spends at most SPEC's.
            spent = [r.bytes for r in done[_key(sc, trial, src)]]
            frames = run_ours(s, sc, st, trial, bar, int(np.mean(spent)))
        else:
            frames = run_ours(s, sc, st, trial, bar)
        append_unit(s.journal, key, frames)
        done[key] = frames


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        s = setup(args)
        done = open_journal(s)
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    units = _units(args)
    left = sum(1 for sc, t, st in units if _key(sc, t, st) not in done)
    hide = args.quiet or not sys.stderr.isatty()
    try:
        with tqdm(total=len(units) * args.frames, initial=(len(units) - left) * args.frames,
                  desc="frames x strategies", unit="frame", disable=hide) as bar:
            run_all(s, done, bar)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped; finished units are kept in {s.journal}: run the same "
              "command with --resume to continue", file=sys.stderr)
        return 130
    results = [f for sc, t, st in units for f in done[_key(sc, t, st)]]
    rows = summarise(results)
    write_outputs(s.out, {k: v for k, v in vars(args).items() if k not in RUNTIME}, rows,
                  results)
    fig = plot(s.out, results, scenarios(args))
    print_table(rows, args.steps)
    for line in verdicts(rows):
        print(line)
    print(f"wrote {s.out}/adaptive_sweep.json, adaptive_sweep.csv, adaptive_summary.csv, "
          f"{fig.name} (journal: {s.journal})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
