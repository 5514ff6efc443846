"""Time to first picture with ``recv --progressive``, against time to the final picture.

One image is sent at a paced link rate through 30 % loss (by default) into the real
receive loop (:func:`resilient_tx.app.session.receive_images` with ``progressive``); the
preview (first stages in, the rest filled by the preview inpainter) and the final image
(every stage in, or the deadline, the rest filled by the MIM) are timed from the image's
first packet, the way ``recv --json`` reports ``latency_ms``. Repeated per link rate and
seed. The link rate decides the answer: on a fast link the whole image is in before a
preview could be decoded, on a slow one the preview comes long before the end.

    python simulations/bench_preview.py --pace 0.5 1 2 5 --seeds 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resilient_tx.app.demo import sample_path  # noqa: E402
from resilient_tx.app.session import ReceivedImage, receive_images  # noqa: E402
from resilient_tx.config import ReceiverConfig, SenderConfig  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.eval.metrics import psnr  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.resilience.endpoint import Receiver, Sender  # noqa: E402
from resilient_tx.runtime import set_threads  # noqa: E402
from resilient_tx.transport import LossPattern, MemoryReceiver, MemorySender  # noqa: E402
from resilient_tx.transport.base import TransportConfig  # noqa: E402
from resilient_tx.transport.channel import ChannelConfig  # noqa: E402
from simulations.sim_common import plain, script_main  # noqa: E402

PROG = "bench_preview.py"
CPU = torch.device("cpu")


Timed = tuple[ReceivedImage, float]  # a picture and seconds from its first packet


async def one(datagrams: list[bytes], receiver: Receiver, cfg: ReceiverConfig, pace: float,
              loss: float, seed: int) -> list[Timed]:
    """Send ``datagrams`` paced at ``pace`` Mbit/s through ``loss``; the preview and the
    final image as the receive loop yields them, each with its latency."""
    rx = MemoryReceiver()
    chan = LossPattern(ChannelConfig(loss_rate=loss), seed=seed)
    tx = MemorySender(rx, TransportConfig(pace_mbit=pace), loss=chan)
    got: list[Timed] = []
    async with rx, tx:
        sending = asyncio.ensure_future(tx.send(datagrams))
        async with aclosing(receive_images(rx, receiver, config=cfg)) as images:
            async for item in images:
                got.append((item, item.latency()))
                if not item.preview:
                    break
        await sending
    return got


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=str(sample_path()),
                   help="image to send (default: the bundled 768x512 sample)")
    p.add_argument("--pace", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0],
                   help="link rates in Mbit/s (default: 0.5 1 2 5)")
    p.add_argument("--loss", type=float, default=0.3, help="i.i.d. loss rate (default 0.3)")
    p.add_argument("--seeds", type=int, default=3, help="loss patterns per link rate")
    p.add_argument("--preview-inpainter", default="neighbor",
                   choices=["neighbor", "mim", "none"], help="how previews are filled")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    return p


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    if not 0 <= args.loss < 1 or args.seeds < 1 or any(p <= 0 for p in args.pace):
        raise ResilientTxError("need 0 <= --loss < 1, --seeds >= 1 and positive --pace")
    set_threads(args.threads)
    img = load_rgb(args.image)
    sender = Sender(SenderConfig(fec=f"for_loss:{args.loss}"), CPU)
    receiver = Receiver("mim", CPU, preview_inpainter=args.preview_inpainter)
    receiver.warm_up()
    cfg = ReceiverConfig(deadline=0.5, progressive=True, feedback=False)
    rows = []
    print(f"{'Mbit/s':>7} {'seed':>4} {'send s':>7} {'preview s':>9} {'final s':>8} "
          f"{'ratio':>6} {'preview dB':>10} {'final dB':>8}")
    for pace in args.pace:
        for seed in range(args.seeds):
            sent = sender.packets(img, seed)
            raw = sender.datagrams(sent.packets)
            send_s = 8 * sum(map(len, raw)) / (pace * 1e6)
            got = asyncio.run(one(raw, receiver, cfg, pace, args.loss, seed))
            row = _row(pace, seed, send_s, got, img)
            rows.append(row)
            print(f"{pace:7.2f} {seed:4d} {send_s:7.2f} {row['preview_s']:9.2f} "
                  f"{row['final_s']:8.2f} {row['ratio']:6.2f} {row['preview_db']:10.2f} "
                  f"{row['final_db']:8.2f}", flush=True)
    for pace in args.pace:
        at = [r for r in rows if r["pace"] == pace]
        print(f"mean at {pace:g} Mbit/s: preview {np.mean([r['preview_s'] for r in at]):.2f} s,"
              f" final {np.mean([r['final_s'] for r in at]):.2f} s, preview/final "
              f"{np.mean([r['ratio'] for r in at]):.2f}")
    return rows


def _row(pace: float, seed: int, send_s: float, got: list[Timed],
         img: np.ndarray) -> dict[str, float]:
    """Times from the first packet to each picture being ready (as recv reports them);
    NaN for the preview when none came before the final picture."""
    final, t_final = got[-1]
    nan = float("nan")
    preview, t_preview = got[0] if got[0][0].preview else (None, nan)
    return {"pace": pace, "seed": seed, "send_s": send_s, "preview_s": t_preview,
            "final_s": t_final, "ratio": t_preview / t_final,
            "preview_db": psnr(img, preview.image) if preview is not None else nan,
            "final_db": psnr(img, final.image)}


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
