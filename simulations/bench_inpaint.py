"""Inpainting quality and time per image, for each inpainter, at a given token loss.

Each image is tokenised with a shipped rate point; a seeded Bernoulli mask hides a share
``--loss`` of its tokens (scattered holes, the case interleaved chunks produce) or, with
``--pattern rows``, whole runs of token rows (a burst that wipes a block). Every inpainter
fills the same holes; the script prints PSNR of the decoded image against the original
and the fill time per image, and writes JSON.

Without ``--images`` it runs on the photo bundled with the package; for the Kodak set,
download kodim01..24.png into a folder and pass ``--images DIR``.

    python simulations/bench_inpaint.py                            # the bundled photo
    python simulations/bench_inpaint.py --images DIR --limit 4
    python simulations/bench_inpaint.py --images DIR --device cuda --loss 0.5 --inpainters mim ar
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.codec.inpaint import get_inpainter  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.eval.metrics import psnr  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import SAMPLES, fail, image_files, plain  # noqa: E402

PROG = "bench_inpaint.py"


def loss_mask(h: int, w: int, loss: float, pattern: str, seed: int) -> torch.Tensor:
    """(h, w) bool, True = known. ``rows``: lost rows come in runs of 2-4."""
    gen = torch.Generator().manual_seed(seed)
    if pattern == "scattered":
        return torch.rand(h, w, generator=gen) >= loss
    known = torch.ones(h, w, dtype=torch.bool)
    while float((~known).float().mean()) < loss:
        r = int(torch.randint(0, h, (1,), generator=gen))
        known[r : r + int(torch.randint(2, 5, (1,), generator=gen))] = False
    return known


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", metavar="DIR", default=str(SAMPLES),
                   help="folder of test images (default: the bundled sample photo)")
    p.add_argument("--limit", type=int, default=4, help="first N images (0 = all)")
    p.add_argument("--rate", default="low")
    p.add_argument("--loss", type=float, default=0.3, help="share of tokens lost")
    p.add_argument("--pattern", choices=["scattered", "rows"], default="scattered")
    p.add_argument("--inpainters", nargs="+", default=["mim", "ar", "neighbor", "none"])
    p.add_argument("--ar-window", type=int, help="AR window, tokens per side (default: 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench_inpaint.json")
    args = p.parse_args(argv)
    try:
        if not 0.0 < args.loss < 1.0:
            raise ResilientTxError(f"--loss must be in (0, 1), got {args.loss}")
        set_threads(args.threads)
        device = resolve_device(args.device)
        model = get_model(args.rate)
        codec = Codec(model, device)
        files = image_files(args.images, args.limit)
        fillers = {n: get_inpainter(n, model, device, args.ar_window) for n in args.inpainters}
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in fillers}
    for i, f in enumerate(tqdm(files, desc="images")):
        img = load_rgb(f)
        tok = codec.image_to_tokens(img)
        known = loss_mask(tok.shape[1], tok.shape[2], args.loss, args.pattern, args.seed + i)
        for name, filler in fillers.items():
            filler.fill(tok[:, :2, :2], known[:2, :2])  # warm-up outside the timing
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = filler.fill(tok, known)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            rec = codec.tokens_to_image(out, img.shape[1], img.shape[0])
            rows[name].append((psnr(img, rec), dt))
    summary = {"rate": args.rate, "loss": args.loss, "pattern": args.pattern,
               "device": str(device), "images": len(files),
               "inpainters": {n: {"psnr_db": statistics.mean(r[0] for r in v),
                                  "seconds_per_image": statistics.mean(r[1] for r in v)}
                              for n, v in rows.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"{len(files)} images, rate {args.rate}, {args.loss:.0%} of tokens lost "
          f"({args.pattern}), device {device}:")
    for n, v in summary["inpainters"].items():
        print(f"  {n:<9} PSNR {v['psnr_db']:6.2f} dB   fill {v['seconds_per_image']:.3f} s/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
