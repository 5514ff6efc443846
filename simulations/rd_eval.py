"""Rate-distortion evaluation of the shipped rate points against AVIF, WebP and JPEG.

For every image and rate point this encodes, decodes (checking the tokens are exact),
and measures bpp, PSNR, MS-SSIM, encode/decode wall time, and the bits the same tokens
would cost with marginal-only coding (the PQ-MIM paper's ablation, Sec. 4.2). JPEG and
WebP (Pillow) are also taken per image at the highest quality whose bpp does not exceed
ours (the "matched" columns).

The classical codecs are swept over fixed qualities (``resilient_tx.eval.classical``:
AVIF at libavif speed 6 with 4:2:0 chroma, WebP method 6, JPEG 4:2:0), each quality
averaged over the images into one RD curve per codec. Our rate points form curves too:
one per family (a trained model and its k-means points, VQGAN extreme-compression
paper Sec. 2.2) and one through all points. The Bjøntegaard delta rate
(``resilient_tx.eval.bdrate``: log-rate over quality, PCHIP, integrated over the quality
interval both curves cover) of each of our curves against each codec is reported with
PSNR and with MS-SSIM as the quality axis, over the whole overlap and over the part of it
where both curves spend at most ``--bd-max-bpp``. Negative: we need fewer bits.

Writes ``OUT/rd.json`` (everything), ``OUT/rd.csv`` (our rate points),
``OUT/rd_sweeps.csv`` (codec curves), ``OUT/rd_bdrate.csv`` and ``OUT/rd.png``, and prints
the tables. Without ``--images`` it runs on the one bundled sample
(``resilient_tx/samples/``), a smoke test and not a Kodak result.

    python simulations/rd_eval.py --images DIR                  # all shipped rate points
    python simulations/rd_eval.py --images DIR --rates low low-k64 low-k16 --limit 2
    python simulations/rd_eval.py --images DIR --codecs WEBP JPEG --out out/rd_quick
    python simulations/rd_eval.py --images DIR --avif-q 0 10 20 --webp-q 0 5 --jpeg-q 1 5
    python simulations/rd_eval.py --images DIR --model-files runs/low/model.pt
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
from resilient_tx.eval import bdrate, classical, metrics  # noqa: E402
from resilient_tx.images import list_images, load_rgb  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.zoo.checkpoint import LoadedModel, load_model  # noqa: E402
from resilient_tx.zoo.registry import available_rates, get_model  # noqa: E402

SAMPLE_IMAGES = ROOT / "resilient_tx" / "samples"
KODAK_HINT = ("the Kodak set (kodim01.png .. kodim24.png) is at https://r0k.us/graphics/kodak/ "
              "-- download it into a folder and pass --images DIR")
MARKERS = "sD^vo"  # one per model family on the plot
CODEC_STYLE = {"AVIF": ("tab:red", "o"), "WEBP": ("tab:blue", "v"), "JPEG": ("tab:green", "x")}
CODEC_NAME = {"AVIF": "AVIF", "WEBP": "WebP", "JPEG": "JPEG"}
METRICS = {"psnr": "PSNR", "ms_ssim": "MS-SSIM"}


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


@dataclass(frozen=True)
class Curve:
    """An RD curve: ours (a family, or all points) or a classical codec's sweep."""

    name: str
    labels: tuple[str, ...]  # rate point names, or codec qualities
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]
    ms_ssim: tuple[float, ...]


@dataclass(frozen=True)
class BDRow:
    """BD-rate of one of our curves against one codec, on one quality axis and range."""

    curve: str
    anchor: str
    metric: str  # "psnr" or "ms_ssim"
    max_bpp: float | None  # None: the whole overlap
    bd_rate_pct: float | None = None  # None: nothing to compare, see note
    quality_lo: float | None = None  # the quality interval compared
    quality_hi: float | None = None
    ours_bpp_lo: float | None = None  # each curve's interpolated bpp at its ends
    ours_bpp_hi: float | None = None
    anchor_bpp_lo: float | None = None
    anchor_bpp_hi: float | None = None
    note: str = ""


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


