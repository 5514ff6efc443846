"""Plan robustness: how parity plans made for one loss channel fare on others.

Each image is packetized with the shipped model under each FEC spec (``fec.parse_spec``:
by default today's plain ``for_loss:0.1`` with the guard off, the guarded ``for_loss:0.1``,
and ``for_loss:0.3`` against the burst-aware ``for_loss:0.3,burst:4``). Every resulting
send order then meets the same seeded loss patterns of the channel simulator
(``transport.channel.loss_pattern``: i.i.d. and Gilbert loss at each ``--losses`` rate),
and the receiver's rule is applied packet by packet: a stage is complete when at most m of
its k + m packets are lost, its surviving data chunks are used only when every stage in
its context is complete, and everything else is left to the inpainter. No decoding: this
measures what arrives, quickly, over many patterns.

Reported per spec and channel, summed or averaged over the images: wire bytes (and
relative to the first spec), P(stage 1 lost) and P(stage 2 lost) (the stage's FEC failed),
the expected share of tokens inpainted, and the planner's own estimate of that share
(``uep.expected_lost``), which should agree with the simulation.

    python simulations/plan_robustness.py --limit 4
    python simulations/plan_robustness.py --images DIR --limit 8 --trials 5000
    python simulations/plan_robustness.py --specs for_loss:0.2 for_loss:0.2,burst:8 --burst 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.config import DEFAULT_MAX_PACKET, SenderConfig  # noqa: E402
from resilient_tx.errors import InputError  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.resilience import fec, uep  # noqa: E402
from resilient_tx.resilience.packetizer import PacketizedImage, Packetizer  # noqa: E402
from resilient_tx.runtime import set_threads  # noqa: E402
from resilient_tx.transport.channel import ChannelConfig, loss_pattern  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import image_files, plain, script_main, shared_data  # noqa: E402

PROG = "plan_robustness.py"
DEFAULT_SPECS = ("for_loss:0.1,guard:1", "for_loss:0.1", "for_loss:0.3",
                 "for_loss:0.3,burst:4")


@dataclass(frozen=True)
class Sent:
    """One image packetized under one spec: what the loss simulation needs of it."""

    order: tuple[tuple[int, int], ...]  # (stage - 1, packet index) in send order
    shapes: tuple[uep.StageShape, ...]
    parity: tuple[int, ...]
    wire_bytes: int


@dataclass(frozen=True)
class Row:
    """One spec on one channel, over all images."""

    spec: str
    channel: str
    wire_bytes: int
    relative_bytes: float
    stage1_lost: float  # P(stage 1's FEC fails), averaged over the images
    stage2_lost: float
    inpainted: float  # expected share of the tokens left to the inpainter
    planner: float  # uep.expected_lost's estimate of the same share


def sent(image: PacketizedImage, codec: Codec, depth: int) -> Sent:
    """The send order, stage shapes and parity of one packetized image."""
    _, h, w = image.tokens.shape
    coder = codec.stage_coder(h, w, depth)
    shapes = []
    for plan in image.stages:
        size = max(p.size for p in image.packets if p.stage == plan.stage)
        shapes.append(uep.StageShape(plan.k, size, coder.share(plan.stage),
                                     coder.context(plan.stage)))
    return Sent(tuple((p.stage - 1, p.index) for p in image.packets), tuple(shapes),
                tuple(st.parity for st in image.stages), image.total_bytes)


def receive(item: Sent, lost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(complete per stage and pattern, share inpainted per pattern) for loss patterns
    ``lost`` (positions in send order x patterns): the receiver's rule (module docstring)."""
    rows: list[list[int]] = [[] for _ in item.shapes]
    for position, (stage, _) in sorted(enumerate(item.order), key=lambda t: t[1]):
        rows[stage].append(position)  # sorted by (stage, index): data packets first
    complete = np.empty((len(item.shapes), lost.shape[1]), dtype=bool)
    share = np.zeros(lost.shape[1])
    for s, (st, m) in enumerate(zip(item.shapes, item.parity, strict=True)):
        gone = lost[rows[s]]
        complete[s] = gone.sum(axis=0) <= m
        usable = complete[: st.context].all(axis=0)
        kept = np.where(complete[s], 1.0, 1.0 - gone[: st.k].mean(axis=0))
        share += st.share * (1.0 - np.where(usable, kept, 0.0))
    return complete, share


def channels(losses: Sequence[float], burst: float) -> list[tuple[str, ChannelConfig]]:
    """I.i.d. and Gilbert loss at each rate, labelled."""
    out = [(f"iid {p:.2f}", ChannelConfig("bernoulli", loss_rate=p)) for p in losses]
    out += [(f"gilbert {p:.2f} b{burst:g}", ChannelConfig("gilbert", loss_rate=p,
                                                         burst_length=burst))
            for p in losses]
    return out


