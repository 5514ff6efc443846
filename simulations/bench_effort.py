"""Encoder-side effort: what N refinement steps of the latent buy, and what they cost.

For each rate point and effort this encodes every image with
``Codec.encode(image, effort)``, decodes the stream with the unchanged decoder, and
reports mean bpp (bytes of the ``.rtx`` file), PSNR, MS-SSIM
(:mod:`resilient_tx.eval.metrics`) and encode seconds per image. Effort 0 is the plain
encoder; see :mod:`resilient_tx.codec.refine` for what a step does.

    python simulations/bench_effort.py --images DIR --limit 6 --rates low high \\
        --efforts 0 5 20 --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from resilient_tx.codec.container import EncodedImage  # noqa: E402
from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.errors import InputError  # noqa: E402
from resilient_tx.eval.metrics import ms_ssim, psnr  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.runtime import set_threads  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import SAMPLES, fail, image_files, plain  # noqa: E402


@dataclass(frozen=True)
class Row:
    """Means over the images for one rate point and effort."""

    rate: str
    effort: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float


def measure(codec: Codec, images: list[np.ndarray], effort: int) -> tuple[float, ...]:
    """Mean (bpp, PSNR, MS-SSIM, encode seconds) of ``images`` at ``effort``."""
    cols: list[tuple[float, float, float, float]] = []
    for img in images:
        t0 = time.perf_counter()
        blob = bytes(codec.encode(img, effort))
        dt = time.perf_counter() - t0
        out = codec.decode(EncodedImage.parse(blob))
        h, w = img.shape[:2]
        cols.append((len(blob) * 8 / (h * w), psnr(img, out), ms_ssim(img, out), dt))
    return tuple(float(np.mean(c)) for c in zip(*cols, strict=True))


def run(rates: list[str], efforts: list[int], images: list[np.ndarray]) -> list[Row]:
    rows = []
    for rate in rates:
        codec = Codec(get_model(rate))
        for effort in efforts:
            bpp, p, s, dt = measure(codec, images, effort)
            rows.append(Row(rate, effort, bpp, p, s, dt))
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(r: Row) -> str:
    ssim = "nan" if math.isnan(r.ms_ssim) else f"{r.ms_ssim:.4f}"
    return (f"| {r.rate:<6} | {r.effort:>6} | {r.bpp:.4f} | {r.psnr:6.2f} | {ssim:>7} "
            f"| {r.encode_s:8.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(SAMPLES), help="image folder (default: sample)")
    ap.add_argument("--limit", type=int, default=0, help="first N images (0: all)")
    ap.add_argument("--rates", nargs="+", default=["low", "high"])
    ap.add_argument("--efforts", nargs="+", type=int, default=[0, 5, 20])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    args = ap.parse_args(argv)
    try:
        if any(e < 0 for e in args.efforts):
            raise InputError(f"--efforts must be >= 0, got {args.efforts}")
        images = [load_rgb(p) for p in image_files(args.images, args.limit)]
        set_threads(args.threads)
        print(f"{len(images)} images from {args.images}, {args.threads} threads")
        print("| rate   | effort | bpp    | PSNR   | MS-SSIM | enc s/im |")
        print("|--------|--------|--------|--------|---------|----------|")
        run(args.rates, args.efforts, images)
    except InputError as exc:
        return fail("bench_effort", str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
