"""``resilient-tx send``: encode images, packetize them and send the packets.

The asyncio here only glues a transport to the sans-IO sender:
:class:`~resilient_tx.resilience.endpoint.Sender` makes the packets, the optional channel
simulator drops some at the sender (``--sim-loss``), and a
:class:`~resilient_tx.transport.PacketSender` puts the rest on the wire. Options are a
:class:`~resilient_tx.config.SenderConfig`: flags over ``--config FILE``'s ``send:``
section over the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sys
from typing import TYPE_CHECKING, Any

from resilient_tx.app.options import add_option, config_from_args
from resilient_tx.config import DEFAULT_PORT, SenderConfig
from resilient_tx.errors import InputError, TransportError

REFUSAL_GRACE_S = 0.05  # how long to wait for the network to report refused datagrams

# The command's machinery (torch, the models, the transports) is imported when the command
# runs, so that `resilient-tx --help` and usage errors stay instant.
if TYPE_CHECKING:
    import numpy as np

    from resilient_tx.resilience.endpoint import Sender
    from resilient_tx.transport.channel import ChannelConfig

    Image = tuple[str, np.ndarray]  # (path as given, RGB pixels)


def channel_of(cfg: SenderConfig) -> ChannelConfig | None:
    """The simulated channel ``--sim-loss`` asks for; None for no simulated loss."""
    from resilient_tx.transport.channel import ChannelConfig

    if not cfg.sim_loss:
        return None
    burst = cfg.burst if cfg.loss_model == "gilbert" else 1.0
    return ChannelConfig(loss_model=cfg.loss_model, loss_rate=cfg.sim_loss,
                         burst_length=burst)


def fit_to_transport(cfg: SenderConfig) -> SenderConfig:
    """``cfg`` with packets no larger than its transport carries in one message."""
    from resilient_tx.transport import max_message_size

    return dataclasses.replace(cfg, max_packet=min(cfg.max_packet,
                                                   max_message_size(cfg.transport)))


async def send_images(cfg: SenderConfig, sender: Sender, images: list[Image]) -> None:
    """Send each image under a fresh random id, printing one line per image."""
    from resilient_tx.transport import open_sender
    from resilient_tx.transport.channel import transmit

    chan = channel_of(cfg)
    rng = random.Random()
    refused_images = 0
    async with open_sender(cfg.transport, cfg.to, pace_mbit=cfg.pace,
                           max_packet=cfg.max_packet) as tx:
        for i, (path, image) in enumerate(images):
            before = _refusals(tx)
            image_id = rng.getrandbits(32)
            sent = sender.packets(image, image_id, None if path == "-" else path)
            raw = sender.datagrams(sent.packets)
            dropped = 0
            if chan is not None:
                kept, stats = transmit(raw, chan, cfg.seed + i)
                dropped, raw = stats.lost, kept
            st = await tx.send(raw) if raw else None
            h, w = image.shape[:2]
            print(f"{path}: {w}x{h} id {image_id:08x}: {len(sent.packets)} packets, "
                  f"{sent.total_bytes} bytes ({8 * sent.total_bytes / (w * h):.4f} bpp on the "
                  f"wire), {dropped} dropped by --sim-loss, "
                  f"{st.seconds * 1000 if st else 0:.0f} ms to send", flush=True)
            # The network reports a refusal (nobody listening) a moment after the datagram.
            await asyncio.sleep(REFUSAL_GRACE_S)
            refused = _refusals(tx) - before
            if refused:
                refused_images += 1
                print(f"{path}: {refused} packet(s) refused by {cfg.to}: is a receiver "
                      "listening there?", file=sys.stderr, flush=True)
    if images and refused_images == len(images):
        raise TransportError(f"nothing was delivered: {cfg.to} refused packets of every "
                             "image (no receiver listening?)")


def _refusals(tx: object) -> int:
    """Datagrams the network refused so far (UDP counts ICMP port unreachable; WebRTC
    has a session instead and reports failures as errors)."""
    return int(getattr(tx, "errors", 0))


def _warn(text: str) -> None:
    print(f"resilient-tx: warning: {text}", file=sys.stderr, flush=True)


def cmd_send(args: argparse.Namespace) -> int:
    from resilient_tx.images import load_rgb
    from resilient_tx.resilience.auth import load_key
    from resilient_tx.resilience.endpoint import Sender
    from resilient_tx.runtime import resolve_device, set_threads

    cfg = config_from_args(SenderConfig, args)
    if not cfg.to:
        raise InputError("--to HOST[:PORT] is required (or `to:` in the config's send section)")
    cfg = fit_to_transport(cfg)
    key = None if cfg.key_file is None else load_key(cfg.key_file, _warn)
    set_threads(cfg.threads)
    images = [(p, load_rgb(p)) for p in args.images]
    sender = Sender(cfg, resolve_device(cfg.device), key)
    asyncio.run(send_images(cfg, sender, images))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``send`` on the ``resilient-tx`` subcommand parsers."""
    d = SenderConfig()
    s = sub.add_parser("send", help="encode, packetize and send images over UDP or WebRTC",
                       description="Encode each image, cut it into per-stage packets with "
                       "Reed-Solomon parity and send them. --sim-loss drops packets at the "
                       "sender through the channel simulator, to watch a receiver cope.")
    s.add_argument("images", nargs="+", metavar="IMG", help="images to send")
    for name, help, metavar in [
        ("to", f"receiver HOST[:PORT] (port {DEFAULT_PORT} if omitted)", None),
        ("transport", f"default: {d.transport}", None),
        ("rate", f"shipped rate point (default: {d.rate})", None),
        ("fec", "FEC profile: none, light, strong, or for_loss:P to plan each image's parity "
         f"for a loss rate P (e.g. for_loss:0.3) (default: {d.fec})", None),
        ("context_depth", "later stages are coded given the first N stages only, so one "
         f"lost stage does not take the rest (default: {d.context_depth}; 0 = the paper's "
         "full chain)", None),
        ("effort", "refine each image's latent by N gradient steps before quantizing: "
         f"better quality, slower encoding, same decoder (default: {d.effort})", "N"),
        ("pace", "pace sending (default: no pacing)", "MBIT/S"),
        ("sim_loss", "drop this share of packets", "P"),
        ("loss_model", f"default: {d.loss_model}", None),
        ("burst", f"mean burst length for gilbert (default: {d.burst:g})", None),
        ("seed", f"seed of the simulated loss (default: {d.seed})", None),
        ("max_packet", f"bytes per packet (default: {d.max_packet})", None),
        ("key_file", "shared secret (>= 16 bytes): sign every packet; the receiver needs "
         "the same file", "FILE"),
    ]:
        add_option(s, SenderConfig, name, help, metavar)
    s.add_argument("--config", help="YAML file with a send: section")
    add_option(s, SenderConfig, "device", f"auto|cpu|cuda (default: {d.device})")
    add_option(s, SenderConfig, "threads", "CPU threads (default: torch default)")
    s.set_defaults(func=cmd_send)