def sweep(images: dict[str, np.ndarray], caches: dict[str, dict[str, dict[int, bytes]]],
          qualities: dict[str, Sequence[int]],
          avif: classical.AvifSettings) -> dict[str, list[classical.SweepPoint]]:
    """Per codec, the mean bpp / PSNR / MS-SSIM over the images at each quality."""
    out: dict[str, list[classical.SweepPoint]] = {}
    for codec, qs in qualities.items():
        per_image = {name: caches[name][codec] for name in images}
        out[codec] = [classical.sweep_point(images, codec, q, avif, per_image)
                      for q in tqdm(qs, desc=f"{codec} sweep", leave=False)]
    return out


def our_curves(summaries: list[RateSummary]) -> list[Curve]:
    """One curve per family (lowest rate first), plus one through all points."""
    ours = sorted(summaries, key=lambda s: s.bpp)
    groups = {fam: [s for s in ours if s.family == fam] for fam in dict.fromkeys(
        s.family for s in ours)}
    if len(groups) > 1:
        groups["all"] = ours
    return [Curve(name=n, labels=tuple(s.rate for s in pts), bpp=tuple(s.bpp for s in pts),
                  psnr=tuple(s.psnr for s in pts), ms_ssim=tuple(s.ms_ssim for s in pts))
            for n, pts in groups.items()]


def codec_curve(points: list[classical.SweepPoint]) -> Curve:
    return Curve(name=points[0].codec, labels=tuple(f"q{p.quality}" for p in points),
                 bpp=tuple(p.bpp for p in points), psnr=tuple(p.psnr for p in points),
                 ms_ssim=tuple(p.ms_ssim for p in points))


def _rd_points(curve: Curve, metric: str) -> tuple[list[float], list[float], list[str]]:
    """The curve's finite points on its Pareto front, and the labels of points dropped."""
    qual: tuple[float, ...] = getattr(curve, metric)
    ok = [i for i, q in enumerate(qual) if math.isfinite(q)]
    front = [ok[i] for i in bdrate.pareto_front([curve.bpp[i] for i in ok],
                                                [qual[i] for i in ok])]
    dropped = [curve.labels[i] for i in range(len(qual)) if i not in front]
    return [curve.bpp[i] for i in front], [qual[i] for i in front], dropped


def bd_row(ours: Curve, anchor: Curve, metric: str, max_bpp: float | None,
           method: bdrate.Method) -> BDRow:
    """BD-rate of ``ours`` against ``anchor``; a row with a note when none exists."""
    (r_o, q_o, drop_o), (r_a, q_a, drop_a) = (_rd_points(c, metric) for c in (ours, anchor))
    notes = [f"{c.name} without {', '.join(d)} (NaN, dominated or a repeat)"
             for c, d in ((ours, drop_o), (anchor, drop_a)) if d]
    need = 4 if method == "cubic" else 2
    res = None
    if min(len(r_o), len(r_a)) < need:
        notes.append(f"fewer than {need} usable points")
    else:
        res = bdrate.bd_rate(r_a, q_a, r_o, q_o, max_rate=max_bpp, method=method)
        if res is None:
            notes.append("no overlap" + (f" at <= {max_bpp} bpp" if max_bpp else ""))
    row = BDRow(ours.name, anchor.name, metric, max_bpp, note="; ".join(notes))
    if res is None:
        return row
    return dataclasses.replace(
        row, bd_rate_pct=res.percent, quality_lo=res.quality_lo, quality_hi=res.quality_hi,
        ours_bpp_lo=res.test_rate_lo, ours_bpp_hi=res.test_rate_hi,
        anchor_bpp_lo=res.ref_rate_lo, anchor_bpp_hi=res.ref_rate_hi)


def bd_table(ours: Sequence[Curve], anchors: Sequence[Curve], max_bpp: float,
             method: bdrate.Method = "pchip") -> list[BDRow]:
    """Every (our curve, anchor, quality axis, range) combination."""
    return [bd_row(o, a, m, lim, method) for o in ours for a in anchors for m in METRICS
            for lim in (None, max_bpp)]


def _plot_ours(ax, summaries: list[RateSummary], key: str) -> None:
    ours = sorted(summaries, key=lambda s: s.bpp)
    families = list(dict.fromkeys(s.family for s in ours))  # lowest rate first
    for i, fam in enumerate(families):
        pts = [s for s in ours if s.family == fam]
        kmeans = " + k-means" if any(s.rate != fam for s in pts) else ""
        grey = f"{0.4 * i / max(1, len(families) - 1):.2f}"  # black to dark grey
        ax.plot([s.bpp for s in pts], [getattr(s, key) for s in pts],
                f"{MARKERS[i % len(MARKERS)]}-", color=grey, ms=5, lw=1.8,
                label=f"resilient-tx {fam}{kmeans}")
    for s in ours:
        # k-means points are labelled by codebook size alone: they sit close together.
        short = f"k{s.codebook_size}" if s.rate != s.family else s.rate
        ax.annotate(short, (s.bpp, getattr(s, key)), textcoords="offset points",
                    xytext=(4, -10) if short != s.rate else (-4, 6), fontsize=7)


