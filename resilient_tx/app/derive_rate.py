"""``resilient-tx derive-rate``: k-means rate points from a trained model.

A thin front-end over :func:`resilient_tx.training.kmeans.derive_rate_points` (VQGAN
extreme-compression paper, Sec. 2.2) that writes the files of
:mod:`resilient_tx.zoo.derived`; ``simulations/make_rate_points.py`` does every shipped
base in one go.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resilient_tx.errors import InputError

#: Training images (never Kodak): ``../shared/data/bsds500`` beside the repository, so
#: this default only resolves in a source checkout, never inside an installed package.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "bsds500"

#: Where to get training images, for the one-line error when the folder is missing.
TRAINING_HINT = ("download the BSDS500 images (Berkeley segmentation data set, "
                 "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
                 "resources.html), or use any photos that are not Kodak, and pass {flag} DIR")


def training_dir(data: str | Path, flag: str = "--data") -> Path:
    """``data`` as a folder; InputError in one line saying where to get training images
    when it does not exist (the default only exists beside a source checkout)."""
    d = Path(data)
    if not d.is_dir():
        raise InputError(f"training images not found at {d}: {TRAINING_HINT.format(flag=flag)}")
    return d


def _output_path(args: argparse.Namespace, name: str) -> Path:
    """Where the point called ``name`` goes: -o FILE, --out-dir DIR or the shipped folder."""
    from resilient_tx.zoo.registry import derived_dir

    if args.output:
        return Path(args.output)
    return Path(args.out_dir or derived_dir()) / f"{name}.pt"


def _check_args(args: argparse.Namespace) -> None:
    """Refuse argument combinations that could only fail after the slow part."""
    from resilient_tx.zoo.registry import derived_dir

    if args.output and len(args.k) != 1:
        raise InputError("-o/--output names one file: give a single --k, or use --out-dir")
    if not (args.output or args.out_dir or (derived_dir().parent / f"{args.base}.pt").is_file()):
        # The shipped folder holds points of shipped bases only: the zoo finds bases by name.
        raise InputError(f"base {args.base!r} is not a shipped rate: give -o FILE or --out-dir")


def cmd_derive_rate(args: argparse.Namespace) -> int:
    """Derive, save and report one rate point per ``--k``."""
    from resilient_tx.model.derived import DerivedPQMIM, check_k
    from resilient_tx.runtime import resolve_device, set_threads
    from resilient_tx.training.kmeans import derive_rate_points, training_files
    from resilient_tx.zoo.derived import save_derived
    from resilient_tx.zoo.registry import get_model

    set_threads(args.threads)
    device = resolve_device(args.device)
    _check_args(args)
    base = get_model(args.base)
    if isinstance(base.net, DerivedPQMIM):
        raise InputError(f"{args.base!r} is itself a derived rate point; derive from its base")
    for k in args.k:  # before the slow part
        check_k(k, base.cfg.codebook_size)
    files = training_files(training_dir(args.data), args.limit)
    for pt in derive_rate_points(base, args.k, files, args.seed, device):
        path = _output_path(args, pt.name)
        mid = save_derived(path, pt)
        print(f"{pt.name}: model {mid.hex()} -> {path} ({path.stat().st_size / 1024:.1f} KiB); "
              f"{pt.meta['marginal_bits']:.3f} bits/sub-index with its own marginals, "
              f"{pt.meta['cluster_sum_bits']:.3f} with cluster-summed base marginals")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``derive-rate`` on the CLI's subparsers."""
    p = sub.add_parser(
        "derive-rate", help="derive smaller-codebook rate points from a model with k-means",
        description="Cluster each sub-codebook of a trained model into k entries with "
        "usage-weighted k-means (VQGAN extreme-compression paper, Sec. 2.2) and write a small "
        "rate-point file referencing the base model; its marginals are counted on the "
        "training images. No retraining. Shipped points live in resilient_tx/models/derived/.")
    p.add_argument("--base", default="low", help="base rate name or model file "
                   "(default: %(default)s)")
    p.add_argument("--k", type=int, nargs="+", required=True,
                   help="codebook size(s) to derive, each in [2, V)")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="training images for the marginals, never Kodak (default: "
                   "../shared/data/bsds500 beside a source checkout)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    p.add_argument("-o", "--output", help="output file (one --k only)")
    p.add_argument("--out-dir", help="output folder for BASE-kK.pt files "
                   "(default: the shipped resilient_tx/models/derived/)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.set_defaults(func=cmd_derive_rate)
