"""``resilient-tx demo``: the quick-start job. Round-trips one image through each rate point."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resilient_tx.app.options import progress_bar
from resilient_tx.codec.container import EncodedImage
from resilient_tx.codec.image_codec import Codec
from resilient_tx.eval.metrics import ms_ssim, psnr
from resilient_tx.images import load_rgb, save_rgb
from resilient_tx.runtime import resolve_device, set_threads
from resilient_tx.zoo.registry import available_rates, get_model

if TYPE_CHECKING:
    from resilient_tx.app.loopback import LoopbackResult

SAMPLE = "kodim23.png"


@dataclass(frozen=True)
class DemoRow:
    rate: str
    num_bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float
    tokens_exact: bool


def sample_path() -> Path:
    return Path(str(resources.files("resilient_tx") / "samples" / SAMPLE))


def _round_trip(codec: Codec, image: np.ndarray) -> tuple[DemoRow, np.ndarray]:
    codec.decode(codec.encode(image[:64, :64]))  # warm-up: first calls pay one-time init
    t0 = time.perf_counter()
    blob = bytes(codec.encode(image))
    t1 = time.perf_counter()
    enc = EncodedImage.parse(blob)
    recon = codec.decode(enc)
    t2 = time.perf_counter()
    h, w = image.shape[:2]
    tokens = codec.image_to_tokens(image)
    exact = bool((codec.decode_tokens(enc.stages, *tokens.shape[1:]) == tokens).all())
    row = DemoRow(codec.model.name, len(blob), len(blob) * 8 / (w * h), psnr(image, recon),
                  ms_ssim(image, recon), t1 - t0, t2 - t1, exact)
    return row, recon


def run_demo(args: argparse.Namespace) -> list[DemoRow]:
    set_threads(args.threads)
    device = resolve_device(args.device)
    from resilient_tx.resilience.fec import parse_spec

    fec = args.fec or f"for_loss:{args.loss:g}"  # the demo knows its loss rate: plan for it
    parse_spec(fec)  # a bad --loss/--fec fails here, before any work
    src = Path(args.image) if args.image else sample_path()
    image = load_rgb(src)
    out = Path(args.out)
    save_rgb(image, out / "original.png")
    rows = []
    h, w = image.shape[:2]
    print(f"{src.name}: {w}x{h}, device {device}")
    print(f"{'rate':<10}{'bytes':>8}{'bpp':>8}{'PSNR dB':>9}{'MS-SSIM':>9}{'enc s':>7}{'dec s':>7}"
          "  tokens")
    rates = args.rate or available_rates()
    # A bar on stderr over the rate points and the two transmissions (hidden with -q or
    # when stderr is not a terminal); the table goes to stdout above it.
    with progress_bar(args, len(rates) + 2, "demo") as bar:
        for name in rates:
            codec = Codec(get_model(name), device)
            row, recon = _round_trip(codec, image)
            save_rgb(recon, out / f"{name}.png")
            rows.append(row)
            bar.write(f"{row.rate:<10}{row.num_bytes:>8}{row.bpp:>8.4f}{row.psnr:>9.2f}"
                      f"{row.ms_ssim:>9.4f}{row.encode_s:>7.2f}{row.decode_s:>7.2f}  "
                      f"{'exact' if row.tokens_exact else 'MISMATCH'}", file=sys.stdout)
            bar.update()
        bar.write(f"reconstructions written to {out}/", file=sys.stdout)
        _transmission(args, fec, image, device, out, bar.update)
    return rows


def _transmission(args: argparse.Namespace, fec: str, image: np.ndarray, device,
                  out: Path, step: Callable[[], object] = lambda: None) -> None:
    """Loopback UDP with simulated loss: the whole system on one picture, twice -- with
    the parity planned for the loss, and with no parity, so that tokens are really lost
    and inpainted (shown on a map)."""
    from resilient_tx.app.loopback import run_loopback
    from resilient_tx.config import SenderConfig
    from resilient_tx.resilience.endpoint import Receiver, Sender

    receiver = Receiver("mim", device)
    receiver.warm_up()
    runs = {}
    for name, f in (("planned", fec), ("unprotected", "none")):
        runs[name] = run_loopback(image, Sender(SenderConfig(fec=f), device), receiver,
                                  args.loss, seed=args.seed)
        step()
    reports = {name: _report(image, res, args.loss) for name, res in runs.items()}
    report = {**reports["planned"], "fec": fec, "unprotected": reports["unprotected"]}
    (out / "transmission_report.json").write_text(json.dumps(report, indent=1))
    save_rgb(_figure(image, runs, reports, fec, args.loss), out / "transmitted_side_by_side.png")
    for name, f in (("planned", fec), ("unprotected", "none")):
        r, res = reports[name], runs[name]
        print(f"\nloopback UDP, {args.loss:.0%} simulated loss, FEC {f}: "
              f"{res.packets_sent} packets ({res.bytes_sent} bytes) sent, {r['packets_dropped']} "
              f"dropped, {r['packets_recovered']} recovered by FEC, {r['tokens_inpainted']}/"
              f"{r['tokens']} tokens inpainted -> PSNR {r['psnr']:.2f} dB, MS-SSIM "
              f"{r['ms_ssim']:.4f}, {res.latency_s:.2f} s from encode to image")
    print(f"original | received (FEC {fec}) | received (no FEC) | inpainted tokens written to "
          f"{out}/transmitted_side_by_side.png, report {out}/transmission_report.json")


def _report(image: np.ndarray, res: LoopbackResult, loss: float) -> dict[str, Any]:
    got = res.received
    return {**dataclasses.asdict(got.report), "loss": loss, "packets_dropped": res.channel.lost,
            "bytes_sent": res.bytes_sent, "latency_s": round(res.latency_s, 3),
            "psnr": round(psnr(image, got.image), 2),
            "ms_ssim": round(ms_ssim(image, got.image), 4)}


def _figure(image: np.ndarray, runs: dict[str, LoopbackResult],
            reports: dict[str, dict[str, Any]], fec: str, loss: float) -> np.ndarray:
    from resilient_tx.app.figure import Panel, inpaint_map, side_by_side

    def caption(name: str) -> str:
        r = reports[name]
        return (f"{r['bytes_sent']} bytes, {r['packets_dropped']} lost, "
                f"{r['tokens_inpainted']}/{r['tokens']} tokens inpainted, {r['psnr']:.2f} dB")

    bare = runs["unprotected"].received
    h, w = image.shape[:2]
    f = -(-h // bare.known.shape[0]) if bare.known is not None else 16
    known = bare.known.numpy() if bare.known is not None else np.ones((1, 1), dtype=bool)
    return side_by_side([
        Panel(image, "original", f"{w}x{h}"),
        Panel(runs["planned"].received.image, f"received, {loss:.0%} loss, FEC {fec}",
              caption("planned")),
        Panel(bare.image, f"received, {loss:.0%} loss, no FEC", caption("unprotected")),
        Panel(inpaint_map(bare.image, known, f), "inpainted tokens (magenta), no FEC",
              "each token is a 16x16 block" if f == 16 else f"each token is {f}x{f} px"),
    ])
