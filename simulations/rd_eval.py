"""Rate-distortion evaluation of the shipped rate points against JPEG and WebP.

For every image and rate point this encodes, decodes (checking the tokens are exact),
and measures bpp, PSNR, MS-SSIM, encode/decode wall time, and the bits the same tokens
would cost with marginal-only coding (the PQ-MIM paper's ablation, Sec. 4.2). JPEG and
WebP (Pillow) are run at the same bpp, image by image, and as quality sweeps for the
plot. Writes ``OUT/rd.json``, ``OUT/rd.csv`` and ``OUT/rd.png`` and prints a table.

The shipped rate points include the k-means points derived from each trained model
(``low-k64`` ...; VQGAN extreme-compression paper, Sec. 2.2, see ``resilient_tx.training.kmeans``).
On the plot each family (a trained model and its k-means points) is one curve with one
marker style, running from the smallest codebook to the base model.

    python simulations/rd_eval.py                       # Kodak, all shipped rate points
    python simulations/rd_eval.py --rates low low-k64 low-k16 --limit 2   # a quick look
    python simulations/rd_eval.py --images DIR --limit 4 --out out/rd_quick
    python simulations/rd_eval.py --model-files runs/low/model.pt   # an unshipped model
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from resilient_tx.codec.container import EncodedImage  # noqa: E402
from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.eval import metrics  # noqa: E402
from resilient_tx.images import list_images, load_rgb  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.zoo.checkpoint import LoadedModel, load_model  # noqa: E402
from resilient_tx.zoo.registry import available_rates, get_model  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "kodak"
MARKERS = "sD^vo"  # one per model family on the plot
SWEEP = {"JPEG": (1, 3, 5, 8, 12, 20, 30, 50), "WEBP": (0, 2, 5, 10, 20, 35, 50, 75)}


@dataclass(frozen=True)
class ImageResult:
    rate: str
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    marginal_bpp: float  # same tokens, stage-1 marginals for every token
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float
    tokens_exact: bool
    jpeg: metrics.BaselineResult
    webp: metrics.BaselineResult


@dataclass(frozen=True)
class RateSummary:
    rate: str
    family: str  # the trained model a k-means rate point derives from (itself for a base)
    codebook_size: int
    model_id: str
    images: int
    bpp: float
    marginal_bpp: float
    mim_saving: float  # 1 - bits(MIM) / bits(marginal), over the whole set
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float
    all_tokens_exact: bool
    jpeg_bpp: float
    jpeg_psnr: float
    jpeg_ms_ssim: float
    jpeg_reached: int  # images where JPEG could get down to our bpp
    webp_bpp: float
    webp_psnr: float
    webp_ms_ssim: float
    webp_reached: int


def _timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t0


def eval_image(codec: Codec, name: str, image: np.ndarray,
               caches: dict[str, dict[int, bytes]]) -> ImageResult:
    h, w = image.shape[:2]
    enc, t_enc = _timed(codec.encode, image)
    blob = bytes(enc)
    recon, t_dec = _timed(codec.decode, EncodedImage.parse(blob))
    tokens = codec.image_to_tokens(image)
    exact = bool((codec.decode_tokens(enc.stages, *tokens.shape[1:]) == tokens).all())
    bpp = metrics.bpp(len(blob), w, h)
    # The marginal-only ablation codes the same tokens; the .rtx header is the same for both.
    header = len(blob) - sum(len(s.data) for s in enc.stages)
    marg = metrics.bpp(codec.marginal_only_bytes(tokens) + header, w, h)
    return ImageResult(
        rate=codec.model.name, image=name, width=w, height=h, bytes=len(blob), bpp=bpp,
        marginal_bpp=marg, psnr=metrics.psnr(image, recon), ms_ssim=metrics.ms_ssim(image, recon),
        encode_s=t_enc, decode_s=t_dec, tokens_exact=exact,
        jpeg=metrics.match_bpp(image, "JPEG", bpp, caches["JPEG"]),
        webp=metrics.match_bpp(image, "WEBP", bpp, caches["WEBP"]))


def _mean(xs: Sequence[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return float(np.mean(vals)) if vals else math.nan


def summarise(model: LoadedModel, rows: list[ImageResult]) -> RateSummary:
    pixels = sum(r.width * r.height for r in rows)
    bits = sum(r.bpp * r.width * r.height for r in rows)
    marg_bits = sum(r.marginal_bpp * r.width * r.height for r in rows)
    return RateSummary(
        rate=model.name, family=str(model.meta.get("derived_from", model.name)),
        codebook_size=model.cfg.codebook_size, model_id=model.model_id_hex, images=len(rows),
        bpp=bits / pixels, marginal_bpp=marg_bits / pixels, mim_saving=1 - bits / marg_bits,
        psnr=_mean([r.psnr for r in rows]), ms_ssim=_mean([r.ms_ssim for r in rows]),
        encode_s=_mean([r.encode_s for r in rows]), decode_s=_mean([r.decode_s for r in rows]),
        all_tokens_exact=all(r.tokens_exact for r in rows),
        jpeg_bpp=_mean([r.jpeg.bpp for r in rows]), jpeg_psnr=_mean([r.jpeg.psnr for r in rows]),
        jpeg_ms_ssim=_mean([r.jpeg.ms_ssim for r in rows]),
        jpeg_reached=sum(r.jpeg.reached for r in rows),
        webp_bpp=_mean([r.webp.bpp for r in rows]), webp_psnr=_mean([r.webp.psnr for r in rows]),
        webp_ms_ssim=_mean([r.webp.ms_ssim for r in rows]),
        webp_reached=sum(r.webp.reached for r in rows))


def sweep(images: dict[str, np.ndarray],
          caches: dict[str, dict[str, dict[int, bytes]]]) -> dict[str, list[dict[str, float]]]:
    """Mean bpp / PSNR / MS-SSIM of JPEG and WebP at fixed qualities, for the plot."""
    out: dict[str, list[dict[str, float]]] = {}
    for fmt, qualities in SWEEP.items():
        pts = []
        for q in tqdm(qualities, desc=f"{fmt} sweep", leave=False):
            res = [metrics.evaluate_quality(img, fmt, q, caches[name][fmt])
                   for name, img in images.items()]
            pts.append({"quality": q, "bpp": _mean([r.bpp for r in res]),
                        "psnr": _mean([r.psnr for r in res]),
                        "ms_ssim": _mean([r.ms_ssim for r in res])})
        out[fmt] = pts
    return out


def plot(summaries: list[RateSummary], curves: dict[str, list[dict[str, float]]],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ms_ssim", "MS-SSIM")):
        for fmt, pts in curves.items():
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], "o--", ms=3,
                    label=f"{fmt.title()} (Pillow)")
        ours = sorted(summaries, key=lambda s: s.bpp)
        families = list(dict.fromkeys(s.family for s in ours))  # lowest rate first
        for i, fam in enumerate(families):
            pts = [s for s in ours if s.family == fam]
            kmeans = " + k-means" if any(s.rate != fam for s in pts) else ""
            grey = f"{0.4 * i / max(1, len(families) - 1):.2f}"  # black to dark grey
            ax.plot([s.bpp for s in pts], [getattr(s, key) for s in pts],
                    f"{MARKERS[i % len(MARKERS)]}-", color=grey, ms=5,
                    label=f"resilient-tx {fam}{kmeans}")
        for s in ours:
            # k-means points are labelled by codebook size alone: they sit close together.
            short = f"k{s.codebook_size}" if s.rate != s.family else s.rate
            ax.annotate(short, (s.bpp, getattr(s, key)), textcoords="offset points",
                        xytext=(4, -10) if short != s.rate else (-4, 6), fontsize=8)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.set_xlim(0, max(0.6, 1.3 * max(s.bpp for s in ours)))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Rate-distortion, mean over {summaries[0].images} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(summaries: list[RateSummary]) -> None:
    hdr = (f"{'rate':<10}{'bpp':>7}{'marg bpp':>9}{'MIM save':>9}{'PSNR':>7}{'MS-SSIM':>8}"
           f"{'enc s':>7}{'dec s':>7} | {'JPEG bpp':>8}{'PSNR':>7}{'MS-SSIM':>8}{'reach':>6}"
           f" | {'WebP bpp':>8}{'PSNR':>7}{'MS-SSIM':>8}{'reach':>6}")
    print(hdr)
    print("-" * len(hdr))
    for s in summaries:
        print(f"{s.rate:<10}{s.bpp:>7.4f}{s.marginal_bpp:>9.4f}{s.mim_saving:>8.1%} {s.psnr:>7.2f}"
              f"{s.ms_ssim:>8.4f}{s.encode_s:>7.2f}{s.decode_s:>7.2f} | {s.jpeg_bpp:>8.4f}"
              f"{s.jpeg_psnr:>7.2f}{s.jpeg_ms_ssim:>8.4f}{s.jpeg_reached:>3}/{s.images:<2}"
              f" | {s.webp_bpp:>8.4f}{s.webp_psnr:>7.2f}{s.webp_ms_ssim:>8.4f}"
              f"{s.webp_reached:>3}/{s.images:<2}")
    print("JPEG/WebP: highest quality at or below our bpp, per image; 'reach' counts images "
          "where the codec could get that low (otherwise its lowest quality is used).")


def _models(args: argparse.Namespace) -> list[LoadedModel]:
    if args.model_files:
        return [load_model(p) for p in args.model_files]
    return [get_model(r) for r in (args.rates or available_rates())]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of test images "
                   "(default: ../shared/data/kodak)")
    p.add_argument("--rates", nargs="+", help="shipped rate points, k-means ones included "
                   "(default: all; see `resilient-tx models`)")
    p.add_argument("--model-files", nargs="+", help="evaluate these model files instead")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--out", default="out/rd", help="output folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        set_threads(args.threads)
        device = resolve_device(args.device)
        files = list_images(args.images)[: args.limit or None]
        images = {f.stem: load_rgb(f) for f in files}
        caches = {name: {"JPEG": {}, "WEBP": {}} for name in images}
        models = _models(args)
    except ResilientTxError as exc:
        print(f"rd_eval: error: {exc}", file=sys.stderr)
        return 2
    rows: list[ImageResult] = []
    summaries: list[RateSummary] = []
    for model in models:
        codec = Codec(model, device)
        codec.decode(codec.encode(next(iter(images.values()))[:64, :64]))  # warm-up
        mine = [eval_image(codec, n, img, caches[n])
                for n, img in tqdm(images.items(), desc=f"rate {model.name}")]
        rows += mine
        summaries.append(summarise(model, mine))
    curves = sweep(images, caches)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"images": args.images, "device": str(device), "threads": args.threads,
              "summary": [dataclasses.asdict(s) for s in summaries], "sweeps": curves,
              "per_image": [dataclasses.asdict(r) for r in rows]}
    (out / "rd.json").write_text(json.dumps(report, indent=1))
    with (out / "rd.csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(dataclasses.asdict(summaries[0])))
        wr.writeheader()
        wr.writerows(dataclasses.asdict(s) for s in summaries)
    plot(summaries, curves, out / "rd.png")
    print_table(summaries)
    print(f"wrote {out}/rd.json, rd.csv, rd.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
