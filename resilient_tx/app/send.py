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
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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
    from resilient_tx.transport import PacketSender
    from resilient_tx.transport.channel import ChannelConfig


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


FINAL_FEEDBACK_WAIT_S = 0.5  # after the last image: time for the receiver's last report


async def send_images(cfg: SenderConfig, sender: Sender, images: Sequence[str],
                      load: Callable[[str], np.ndarray], args: argparse.Namespace | None = None,
                      ) -> None:
    """Send each image under a fresh random id, one line (or JSON object) per image.

    ``images`` are paths (``-``: standard input), loaded one at a time by ``load``.
    Between images the receiver's feedback is taken, so each image is planned from what
    the receiver reported about the ones before; with ``cfg.interval`` the images start
    that many seconds apart (a camera-like stream).
    """
    from resilient_tx.app.options import progress_bar
    from resilient_tx.transport import open_sender

    rng = random.Random()
    refused_images = 0
    async with open_sender(cfg.transport, cfg.to, pace_mbit=cfg.pace,
                           max_packet=cfg.max_packet) as tx:
        start = time.monotonic()
        with progress_bar(args, len(images), "sending", unit="image") as bar:
            for i, path in enumerate(images):
                await _until(start + i * cfg.interval, tx, sender)
                sender.feedback(tx.take_feedback())
                refused = await _send_one(cfg, sender, tx, path, load(path),
                                          rng.getrandbits(32), i)
                refused_images += bool(refused)
                bar.update()
        sender.feedback(await tx.wait_feedback(FINAL_FEEDBACK_WAIT_S))
    _summary(cfg, sender)
    if images and refused_images == len(images):
        raise TransportError(f"nothing was delivered: {cfg.to} refused packets of every "
                             "image (no receiver listening?)")


async def _until(when: float, tx: PacketSender, sender: Sender) -> None:
    """Wait until ``when`` (monotonic), taking feedback as it arrives."""
    while (left := when - time.monotonic()) > 0:
        sender.feedback(await tx.wait_feedback(left))


async def _send_one(cfg: SenderConfig, sender: Sender, tx: PacketSender, path: str,
                    image: np.ndarray, image_id: int, index: int) -> int:
    """Packetize and send one image; print its line; returns the packets refused."""
    from resilient_tx.transport.channel import transmit

    before = _refusals(tx)
    sent = sender.packets(image, image_id, None if path == "-" else path)
    raw = sender.datagrams(sent.packets)
    dropped = 0
    chan = channel_of(cfg)
    if chan is not None:
        kept, stats = transmit(raw, chan, cfg.seed + index)
        dropped, raw = stats.lost, kept
    st = await tx.send(raw) if raw else None
    # The network reports a refusal (nobody listening) a moment after the datagram.
    await asyncio.sleep(REFUSAL_GRACE_S)
    refused = _refusals(tx) - before
    h, w = image.shape[:2]
    plan = sender.last_plan
    if cfg.json:
        print(json.dumps({"image": path, "image_id": f"{image_id:08x}", "width": w,
                          "height": h, "packets": len(sent.packets),
                          "bytes": sent.total_bytes,
                          "wire_bpp": round(8 * sent.total_bytes / (w * h), 5),
                          "dropped_by_sim": dropped, "refused": refused,
                          "send_ms": round(st.seconds * 1000 if st else 0.0, 1),
                          "plan": None if plan is None else plan.as_dict()}), flush=True)
    else:
        print(f"{path}: {w}x{h} id {image_id:08x}: {len(sent.packets)} packets, "
              f"{sent.total_bytes} bytes ({8 * sent.total_bytes / (w * h):.4f} bpp on the "
              f"wire), {dropped} dropped by --sim-loss, "
              f"{st.seconds * 1000 if st else 0:.0f} ms to send; "
              f"{'' if plan is None else plan.describe()}", flush=True)
    if refused:
        print(f"{path}: {refused} packet(s) refused by {cfg.to}: is a receiver "
              "listening there?", file=sys.stderr, flush=True)
    return refused


