"""Real kernel packet loss between resilient-tx send and recv, and --fec auto following it.

Run as root, with `ip` (iproute2) and `nft` (nftables). Namespaces rtx-tx-<pid>
(10.77.0.1) and rtx-rx-<pid> (10.77.0.2), joined by a veth pair, run `resilient-tx recv`
and `resilient-tx send --fec auto` (one thread each); the sender sends crops of the
source images (crop_000.png, ...) one every --interval seconds while nftables drops a
share of the datagrams to the receiver. The namespaces are deleted at the end, on an
error, and on SIGINT, SIGTERM or SIGHUP.

The loss is applied on the receiver's input hook (`udp dport PORT numgen random mod 10000
< N drop`): on the sender's output hook, sendto() itself would fail (EPERM), and the sender
would know of every loss, which no real path tells. So the sender learns of the losses
only from the receiver's feedback, which is not dropped unless --feedback-loss drops that
share of it on the sender's input hook. A rate change is one `nft -f` transaction (flush
the chain, add its rules); named counters, kept across the flush, count what reached the
rule and what it dropped.

--schedule RATE:IMAGES[,RATE:IMAGES...] drops RATE of the datagrams for the next IMAGES
images. Phases count images, not seconds, so that each image is sent under one rate: the
rate changes once the sender reports a phase's last image, before it encodes the next.

Per image: nft, the rate set; kernel, the share of its datagrams dropped (counters read
when the sender reports the image; "counted N" flags a count that is not the packets
sent); rx, 1 - packets_received / packets_sent as the receiver reports them (a complete
image is released as soon as FEC can rebuild it, so rx overstates its loss); planned,
the estimated loss rate the image was planned with (from the feedback on the images
before it); the FEC profile, bytes, packets, tokens inpainted, completeness, and PSNR
against the crop sent. Per phase: the kernel's drop rate over all its datagrams, est.end,
the mean estimate its last quarter of images were planned with, and mean bytes,
inpainting and PSNR. Exit status 1 unless every image arrived and, with --fec auto, est.end
of the highest-rate phase is within --tolerance of its kernel drop rate and above est.end
of the lowest-rate phase; 2 for bad options or a machine that cannot run it.

    sudo python simulations/netns_loss.py --out runs/netns
    sudo python simulations/netns_loss.py --schedule 0:10,0.3:15 --size 192
    sudo python simulations/netns_loss.py --fec light --feedback-loss 0.2
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilient_tx.errors import InputError, ResilientTxError  # noqa: E402
from simulations.netns_tools import (  # noqa: E402
    RX_ADDR,
    Child,
    Counts,
    Netns,
    NetnsError,
    SignalGuard,
    Stopped,
    data_match,
    delete_namespaces,
    feedback_match,
    ip,
    read_counts,
    set_loss,
    unavailable,
)
from simulations.sim_common import SAMPLES, fail, plain  # noqa: E402

PROG = "netns_loss.py"
DEFAULT_SCHEDULE = "0.05:20,0.35:20,0.15:20"
FIRST_IMAGE_WAIT_S = 300.0  # the sender loads its models before its first line
MODEL_LOAD_WAIT_S = 300.0
DECODE_GRACE_S = 60.0  # after the sender: time for the receiver's last decodes
END_SHARE = 4  # "at the end of a phase": its last 1/END_SHARE images


@dataclass(frozen=True)
class Phase:
    rate: float  # share of the datagrams to the receiver that nft drops
    images: int


def parse_schedule(text: str) -> tuple[Phase, ...]:
    """``RATE:IMAGES[,RATE:IMAGES...]`` (module docstring); InputError when malformed."""
    phases = []
    for item in text.split(","):
        rate_text, sep, count_text = item.strip().partition(":")
        try:
            rate, images = float(rate_text), int(count_text)
        except ValueError:
            raise InputError(f"--schedule: {item.strip()!r} is not RATE:IMAGES "
                             "(e.g. 0.3:20)") from None
        if not sep or not 0.0 <= rate < 1.0:  # also false for nan
            raise InputError(f"--schedule: rate {rate_text!r} must be in [0, 1)")
        if images < 1:
            raise InputError(f"--schedule: {images} images; each phase needs at least 1")
        phases.append(Phase(rate, images))
    return tuple(phases)


def phase_of_images(phases: Sequence[Phase]) -> list[int]:
    """The phase index of each image of the run, in sending order."""
    return [k for k, ph in enumerate(phases) for _ in range(ph.images)]


@dataclass(frozen=True)
class Options:
    schedule: tuple[Phase, ...]
    interval: float
    size: int
    sources: tuple[Path, ...]
    port: int
    deadline: float
    feedback_loss: float
    fec: str
    tolerance: float
    seed: int
    out: Path | None


@dataclass(frozen=True)
class Row:
    """One image: what was set, sent, counted by the kernel and received."""

    index: int
    phase: int
    nft_rate: float
    name: str
    image_id: str
    packets: int
    bytes: int
    fec: str
    planned: float | None  # the estimate's loss rate the image was planned with
    kernel_seen: int
    kernel_dropped: int
    rx_sent: int | None = None  # None: the receiver never gave the image out
    rx_received: int | None = None
    tokens: int | None = None
    inpainted: int | None = None
    complete: bool | None = None
    psnr: float | None = None

    @property
    def kernel_loss(self) -> float | None:
        return Counts(self.kernel_seen, self.kernel_dropped).loss

    @property
    def rx_loss(self) -> float | None:
        if not self.rx_sent or self.rx_received is None:
            return None
        return 1 - self.rx_received / self.rx_sent


@dataclass(frozen=True)
class PhaseSummary:
    phase: int
    nft_rate: float
    images: int
    arrived: int
    complete: int
    kernel_loss: float | None  # over all of the phase's datagrams
    planned_end: float | None  # mean estimate of its last 1/END_SHARE images
    bytes: float
    inpainted: float | None
    psnr: float | None


@dataclass(frozen=True)
class Result:
    rows: tuple[Row, ...]
    phases: tuple[PhaseSummary, ...]
    feedback: Counts  # feedback datagrams at the sender's input rule
    notes: tuple[str, ...]  # the children's last words, for a failed run


def write_crops(sources: Sequence[Path], count: int, size: int, seed: int,
                folder: Path) -> list[Path]:
    """``count`` images named crop_000.png... cycling through ``sources``: random
    ``size`` x ``size`` crops (the whole image for 0), half of them mirrored."""
    import numpy as np

    from resilient_tx.images import load_rgb, save_rgb

    images = [load_rgb(p) for p in sources]
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        if size:
            if size > min(h, w):
                raise InputError(f"--size {size} exceeds {sources[i % len(sources)]} "
                                 f"({w}x{h})")
            y, x = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
            img = img[y:y + size, x:x + size]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        paths.append(folder / f"crop_{i:03d}.png")
        save_rgb(np.ascontiguousarray(img), paths[-1])
    return paths


def run(opts: Options) -> Result:
    """The experiment (module docstring); namespaces and children are always removed."""
    ns = Netns.for_pid(os.getpid())
    children: list[Child] = []
    total = sum(ph.images for ph in opts.schedule)
    with tempfile.TemporaryDirectory(prefix="rtx-netns-") as tmp, SignalGuard() as guard:
        try:
            sent = write_crops(opts.sources, total, opts.size, opts.seed, Path(tmp) / "sent")
            for args in ns.setup_commands():
                ip(*args)
            set_loss(ns.rx, data_match(opts.port), opts.schedule[0].rate, create=True)
            set_loss(ns.tx, feedback_match(opts.port), opts.feedback_loss, create=True)
            rx = Child(ns.rx, ["recv", "--json", "--out-dir", f"{tmp}/received", "--listen",
                               f"{RX_ADDR}:{opts.port}", "--deadline", f"{opts.deadline:g}",
                               "--count", str(total), "--threads", "1"])
            children.append(rx)
            rx.wait_for("models loaded", MODEL_LOAD_WAIT_S)
            tx = Child(ns.tx, ["send", "--json", "--to", f"{RX_ADDR}:{opts.port}",
                               "--interval", f"{opts.interval:g}", "--fec", opts.fec,
                               "--threads", "1", str(sent[0].parent)])
            children.append(tx)
            rows = drive(tx, ns, opts)
            if tx.proc.wait(DECODE_GRACE_S) != 0:
                raise NetnsError(f"the sender failed: {tx.tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                rx.proc.wait(opts.deadline + DECODE_GRACE_S)  # it exits after --count images
            rx.stop()
            received = rx.rest()
            feedback = read_counts(ns.tx)
            notes = (f"sender: {tx.tail(2)}", f"receiver: {rx.tail(2)}")
        finally:
            guard.armed = False
            for child in reversed(children):
                child.stop()
            delete_namespaces(ns.tx, ns.rx)
        rows = join(rows, received, {p.name: p for p in sent})
    return Result(tuple(rows), summarize(rows, opts.schedule), feedback, notes)


def drive(tx: Child, ns: Netns, opts: Options) -> list[Row]:
    """Read the sender's line of each image, count its datagrams, and switch the drop rate
    after the last image of each phase (before the next image is even encoded)."""
    phase_of = phase_of_images(opts.schedule)
    before = read_counts(ns.rx)
    rows = []
    wait = FIRST_IMAGE_WAIT_S
    for i, k in enumerate(phase_of):
        line = tx.json_line(wait)
        if line is None:
            raise NetnsError(f"the sender stopped after {i} image(s): {tx.tail()}")
        now = read_counts(ns.rx)
        if i + 1 < len(phase_of) and phase_of[i + 1] != k:
            set_loss(ns.rx, data_match(opts.port), opts.schedule[k + 1].rate)
        rows.append(sent_row(i, k, opts.schedule[k].rate, line, now - before))
        before, wait = now, max(60.0, 20 * opts.interval)
    return rows


def sent_row(index: int, phase: int, rate: float, line: dict[str, Any], counts: Counts) -> Row:
    """A row from the sender's ``--json`` object of one image."""
    plan = line.get("plan") or {}
    est = plan.get("estimate")
    return Row(index, phase, rate, Path(str(line["image"])).name, str(line["image_id"]),
               int(line["packets"]), int(line["bytes"]), str(plan.get("fec", "?")),
               None if est is None else float(est["loss_rate"]), counts.seen, counts.dropped)


