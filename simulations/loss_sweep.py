"""Loss sweep: picture quality against packet loss, for FEC profiles and inpainters.

Every image is encoded and packetized once per FEC profile, sent through the seeded
channel simulator at each loss rate and trial, received by the real receiver
(:mod:`resilient_tx.resilience.reassembly`: exact tokens only), and completed by each inpainter.
The oracle is the same codec with no loss at (1 - p) x the bytes on the wire, read off
the no-loss rate-distortion points of the shipped rate points (linear in bpp; flagged
when outside their range).

The classical baselines (``--baselines``) get the same wire bytes: JPEG with restart
markers (:mod:`resilient_tx.eval.jpeg_baseline`), and AVIF and WebP files with RS parity
across the whole file (:mod:`resilient_tx.eval.file_fec`), each with its parity tuned per
image and point in hindsight over trials ("...+fec*"); the files also with parity and
packet size planned for the point's loss model and rate ("avif+fec", "webp+fec").

A run is one (image, channel, FEC profile, context depth, trial) with all its inpainters
and classical baselines; each is appended to the journal (:mod:`sweep_io`) when it finishes, and
the JSON, CSV, table and figures (:mod:`sweep_plots`) are made from the journal at the end,
so a stopped sweep resumes where it stopped. The seed of a run depends only on the run, so a
resumed sweep gives the results of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.codec.inpaint import Inpainter, get_inpainter  # noqa: E402
from resilient_tx.errors import InputError, ResilientTxError  # noqa: E402
from resilient_tx.eval import classical, file_fec, jpeg_baseline, metrics  # noqa: E402
from resilient_tx.images import load_rgb, save_rgb  # noqa: E402
from resilient_tx.resilience import fec, reassembly  # noqa: E402
from resilient_tx.resilience.packetizer import PacketizedImage, Packetizer  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.transport import channel  # noqa: E402
from resilient_tx.zoo.registry import available_rates, get_model  # noqa: E402
from simulations import sweep_io  # noqa: E402
from simulations.sim_common import fail, image_files  # noqa: E402
from simulations.sweep_args import FOR_LOSS, PROG, RUNTIME, parse_args  # noqa: E402
from simulations.sweep_io import OraclePoint, RunKey, Trial  # noqa: E402
from simulations.sweep_plots import (  # noqa: E402
    EXAMPLES,
    FILE_CODECS,
    TUNED,
    compare_setting,
    plot_all,
    plot_examples,
    save_example,
)


def _profile(name: str, loss: float) -> fec.FecProfile:
    """``for_loss`` plans for each point's loss rate; any other spec is fixed."""
    return fec.for_loss(loss) if name == FOR_LOSS else fec.parse_spec(name)


def _receive(codec: Codec, raw: list[bytes]) -> reassembly.ExactTokens | None:
    asm = reassembly.assemble(raw)
    return None if asm is None else reassembly.decode(codec, asm)