def _summary(cfg: SenderConfig, sender: Sender) -> None:
    """Say what the feedback told (on stderr: stdout holds one line per image)."""
    planner = sender.planner
    if planner.reports:
        print(f"resilient-tx: feedback: {planner.reports} report(s) from the receiver; "
              f"path estimate: {planner.estimate().describe()}", file=sys.stderr, flush=True)
    elif planner.auto:
        est = planner.estimate()
        print("resilient-tx: no feedback from the receiver (an older receiver, --no-feedback,"
              " or the path blocks it): every image was planned for the prior loss rate "
              f"{est.loss_rate:.2f}", file=sys.stderr, flush=True)
    if planner.rejected:
        print(f"resilient-tx: {planner.rejected} feedback message(s) ignored (corrupted, or "
              "not signed with our key)", file=sys.stderr, flush=True)


def _refusals(tx: object) -> int:
    """Datagrams the network refused so far (UDP counts ICMP port unreachable; WebRTC
    has a session instead and reports failures as errors)."""
    return int(getattr(tx, "errors", 0))


def _warn(text: str) -> None:
    print(f"resilient-tx: warning: {text}", file=sys.stderr, flush=True)


def image_paths(given: Sequence[str]) -> list[str]:
    """The images to send: files as given, folders expanded to their images (sorted),
    ``-`` for standard input."""
    from resilient_tx.images import list_images

    out: list[str] = []
    for item in given:
        if item != "-" and Path(item).is_dir():
            out += [str(p) for p in list_images(item)]  # InputError when there are none
        else:
            out.append(item)
    return out


def cmd_send(args: argparse.Namespace) -> int:
    from resilient_tx.eval.metrics import psnr
    from resilient_tx.resilience.auth import load_key
    from resilient_tx.resilience.endpoint import Sender
    from resilient_tx.runtime import resolve_device, set_threads

    cfg = config_from_args(SenderConfig, args)
    if not cfg.to:
        raise InputError("--to HOST[:PORT] is required (or `to:` in the config's send section)")
    cfg = fit_to_transport(cfg)
    key = None if cfg.key_file is None else load_key(cfg.key_file, _warn)
    set_threads(cfg.threads)
    paths = image_paths(args.images)
    if paths.count("-") > 1:
        raise InputError("standard input (-) can be sent once")
    sender = Sender(cfg, resolve_device(cfg.device), key, quality=psnr)
    asyncio.run(send_images(cfg, sender, paths, _loader(), args))
    return 0


def _loader() -> Callable[[str], np.ndarray]:
    from resilient_tx.images import load_rgb, load_rgb_bytes

    def load(path: str) -> np.ndarray:
        return load_rgb_bytes(sys.stdin.buffer.read()) if path == "-" else load_rgb(path)

    return load


def add_parser(sub: Any) -> None:
    """Register ``send`` on the ``resilient-tx`` subcommand parsers."""
    d = SenderConfig()
    s = sub.add_parser("send", help="encode, packetize and send images over UDP or WebRTC",
                       description="Encode each image, cut it into per-stage packets with "
                       "Reed-Solomon parity and send them. --sim-loss drops packets at the "
                       "sender through the channel simulator, to watch a receiver cope.")
    s.add_argument("images", nargs="+", metavar="IMG",
                   help="images or folders of images to send (- for standard input)")
    for name, help, metavar in [
        ("to", f"receiver HOST[:PORT] (port {DEFAULT_PORT} if omitted)", None),
        ("transport", f"default: {d.transport}", None),
        ("rate", f"shipped rate point (default: {d.rate})", None),
        ("fec", "auto (default): plan each image's parity for the loss and bursts the "
         "receiver reports (before any report: for 10 %% loss); for_loss:P[,burst:L] for a "
         "loss rate P (and mean burst of L packets) you know; or a fixed profile: none, "
         "light, strong", None),
        ("budget", "bytes on the wire per image: the rate point is chosen together with "
         "the parity, for the best expected quality at the estimated loss", "BYTES"),
        ("wire_bpp", "the same budget as bits per pixel on the wire", "B"),
        ("interval", "seconds between the starts of consecutive images, like a camera "
         f"(default: {d.interval:g}: back to back)", "SECONDS"),
        ("json", "one JSON object per image, with the plan and the estimate it came from",
         None),
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
