"""Rate and parity planned together, at equal wire bytes, with the loss rate known.

For every image and loss rate p, today's plan -- the ``low`` rate point with its parity
planned for p (``send --rate low --fec for_loss:P,guard:1``: the loss is known, so no
guard against underestimating it) -- sets the byte budget B. Then, at
exactly that budget:

* ``joint``: ``send --budget B --fec for_loss:P,guard:1`` -- every shipped rate point (base and
  k-means) is planned within B, and the one with the best expected quality is sent
  (:class:`resilient_tx.resilience.endpoint.Sender`);
* ``avif+fec`` / ``webp+fec``: the classical file with Reed-Solomon parity across it,
  quality, parity and packet size tuned for p within B
  (:func:`resilient_tx.eval.file_fec.tuned_for_loss`), the baseline the codec must catch.

Each plan goes through the same seeded i.i.d. (or Gilbert) loss patterns (common random
numbers), our receiver decodes what arrived exactly and the MIM inpaints the rest. Printed:
mean PSNR per loss rate and plan, the bytes, the rate points the joint plan chose, and
the share of the gap to AVIF+FEC that the joint plan closes.

    python simulations/joint_plan.py --images ../shared/data/kodak --limit 4
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.codec.inpaint import Inpainter, get_inpainter  # noqa: E402
from resilient_tx.config import SenderConfig  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.eval import classical, file_fec, metrics  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.resilience import reassembly  # noqa: E402
from resilient_tx.resilience.endpoint import Sender  # noqa: E402
from resilient_tx.resilience.packetizer import PacketizedImage  # noqa: E402
from resilient_tx.runtime import set_threads  # noqa: E402
from resilient_tx.transport import channel  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import SAMPLES, image_files, plain, script_main  # noqa: E402

PROG = "joint_plan.py"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Row:
    """One plan's mean over the trials of one image and loss rate."""

    image: str
    loss: float
    plan: str  # "low+for_loss", "joint", "avif+fec", "webp+fec"
    rate: str  # the rate point sent (or the classical codec and quality)
    wire_bytes: int
    psnr: float


def _channel(loss: float, args: argparse.Namespace) -> channel.ChannelConfig:
    if args.loss_model == "gilbert":
        return channel.ChannelConfig("gilbert", loss, args.burst)
    return channel.ChannelConfig("bernoulli", loss)


def _spec(loss: float, args: argparse.Namespace) -> str:
    """The plan for a known loss: no guard (it insures against an estimate that is too
    low, which a known loss is not)."""
    burst = f",burst:{args.burst}" if args.loss_model == "gilbert" else ""
    return f"for_loss:{loss}{burst},guard:1"


Decoders = dict[str, tuple[Codec, Inpainter]]  # rate point -> codec and MIM inpainter


def _ours(img: np.ndarray, sent: PacketizedImage, rate: str, cfg: channel.ChannelConfig,
          seeds: Sequence[int], decoders: Decoders) -> float:
    """Mean PSNR of ``sent`` received through ``cfg`` under each seed, MIM-inpainted."""
    if rate not in decoders:
        model = get_model(rate)
        decoders[rate] = (Codec(model, CPU), get_inpainter("mim", model, CPU))
    codec, inpainter = decoders[rate]
    h, w = img.shape[:2]
    out = []
    for seed in seeds:
        arrived, _ = channel.transmit([bytes(p) for p in sent.packets], cfg, seed)
        asm = reassembly.assemble(arrived)
        if asm is None:
            tokens = torch.zeros_like(sent.tokens)
            known = torch.zeros(sent.tokens.shape[1:], dtype=torch.bool)
        else:
            exact = reassembly.decode(codec, asm)
            tokens, known = exact.tokens, exact.known
        filled = inpainter.fill(tokens, known)
        out.append(metrics.psnr(img, codec.tokens_to_image(filled, w, h)))
    return float(np.mean(out))