def plot(summaries: list[RateSummary], sweeps: dict[str, list[classical.SweepPoint]],
         path: Path, max_bpp: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    bpps = [s.bpp for s in summaries] + [p.bpp for pts in sweeps.values() for p in pts]
    for ax, (key, label) in zip(axes, METRICS.items(), strict=True):
        for codec, pts in sweeps.items():
            colour, marker = CODEC_STYLE[codec]
            ax.plot([p.bpp for p in pts], [getattr(p, key) for p in pts], f"{marker}--",
                    color=colour, ms=4, lw=1, label=f"{CODEC_NAME[codec]} (Pillow)")
        _plot_ours(ax, summaries, key)
        ax.axvline(max_bpp, color="0.6", ls=":", lw=1)
        # Log rate: the BD-rate works on log rate, and the codecs span 30x in bpp.
        ax.set_xscale("log")
        ax.set_xlim(0.8 * min(bpps), 1.2 * max(bpps))
        ticks = [t for t in (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
                 if 0.8 * min(bpps) <= t <= 1.2 * max(bpps)]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.83, 0.5), fontsize=8)
    fig.suptitle(f"Rate-distortion, mean over {summaries[0].images} images "
                 f"(dotted: {max_bpp:g} bpp)")
    fig.tight_layout(rect=(0, 0, 0.83, 1))
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


def print_sweeps(sweeps: dict[str, list[classical.SweepPoint]],
                 avif: classical.AvifSettings) -> None:
    print(f"\nCodec sweeps (means over images; AVIF speed {avif.speed}, {avif.subsampling}, "
          "WebP method 6, JPEG 4:2:0):")
    print(f"{'codec':<6}{'q':>4}{'bpp':>8}{'PSNR':>7}{'MS-SSIM':>8}{'bpp range':>16}")
    for codec, pts in sweeps.items():
        for p in pts:
            print(f"{codec:<6}{p.quality:>4}{p.bpp:>8.4f}{p.psnr:>7.2f}{p.ms_ssim:>8.4f}"
                  f"{p.bpp_min:>8.3f}-{p.bpp_max:<7.3f}")


def _cell(row: BDRow) -> str:
    if row.bd_rate_pct is None:
        return "n/a"
    return f"{row.bd_rate_pct:+6.1f}% ({row.ours_bpp_lo:.3f}-{row.ours_bpp_hi:.3f})"


def print_bd(rows: list[BDRow], max_bpp: float, method: str) -> None:
    cols = [(m, lim) for m in METRICS for lim in (None, max_bpp)]
    heads = [f"{METRICS[m]} {'overlap' if lim is None else f'<={lim:g} bpp'}" for m, lim in cols]
    print(f"\nBD-rate of our curves vs each codec ({method}; negative = we need fewer bits at "
          "equal quality; in brackets our bpp span of the compared interval):")
    print(f"{'curve':<7}{'vs':<6}" + "".join(f"{h:>25}" for h in heads))
    index = {(r.curve, r.anchor, r.metric, r.max_bpp): r for r in rows}
    for curve, anchor in dict.fromkeys((r.curve, r.anchor) for r in rows):
        cells = [_cell(index[(curve, anchor, m, lim)]) for m, lim in cols]
        print(f"{curve:<7}{anchor:<6}" + "".join(f"{c:>25}" for c in cells))
    for r in rows:
        if r.note:
            print(f"  {r.curve} vs {r.anchor}, {METRICS[r.metric]}, "
                  f"{'overlap' if r.max_bpp is None else f'<={r.max_bpp:g} bpp'}: {r.note}")


