"""Receive images from resilient-tx senders and hand each one to your own code.

A packet transport (``open_receiver``: UDP, or WebRTC with TCP signalling on the same
port) delivers whatever packets survive the network; ``receive_images`` groups them per
image, decodes exactly what arrived and inpaints the rest (``Receiver``), and yields each
image as soon as it is complete or its deadline has passed. ``on_image`` below is where
your program takes over; this one saves a PNG and prints a line. With ``--key-file`` it
accepts only packets signed with that secret (``receive_images(..., key=key)``) and says
once, through ``on_notice``, if packets arrive unsigned or signed with another key::

    python receiver/receive_images.py --listen 0.0.0.0:5004 --out-dir received --count 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from contextlib import aclosing
from pathlib import Path

from resilient_tx.app.session import ReceivedImage, receive_images
from resilient_tx.config import ReceiverConfig
from resilient_tx.errors import ResilientTxError
from resilient_tx.images import save_rgb
from resilient_tx.resilience.auth import PacketKey, load_key
from resilient_tx.resilience.collector import Drops, DueImage
from resilient_tx.resilience.endpoint import Receiver
from resilient_tx.runtime import resolve_device
from resilient_tx.transport import format_peer, open_receiver

OnImage = Callable[[ReceivedImage], object]  # its result is ignored


def save_and_report(got: ReceivedImage, out_dir: Path) -> Path:
    """An example ``on_image``: write the picture, say how it arrived."""
    path = out_dir / f"{got.image_id:08x}.png"
    save_rgb(got.image, path)
    r = got.report
    print(f"{path}: {r.width}x{r.height} from {got.sender}, "
          f"{r.packets_received}/{r.packets_sent} packets, {r.packets_recovered} rebuilt by "
          f"FEC, {r.tokens_inpainted}/{r.tokens} tokens inpainted, "
          f"{1000 * got.latency():.0f} ms after its first packet", flush=True)
    return path


def skip(due: DueImage, exc: ResilientTxError) -> None:
    """An image this receiver cannot decode (e.g. a model it lacks): say so, go on."""
    print(f"image {due.key[1]:08x} skipped: {exc}", file=sys.stderr)


def notice(text: str) -> None:
    """Drops that point at a misconfiguration (a key on one side only), said once each."""
    print(f"receive_images: {text}", file=sys.stderr, flush=True)


async def receive(receiver: Receiver, cfg: ReceiverConfig, on_image: OnImage,
                  key: PacketKey | None = None, drops: Drops | None = None) -> None:
    """Serve senders on ``cfg.listen`` until ``cfg.count`` images are in (0: forever);
    with ``key``, signed packets only. ``drops`` counts what was dropped and why."""
    async with open_receiver(cfg.transport, cfg.listen) as transport:
        print(f"listening on {format_peer(transport.address)} ({cfg.transport})",
              file=sys.stderr, flush=True)
        images = receive_images(transport, receiver, deadline=cfg.deadline, on_skip=skip,
                                key=key, drops=drops, on_notice=notice)
        async with aclosing(images):
            done = 0
            async for got in images:
                on_image(got)
                done += 1
                if done == cfg.count:
                    return


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = ReceiverConfig()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default=d.listen, help="HOST:PORT (default: %(default)s)")
    p.add_argument("--transport", choices=["udp", "webrtc"], default=d.transport)
    p.add_argument("--out-dir", default=d.out_dir, help="for the PNGs (default: %(default)s)")
    p.add_argument("--count", type=int, default=d.count,
                   help="stop after N images (default: run forever)")
    p.add_argument("--deadline", type=float, default=d.deadline,
                   help="seconds to wait after an image's last packet (default: %(default)s)")
    p.add_argument("--inpainter", choices=["mim", "ar", "neighbor", "none"],
                   default=d.inpainter, help="fills lost tokens (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: auto)")
    p.add_argument("--key-file", metavar="FILE",
                   help="shared secret (>= 16 bytes): accept only packets signed with it")
    return p.parse_args(argv)


def warn(text: str) -> None:
    print(f"receive_images: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = ReceiverConfig(listen=args.listen, transport=args.transport, count=args.count,
                             deadline=args.deadline, inpainter=args.inpainter,
                             device=args.device, out_dir=args.out_dir)
        key = None if args.key_file is None else load_key(args.key_file, warn)
        receiver = Receiver(cfg.inpainter, resolve_device(cfg.device))
        receiver.warm_up()  # load the models now, not when the first image arrives
        out_dir = Path(cfg.out_dir)
        drops = Drops()
        try:
            asyncio.run(receive(receiver, cfg, lambda got: save_and_report(got, out_dir),
                                key, drops))
        finally:
            print(f"receive_images: dropped: {drops.summary()}", file=sys.stderr)
    except ResilientTxError as exc:
        print(f"receive_images: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
