"""Regenerate the shipped k-means rate points (VQGAN extreme-compression paper, Sec. 2.2).

Every file in ``resilient_tx/models/derived/`` references its base model by id, so after a
base model is retrained they must be regenerated; this does all of them in one go (the
encoder runs once per training image for all k of a base). Same as
``resilient-tx derive-rate --base B --k K1 K2 ...`` for each base.

The marginals are counted on training images, never Kodak: ``--data DIR``, by default
``../shared/data/bsds500`` beside a source checkout (the BSDS500 images, or other photos).

    python simulations/make_rate_points.py --data DIR       # every shipped base in PLAN
    python simulations/make_rate_points.py --data DIR --bases low --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilient_tx.app.derive_rate import DEFAULT_DATA, training_dir  # noqa: E402
from resilient_tx.errors import InputError, ResilientTxError  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.training.kmeans import derive_rate_points, training_files  # noqa: E402
from resilient_tx.zoo.derived import save_derived  # noqa: E402
from resilient_tx.zoo.registry import derived_dir, get_model  # noqa: E402
from simulations.sim_common import fail, plain  # noqa: E402

PROG = "make_rate_points.py"

#: base rate -> codebook sizes to derive. More k per base cost no extra encoder passes, but
#: every shipped point adds to receiver warm-up and to sweeps over ``available_rates()``.
PLAN: dict[str, tuple[int, ...]] = {"low": (128, 64, 32, 16), "high": (128, 64)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bases", nargs="+", help=f"bases to do (default: those of {sorted(PLAN)} "
                   "that are shipped)")
    p.add_argument("--data", metavar="DIR", default=str(DEFAULT_DATA),
                   help="training images, never Kodak (default: ../shared/data/bsds500 "
                   "beside a source checkout)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--out-dir", default=None, help="default: resilient_tx/models/derived/")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        set_threads(args.threads)
        device = resolve_device(args.device)
        shipped = [b for b in PLAN if (derived_dir().parent / f"{b}.pt").is_file()]
        bases = args.bases or shipped
        unknown = sorted(set(bases) - set(PLAN))
        if unknown:
            raise InputError(f"no plan for base(s) {unknown}; plan: {PLAN}")
        files = training_files(training_dir(args.data), args.limit)
        out_dir = Path(args.out_dir) if args.out_dir else derived_dir()
        for name in bases:
            base = get_model(name)
            for pt in derive_rate_points(base, PLAN[name], files, device=device):
                path = out_dir / f"{pt.name}.pt"
                mid = save_derived(path, pt)
                print(f"{pt.name}: model {mid.hex()} -> {path} "
                      f"({path.stat().st_size / 1024:.1f} KiB), "
                      f"{pt.meta['marginal_bits']:.3f} bits/sub-index (marginals)")
        if not args.bases:
            for name in sorted(set(PLAN) - set(shipped)):
                print(f"skipped {name}: no {name}.pt shipped here", file=sys.stderr)
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
