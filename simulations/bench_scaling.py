"""Encode/decode time against image size: does cost grow linearly with pixels?

The PQ-VAE is convolutional plus XCiT (cross-covariance attention, linear in tokens) and
the MIM is XCiT too, so time per pixel should stay flat from 256x256 to 2048x2048 (the
target: within 1.5x). Also times the 768x512 Kodak size against the 1 s target.

Images are a photo (the bundled sample unless ``--image FILE``) resized with Lanczos
(content matters little for timing, but a real photo keeps the entropy coder's work
realistic). Each size is timed ``--repeats`` times after a warm-up; the minimum is
reported (the least disturbed run).

    python simulations/bench_scaling.py                 # 2 threads, CPU
    python simulations/bench_scaling.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from resilient_tx.app.demo import sample_path  # noqa: E402
from resilient_tx.codec.container import EncodedImage  # noqa: E402
from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.config import DEFAULT_RATE  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import fail, plain  # noqa: E402

PROG = "bench_scaling.py"
SIZES = ((256, 256), (512, 512), (768, 512), (1024, 1024), (2048, 2048))


@dataclass(frozen=True)
class Timing:
    width: int
    height: int
    encode_s: float
    decode_s: float
    encode_us_per_px: float
    decode_us_per_px: float


def _resized(src: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.LANCZOS))


def time_size(codec: Codec, image: np.ndarray, repeats: int) -> Timing:
    h, w = image.shape[:2]
    enc_t, dec_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = bytes(codec.encode(image))
        t1 = time.perf_counter()
        codec.decode(EncodedImage.parse(blob))
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
    e, d = min(enc_t), min(dec_t)
    return Timing(w, h, e, d, 1e6 * e / (w * h), 1e6 * d / (w * h))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default=DEFAULT_RATE, help="rate point (default: %(default)s)")
    p.add_argument("--image", metavar="FILE", help="source photo (default: the bundled sample)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per size (min is kept)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--out", default="out/bench_scaling.json", help="JSON report")
    args = p.parse_args(argv)
    try:
        set_threads(args.threads)
        codec = Codec(get_model(args.rate), resolve_device(args.device))
        src = load_rgb(args.image or sample_path())
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    codec.decode(codec.encode(src[:64, :64]))  # warm-up: one-time init is not per-pixel cost
    rows = []
    print(f"rate {args.rate}, {args.device}, {args.threads} threads, min of {args.repeats}")
    print(f"{'size':>11}{'enc s':>8}{'dec s':>8}{'enc us/px':>11}{'dec us/px':>11}")
    for w, h in SIZES:
        t = time_size(codec, _resized(src, w, h), args.repeats if w * h <= 1 << 20 else 1)
        rows.append(t)
        print(f"{w:>5}x{h:<5}{t.encode_s:>8.3f}{t.decode_s:>8.3f}{t.encode_us_per_px:>11.3f}"
              f"{t.decode_us_per_px:>11.3f}")
    square = [r for r in rows if r.width == r.height]
    spread = {k: max(getattr(r, k) for r in square) / min(getattr(r, k) for r in square)
              for k in ("encode_us_per_px", "decode_us_per_px")}
    print(f"time/pixel spread 256^2..2048^2: encode {spread['encode_us_per_px']:.2f}x, "
          f"decode {spread['decode_us_per_px']:.2f}x (target <= 1.5x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rate": args.rate, "device": args.device, "threads": args.threads,
                               "timings": [asdict(r) for r in rows], "spread": spread}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