def _models(args: argparse.Namespace) -> list[LoadedModel]:
    if args.model_files:
        return [load_model(p) for p in args.model_files]
    return [get_model(r) for r in (args.rates or available_rates())]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", help="folder of test images (default: the one bundled sample, "
                   "resilient_tx/samples/ -- a smoke test, not Kodak)")
    p.add_argument("--rates", nargs="+", help="shipped rate points, k-means ones included "
                   "(default: all; see `resilient-tx models`)")
    p.add_argument("--model-files", nargs="+", help="evaluate these model files instead")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--out", default="out/rd", help="output folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--codecs", nargs="+", default=list(classical.CODECS), type=str.upper,
                   choices=classical.CODECS, help="codecs to sweep (default: all three)")
    for codec in classical.CODECS:
        p.add_argument(f"--{codec.lower()}-q", nargs="+", type=int, metavar="Q",
                       default=list(classical.DEFAULT_QUALITIES[codec]),
                       help=f"{codec} sweep qualities (default: %(default)s)")
    p.add_argument("--avif-speed", type=int, default=6, help="libavif speed 0..10 "
                   "(default: %(default)s)")
    p.add_argument("--avif-subsampling", default="4:2:0", choices=("4:2:0", "4:2:2", "4:4:4"),
                   help="AVIF chroma subsampling (default: %(default)s)")
    p.add_argument("--bd-max-bpp", type=float, default=0.2,
                   help="second BD-rate range: where both curves are at most this many bpp "
                   "(default: %(default)s)")
    p.add_argument("--bd-method", default="pchip", choices=bdrate.METHODS,
                   help="log-rate interpolation for the BD-rate (default: %(default)s)")
    return p.parse_args(argv)


def _image_folder(arg: str | None) -> Path:
    if arg is None:
        print(f"rd_eval: no --images: using the bundled sample {SAMPLE_IMAGES} "
              "(a smoke test, not a Kodak result)", file=sys.stderr)
        return SAMPLE_IMAGES
    return Path(arg)


def _write(out: Path, report: dict, summaries: list[RateSummary],
           sweeps: dict[str, list[classical.SweepPoint]], rows: list[BDRow]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rd.json").write_text(json.dumps(report, indent=1))
    tables: list[tuple[str, list]] = [
        ("rd.csv", summaries), ("rd_sweeps.csv", [p for pts in sweeps.values() for p in pts]),
        ("rd_bdrate.csv", rows)]
    for name, items in tables:
        if not items:
            continue
        with (out / name).open("w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(items[0])])
            wr.writeheader()
            wr.writerows(dataclasses.asdict(x) for x in items)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    folder = _image_folder(args.images)
    if not folder.is_dir():
        print(f"rd_eval: error: no image folder at {folder}; {KODAK_HINT}", file=sys.stderr)
        return 2
    avif = classical.AvifSettings(speed=args.avif_speed, subsampling=args.avif_subsampling)
    qualities = {c: getattr(args, f"{c.lower()}_q") for c in classical.CODECS if c in args.codecs}
    try:
        for c in qualities:
            classical.check_codec(c)
        set_threads(args.threads)
        device = resolve_device(args.device)
        files = list_images(folder)[: args.limit or None]
        images = {f.stem: load_rgb(f) for f in files}
        caches: dict[str, dict[str, dict[int, bytes]]] = {
            name: {c: {} for c in classical.CODECS} for name in images}
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
    sweeps = sweep(images, caches, qualities, avif)
    ours = our_curves(summaries)
    bd = bd_table(ours, [codec_curve(pts) for pts in sweeps.values()], args.bd_max_bpp,
                  args.bd_method)
    report = {"images": str(folder), "device": str(device), "threads": args.threads,
              "settings": {"avif": dataclasses.asdict(avif), "webp": "method=6",
                           "jpeg": "4:2:0, optimize", "qualities": qualities,
                           "bd_method": args.bd_method, "bd_max_bpp": args.bd_max_bpp},
              "summary": [dataclasses.asdict(s) for s in summaries],
              "sweeps": {c: [dataclasses.asdict(p) for p in pts] for c, pts in sweeps.items()},
              "curves": [dataclasses.asdict(c) for c in ours],
              "bd_rate": [dataclasses.asdict(r) for r in bd],
              "per_image": [dataclasses.asdict(r) for r in rows]}
    out = Path(args.out)
    _write(out, report, summaries, sweeps, bd)
    plot(summaries, sweeps, out / "rd.png", args.bd_max_bpp)
    print_table(summaries)
    print_sweeps(sweeps, avif)
    print_bd(bd, args.bd_max_bpp, args.bd_method)
    print(f"wrote {out}/rd.json, rd.csv, rd_sweeps.csv, rd_bdrate.csv, rd.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
