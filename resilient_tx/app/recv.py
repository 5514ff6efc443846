"""``resilient-tx recv``: receive images, decode what arrived, inpaint the rest.

The loop itself is :func:`~resilient_tx.app.session.receive_images`; this command adds
the options (a :class:`~resilient_tx.config.ReceiverConfig`: flags over ``--config
FILE``'s ``recv:`` section over the defaults), writes each image as
``OUT_DIR/<image id>.png`` and prints one report line (or JSON object) per image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resilient_tx.app.options import add_option, config_from_args
from resilient_tx.config import ReceiverConfig

# The command's machinery (torch, the models, the transports) is imported when the command
# runs, so that `resilient-tx --help` and usage errors stay instant.
if TYPE_CHECKING:
    from resilient_tx.app.session import ReceivedImage
    from resilient_tx.errors import ResilientTxError
    from resilient_tx.resilience.collector import DueImage
    from resilient_tx.resilience.endpoint import Receiver


def report_fields(got: ReceivedImage, path: Path, latency: float) -> dict[str, Any]:
    """What ``--json`` prints for one image (and the report line is made of)."""
    r = got.report
    return {"image_id": f"{r.image_id:08x}", "width": r.width, "height": r.height,
            "sender": got.sender, "complete": got.complete,
            "packets_sent": r.packets_sent, "packets_received": r.packets_received,
            # Missing at release. A complete image is released as soon as FEC can rebuild
            # every stage, so for it these are packets not yet arrived (lost or not): only
            # an incomplete image's missing packets are known to be lost.
            "packets_missing": max(0, r.packets_sent - r.packets_received),
            "packets_recovered": r.packets_recovered, "tokens": r.tokens,
            "tokens_inpainted": r.tokens_inpainted, "bytes_received": r.bytes_received,
            "bytes_unusable": r.bytes_unusable,
            "decode_ms": round(1000 * got.received.decode_s, 1),
            "latency_ms": round(1000 * latency, 1), "output": str(path)}


def report_line(got: ReceivedImage, path: Path, latency: float, as_json: bool) -> str:
    """One line about one received image: JSON, or for people."""
    fields = report_fields(got, path, latency)
    if as_json:
        return json.dumps(fields)
    r = got.report
    missing = (f"{fields['packets_missing']} not needed" if got.complete
               else f"{fields['packets_missing']} lost")
    return (f"{fields['image_id']} {r.width}x{r.height} from {fields['sender']}: packets "
            f"{r.packets_received}/{r.packets_sent} received, {missing}, "
            f"{r.packets_recovered} recovered by FEC; {r.tokens_inpainted}/{r.tokens} tokens "
            f"inpainted; {r.bytes_received} bytes ({r.bytes_unusable} unusable); latency "
            f"{fields['latency_ms']:.0f} ms -> {path}")


def _skipped(due: DueImage, exc: ResilientTxError) -> None:
    print(f"resilient-tx: image {due.key[1]:08x} skipped: {exc}", file=sys.stderr)


async def _write(got: ReceivedImage, cfg: ReceiverConfig) -> None:
    from resilient_tx.images import FAST_PNG_LEVEL, save_rgb

    path = Path(cfg.out_dir) / f"{got.image_id:08x}.png"
    await asyncio.get_running_loop().run_in_executor(None, save_rgb, got.image, path,
                                                     FAST_PNG_LEVEL)
    print(report_line(got, path, got.latency(), cfg.json), flush=True)


async def serve(cfg: ReceiverConfig, receiver: Receiver) -> None:
    """Receive until ``cfg.count`` images are written (forever for 0)."""
    from resilient_tx.app.session import receive_images
    from resilient_tx.transport import open_receiver

    async with open_receiver(cfg.transport, cfg.listen) as rx:
        print(f"listening on {cfg.listen} ({cfg.transport}); writing to {cfg.out_dir}/; "
              "loading the models in the background", file=sys.stderr, flush=True)
        # The port is bound first (a busy port is reported at once); the models load while
        # packets already queue, and an image that arrives early waits only for its model.
        # A daemon thread, so that a receiver done with its --count images exits at once.
        threading.Thread(target=_warm_up, args=(receiver,), daemon=True).start()
        done = 0
        images = receive_images(rx, receiver, deadline=cfg.deadline, on_skip=_skipped)
        async with aclosing(images):
            async for got in images:
                await _write(got, cfg)
                done += 1
                if cfg.count and done >= cfg.count:
                    return


def _warm_up(receiver: Receiver) -> None:
    receiver.warm_up()
    print("models loaded", file=sys.stderr, flush=True)


def cmd_recv(args: argparse.Namespace) -> int:
    from resilient_tx.resilience.endpoint import Receiver
    from resilient_tx.runtime import resolve_device, set_threads

    cfg = config_from_args(ReceiverConfig, args)
    set_threads(cfg.threads)
    receiver = Receiver(cfg.inpainter, resolve_device(cfg.device), cfg.ar_window)
    asyncio.run(serve(cfg, receiver))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``recv`` on the ``resilient-tx`` subcommand parsers."""
    d = ReceiverConfig()
    r = sub.add_parser("recv", help="receive images, decode what arrived, inpaint the rest",
                       description="Collect packets per image until it is complete or "
                       "--deadline seconds pass after its last packet, then decode, inpaint "
                       "and write OUT_DIR/<image id>.png, printing one report line per image.")
    for name, help, metavar in [
        ("listen", f"HOST:PORT to listen on (default: {d.listen})", None),
        ("transport", f"default: {d.transport}", None),
        ("out_dir", f"where to write PNGs (default: {d.out_dir})", None),
        ("count", "exit after N images (default: run forever)", None),
        ("deadline", "give up waiting this long after an image's last packet "
         f"(default: {d.deadline:g})", "SECONDS"),
        ("inpainter", "how lost tokens are filled: mim (masked transformer, default), ar "
         "(autoregressive prior, sliding window; slower), neighbor, none", None),
        ("ar_window", "with --inpainter ar: window of N x N tokens (default: the prior's, 16)",
         "N"),
        ("json", "one JSON object per image", None),
    ]:
        add_option(r, ReceiverConfig, name, help, metavar)
    r.add_argument("--config", help="YAML file with a recv: section")
    add_option(r, ReceiverConfig, "device", f"auto|cpu|cuda (default: {d.device})")
    add_option(r, ReceiverConfig, "threads", "CPU threads (default: torch default)")
    r.set_defaults(func=cmd_recv)