def _quality(img: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    return metrics.psnr(img, recon), metrics.ms_ssim(img, recon)


def run_point(codec: Codec, img: np.ndarray, name: str, sent: PacketizedImage,
              cfg: channel.ChannelConfig, seed: int, inpainters: dict[str, Inpainter],
              label: dict[str, Any]) -> tuple[list[Trial], dict[str, np.ndarray]]:
    """One transmission of ``sent``, completed by each inpainter: its trials, and the
    reconstruction of each inpainter by name."""
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
    out, recons = [], {}
    for iname, inp in inpainters.items():
        t0 = time.perf_counter()
        filled = inp.fill(tokens, known)
        dt = time.perf_counter() - t0
        recons[iname] = codec.tokens_to_image(filled, w, h)
        ps, ms = _quality(img, recons[iname])
        out.append(Trial(image=name, inpainter=iname, wire_bpp=wire_bpp,
                         received_fraction=rec_frac, tokens_inpainted=inpainted,
                         unusable_fraction=unusable, psnr=ps, ms_ssim=ms, inpaint_s=dt,
                         **label))
    return out, recons


# Parity fractions tried for the tuned JPEG+FEC baseline ("jpeg+fec*"): per image, the
# fraction with the best mean PSNR over the trials of a point is kept, so the classic codec
# gets its best protection for that loss rate and byte budget in hindsight.
JPEG_FRACTIONS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class JpegPair:
    """JPEG at our wire bytes without FEC, with our parity fraction (None: n/a), and with
    each of :data:`JPEG_FRACTIONS` that fits the bytes."""

    plain: jpeg_baseline.JpegPackets | None
    with_fec: jpeg_baseline.JpegPackets | None
    tuned: dict[float, jpeg_baseline.JpegPackets] = dataclasses.field(default_factory=dict)


def jpeg_for(img: np.ndarray, sent: PacketizedImage, max_packet: int) -> JpegPair:
    """The classic baselines at the same total bytes as ``sent``."""
    parity = sum(1 for p in sent.packets if p.is_parity)
    frac = parity / max(1, len(sent.packets) - parity)

    def at(fn: jpeg_baseline.ParityFn | None) -> jpeg_baseline.JpegPackets | None:
        try:
            return jpeg_baseline.jpeg_at_bytes(img, sent.total_bytes, fn, max_packet)
        except ResilientTxError:
            return None  # even quality 1 does not fit those bytes

    tuned = {f: jp for f in JPEG_FRACTIONS
             if (jp := at(jpeg_baseline.flat_parity(f))) is not None}
    return JpegPair(at(None), at(jpeg_baseline.flat_parity(frac)) if parity else None, tuned)


def _baseline_trial(img: np.ndarray, name: str, method: str, total_bytes: int,
                    quality: tuple[float, float], label: dict[str, Any],
                    received: float = float("nan"), unusable: float = float("nan")) -> Trial:
    h, w = img.shape[:2]
    nan = float("nan")
    return Trial(image=name, inpainter=method, wire_bpp=metrics.bpp(total_bytes, w, h),
                 received_fraction=received, tokens_inpainted=nan, unusable_fraction=unusable,
                 psnr=quality[0], ms_ssim=quality[1], inpaint_s=nan, **label)


def run_jpeg(img: np.ndarray, name: str, pair: JpegPair, cfg: channel.ChannelConfig,
             seed: int, label: dict[str, Any]) -> list[Trial]:
    runs = [("jpeg", pair.plain), ("jpeg+fec", pair.with_fec),
            *((f"{TUNED}@{f:g}", jp) for f, jp in pair.tuned.items())]
    return [_baseline_trial(img, name, iname, jp.total_bytes,
                            _quality(img, jpeg_baseline.simulate(jp, cfg, seed)), label)
            for iname, jp in runs if jp is not None]


# Parity fractions tried for the hindsight-tuned file baselines ("avif+fec*", "webp+fec*"):
# JPEG's, so the two kinds of classical baseline get the same choice.
FILE_FRACTIONS = JPEG_FRACTIONS


@dataclass
class ImageCache:
    """What the runs of one image share, emptied for the next image: packets and JPEG
    baselines per FEC setting, file baselines per budget (and channel), each classical
    codec's encodes by quality, and the (PSNR, MS-SSIM) of each picture a file baseline
    can show (all-or-nothing: the file's picture, or grey)."""

    packets: dict[tuple, tuple[PacketizedImage, JpegPair]] = dataclasses.field(
        default_factory=dict)
    files: dict[tuple, file_fec.FilePackets | None] = dataclasses.field(default_factory=dict)
    encodes: dict[str, metrics.EncodeCache] = dataclasses.field(
        default_factory=lambda: defaultdict(dict))
    scores: dict[tuple[str, int], tuple[float, float]] = dataclasses.field(
        default_factory=dict)

    def clear(self) -> None:
        for part in (self.packets, self.files, self.encodes, self.scores):
            part.clear()


def file_plans(img: np.ndarray, codec: str, budget: int, cfg: channel.ChannelConfig,
               max_packet: int, cache: ImageCache) -> list[tuple[str, file_fec.FilePackets]]:
    """``codec``'s file baselines within ``budget`` wire bytes: one per parity fraction of
    :data:`FILE_FRACTIONS` that fits ("CODEC+fec*@F"), and the plan for ``cfg``'s loss
    ("CODEC+fec", :func:`file_fec.tuned_for_loss`)."""
    c = classical.check_codec(codec)
    burst = cfg.burst_length if cfg.loss_model == "gilbert" else 1.0
    plans: list[tuple[str, tuple, Any]] = [
        (f"{codec}+fec*@{f:g}", (c, budget, f),
         functools.partial(file_fec.at_bytes, img, c, budget, f, max_packet))
        for f in FILE_FRACTIONS]
    plans.append((f"{codec}+fec", (c, budget, cfg.loss_rate, burst),
                  functools.partial(file_fec.tuned_for_loss, img, c, budget, cfg.loss_rate,
                                    max_packet, burst)))
    out = []
    for name, key, make in plans:
        if key not in cache.files:
            cache.files[key] = make(cache=cache.encodes[c])
        if (fp := cache.files[key]) is not None:
            out.append((name, fp))
    return out


def run_files(img: np.ndarray, name: str, plans: list[tuple[str, file_fec.FilePackets]],
              cfg: channel.ChannelConfig, seed: int, cache: ImageCache,
              label: dict[str, Any]) -> list[Trial]:
    """Each file baseline sent once with ``seed`` (common random numbers across them)."""
    out = []
    for method, fp in plans:
        arrived = file_fec.arrivals(fp, cfg, seed)
        picture = file_fec.receive(fp, arrived)
        whole = len(arrived) >= fp.k
        key = (fp.codec, fp.quality) if whole else ("grey", 0)
        if key not in cache.scores:
            cache.scores[key] = _quality(img, picture)
        out.append(_baseline_trial(img, name, method, fp.total_bytes, cache.scores[key],
                                   label, received=len(arrived) / fp.n,
                                   unusable=0.0 if whole else 1.0))
    return out


def hindsight(trials: list[Trial]) -> list[Trial]:
    """The tuned baselines ("jpeg+fec*", "avif+fec*", ...): per image, point and method,
    the trials of the parity fraction with the best mean PSNR ("METHOD@FRACTION" runs)."""
    groups: dict[tuple, dict[str, list[Trial]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        method, at, _ = t.inpainter.partition("@")
        if at:
            groups[(t.loss_model, t.loss, t.fec, t.depth, t.image, method)][
                t.inpainter].append(t)
    out = []
    for key, by_fraction in groups.items():
        best = max(by_fraction.values(), key=lambda ts: np.mean([t.psnr for t in ts]))
        out += [dataclasses.replace(t, inpainter=key[-1]) for t in best]
    return out


def oracle_point(codec: Codec, images: dict[str, np.ndarray], bar: tqdm) -> OraclePoint:
    """(wire bpp, PSNR, MS-SSIM) means of one rate point with no loss and no FEC."""
    pk = Packetizer(codec, fec.get_profile("none"), context_depth=0)
    rows = []
    for img in images.values():
        sent = pk.packetize(img, 0)
        recon = codec.tokens_to_image(sent.tokens, img.shape[1], img.shape[0])
        rows.append((metrics.bpp(sent.total_bytes, img.shape[1], img.shape[0]),
                     *_quality(img, recon)))
        bar.update(1)
    return (_nanmean([r[0] for r in rows]), _nanmean([r[1] for r in rows]),
            _nanmean([r[2] for r in rows]))


@functools.cache
def _db_per_doubling() -> float:
    return fec.distortion_model().db_per_doubling  # read once, not once per table row


def oracle_at(points: Sequence[OraclePoint], bpp: float) -> tuple[float, float, bool]:
    """(PSNR, MS-SSIM, inside) of the oracle at ``bpp``: linear between the rate points.

    Above the top point the PSNR is extrapolated along the codec's rate-distortion slope
    (``db_per_doubling`` of configs/fec.yaml, measured low -> high): clamping there would
    flatter a scheme that spends many bytes on parity. MS-SSIM stays clamped. Below the
    bottom point both are clamped (k-means points reach far below any sweep).
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


def summarise(trials: list[Trial]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[Trial]] = defaultdict(list)
    for t in [*trials, *hindsight(trials)]:
        if "@" not in t.inpainter:  # per-fraction runs: in the JSON only
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


def print_table(rows: list[dict[str, Any]], oracle_pts: Sequence[OraclePoint],
                oracle_rates: Sequence[str] = ()) -> None:
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
    among = f" ({', '.join(oracle_rates)})" if oracle_rates else ""
    print(f"oracle: no-loss PSNR at (1-p) x wire bpp, interpolated between the rate points{among} "
          "(* = outside them: above, extrapolated at db_per_doubling of configs/fec.yaml); "
          "gap: oracle - PSNR. runs: image x trial pairs averaged. fill s: inpainting seconds "
          "per image (mean).")
    methods = {r["inpainter"] for r in rows}
    if any(m.startswith("jpeg") for m in methods):
        print("jpeg+fec: our parity fraction; jpeg+fec*: per image the best of parity "
              f"fractions {JPEG_FRACTIONS} in hindsight. JPEG rows have fewer runs where "
              "even quality 1 plus parity exceeds our bytes.")
    if any(m.split("+")[0] in FILE_CODECS for m in methods):
        print("avif/webp: the whole file in equal packets with RS parity across them (all "
              "or nothing; grey when lost). +fec*: per image the best of parity fractions "
              f"{FILE_FRACTIONS} in hindsight; +fec: parity and packet size planned for the "
              "point's loss (best expected PSNR). recv: packets received; unusable: 1 when "
              "the file was lost.")


# ----------------------------------------------------------------------------- the runs
@dataclass(frozen=True)
class Run:
    """One transmission to simulate; ``index`` is the image's place in the list (seed)."""

    index: int
    image: str
    loss_model: str
    loss: float
    cfg: channel.ChannelConfig
    fec: str
    depth: int
    trial: int

    @property
    def key(self) -> RunKey:
        return (self.image, self.loss_model, self.loss, self.fec, self.depth, self.trial)

    def seed(self, base: int) -> int:
        return base * 1_000_003 + self.index * 10_007 + self.trial * 101 + int(self.loss * 1000)

    def label(self) -> dict[str, Any]:
        return {"loss_model": self.loss_model, "loss": self.loss, "trial": self.trial,
                "fec": self.fec, "depth": self.depth}


def _channel_configs(args: argparse.Namespace) -> list[tuple[str, float, channel.ChannelConfig]]:
    models = ["bernoulli", "gilbert"] if args.loss_model == "both" else [args.loss_model]
    out = []
    for lm in models:
        for p in args.rates:
            burst = args.burst if lm == "gilbert" else 1.0
            out.append((lm, p, channel.ChannelConfig(loss_model=lm, loss_rate=p,
                                                     burst_length=burst)))
    return out


def plan(names: Sequence[str], args: argparse.Namespace) -> list[Run]:
    """Every run of the sweep, in the order they are done (image by image)."""
    return [Run(i, name, lm, p, cfg, f, d, t)
            for i, name in enumerate(names) for lm, p, cfg in _channel_configs(args)
            for f in args.fec for d in args.context_depth for t in range(args.trials)]


@dataclass(frozen=True)
class Setup:
    """What every run needs: the loaded images, codec and inpainters, and where to write."""

    args: argparse.Namespace
    images: dict[str, np.ndarray]
    codec: Codec
    inpainters: dict[str, Inpainter]
    device: torch.device
    out: Path

    @property
    def journal(self) -> Path:
        return self.out / sweep_io.JOURNAL

    def example_run(self, run: Run) -> bool:
        """Whether ``run`` is drawn in examples.png: the first image, first trial and first
        loss model, at the setting the inpainters are compared at."""
        lm = "gilbert" if self.args.loss_model == "gilbert" else "bernoulli"  # the first
        fd = compare_setting(self.args.fec, self.args.context_depth, self.args.compare_fec)
        return (run.index, run.trial, run.loss_model, (run.fec, run.depth)) == (0, 0, lm, fd)


def _encoded(s: Setup, cache: ImageCache, run: Run,
             img: np.ndarray) -> tuple[PacketizedImage, JpegPair]:
    """The packets of ``run``'s image and FEC setting, and its JPEG baselines (cached per
    image: every loss model, trial and loss rate but for_loss's reuse them)."""
    key = (run.fec, run.depth, run.loss if run.fec == FOR_LOSS else None)
    if key not in cache.packets:
        sent = Packetizer(s.codec, _profile(run.fec, run.loss), max_packet=s.args.max_packet,
                          context_depth=run.depth).packetize(img, run.index)
        pair = jpeg_for(img, sent, s.args.max_packet) if "jpeg" in s.args.baselines \
            else JpegPair(None, None)
        cache.packets[key] = (sent, pair)
    return cache.packets[key]


def _file_trials(s: Setup, cache: ImageCache, run: Run, img: np.ndarray, budget: int,
                 seed: int) -> list[Trial]:
    """Every file baseline of ``run`` (AVIF, WebP: those in --baselines)."""
    out = []
    for codec in (c for c in FILE_CODECS if c in s.args.baselines):
        plans = file_plans(img, codec, budget, run.cfg, s.args.max_packet, cache)
        out += run_files(img, run.image, plans, run.cfg, seed, cache, run.label())
    return out


def sweep(s: Setup, todo: list[Run], bar: tqdm) -> None:
    """Do ``todo``, appending each run to the journal as it finishes."""
    cache = ImageCache()
    current = None
    for run in todo:
        if run.image != current:  # a new image: its packets replace the last one's
            cache.clear()
            current = run.image
        img = s.images[run.image]
        sent, pair = _encoded(s, cache, run, img)
        seed = run.seed(s.args.seed)
        trials, recons = run_point(s.codec, img, run.image, sent, run.cfg, seed, s.inpainters,
                                   run.label())
        trials += run_jpeg(img, run.image, pair, run.cfg, seed, run.label())
        trials += _file_trials(s, cache, run, img, sent.total_bytes, seed)
        if s.example_run(run):  # saved before the journal line: a resumed run has its PNGs
            for name, recon in recons.items():
                save_example(s.out, run.loss, name, recon)
        sweep_io.append_run(s.journal, run.key, trials)
        bar.update(1)


def _check(args: argparse.Namespace) -> None:
    for p in args.rates:
        if not 0 <= p < 1:
            raise InputError(f"loss rates must be in [0, 1), got {p}")
    if args.trials < 1:
        raise InputError(f"--trials must be >= 1, got {args.trials}")
    for f in args.fec:
        _profile(f, 0.1)  # unknown names fail here, before hours of work
    if args.compare_fec is not None and args.compare_fec not in args.fec:
        raise InputError(f"--compare-fec {args.compare_fec} is not one of --fec {args.fec}")


def setup(args: argparse.Namespace) -> Setup:
    """Check the arguments and load everything, so mistakes fail before the long part."""
    _check(args)
    if "avif" in args.baselines and not classical.avif_available():
        print(f"{PROG}: this Pillow has no AVIF support: the AVIF baselines are skipped",
              file=sys.stderr)
        args.baselines = [b for b in args.baselines if b != "avif"]  # the journal says so
    set_threads(args.threads)
    device = resolve_device(args.device)
    files = image_files(args.images, args.limit)
    codec = Codec(get_model(args.rate), device)  # ModelNotFoundError names the choices
    inpainters = {n: get_inpainter(n, codec.model, device, args.ar_window)
                  for n in args.inpainters}
    for r in args.oracle_rates or ():
        get_model(r)
    images = {f.stem: load_rgb(f) for f in files}
    return Setup(args, images, codec, inpainters, device, Path(args.out))


# ----------------------------------------------------------------------------- main
def _oracle(s: Setup, journal: sweep_io.Journal, hide: bool) -> tuple[list[str],
                                                                        list[OraclePoint]]:
    """The oracle's rate points and values: from the journal when it has them for these
    rate points and images, else encoded now (and journaled)."""
    rates = list(s.args.oracle_rates or available_rates())
    names = list(s.images)
    old = journal.oracle
    if old is not None and old["rates"] == rates and old["images"] == names:
        return rates, [(p[0], p[1], p[2]) for p in old["points"]]
    bar = tqdm(total=len(rates) * len(names), desc="reference encodes (oracle)", unit="image",
               disable=hide)
    with bar:
        pts = sorted(oracle_point(Codec(get_model(r), s.device), s.images, bar) for r in rates)
    sweep_io.append_oracle(s.journal, rates, names, pts)
    return rates, pts


def _open_journal(s: Setup) -> sweep_io.Journal:
    """The journal to continue (--resume), or a new one; a new sweep's examples go."""
    if s.args.resume:
        sweep_io.compact_journal(s.journal)
        return sweep_io.read_journal(s.journal)
    for old in (s.out / EXAMPLES).glob("*.png"):
        old.unlink()
    sweep_io.start_journal(s.journal, {k: v for k, v in vars(s.args).items()
                                       if k not in RUNTIME})
    return sweep_io.read_journal(s.journal)


def finish(s: Setup, runs: list[Run], oracle_rates: list[str],
           oracle_pts: list[OraclePoint]) -> None:
    """JSON, CSV, figures and table, all from the journal's runs of this sweep."""
    done = sweep_io.read_journal(s.journal).runs
    trials = [t for run in runs for t in done[run.key]]
    rows = summarise(trials)
    sweep_io.write_results(s.out, {"args": vars(s.args), "codec_rate": s.codec.model.name,
                                   "oracle_rates": oracle_rates, "oracle_points": oracle_pts},
                           rows, trials)
    _figures(s.out, rows, vars(s.args), next(iter(s.images.values())))
    print_table(rows, oracle_pts, oracle_rates)
    print(f"wrote {s.out}/loss_sweep.json, loss_sweep.csv, loss_sweep.png, inpainters.png, "
          f"examples.png (journal: {s.journal})")


def _figures(out: Path, rows: list[dict[str, Any]], args: dict[str, Any],
             original: np.ndarray) -> None:
    """Every figure; examples.png shows the first loss model's run (see Setup.example_run)."""
    figs = plot_all(rows, out, args.get("compare_fec"))
    lm = "gilbert" if args["loss_model"] == "gilbert" else "bernoulli"
    plot_examples(out, original, sorted(args["rates"]), args["inpainters"],
                  f"first image, trial 0, {lm} loss, FEC {figs.compare_fec}, "
                  f"context depth {figs.compare_depth}")


def replot(out: Path) -> int:
    """Figures and table again from a finished run, without re-running anything."""
    try:
        data = json.loads((out / "loss_sweep.json").read_text())
        rows, oracle_pts = data["summary"], [tuple(p) for p in data["oracle_points"]]
        args = data["args"]
    except (OSError, ValueError, KeyError) as exc:
        return fail(PROG, f"{out}/loss_sweep.json: {exc}")
    original = out / EXAMPLES / "original.png"
    if original.is_file():
        _figures(out, rows, args, load_rgb(original))
    else:  # a run from before the examples folder: no example images to redraw
        plot_all(rows, out, args.get("compare_fec"))
    print_table(rows, oracle_pts, data.get("oracle_rates", ()))
    print(f"redrew the figures in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.replot:
            return replot(Path(args.replot))
        s = setup(args)
        s.out.mkdir(parents=True, exist_ok=True)
        journal = _open_journal(s)
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    runs = plan(list(s.images), args)
    todo = [r for r in runs if r.key not in journal.runs]
    save_rgb(next(iter(s.images.values())), s.out / EXAMPLES / "original.png")
    hide = args.quiet or not sys.stderr.isatty()
    try:
        with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="loss sweep",
                  unit="run", disable=hide) as bar:
            sweep(s, todo, bar)
        oracle_rates, oracle_pts = _oracle(s, journal, hide)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped; the finished runs are kept in {s.journal}: run the same "
              "command with --resume to continue", file=sys.stderr)
        return 130
    finish(s, runs, oracle_rates, oracle_pts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
