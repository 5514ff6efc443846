"""``resilient-tx send`` and ``resilient-tx recv``: the commands people type (issue 4).

The asyncio here only glues the transport to the sans-IO pieces: :class:`~.pipeline.Sender`
makes packets, :class:`~.collector.Collector` groups what arrives, and
:class:`~.pipeline.Receiver` decodes and inpaints in a worker thread so the event loop
keeps receiving while an image is being decoded.

Options come from flags, then from ``--config FILE.yaml`` (sections ``send:`` / ``recv:``
whose keys are the long option names with ``-`` written as ``_``), then from defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from resilient_tx.config import read_yaml
from resilient_tx.errors import ConfigError, InputError

SEND_DEFAULTS: dict[str, Any] = {
    "to": None, "transport": "udp", "rate": "low", "fec": "light", "context_depth": 2,
    "pace": None, "sim_loss": 0.0, "loss_model": "bernoulli", "burst": 4.0, "seed": 0,
    "max_packet": 1200, "device": "auto", "threads": 0,
}
RECV_DEFAULTS: dict[str, Any] = {
    "listen": "0.0.0.0:5004", "transport": "udp", "out_dir": "received", "count": 0,
    "deadline": 0.5, "device": "auto", "inpainter": "mim", "ar_window": None, "json": False,
    "threads": 0,
}


def apply_config(args: argparse.Namespace, section: str, defaults: dict[str, Any]) -> None:
    """Fill options left unset on the command line from the YAML file, then defaults.

    A value from the file is held to the same type and choices as its flag (the parser is
    in ``args.parser``), so ``threads: two`` is a one-line :class:`ConfigError` rather than
    a traceback deep inside the command.
    """
    from_file: dict[str, Any] = {}
    if getattr(args, "config", None):
        p = Path(args.config)
        data = read_yaml(p, "config file") or {}
        from_file = data.get(section) or {} if isinstance(data, dict) else None
        if not isinstance(from_file, dict):
            raise ConfigError(f"{p}: section {section!r} must be a mapping")
        unknown = sorted(set(from_file) - set(defaults))
        if unknown:
            raise ConfigError(f"{p}: unknown {section} option(s) {', '.join(unknown)}")
        actions = _actions(getattr(args, "parser", None))
        from_file = {k: _checked(f"{p}: {section}.{k}", v, actions.get(k))
                     for k, v in from_file.items()}
    for key, default in defaults.items():
        if getattr(args, key, None) is None:
            value = from_file.get(key)  # null in the file also means "the default"
            setattr(args, key, default if value is None else value)


def _actions(parser: argparse.ArgumentParser | None) -> dict[str, argparse.Action]:
    return {} if parser is None else {a.dest: a for a in parser._actions}


def _checked(where: str, value: Any, action: argparse.Action | None) -> Any:
    """``value`` as its flag would have parsed it; null keeps the default behaviour."""
    if value is None or action is None:
        return value
    if action.const is not None:  # a switch such as --json
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    kind = action.type or str
    if kind is str:
        ok = isinstance(value, str)
    else:  # int or float flags; YAML's true/false are not numbers here
        allowed = (int,) if kind is int else (int, float)
        ok = isinstance(value, allowed) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    value = kind(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, action.choices))}, "
                          f"got {value!r}")
    return value


# ----------------------------------------------------------------------------- send


def _channel(args: argparse.Namespace):
    from resilient_tx.transport.channel import ChannelConfig

    if not args.sim_loss:
        return None
    return ChannelConfig(loss_model=args.loss_model, loss_rate=float(args.sim_loss),
                         burst_length=float(args.burst) if args.loss_model == "gilbert" else 1.0)


async def _send_all(args: argparse.Namespace, images: list, sender) -> None:
    from resilient_tx.transport import open_sender
    from resilient_tx.transport.channel import transmit

    chan = _channel(args)
    rng = random.Random()
    async with await open_sender(args.transport, args.to, pace_mbit=args.pace) as tx:
        for i, (path, image) in enumerate(images):
            image_id = rng.getrandbits(32)
            sent = sender.packets(image, image_id)
            raw = [bytes(p) for p in sent.packets]
            dropped = 0
            if chan is not None:
                kept, stats = transmit(raw, chan, int(args.seed) + i)
                dropped, raw = stats.lost, kept
            st = await tx.send(raw) if raw else None
            h, w = image.shape[:2]
            print(f"{path}: {w}x{h} id {image_id:08x}: {len(sent.packets)} packets, "
                  f"{sent.total_bytes} bytes ({8 * sent.total_bytes / (w * h):.4f} bpp on the "
                  f"wire), {dropped} dropped by --sim-loss, "
                  f"{st.seconds * 1000 if st else 0:.0f} ms to send", flush=True)


def cmd_send(args: argparse.Namespace) -> int:
    from resilient_tx.images import load_rgb
    from resilient_tx.resilience.endpoint import Sender, SenderConfig
    from resilient_tx.resilience.packet import DEFAULT_MAX_PACKET
    from resilient_tx.runtime import resolve_device, set_threads

    apply_config(args, "send", SEND_DEFAULTS)
    if not args.to:
        raise InputError("--to HOST[:PORT] is required (or `to:` in the config's send section)")
    max_packet = int(args.max_packet)
    if args.transport == "webrtc":
        from resilient_tx.transport.webrtc import SCTP_CHUNK_PAYLOAD

        # aiortc splits messages over 1160 bytes into two SCTP chunks; losing either loses
        # the whole packet, so WebRTC packets are kept to one chunk.
        max_packet = min(max_packet, SCTP_CHUNK_PAYLOAD)
    set_threads(int(args.threads))
    images = [(p, load_rgb(p)) for p in args.images]
    sender = Sender(SenderConfig(args.rate, args.fec, int(args.context_depth),
                                 min(max_packet, DEFAULT_MAX_PACKET)),
                    resolve_device(args.device))
    asyncio.run(_send_all(args, images, sender))
    return 0


# ----------------------------------------------------------------------------- recv


def _report_line(rec, due, path: Path, latency: float, as_json: bool) -> str:
    r = rec.report
    fields = {"image_id": f"{r.image_id:08x}", "width": r.width, "height": r.height,
              "sender": str(due.key[0]), "complete": rec.complete,
              "packets_sent": r.packets_sent, "packets_received": r.packets_received,
              # Missing at release. A complete image is released as soon as FEC can rebuild
              # every stage, so for it these are packets not yet arrived (lost or not): only
              # an incomplete image's missing packets are known to be lost.
              "packets_missing": max(0, r.packets_sent - r.packets_received),
              "packets_recovered": r.packets_recovered, "tokens": r.tokens,
              "tokens_inpainted": r.tokens_inpainted, "bytes_received": r.bytes_received,
              "bytes_unusable": r.bytes_unusable, "decode_ms": round(1000 * rec.decode_s, 1),
              "latency_ms": round(1000 * latency, 1), "output": str(path)}
    if as_json:
        return json.dumps(fields)
    missing = (f"{fields['packets_missing']} not needed" if rec.complete
               else f"{fields['packets_missing']} lost")
    return (f"{fields['image_id']} {r.width}x{r.height} from {fields['sender']}: packets "
            f"{r.packets_received}/{r.packets_sent} received, {missing}, "
            f"{r.packets_recovered} recovered by FEC; {r.tokens_inpainted}/{r.tokens} tokens "
            f"inpainted; {r.bytes_received} bytes ({r.bytes_unusable} unusable); latency "
            f"{fields['latency_ms']:.0f} ms -> {path}")


class _RecvLoop:
    def __init__(self, args: argparse.Namespace, receiver, collector) -> None:
        self.args, self.receiver, self.collector = args, receiver, collector
        self.out_dir = Path(args.out_dir)
        self.done = 0

    async def finish(self, due) -> None:
        from resilient_tx.errors import ResilientTxError
        from resilient_tx.images import FAST_PNG_LEVEL, save_rgb

        loop = asyncio.get_running_loop()
        try:
            rec = await loop.run_in_executor(None, self.receiver.finish, due)
        except ResilientTxError as exc:  # e.g. a sender using a model we do not have
            print(f"resilient-tx: image {due.key[1]:08x} skipped: {exc}", file=sys.stderr)
            return
        path = self.out_dir / f"{due.key[1]:08x}.png"
        await loop.run_in_executor(None, save_rgb, rec.image, path, FAST_PNG_LEVEL)
        latency = time.monotonic() - due.first_seen
        print(_report_line(rec, due, path, latency, bool(self.args.json)), flush=True)
        self.done += 1

    def finished(self) -> bool:
        return bool(self.args.count) and self.done >= int(self.args.count)

    async def run(self, rx) -> None:
        from resilient_tx.app.loopback import due_images

        async for due in due_images(rx, self.collector):
            await self.finish(due)
            if self.finished():
                return


async def _recv(args: argparse.Namespace, receiver) -> None:
    from resilient_tx.resilience.collector import Collector
    from resilient_tx.transport import open_receiver

    collector = Collector(deadline=float(args.deadline))
    async with await open_receiver(args.transport, args.listen) as rx:
        print(f"listening on {args.listen} ({args.transport}); writing to {args.out_dir}/",
              file=sys.stderr, flush=True)
        await _RecvLoop(args, receiver, collector).run(rx)


def cmd_recv(args: argparse.Namespace) -> int:
    from resilient_tx.resilience.endpoint import Receiver
    from resilient_tx.runtime import resolve_device, set_threads

    apply_config(args, "recv", RECV_DEFAULTS)
    if float(args.deadline) <= 0:
        raise InputError(f"--deadline must be > 0 seconds, got {args.deadline}")
    if int(args.count) < 0:
        raise InputError(f"--count must be >= 0 (0 = run forever), got {args.count}")
    set_threads(int(args.threads))
    receiver = Receiver(args.inpainter, resolve_device(args.device), args.ar_window)
    receiver.warm_up()
    asyncio.run(_recv(args, receiver))
    return 0


# ----------------------------------------------------------------------------- parsers


def add_parsers(sub) -> None:
    s = sub.add_parser("send", help="encode, packetize and send images over UDP or WebRTC",
                       description="Encode each image, cut it into per-stage packets with "
                       "Reed-Solomon parity and send them. --sim-loss drops packets at the "
                       "sender through the channel simulator, to watch a receiver cope.")
    s.add_argument("images", nargs="+", metavar="IMG", help="images to send")
    s.add_argument("--to", help="receiver HOST[:PORT] (port 5004 if omitted)")
    s.add_argument("--transport", choices=["udp", "webrtc"], help="default: udp")
    s.add_argument("--rate", help="shipped rate point (default: low)")
    s.add_argument("--fec", help="FEC profile: none, light, strong, or for_loss:P to plan each "
                   "image's parity for a loss rate P (e.g. for_loss:0.3) (default: light)")
    s.add_argument("--context-depth", type=int, help="later stages are coded given the first N "
                   "stages only, so one lost stage does not take the rest (default: 2; 0 = the "
                   "paper's full chain)")
    s.add_argument("--pace", type=float, metavar="MBIT/S", help="pace sending (default: no pacing)")
    s.add_argument("--sim-loss", type=float, metavar="P", help="drop this share of packets")
    s.add_argument("--loss-model", choices=["bernoulli", "gilbert"], help="default: bernoulli")
    s.add_argument("--burst", type=float, help="mean burst length for gilbert (default: 4)")
    s.add_argument("--seed", type=int, help="seed of the simulated loss (default: 0)")
    s.add_argument("--max-packet", type=int, help="bytes per packet (default: 1200)")
    s.add_argument("--config", help="YAML file with a send: section")
    s.add_argument("--device", help="auto|cpu|cuda (default: auto)")
    s.add_argument("--threads", type=int, help="CPU threads (default: torch default)")
    s.set_defaults(func=cmd_send, parser=s)

    r = sub.add_parser("recv", help="receive images, decode what arrived, inpaint the rest",
                       description="Collect packets per image until it is complete or "
                       "--deadline seconds pass after its last packet, then decode, inpaint "
                       "and write OUT_DIR/<image id>.png, printing one report line per image.")
    r.add_argument("--listen", help="HOST:PORT to listen on (default: 0.0.0.0:5004)")
    r.add_argument("--transport", choices=["udp", "webrtc"], help="default: udp")
    r.add_argument("--out-dir", help="where to write PNGs (default: received)")
    r.add_argument("--count", type=int, help="exit after N images (default: run forever)")
    r.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="give up waiting this long after an image's last packet (default: 0.5)")
    r.add_argument("--inpainter", choices=["mim", "ar", "neighbor", "none"],
                   help="how lost tokens are filled: mim (masked transformer, default), ar "
                   "(autoregressive prior, sliding window; slower), neighbor, none")
    r.add_argument("--ar-window", type=int, metavar="N",
                   help="with --inpainter ar: window of N x N tokens (default: the prior's, 16)")
    r.add_argument("--json", action="store_const", const=True, help="one JSON object per image")
    r.add_argument("--config", help="YAML file with a recv: section")
    r.add_argument("--device", help="auto|cpu|cuda (default: auto)")
    r.add_argument("--threads", type=int, help="CPU threads (default: torch default)")
    r.set_defaults(func=cmd_recv, parser=r)
