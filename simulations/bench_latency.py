"""End-to-end latency and receiver throughput on loopback.

A real ``resilient-tx recv`` runs as a separate process; images are sent to it over the
chosen transport. Latency is measured from the moment the sender starts encoding an image
to the modification time of the PNG the receiver writes (same machine, same clock), so it
includes encoding, packetizing, the network, decoding, inpainting and writing. Throughput
sends ``--burst`` 256x256 crops back to back and divides by the time from the first send
to the last PNG. The image is the photo bundled with the package (768x512).

    python simulations/bench_latency.py                    # UDP, 5 latency runs, 20 crops
    python simulations/bench_latency.py --transport webrtc --sim-loss 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilient_tx.app.demo import sample_path  # noqa: E402
from resilient_tx.config import SenderConfig  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.resilience.endpoint import Sender  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.transport import open_sender  # noqa: E402
from resilient_tx.transport.channel import ChannelConfig, transmit  # noqa: E402
from simulations.sim_common import plain  # noqa: E402


def _start_receiver(args: argparse.Namespace, count: int, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "resilient_tx.app.cli", "recv", "--listen",
           f"127.0.0.1:{args.port}", "--transport", args.transport, "--count", str(count),
           "--out-dir", str(out), "--json", "--device", args.device,
           "--threads", str(args.threads), "--deadline", str(args.deadline)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it listens (models are loaded before that)
        if line.startswith("listening on"):
            break
    return proc


async def _send(args: argparse.Namespace, sender: Sender, images: list, gap: float) -> list:
    starts = []
    chan = ChannelConfig(loss_rate=args.sim_loss) if args.sim_loss else None
    async with await open_sender(args.transport, f"127.0.0.1:{args.port}") as tx:
        for i, img in enumerate(images):
            starts.append(time.time())
            raw = [bytes(p) for p in sender.packets(img, 1000 + i).packets]
            if chan is not None:
                raw, _ = transmit(raw, chan, i)
            await tx.send(raw)
            await asyncio.sleep(gap)
    return starts


def _run(args: argparse.Namespace, sender: Sender, images: list, gap: float,
         out: Path) -> tuple[list[float], list[dict]]:
    proc = _start_receiver(args, len(images), out)
    starts = asyncio.run(_send(args, sender, images, gap))
    stdout, _ = proc.communicate(timeout=300)
    reports = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    reports.sort(key=lambda r: int(r["image_id"], 16))
    return starts, reports


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_latency.py", description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", choices=["udp", "webrtc"], default="udp")
    p.add_argument("--port", type=int, default=5077)
    p.add_argument("--runs", type=int, default=5, help="latency runs (default: 5)")
    p.add_argument("--burst", type=int, default=20, help="256x256 images for throughput")
    p.add_argument("--sim-loss", type=float, default=0.0)
    p.add_argument("--deadline", type=float, default=0.5)
    p.add_argument("--device", default="cpu", help="receiver device (default: %(default)s)")
    p.add_argument("--sender-device", default="cpu",
                   help="device the sender encodes on (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="out/bench_latency", help="folder for PNGs and JSON")
    args = p.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    sender = Sender(SenderConfig(), resolve_device(args.sender_device))
    img = load_rgb(sample_path())
    sender.packets(img[:64, :64], 0)  # warm-up: the sender's one-time start-up is not latency
    starts, reports = _run(args, sender, [img] * args.runs, 2.5, out / "latency")
    lat = [Path(r["output"]).stat().st_mtime - s for s, r in zip(starts, reports, strict=True)]
    crops = [img[y:y + 256, x:x + 256] for y in (0, 256) for x in (0, 256, 512)]
    burst = [crops[i % len(crops)] for i in range(args.burst)]
    bstarts, breports = _run(args, sender, burst, 0.0, out / "throughput")
    last = max(Path(r["output"]).stat().st_mtime for r in breports)
    ips = len(breports) / (last - bstarts[0])
    summary = {"transport": args.transport, "sim_loss": args.sim_loss, "device": args.device,
               "sender_device": args.sender_device,
               "latency_s": lat, "latency_median_s": statistics.median(lat),
               "throughput_images_per_s_256": ips, "burst_images_received": len(breports)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_latency.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.transport}, loss {args.sim_loss:.0%}, sender on {args.sender_device}, "
          f"receiver on {args.device}: end-to-end "
          f"latency (768x512) median {summary['latency_median_s']:.2f} s, runs "
          f"{', '.join(f'{x:.2f}' for x in lat)}; throughput {ips:.2f} images/s (256x256, "
          f"{len(breports)}/{args.burst} received)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