def _classical(img: np.ndarray, codec: str, budget: int, loss: float,
               cfg: channel.ChannelConfig, seeds: Sequence[int],
               args: argparse.Namespace) -> Row | None:
    burst = args.burst if args.loss_model == "gilbert" else 1.0
    fp = file_fec.tuned_for_loss(img, codec, budget, loss, burst=burst)
    if fp is None:
        return None
    psnr = float(np.mean([metrics.psnr(img, file_fec.simulate(fp, cfg, s)) for s in seeds]))
    return Row("", loss, f"{codec.lower()}+fec", f"{codec.lower()} q{fp.quality}",
               fp.total_bytes, psnr)


def measure(path: Path, args: argparse.Namespace, decoders: Decoders,
            bar: tqdm) -> list[Row]:
    img = load_rgb(path)
    rows = []
    for loss in args.rates:
        cfg = _channel(loss, args)
        seeds = [1000 * i + round(loss * 100) for i in range(args.trials)]
        base = Sender(SenderConfig(rate="low", fec=_spec(loss, args)), CPU)
        sent = base.packets(img, 1)
        budget = sent.total_bytes
        rows.append(Row(path.name, loss, "low+for_loss", "low", budget,
                        _ours(img, sent, "low", cfg, seeds, decoders)))
        joint = Sender(SenderConfig(budget=budget, fec=_spec(loss, args)), CPU,
                       quality=metrics.psnr)
        sent = joint.packets(img, 2)
        assert joint.last_plan is not None
        rate = joint.last_plan.rate
        rows.append(Row(path.name, loss, "joint", rate, sent.total_bytes,
                        _ours(img, sent, rate, cfg, seeds, decoders)))
        for codec in args.classical:
            got = _classical(img, codec, budget, loss, cfg, seeds, args)
            if got is not None:
                rows.append(Row(path.name, got.loss, got.plan, got.rate, got.wire_bytes,
                                got.psnr))
        bar.update()
    return rows


def summarize(rows: list[Row]) -> list[dict[str, object]]:
    """Per loss rate: mean PSNR and bytes of each plan, the joint plan's rate points, and
    the share of the gap from low+for_loss to avif+fec the joint plan closes."""
    out = []
    for loss in sorted({r.loss for r in rows}):
        at = [r for r in rows if r.loss == loss]
        by: dict[str, list[Row]] = defaultdict(list)
        for r in at:
            by[r.plan].append(r)
        line: dict[str, object] = {"loss": loss}
        for plan, rs in by.items():
            line[plan] = round(float(np.mean([r.psnr for r in rs])), 3)
            line[f"{plan} bytes"] = int(np.mean([r.wire_bytes for r in rs]))
        line["joint rates"] = dict(Counter(r.rate for r in by["joint"]))
        if "avif+fec" in by:
            gap = float(line["avif+fec"]) - float(line["low+for_loss"])  # type: ignore[arg-type]
            gain = float(line["joint"]) - float(line["low+for_loss"])  # type: ignore[arg-type]
            line["gap closed"] = round(gain / gap, 3) if gap > 0 else None
        out.append(line)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(SAMPLES),
                   help="folder of test images (default: the bundled sample)")
    p.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5],
                   help="loss rates (default: 0.1 0.3 0.5)")
    p.add_argument("--trials", type=int, default=4, help="loss patterns per point")
    p.add_argument("--loss-model", choices=["bernoulli", "gilbert"], default="bernoulli")
    p.add_argument("--burst", type=float, default=4.0, help="mean burst for gilbert")
    p.add_argument("--classical", nargs="*", default=["AVIF", "WEBP"],
                   choices=list(classical.CODECS), help="classical baselines")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--out", type=Path, default=Path("out/joint_plan"),
                   help="folder for rows.json and summary.json")
    return p


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.trials < 1 or any(not 0 < r < 1 for r in args.rates):
        raise ResilientTxError("--trials must be >= 1 and every rate in (0, 1)")
    set_threads(args.threads)
    args.classical = [c for c in args.classical if c != "AVIF" or classical.avif_available()]
    files = image_files(args.images, args.limit)
    decoders: Decoders = {}
    rows: list[Row] = []
    with tqdm(total=len(files) * len(args.rates), desc="images x rates") as bar:
        for path in files:
            rows += measure(path, args, decoders, bar)
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    for line in summary:
        print(json.dumps(line))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
