"""The loss sweep's command line: flags, --quick, and --resume's settings from the journal.

Precedence, highest first: the command line, the journal of a resumed sweep, --quick, the
defaults. ``--help`` is plain text (no markup), since argparse prints it as written.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resilient_tx.config import DEFAULT_MAX_PACKET, DEFAULT_RATE, SenderConfig
from resilient_tx.errors import InputError
from resilient_tx.zoo.registry import available_rates, derived_dir
from simulations import sweep_io
from simulations.sim_common import SAMPLES
from simulations.sweep_plots import BASELINES

PROG = "loss_sweep.py"
FOR_LOSS = "for_loss"  # FEC profile derived from the loss rate being simulated

DESCRIPTION = """\
Loss sweep: picture quality against packet loss, for FEC profiles and inpainters.

Each image is encoded and packetized once per FEC profile and context depth, sent through
the seeded channel simulator at each loss rate and trial, received by the real receiver
(exact tokens only) and completed by each inpainter. The classical baselines
(--baselines) are at the same bytes on the wire: JPEG with restart markers, without and
with Reed-Solomon parity across its packets, and AVIF and WebP files cut into packets with
Reed-Solomon parity across the file (which decode whole or not at all). The oracle is the
same codec without loss at (1 - p) times the bytes on the wire, read off the shipped rate
points.

Without --images it runs on the photo bundled with the package. For the full evaluation,
download the Kodak set (kodim01..24.png, e.g. from https://r0k.us/graphics/kodak/) into a
folder and pass --images DIR.

Each finished run is appended to OUT/runs.jsonl at once; a stopped sweep continues when
the same command is run again with --resume. At the end it writes OUT/loss_sweep.json and
OUT/loss_sweep.csv, the figures OUT/loss_sweep.png (ours against the classical baselines),
OUT/inpainters.png
(every inpainter at one fixed FEC setting) and OUT/examples.png (reconstructions of the
first image), and prints a table."""

EPILOG = """\
examples:
  python simulations/loss_sweep.py --quick                       # a first look, 1-2 minutes
  python simulations/loss_sweep.py --images DIR --limit 8 --trials 2
  python simulations/loss_sweep.py --images DIR --limit 8 --trials 2 --resume
  python simulations/loss_sweep.py --loss-model gilbert --burst 4 --rates 0.3 0.5
  python simulations/loss_sweep.py --baselines avif webp         # no JPEG
  python simulations/loss_sweep.py --replot out/loss_sweep       # figures again"""


def _base_rates() -> list[str]:
    """The shipped trained rate points (the k-means points derived from them left out)."""
    return [r for r in available_rates() if (derived_dir().parent / f"{r}.pt").is_file()]


def quick_settings() -> dict[str, Any]:
    """What --quick sets (flags given with it still win): the bundled photo, two loss
    rates, one channel, one context depth, MIM only, one trial, no classical baselines,
    and the oracle read off the trained rate points only."""
    return {"images": str(SAMPLES), "limit": 1, "rates": [0.2, 0.4], "trials": 1,
            "loss_model": "bernoulli", "fec": ["light", FOR_LOSS],
            "context_depth": [SenderConfig().context_depth], "inpainters": ["mim"],
            "baselines": [], "oracle_rates": _base_rates()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", metavar="DIR", default=str(SAMPLES),
                   help="folder of test images (default: the bundled sample photo)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5],
                   help="packet loss rates (default: 0.1 .. 0.5)")
    p.add_argument("--trials", type=int, default=2, help="seeded trials per point (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument("--loss-model", choices=["bernoulli", "gilbert", "both"], default="both")
    p.add_argument("--burst", type=float, default=4.0,
                   help="mean burst length for gilbert loss (default: 4)")
    p.add_argument("--rate", default=DEFAULT_RATE,
                   help="codec rate point (default: %(default)s, the one send uses)")
    p.add_argument("--fec", nargs="+", default=["none", "light", "strong", FOR_LOSS],
                   help="FEC profiles (default: none light strong for_loss): for_loss plans "
                   "for each point's loss rate; any --fec spec of send (e.g. "
                   "for_loss:0.3,burst:4) is used as given")
    p.add_argument("--context-depth", type=int, nargs="+", default=[0, 2],
                   help="context depths (0 = full chain, c = later stages see stages 1..c "
                   "only); default: 0 2")
    p.add_argument("--max-packet", type=int, default=DEFAULT_MAX_PACKET,
                   help="packet size limit in bytes (default: %(default)s)")
    p.add_argument("--inpainters", nargs="+", default=["mim", "ar", "neighbor", "none"],
                   help="inpainters to compare (default: mim ar neighbor none)")
    p.add_argument("--ar-window", type=int, help="AR inpainter window in tokens per side "
                   "(default: the prior's)")
    p.add_argument("--baselines", nargs="+", choices=BASELINES, default=list(BASELINES),
                   metavar="CODEC", help="classical baselines at the same wire bytes, of "
                   f"{' '.join(BASELINES)} (default: all; AVIF is skipped where Pillow "
                   "lacks it)")
    p.add_argument("--no-baselines", action="store_true", help="no classical baselines")
    p.add_argument("--no-jpeg", action="store_true",
                   help="the old name of --no-baselines (from when JPEG was the only one)")
    p.add_argument("--compare-fec", help="FEC profile of inpainters.png and examples.png "
                   "(default: light, else strong, else none, whichever is swept)")
    p.add_argument("--oracle-rates", nargs="+", metavar="RATE",
                   help="rate points the oracle is read off (default: every shipped one)")
    p.add_argument("--quick", action="store_true",
                   help="a first look in a minute or two: the bundled photo, loss 0.2 and "
                   "0.4, bernoulli, FEC light and for_loss, MIM only, one trial, no "
                   "classical baselines")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped sweep in --out with its settings, skipping the "
                   "runs already in OUT/runs.jsonl (without --resume that file starts afresh)")
    p.add_argument("--replot", metavar="DIR", help="only redraw the figures and reprint the "
                   "table from DIR/loss_sweep.json of an earlier run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--out", metavar="OUT", default="out/loss_sweep", help="output folder "
                   "(default: %(default)s)")
    return p


#: Flags that only say how or where this invocation runs: never taken from a journal.
RUNTIME = ("resume", "replot", "quiet", "threads", "device", "out")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments: the command line, over a resumed sweep's journal, over --quick,
    over the defaults. InputError if --resume finds no journal or a different setup."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**quick_settings())
        args = p.parse_args(argv)
    if args.resume and not args.replot:
        old = sweep_io.read_journal(Path(args.out) / sweep_io.JOURNAL).args
        p.set_defaults(**{k: v for k, v in old.items() if k not in RUNTIME})
        args = _baselines(p.parse_args(argv))
        changed = sweep_io.setup_mismatch(old, vars(args))
        if changed:
            raise InputError(f"{', '.join(changed)} differ from the sweep being resumed in "
                             f"{args.out}: give the same, or drop --resume to start afresh")
    return _baselines(args)


def _baselines(args: argparse.Namespace) -> argparse.Namespace:
    """``baselines`` as the sweep uses it: empty under --no-baselines or --no-jpeg, each
    codec once, in :data:`BASELINES` order."""
    chosen = set() if args.no_baselines or args.no_jpeg else set(args.baselines)
    args.baselines = [b for b in BASELINES if b in chosen]
    return args
