"""``resilient-tx recv``: receive images, decode what arrived, inpaint the rest.

The loop itself is :func:`~resilient_tx.app.session.receive_images`; this command adds
the options (a :class:`~resilient_tx.config.ReceiverConfig`: flags over ``--config
FILE``'s ``recv:`` section over the defaults), writes each image as
``OUT_DIR/<sender's file name>.png`` (sanitised, see :func:`file_stem`; the hex image id
when no name arrived) and prints one report line (or JSON object) per image.

An existing file is never replaced (a second image with the same name, e.g. from another
sender, becomes ``<name>-1.png``) unless ``--overwrite``, and nothing is written outside
``OUT_DIR``. Dropped packets and images are counted
by reason, shown with every image and summarised on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Hashable
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
    from resilient_tx.resilience.auth import PacketKey
    from resilient_tx.resilience.collector import Drops, DueImage
    from resilient_tx.resilience.endpoint import Receiver


def report_fields(got: ReceivedImage, path: Path, latency: float,
                  preview_latency: float | None = None) -> dict[str, Any]:
    """What ``--json`` prints for one image (and the report line is made of)."""
    r = got.report
    extra = {} if preview_latency is None else {
        "preview_latency_ms": round(1000 * preview_latency, 1)}
    return {"image_id": f"{r.image_id:08x}", "width": r.width, "height": r.height,
            "sender": got.sender, "preview": got.preview, "complete": got.complete,
            "packets_sent": r.packets_sent, "packets_received": r.packets_received,
            # Missing at release. A complete image is released as soon as FEC can rebuild
            # every stage, so for it these are packets not yet arrived (lost or not): only
            # an incomplete image's missing packets are known to be lost.
            "packets_missing": max(0, r.packets_sent - r.packets_received),
            "packets_recovered": r.packets_recovered, "tokens": r.tokens,
            "tokens_inpainted": r.tokens_inpainted, "bytes_received": r.bytes_received,
            "bytes_unusable": r.bytes_unusable,
            "decode_ms": round(1000 * got.received.decode_s, 1),
            "latency_ms": round(1000 * latency, 1), **extra, "output": str(path),
            "drops": got.drops}


def report_line(got: ReceivedImage, path: Path, latency: float, as_json: bool,
                preview_latency: float | None = None) -> str:
    """One line about one received image (or preview): JSON, or for people."""
    fields = report_fields(got, path, latency, preview_latency)
    if as_json:
        return json.dumps(fields)
    r = got.report
    missing = (f"{fields['packets_missing']} not needed" if got.complete
               else f"{fields['packets_missing']} not yet in" if got.preview
               else f"{fields['packets_missing']} lost")
    what = "preview of " if got.preview else ""
    seen = "" if preview_latency is None else f" (preview after {1000 * preview_latency:.0f} ms)"
    return (f"{what}{fields['image_id']} {r.width}x{r.height} from {fields['sender']}: packets "
            f"{r.packets_received}/{r.packets_sent} received, {missing}, "
            f"{r.packets_recovered} recovered by FEC; {r.tokens_inpainted}/{r.tokens} tokens "
            f"inpainted; {r.bytes_received} bytes ({r.bytes_unusable} unusable); latency "
            f"{fields['latency_ms']:.0f} ms{seen} -> {path}{_drops_text(got.drops)}")


def _drops_text(drops: dict[str, int]) -> str:
    if not drops:
        return ""
    return "; dropped so far: " + ", ".join(f"{n} {r}" for r, n in drops.items())


MAX_STEM = 100  # characters of a sender's file name kept in an output name


def file_stem(name: bytes | None, image_id: int) -> str:
    """The output name (without ``.png``) for an image the sender called ``name``.

    A sender's name is untrusted: only its last path component is used, undecodable bytes
    and anything but letters, digits, ``-``, ``_``, ``.`` and spaces become ``_``, leading
    dots go (no hidden files, no ``..``), it is cut to :data:`MAX_STEM` characters, and
    its extension is dropped (the output is always PNG). Nothing usable left (or no name
    sent: a version-1 sender, or the name's packets lost): the hex image id.
    """
    if name:
        text = name.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        stem = text.rsplit(".", 1)[0] if "." in text.lstrip(".") else text
        stem = "".join(c if c.isalnum() or c in "-_. " else "_" for c in stem)
        stem = stem.lstrip(". ").rstrip(" ")[:MAX_STEM].rstrip(". ")
        if stem.strip("_"):
            return stem
    return f"{image_id:08x}"


def output_path(out_dir: Path, image_id: int, overwrite: bool,
                name: bytes | None = None) -> Path:
    """``OUT_DIR/<stem>.png`` (:func:`file_stem`), or with ``-1``, ``-2``... the first
    name not yet taken."""
    stem = file_stem(name, image_id)
    path = out_dir / f"{stem}.png"
    n = 0
    while not overwrite and path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}.png"
    return path


def _skipped(due: DueImage, exc: ResilientTxError) -> None:
    print(f"resilient-tx: image {due.key[1]:08x} skipped: {exc}", file=sys.stderr)


class Writer:
    """Writes each image (and with ``--progressive`` its preview) and prints its report.

    A preview goes to ``NAME.preview.png``, NAME being chosen then and kept for the final
    picture, which replaces the preview file when it is written. Writes are awaited one
    at a time, so no two images race for the same free name.
    """

    MAX_PENDING = 1024  # previews whose final picture never came (evicted) are forgotten

    def __init__(self, cfg: ReceiverConfig) -> None:
        self.cfg = cfg
        self._pending: dict[Hashable, tuple[Path, float]] = {}  # key -> (final path, latency)

    async def write(self, got: ReceivedImage) -> None:
        from resilient_tx.images import FAST_PNG_LEVEL, save_rgb

        latency = got.latency()
        key = got.due.key
        path, preview_s = self._pending.pop(key, (None, None))
        if path is None or (path.exists() and not self.cfg.overwrite):
            path = output_path(Path(self.cfg.out_dir), got.image_id, self.cfg.overwrite,
                               got.due.assembler.name)
        target = path.with_suffix(".preview.png") if got.preview else path
        await asyncio.get_running_loop().run_in_executor(None, save_rgb, got.image, target,
                                                         FAST_PNG_LEVEL)
        if got.preview:
            if len(self._pending) >= self.MAX_PENDING:
                self._pending.clear()
            self._pending[key] = (path, latency)
        else:
            path.with_suffix(".preview.png").unlink(missing_ok=True)
        print(report_line(got, target, latency, self.cfg.json, preview_s), flush=True)


def _notice(text: str) -> None:
    print(f"resilient-tx: {text}", file=sys.stderr, flush=True)


def _warn(text: str) -> None:
    _notice(f"warning: {text}")


async def serve(cfg: ReceiverConfig, receiver: Receiver, key: PacketKey | None = None,
                drops: Drops | None = None) -> None:
    """Receive until ``cfg.count`` images are written (forever for 0)."""
    from resilient_tx.app.session import receive_images
    from resilient_tx.resilience.collector import Drops
    from resilient_tx.transport import open_receiver

    drops = Drops() if drops is None else drops

    async with open_receiver(cfg.transport, cfg.listen) as rx:
        print(f"listening on {cfg.listen} ({cfg.transport}); writing to {cfg.out_dir}/; "
              "loading the models in the background", file=sys.stderr, flush=True)
        # The port is bound first (a busy port is reported at once); the models load while
        # packets already queue, and an image that arrives early waits only for its model.
        # A daemon thread, so that a receiver done with its --count images exits at once.
        threading.Thread(target=_warm_up, args=(receiver,), daemon=True).start()
        done = 0
        writer = Writer(cfg)
        images = receive_images(rx, receiver, deadline=cfg.deadline, on_skip=_skipped,
                                config=cfg, key=key, drops=drops, on_notice=_notice)
        async with aclosing(images):
            async for got in images:
                await writer.write(got)
                if got.preview:
                    continue
                done += 1
                if cfg.count and done >= cfg.count:
                    return


def _warm_up(receiver: Receiver) -> None:
    receiver.warm_up()
    print("models loaded", file=sys.stderr, flush=True)


def cmd_recv(args: argparse.Namespace) -> int:
    from resilient_tx.resilience.auth import load_key
    from resilient_tx.resilience.collector import Drops
    from resilient_tx.resilience.endpoint import Receiver
    from resilient_tx.runtime import resolve_device, set_threads

    cfg = config_from_args(ReceiverConfig, args)
    key = None if cfg.key_file is None else load_key(cfg.key_file, _warn)
    set_threads(cfg.threads)
    receiver = Receiver(cfg.inpainter, resolve_device(cfg.device), cfg.ar_window,
                        cfg.preview_inpainter)
    drops = Drops()
    try:
        asyncio.run(serve(cfg, receiver, key, drops))
    finally:
        print(f"resilient-tx: dropped: {drops.summary()}", file=sys.stderr, flush=True)
    return 0


def add_parser(sub: Any) -> None:
    """Register ``recv`` on the ``resilient-tx`` subcommand parsers."""
    d = ReceiverConfig()
    r = sub.add_parser("recv", help="receive images, decode what arrived, inpaint the rest",
                       description="Collect packets per image until it is complete or "
                       "--deadline seconds pass after its last packet, then decode, inpaint "
                       "and write OUT_DIR/NAME.png (NAME: the sender's file name, sanitised, "
                       "or the image id), printing one report line per image.")
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
        ("key_file", "shared secret (>= 16 bytes): accept only packets signed with it",
         "FILE"),
        ("overwrite", "replace OUT_DIR/NAME.png if it exists (default: write NAME-1.png)",
         None),
        ("replay_window", "seconds a signed packet's clock may differ from ours "
         f"(default: {d.replay_window:g})", "SECONDS"),
        ("max_pixels", f"largest image accepted (default: {d.max_pixels})", "N"),
        ("max_open", f"images collected at once (default: {d.max_open})", "N"),
        ("max_open_per_sender", f"... per sender (default: {d.max_open_per_sender})", "N"),
        ("max_image_bytes", f"bytes buffered per image (default: {d.max_image_bytes})",
         "N"),
        ("max_buffered_bytes", f"bytes buffered in all (default: {d.max_buffered_bytes})",
         "N"),
        ("max_queued", f"images waiting to be decoded (default: {d.max_queued})", "N"),
        ("max_queued_per_sender", "... per sender (default: "
         f"{d.max_queued_per_sender})", "N"),
        ("max_queue_age", "drop an image that waited this long to be decoded "
         f"(default: {d.max_queue_age:g})", "SECONDS"),
        ("progressive", "also write OUT_DIR/NAME.preview.png as soon as the first "
         "--preview-stages stages of an image are in (replaced by NAME.png when it is done)",
         None),
        ("preview_stages", f"stages a preview waits for (default: {d.preview_stages})", "N"),
        ("preview_inpainter", "how a preview fills the rest (default: "
         f"{d.preview_inpainter}: fast; mim: better, about as slow as a final picture)",
         None),
        ("feedback", "send loss reports back to each sender, which plans its FEC with them "
         "(default: on; --no-feedback for a silent receiver)", None),
        ("feedback_interval", "at most one report per sender this often while packets "
         f"arrive, and one at each image's end (default: {d.feedback_interval:g})",
         "SECONDS"),
    ]:
        add_option(r, ReceiverConfig, name, help, metavar)
    r.add_argument("--config", help="YAML file with a recv: section")
    add_option(r, ReceiverConfig, "device", f"auto|cpu|cuda (default: {d.device})")
    add_option(r, ReceiverConfig, "threads", "CPU threads (default: torch default)")
    r.set_defaults(func=cmd_recv)
