"""Send images to a resilient-tx receiver, written against the library's public API.

Each image is encoded by the learned codec and cut into self-describing packets, one
Reed-Solomon protected group per quincunx stage (``Sender``), which a packet transport
(``open_sender``: UDP or a WebRTC data channel) puts on the wire. ``--loss`` drops a
share of the packets before they leave, to watch the receiver cope. With ``--key-file``
every packet is signed (``Sender(..., key)`` and ``sender.datagrams``), and a receiver
given the same file accepts nothing else::

    python receiver/receive_images.py --count 1                       # first, elsewhere
    python sender/send_image.py resilient_tx/samples/kodim23.png --to 127.0.0.1 --loss 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Sequence

from resilient_tx.config import DEFAULT_PORT, SenderConfig
from resilient_tx.errors import ResilientTxError
from resilient_tx.images import load_rgb
from resilient_tx.resilience.auth import load_key
from resilient_tx.resilience.endpoint import Sender
from resilient_tx.runtime import resolve_device
from resilient_tx.transport import max_message_size, open_sender
from resilient_tx.transport.channel import ChannelConfig, transmit


async def send_images(sender: Sender, paths: Sequence[str], cfg: SenderConfig) -> None:
    """Encode, packetize and send each image; print what went out."""
    async with open_sender(cfg.transport, cfg.to, max_packet=cfg.max_packet) as transport:
        for n, path in enumerate(paths):
            image = load_rgb(path)
            packets = sender.packets(image, image_id=random.getrandbits(32)).packets
            wire = sender.datagrams(packets)  # signed when the sender has a key
            if cfg.sim_loss:  # the network would lose these; FEC and inpainting must cope
                wire, _ = transmit(wire, ChannelConfig(loss_rate=cfg.sim_loss), seed=n)
            stats = await transport.send(wire)
            print(f"{path}: {len(packets)} packets, {len(packets) - len(wire)} dropped, "
                  f"{stats.bytes} bytes sent in {1000 * stats.seconds:.0f} ms", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = SenderConfig()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMG", help="images to send")
    p.add_argument("--to", required=True,
                   help=f"receiver HOST[:PORT] (port {DEFAULT_PORT} if omitted)")
    p.add_argument("--transport", choices=["udp", "webrtc"], default=d.transport)
    p.add_argument("--rate", default=d.rate, help="rate point (default: %(default)s)")
    p.add_argument("--fec", default=d.fec,
                   help="none, light, strong or for_loss:P (default: %(default)s)")
    p.add_argument("--loss", type=float, default=0.0, metavar="P",
                   help="drop this share of the packets before sending (default: 0)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: auto)")
    p.add_argument("--key-file", metavar="FILE",
                   help="shared secret (>= 16 bytes): sign every packet; the receiver "
                   "needs the same file")
    return p.parse_args(argv)


def warn(text: str) -> None:
    print(f"send_image: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = SenderConfig(to=args.to, transport=args.transport, rate=args.rate, fec=args.fec,
                           sim_loss=args.loss, device=args.device,
                           # one packet per message: a split message is lost whole
                           max_packet=max_message_size(args.transport))
        key = None if args.key_file is None else load_key(args.key_file, warn)
        sender = Sender(cfg, resolve_device(cfg.device), key)  # loads the codec once
        asyncio.run(send_images(sender, args.images, cfg))
    except ResilientTxError as exc:
        print(f"send_image: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