def join(rows: Sequence[Row], received: Sequence[dict[str, Any]],
         sent: dict[str, Path]) -> list[Row]:
    """Each row with the receiver's report of its image (matched by image id: the
    output is named after the sent file only if its name arrived) and its PSNR against
    the file sent."""
    import dataclasses

    from resilient_tx.eval.metrics import psnr
    from resilient_tx.images import load_rgb

    by_id = {str(rec["image_id"]): rec for rec in received if not rec.get("preview")}
    joined = []
    for row in rows:
        rec = by_id.get(row.image_id)
        if rec is None:
            joined.append(row)
            continue
        out = Path(str(rec["output"]))
        quality = psnr(load_rgb(sent[row.name]), load_rgb(out)) if out.exists() else None
        joined.append(dataclasses.replace(
            row, rx_sent=int(rec["packets_sent"]), rx_received=int(rec["packets_received"]),
            tokens=int(rec["tokens"]), inpainted=int(rec["tokens_inpainted"]),
            complete=bool(rec["complete"]), psnr=quality))
    return joined


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summarize(rows: Sequence[Row], schedule: Sequence[Phase]) -> tuple[PhaseSummary, ...]:
    out = []
    for k, ph in enumerate(schedule):
        mine = [r for r in rows if r.phase == k]
        end = mine[-max(1, len(mine) // END_SHARE):]
        counts = Counts(sum(r.kernel_seen for r in mine), sum(r.kernel_dropped for r in mine))
        arrived = [r for r in mine if r.rx_sent is not None]
        finite = [r.psnr for r in arrived if r.psnr is not None and r.psnr != float("inf")]
        out.append(PhaseSummary(
            k, ph.rate, len(mine), len(arrived), sum(bool(r.complete) for r in arrived),
            counts.loss, _mean([r.planned for r in end]),
            sum(r.bytes for r in mine) / max(1, len(mine)),
            _mean([float(r.inpainted) for r in arrived if r.inpainted is not None]),
            _mean(finite)))
    return tuple(out)


def failures(result: Result, tolerance: float) -> list[str]:
    """Why the run failed (module docstring); empty when it passed."""
    out = []
    missing = sum(p.images - p.arrived for p in result.phases)
    if missing:
        out.append(f"{missing} image(s) never came out of the receiver")
    high = max(result.phases, key=lambda p: p.nft_rate)
    low = min(result.phases, key=lambda p: p.nft_rate)
    if high.planned_end is None or high.kernel_loss is None:
        return out  # a fixed --fec plans without an estimate: nothing to follow
    if abs(high.planned_end - high.kernel_loss) > tolerance:
        out.append(f"the estimate at the end of phase {high.phase}, {high.planned_end:.3f}, "
                   f"is not within {tolerance:g} of its drop rate {high.kernel_loss:.3f}")
    if (high.nft_rate > low.nft_rate and low.planned_end is not None
            and high.planned_end <= low.planned_end):
        out.append(f"the estimate at the end of phase {high.phase} ({high.planned_end:.3f}) "
                   f"is not above that of phase {low.phase} ({low.planned_end:.3f})")
    return out


def _f(value: float | None, fmt: str) -> str:
    """``value`` in ``fmt`` (e.g. ``7.3f``); a missing one as ``-`` in the same width."""
    return format(value, fmt) if value is not None else "-".rjust(int(fmt.split(".")[0]))


def format_table(rows: Sequence[Row]) -> str:
    head = (f"{'#':>3} {'ph':>2} {'nft':>5} {'kernel':>6} {'rx':>5} {'planned':>7} "
            f"{'fec':<26} {'bytes':>6} {'pkts':>4} {'inpaint':>7} {'done':>4} {'psnr':>5}")
    lines = [head]
    for r in rows:
        flag = "" if r.kernel_seen == r.packets else f"  (counted {r.kernel_seen} datagrams)"
        tok = "-" if r.inpainted is None else f"{r.inpainted}/{r.tokens}"
        done = "-" if r.complete is None else "yes" if r.complete else "no"
        lines.append(f"{r.index:>3} {r.phase:>2} {r.nft_rate:>5.2f} {_f(r.kernel_loss, '6.3f')} "
                     f"{_f(r.rx_loss, '5.2f')} {_f(r.planned, '7.3f')} {r.fec:<26} "
                     f"{r.bytes:>6} {r.packets:>4} {tok:>7} {done:>4} "
                     f"{_f(r.psnr, '5.1f')}{flag}")
    return "\n".join(lines)


def format_phases(result: Result) -> str:
    lines = [f"{'phase':>5} {'nft':>5} {'images':>6} {'arrived':>7} {'complete':>8} "
             f"{'kernel':>6} {'est.end':>7} {'bytes':>7} {'inpainted':>9} {'psnr':>5}"]
    for p in result.phases:
        lines.append(f"{p.phase:>5} {p.nft_rate:>5.2f} {p.images:>6} {p.arrived:>7} "
                     f"{p.complete:>8} {_f(p.kernel_loss, '6.3f')} {_f(p.planned_end, '7.3f')} "
                     f"{p.bytes:>7.0f} {_f(p.inpainted, '9.1f')} {_f(p.psnr, '5.1f')}")
    fb = result.feedback
    lines.append(f"feedback: {fb.seen} datagram(s) reached the sender's input, "
                 f"{fb.dropped} dropped there")
    return "\n".join(lines)


def row_dict(r: Row) -> dict[str, Any]:
    return {**asdict(r), "kernel_loss": r.kernel_loss, "rx_loss": r.rx_loss}


def write_outputs(result: Result, opts: Options, out: Path) -> list[str]:
    """netns_loss.csv, .json and (with matplotlib) .png under ``out``; returns notices."""
    out.mkdir(parents=True, exist_ok=True)
    table = [row_dict(r) for r in result.rows]
    with open(out / "netns_loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "netns_loss.json").write_text(json.dumps({
        "schedule": [asdict(p) for p in opts.schedule], "interval": opts.interval,
        "size": opts.size, "fec": opts.fec, "feedback_loss": opts.feedback_loss,
        "rows": table, "phases": [asdict(p) for p in result.phases],
        "feedback": asdict(result.feedback),
        "failures": failures(result, opts.tolerance)}, indent=1) + "\n")
    try:
        import matplotlib
    except ImportError:
        return ["matplotlib is not installed (pip install 'resilient-tx[sim]'): no plot"]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x, rows = [r.index for r in result.rows], result.rows
    top.step(x, [r.nft_rate for r in rows], where="mid", label="nft drop rate")
    top.plot(x, [r.kernel_loss for r in rows], ".", label="dropped (kernel)")
    top.plot(x, [r.planned for r in rows], "-o", ms=3, label="planned with (estimate)")
    top.set(ylabel="loss rate")
    top.legend()
    bottom.bar(x, [r.bytes for r in rows])
    bottom.set(ylabel="bytes sent", xlabel="image")
    fig.tight_layout()
    fig.savefig(out / "netns_loss.png", dpi=120)
    plt.close(fig)
    return []


