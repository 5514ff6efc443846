"""Loss sweep: picture quality against packet loss, for FEC profiles and inpainters.

Every image is encoded and packetized once per FEC profile, sent through the seeded
channel simulator at each loss rate and trial, received by the real receiver
(:mod:`resilient_tx.resilience.reassembly`: exact tokens only), and completed by each inpainter.
The oracle is the same codec with no loss at (1 - p) x the bytes on the wire, read off
the no-loss rate-distortion points of the shipped rate points (linear in bpp; flagged
when outside their range).

    python simulations/loss_sweep.py                          # bundled samples, both models
    python simulations/loss_sweep.py --images ../shared/data/kodak --limit 8 --trials 2
    python simulations/loss_sweep.py --loss-model gilbert --burst 4 --rates 0.3 0.5

Writes OUT/loss_sweep.json, OUT/loss_sweep.csv, OUT/loss_sweep.png (PSNR and MS-SSIM
against loss, ours with MIM inpainting vs JPEG and JPEG+FEC at the same bytes),
OUT/inpainters.png (MIM vs neighbour vs none for the best FEC setting) and
OUT/examples.png (reconstructions of the first image), and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.codec.inpaint import get_inpainter  # noqa: E402
from resilient_tx.config import DEFAULT_RATE  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.eval import jpeg_baseline, metrics  # noqa: E402
from resilient_tx.images import list_images, load_rgb  # noqa: E402
from resilient_tx.resilience import fec, reassembly  # noqa: E402
from resilient_tx.resilience.packetizer import PacketizedImage, Packetizer  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.transport import channel  # noqa: E402
from resilient_tx.zoo.registry import available_rates, get_model  # noqa: E402

SAMPLES = ROOT / "resilient_tx" / "samples"
FOR_LOSS = "for_loss"  # FEC profile derived from the loss rate being simulated


@dataclass(frozen=True)
class Trial:
    image: str
    loss_model: str
    loss: float
    trial: int
    fec: str
    depth: int  # context depth (packetizer.py): 0 = full chain
    inpainter: str
    wire_bpp: float  # every packet sent, headers and parity included
    received_fraction: float
    tokens_inpainted: float  # fraction
    unusable_fraction: float  # of the bytes received
    psnr: float
    ms_ssim: float
    inpaint_s: float


def _profile(name: str, loss: float) -> fec.FecProfile:
    return fec.for_loss(loss) if name == FOR_LOSS else fec.get_profile(name)


def _receive(codec: Codec, raw: list[bytes]) -> reassembly.ExactTokens | None:
    asm = reassembly.assemble(raw)
    return None if asm is None else reassembly.decode(codec, asm)


def _quality(img: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    return metrics.psnr(img, recon), metrics.ms_ssim(img, recon)


def run_point(codec: Codec, img: np.ndarray, name: str, sent: PacketizedImage,
              cfg: channel.ChannelConfig, seed: int, inpainters: dict, label: dict,
              examples: dict) -> list[Trial]:
    raw = [bytes(p) for p in sent.packets]
    delivered, _ = channel.transmit(raw, cfg, seed)
    h, w = img.shape[:2]
    wire_bpp = metrics.bpp(sent.total_bytes, w, h)
    got = _receive(codec, delivered)
    m, th, tw = sent.tokens.shape
    if got is None:  # nothing arrived: every inpainter starts from nothing
        tokens, known = torch.zeros_like(sent.tokens), torch.zeros(th, tw, dtype=torch.bool)
        rec_frac, unusable, inpainted = 0.0, 0.0, 1.0
    else:
        tokens, known, rep = got.tokens, got.known, got.report
        rec_frac = rep.packets_received / len(sent.packets)
        unusable = rep.bytes_unusable / max(1, rep.bytes_received)
        inpainted = rep.tokens_inpainted / rep.tokens
    out = []
    for iname, inp in inpainters.items():
        t0 = time.perf_counter()
        filled = inp.fill(tokens, known)
        dt = time.perf_counter() - t0
        recon = codec.tokens_to_image(filled, w, h)
        ps, ms = _quality(img, recon)
        key = (label["loss_model"], label["loss"], f"{label['fec']}/d{label['depth']}", iname)
        if label["trial"] == 0 and key not in examples:
            examples[key] = recon
        out.append(Trial(image=name, inpainter=iname, wire_bpp=wire_bpp,
                         received_fraction=rec_frac, tokens_inpainted=inpainted,
                         unusable_fraction=unusable, psnr=ps, ms_ssim=ms, inpaint_s=dt,
                         **label))
    return out


# Parity fractions tried for the tuned JPEG+FEC baseline ("jpeg+fec*"): per image, the
# fraction with the best mean PSNR over the trials of a point is kept, so the classic codec
# gets its best protection for that loss rate and byte budget in hindsight.
JPEG_FRACTIONS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
TUNED = "jpeg+fec*"


@dataclass(frozen=True)
class JpegPair:
    """JPEG at our wire bytes without FEC, with our parity fraction (None: n/a), and with
    each of :data:`JPEG_FRACTIONS` that fits the bytes."""

    plain: jpeg_baseline.JpegPackets | None
    with_fec: jpeg_baseline.JpegPackets | None
    tuned: dict[float, jpeg_baseline.JpegPackets] = dataclasses.field(default_factory=dict)


def jpeg_for(img: np.ndarray, sent: PacketizedImage, max_packet: int) -> JpegPair:
    """The classic baselines at the same total bytes as ``sent`` (issue 3, item 7)."""
    parity = sum(1 for p in sent.packets if p.is_parity)
    frac = parity / max(1, len(sent.packets) - parity)

    def at(fn):
        try:
            return jpeg_baseline.jpeg_at_bytes(img, sent.total_bytes, fn, max_packet)
        except ResilientTxError:
            return None  # even quality 1 does not fit those bytes

    tuned = {f: jp for f in JPEG_FRACTIONS
             if (jp := at(jpeg_baseline.flat_parity(f))) is not None}
    return JpegPair(at(None), at(jpeg_baseline.flat_parity(frac)) if parity else None, tuned)


def run_jpeg(img: np.ndarray, name: str, pair: JpegPair, cfg: channel.ChannelConfig,
             seed: int, label: dict) -> list[Trial]:
    out = []
    h, w = img.shape[:2]
    runs = [("jpeg", pair.plain), ("jpeg+fec", pair.with_fec),
            *((f"{TUNED}@{f:g}", jp) for f, jp in pair.tuned.items())]
    for iname, jp in runs:
        if jp is None:
            continue
        ps, ms = _quality(img, jpeg_baseline.simulate(jp, cfg, seed))
        nan = float("nan")
        out.append(Trial(image=name, inpainter=iname,
                         wire_bpp=metrics.bpp(jp.total_bytes, w, h), received_fraction=nan,
                         tokens_inpainted=nan, unusable_fraction=nan, psnr=ps, ms_ssim=ms,
                         inpaint_s=nan, **label))
    return out


def tuned_jpeg(trials: list[Trial]) -> list[Trial]:
    """The "jpeg+fec*" trials: per image and point, those of its best parity fraction."""
    groups: dict[tuple, dict[str, list[Trial]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if t.inpainter.startswith(TUNED + "@"):
            groups[(t.loss_model, t.loss, t.fec, t.depth, t.image)][t.inpainter].append(t)
    out = []
    for by_fraction in groups.values():
        best = max(by_fraction.values(), key=lambda ts: np.mean([t.psnr for t in ts]))
        out += [dataclasses.replace(t, inpainter=TUNED) for t in best]
    return out


def oracle(codecs: dict[str, Codec], images: dict[str, np.ndarray]) -> list[tuple[float, float,
                                                                                  float]]:
    """(wire bpp, PSNR, MS-SSIM) means with no loss and no FEC, per shipped rate point
    (k-means points included: they extend the curve below the lowest trained point)."""
    pts = []
    for codec in codecs.values():
        pk = Packetizer(codec, fec.get_profile("none"), context_depth=0)
        rows = []
        for img in images.values():
            sent = pk.packetize(img, 0)
            recon = codec.tokens_to_image(sent.tokens, img.shape[1], img.shape[0])
            rows.append((metrics.bpp(sent.total_bytes, img.shape[1], img.shape[0]),
                         *_quality(img, recon)))
        pts.append(tuple(_nanmean([r[i] for r in rows]) for i in range(3)))
    return sorted(pts)


@functools.cache
def _db_per_doubling() -> float:
    return fec.distortion_model().db_per_doubling  # read once, not once per table row


def oracle_at(points: list[tuple[float, float, float]], bpp: float) -> tuple[float, float, bool]:
    """(PSNR, MS-SSIM, inside) of the oracle at ``bpp``: linear between the rate points.

    Above the top point the PSNR is extrapolated along the codec's rate-distortion slope
    (``db_per_doubling`` of configs/fec.yaml, measured low -> high): clamping there would
    flatter a scheme that spends many bytes on parity. MS-SSIM stays clamped. Below the
    bottom point both are clamped (k-means points reach 0.05 bpp, far below any sweep).
    """
    xs = [p[0] for p in points]
    psnr = float(np.interp(bpp, xs, [p[1] for p in points]))
    if bpp > xs[-1]:
        psnr += _db_per_doubling() * float(np.log2(bpp / xs[-1]))
    return (psnr, float(np.interp(bpp, xs, [p[2] for p in points])),
            xs[0] <= bpp <= xs[-1])


def _nanmean(xs: list[float]) -> float:
    vals = [x for x in xs if not np.isnan(x)]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(trials: list[Trial]) -> list[dict]:
    groups: dict[tuple, list[Trial]] = defaultdict(list)
    for t in [*trials, *tuned_jpeg(trials)]:
        if not t.inpainter.startswith(TUNED + "@"):  # per-fraction runs: in the JSON only
            groups[(t.loss_model, t.loss, t.fec, t.depth, t.inpainter)].append(t)
    rows = []
    for (lm, p, f, d, inp), ts in sorted(groups.items()):
        rows.append({"loss_model": lm, "loss": p, "fec": f, "depth": d, "inpainter": inp,
                     "n": len(ts),
                     **{k: _nanmean([getattr(t, k) for t in ts])
                        for k in ("wire_bpp", "received_fraction", "tokens_inpainted",
                                  "unusable_fraction", "psnr", "ms_ssim", "inpaint_s")},
                     "psnr_min": float(np.min([t.psnr for t in ts]))})
    return rows


def print_table(rows: list[dict], oracle_pts) -> None:
    hdr = (f"{'model':<10}{'loss':>5} {'fec':<9}{'d':>2} {'inpaint':<9}{'wire bpp':>9}{'recv':>6}"
           f"{'inpainted':>10}{'unusable':>9}{'PSNR':>7}{'min':>7}{'MS-SSIM':>8}{'oracle':>8}"
           f"{'gap':>6}{'runs':>6}{'fill s':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        o_psnr, _, inside = oracle_at(oracle_pts, (1 - r["loss"]) * r["wire_bpp"])
        print(f"{r['loss_model']:<10}{r['loss']:>5.2f} {r['fec']:<9}{r['depth']:>2} "
              f"{r['inpainter']:<9}"
              f"{r['wire_bpp']:>9.4f}{r['received_fraction']:>6.2f}{r['tokens_inpainted']:>10.2f}"
              f"{r['unusable_fraction']:>9.2f}{r['psnr']:>7.2f}{r['psnr_min']:>7.2f}"
              f"{r['ms_ssim']:>8.4f}{o_psnr:>7.2f}{'' if inside else '*':1}"
              f"{o_psnr - r['psnr']:>6.2f}{r['n']:>6}"
              f"{r['inpaint_s']:>8.3f}")
    print("oracle: no-loss PSNR at (1-p) x wire bpp, interpolated between the shipped rate "
          "points (* = above them: extrapolated at db_per_doubling of configs/fec.yaml); "
          "gap: oracle - PSNR. jpeg+fec: our parity fraction; jpeg+fec*: per image the best "
          f"of parity fractions {JPEG_FRACTIONS}. runs: image x trial pairs averaged; JPEG "
          "rows have fewer where even quality 1 plus parity exceeds our bytes. fill s: "
          "inpainting seconds per image (mean)")


STYLES = {"mim": "o-", "ar": "x--", "neighbor": "^-", "none": "v:", "jpeg": "s--",
          "jpeg+fec": "d-.", TUNED: "P-."}


def plot(rows: list[dict], path: Path, want, title: str) -> None:
    """PSNR and MS-SSIM against loss, one column per loss model, for the rows ``want``
    keeps. One colour per (FEC profile, depth); line style by method (:data:`STYLES`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [r for r in rows if want(r)]
    settings = sorted({(r["fec"], r["depth"]) for r in kept})
    colour = {fd: plt.get_cmap("tab10")(i % 10) for i, fd in enumerate(settings)}
    models = sorted({r["loss_model"] for r in kept})
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 8), squeeze=False)
    for col, lm in enumerate(models):
        series: dict[tuple, list[dict]] = defaultdict(list)
        for r in kept:
            if r["loss_model"] == lm:
                series[(r["fec"], r["depth"], r["inpainter"])].append(r)
        for (f, d, method), pts in sorted(series.items()):
            pts.sort(key=lambda r: r["loss"])
            bpp = np.mean([r["wire_bpp"] for r in pts])
            for row, key in ((0, "psnr"), (1, "ms_ssim")):
                axes[row][col].plot([100 * r["loss"] for r in pts], [r[key] for r in pts],
                                    STYLES.get(method, "o-"), color=colour[(f, d)], ms=3,
                                    label=f"{method}, FEC {f}, depth {d} ({bpp:.3f} bpp)")
        for row, name in ((0, "PSNR (dB)"), (1, "MS-SSIM")):
            ax = axes[row][col]
            ax.set_title(f"{lm} loss")
            ax.set_xlabel("packet loss (%)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(rows: list[dict], out: Path) -> None:
    depth = max((r["depth"] for r in rows), default=0)
    plot(rows, out / "loss_sweep.png",
         lambda r: r["depth"] == depth and r["inpainter"] in ("mim", "jpeg", "jpeg+fec", TUNED),
         f"resilient-tx (MIM inpainting, context depth {depth}) vs JPEG at the same bytes")
    scored = [((r["fec"], r["depth"]), r["psnr"]) for r in rows if r["inpainter"] == "mim"]
    if not scored:
        return
    best = max({fd for fd, _ in scored},
               key=lambda fd: _nanmean([v for k, v in scored if k == fd]))
    plot(rows, out / "inpainters.png",
         lambda r: (r["fec"], r["depth"]) == best and "jpeg" not in r["inpainter"],
         f"inpainters compared at FEC {best[0]}, context depth {best[1]}")


def plot_examples(img: np.ndarray, examples: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(examples)[:11]
    fig, axes = plt.subplots(3, 4, figsize=(16, 8))
    axes = axes.ravel()
    axes[0].imshow(img)
    axes[0].set_title("original", fontsize=8)
    for ax, key in zip(axes[1:], keys, strict=False):
        ax.imshow(examples[key])
        ax.set_title(f"{key[0]} {key[1]:.0%} {key[2]} {key[3]}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _channel_configs(args: argparse.Namespace) -> list[tuple[str, float, channel.ChannelConfig]]:
    models = ["bernoulli", "gilbert"] if args.loss_model == "both" else [args.loss_model]
    out = []
    for lm in models:
        for p in args.rates:
            burst = args.burst if lm == "gilbert" else 1.0
            out.append((lm, p, channel.ChannelConfig(loss_model=lm, loss_rate=p,
                                                     burst_length=burst)))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", default=str(SAMPLES), help="image folder (default: bundled samples)")
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
                   help="FEC profiles (default: none light strong for_loss)")
    p.add_argument("--context-depth", type=int, nargs="+", default=[0, 2],
                   help="context depths (0 = full chain, c = later stages see stages 1..c "
                   "only); default: 0 2")
    p.add_argument("--max-packet", type=int, default=1200, help="packet size limit in bytes")
    p.add_argument("--inpainters", nargs="+", default=["mim", "ar", "neighbor", "none"])
    p.add_argument("--ar-window", type=int, help="AR inpainter window in tokens per side "
                   "(default: the prior's)")
    p.add_argument("--replot", metavar="DIR", help="only redraw the plots and reprint the "
                   "table from DIR/loss_sweep.json of an earlier run")
    p.add_argument("--no-jpeg", action="store_true", help="skip the JPEG baselines")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--out", default="out/loss_sweep", help="output folder")
    return p.parse_args(argv)


def replot(out: Path) -> int:
    """Plots and table again from a finished run, without re-running anything."""
    try:
        data = json.loads((out / "loss_sweep.json").read_text())
        rows, oracle_pts = data["summary"], [tuple(p) for p in data["oracle_points"]]
    except (OSError, ValueError, KeyError) as exc:
        print(f"loss_sweep: error: {out}/loss_sweep.json: {exc}", file=sys.stderr)
        return 2
    plot_all(rows, out)
    print_table(rows, oracle_pts)
    print(f"redrew {out}/loss_sweep.png and inpainters.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(Path(args.replot))
    try:
        set_threads(args.threads)
        device = resolve_device(args.device)
        for p in args.rates:
            if not 0 <= p < 1:
                raise ResilientTxError(f"loss rates must be in [0, 1), got {p}")
        images = {f.stem: load_rgb(f) for f in list_images(args.images)[: args.limit or None]}
        codec = Codec(get_model(args.rate), device)  # ModelNotFoundError names the choices
        inpainters = {n: get_inpainter(n, codec.model, device, args.ar_window)
                      for n in args.inpainters}
        configs = _channel_configs(args)
        for f in args.fec:
            _profile(f, 0.1)  # unknown names fail here, before hours of work
    except ResilientTxError as exc:
        print(f"loss_sweep: error: {exc}", file=sys.stderr)
        return 2
    trials: list[Trial] = []
    examples: dict = {}
    total = len(images) * len(configs) * len(args.fec) * len(args.context_depth) * args.trials
    bar = tqdm(total=total, desc="loss sweep", unit="run")
    for i, (name, img) in enumerate(images.items()):
        cache: dict = {}
        for lm, p, cfg in configs:
            for f, d in ((f, d) for f in args.fec for d in args.context_depth):
                key = (f, d, p if f == FOR_LOSS else None)
                if key not in cache:
                    sent = Packetizer(codec, _profile(f, p), max_packet=args.max_packet,
                                      context_depth=d).packetize(img, i)
                    pair = (JpegPair(None, None) if args.no_jpeg
                            else jpeg_for(img, sent, args.max_packet))
                    cache[key] = (sent, pair)
                sent, pair = cache[key]
                for t in range(args.trials):
                    label = {"loss_model": lm, "loss": p, "trial": t, "fec": f, "depth": d}
                    seed = args.seed * 1_000_003 + i * 10_007 + t * 101 + int(p * 1000)
                    ex = examples if i == 0 else {}
                    trials += run_point(codec, img, name, sent, cfg, seed, inpainters,
                                        label, ex)
                    trials += run_jpeg(img, name, pair, cfg, seed, label)
                    bar.update(1)
    bar.close()
    rows = summarise(trials)
    oracle_pts = oracle({r: Codec(get_model(r), device) for r in available_rates()}, images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss_sweep.json").write_text(json.dumps(
        {"args": vars(args), "codec_rate": codec.model.name, "oracle_points": oracle_pts,
         "summary": rows, "trials": [dataclasses.asdict(t) for t in trials]}, indent=1))
    with (out / "loss_sweep.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    plot_all(rows, out)
    plot_examples(next(iter(images.values())), examples, out / "examples.png")
    print_table(rows, oracle_pts)
    print(f"wrote {out}/loss_sweep.json, loss_sweep.csv, loss_sweep.png, inpainters.png, "
          "examples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