def planner_channel(config: ChannelConfig) -> uep.Channel:
    return uep.Channel(config.loss_rate,
                       config.burst_length if config.loss_model == "gilbert" else 1.0)


def patterns(config: ChannelConfig, length: int, trials: int, seed: int) -> np.ndarray:
    """(length, trials) loss patterns; pattern t is the simulator's for seed + t. Every
    send order takes the first rows, so all specs meet the same losses."""
    return np.stack([loss_pattern(length, config, seed + t) for t in range(trials)], axis=1)


def measure(codec: Codec, images: Sequence[np.ndarray], specs: Sequence[str],
            channel_list: Sequence[tuple[str, ChannelConfig]], trials: int, seed: int,
            depth: int = SenderConfig.context_depth, max_packet: int = DEFAULT_MAX_PACKET,
            progress: bool = True) -> list[Row]:
    """Packetize every image under every spec and simulate every channel (module doc)."""
    if trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    profiles = [fec.parse_spec(spec) for spec in specs]  # bad specs fail before the work
    bar = tqdm(total=len(specs) * len(images), desc="packetize", disable=not progress)
    items: list[list[Sent]] = []
    for profile in profiles:
        packetizer = Packetizer(codec, profile, max_packet=max_packet, context_depth=depth)
        items.append([])
        for i, image in enumerate(images):
            items[-1].append(sent(packetizer.packetize(image, i), codec, depth))
            bar.update()
    bar.close()
    longest = max(len(item.order) for group in items for item in group)
    base = sum(item.wire_bytes for item in items[0])
    rows = []
    for label, config in tqdm(channel_list, desc="simulate", disable=not progress):
        lost = patterns(config, longest, trials, seed)
        for spec, group in zip(specs, items, strict=True):
            results = [receive(item, lost) for item in group]
            wire = sum(item.wire_bytes for item in group)
            rows.append(Row(
                spec, label, wire, wire / base,
                float(np.mean([1 - c[0].mean() for c, _ in results])),
                float(np.mean([1 - c[1].mean() if len(c) > 1 else 0.0 for c, _ in results])),
                float(np.mean([share.mean() for _, share in results])),
                float(np.mean([uep.expected_lost(item.shapes, item.parity,
                                                 planner_channel(config))
                               for item in group]))))
    return rows


def print_table(rows: Sequence[Row], trials: int, images: int) -> None:
    print(f"\n{images} image(s), {trials} loss patterns per channel "
          "(P: share of patterns in which the stage's FEC failed)")
    print(f"{'spec':<24}{'channel':<20}{'bytes':>9}{'rel':>7}{'P(s1)':>9}{'P(s2)':>9}"
          f"{'inpainted':>11}{'planner':>9}")
    for r in rows:
        print(f"{r.spec:<24}{r.channel:<20}{r.wire_bytes:>9}{r.relative_bytes:>7.3f}"
              f"{r.stage1_lost:>9.4f}{r.stage2_lost:>9.4f}{r.inpainted:>11.4f}"
              f"{r.planner:>9.4f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", metavar="DIR", type=Path, default=shared_data("kodak"),
                   help="folder of test images (default: shared/data/kodak)")
    p.add_argument("--limit", type=int, default=4, help="first N images (0 = all; default 4)")
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS),
                   help=f"FEC specs ({fec.SPEC_HELP}); bytes are relative to the first")
    p.add_argument("--losses", nargs="+", type=float, default=[0.1, 0.3, 0.5],
                   help="true loss rates simulated (default: 0.1 0.3 0.5)")
    p.add_argument("--burst", type=float, default=4.0,
                   help="mean burst length of the Gilbert channels (default: 4)")
    p.add_argument("--trials", type=int, default=20000, help="loss patterns per channel")
    p.add_argument("--seed", type=int, default=0, help="seed of the first loss pattern")
    p.add_argument("--rate", default="low", help="shipped rate point (default: low)")
    p.add_argument("--context-depth", type=int, default=SenderConfig.context_depth)
    p.add_argument("--max-packet", type=int, default=DEFAULT_MAX_PACKET)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> list[Row]:
    set_threads(args.threads)
    if args.trials < 1:
        raise InputError(f"--trials must be >= 1, got {args.trials}")
    files = image_files(args.images, args.limit)
    chans = channels(args.losses, args.burst)  # bad rates, bursts and specs fail here,
    for spec in args.specs:  # before the model loads
        fec.parse_spec(spec)
    codec = Codec(get_model(args.rate), torch.device("cpu"))
    images = [load_rgb(f) for f in files]
    rows = measure(codec, images, args.specs, chans, args.trials, args.seed,
                   args.context_depth, args.max_packet, progress=not args.quiet)
    print_table(rows, args.trials, len(images))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