OPTIONS: list[tuple[str, type, object, str]] = [  # flag, type, default, help
    ("--schedule", str, DEFAULT_SCHEDULE, "RATE:IMAGES phases of the drop rate "
     "(default: %(default)s)"),
    ("--interval", float, 1.0, "seconds between images, enough for the receiver to decode one "
     "(default: %(default)s)"),
    ("--size", int, 256, "side of the square crops, a multiple of 16; 0: whole images "
     "(default: %(default)s)"),
    ("--port", int, 5004, "the receiver's UDP port (default: %(default)s)"),
    ("--deadline", float, 0.5, "the receiver's --deadline (default: %(default)s)"),
    ("--feedback-loss", float, 0.0, "also drop this share of the feedback "
     "(default: %(default)s)"),
    ("--fec", str, "auto", "the sender's --fec; a fixed profile to compare "
     "(default: %(default)s)"),
    ("--tolerance", float, 0.1, "how close the estimate must end to the highest drop rate "
     "(default: %(default)s)"),
    ("--seed", int, 0, "seed of the crops (default: %(default)s)"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kind, default, help in OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=help)
    p.add_argument("--source", action="append", type=Path, metavar="IMG",
                   help="image to crop, repeatable (default: the bundled sample)")
    p.add_argument("--out", type=Path, help="write netns_loss.csv, .json and .png here")
    return p


def options(args: argparse.Namespace) -> Options:
    """Checked options; InputError for a bad value."""
    if args.interval <= 0:
        raise InputError(f"--interval must be > 0 seconds, got {args.interval:g}")
    if args.size < 0 or args.size % 16:
        raise InputError(f"--size must be 0 or a positive multiple of 16, got {args.size}")
    if not 0.0 <= args.feedback_loss < 1.0:
        raise InputError(f"--feedback-loss must be in [0, 1), got {args.feedback_loss:g}")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if args.deadline <= 0 or args.tolerance <= 0:
        raise InputError("--deadline and --tolerance must be > 0")
    sources = tuple(args.source or [SAMPLES / "kodim23.png"])
    for src in sources:
        if not src.is_file():
            raise InputError(f"--source {src}: no such file")
    return Options(parse_schedule(args.schedule), args.interval, args.size, sources,
                   args.port, args.deadline, args.feedback_loss, args.fec, args.tolerance,
                   args.seed, args.out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = options(args)
    except InputError as exc:
        return fail(PROG, str(exc))
    reason = unavailable()
    if reason is not None:
        return fail(PROG, reason)
    try:
        result = run(opts)
    except (Stopped, KeyboardInterrupt) as exc:
        print(f"{PROG}: stopped ({exc or 'SIGINT'}); namespaces removed", file=sys.stderr)
        return 130
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    print(format_table(result.rows))
    print()
    print(format_phases(result))
    if opts.out is not None:
        for notice in write_outputs(result, opts, opts.out):
            print(f"{PROG}: {notice}", file=sys.stderr)
    problems = failures(result, opts.tolerance)
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        print("\n".join(result.notes), file=sys.stderr)
        return 1
    print("PASS: every image arrived" + ("" if opts.fec != "auto" else
          "; the estimate followed the drop rate"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
