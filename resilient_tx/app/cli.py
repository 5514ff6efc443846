"""Command line: ``resilient-tx {train,encode,decode,...}``.

``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from resilient_tx.app.options import progress_bar
from resilient_tx.errors import InputError, ResilientTxError

if TYPE_CHECKING:  # for annotations only: the commands import their machinery when run
    import torch

    from resilient_tx.config import RunConfig
    from resilient_tx.training.distributed import DistInfo
    from resilient_tx.training.token_train import PhaseResult


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from resilient_tx.config import load_run_config
    from resilient_tx.errors import InputError
    from resilient_tx.runtime import resolve_device, set_threads

    run = load_run_config(args.config)
    if args.steps is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=args.steps))
    if args.time_budget is not None:
        if args.time_budget <= 0:
            raise InputError(f"--time-budget must be > 0 minutes, got {args.time_budget}")
        run = dataclasses.replace(
            run, train=dataclasses.replace(run.train, time_budget=args.time_budget * 60))
    if args.only and not args.init:
        raise InputError(f"--only {args.only} needs --init MODEL (a rate name or model file)")
    if args.init and not args.only:
        raise InputError("--init needs --only mim|ar: a full run trains a new autoencoder")
    set_threads(args.threads if args.threads is not None else run.train.threads)
    from resilient_tx.training import distributed

    # Under torchrun: one process per GPU (or CPU rank), data-parallel; else one process.
    with distributed.session(resolve_device(args.device)) as (dist, device):
        if device.type == "cuda":
            # Training only: TF32 matmuls are ~free speed. Coding never runs these weights in
            # reduced precision (the entropy model is float64, see entropy.py).
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        if args.only:
            return _train_on_tokens(args, run, device, dist)
        from resilient_tx.training.trainer import Trainer
        from resilient_tx.zoo.checkpoint import load_model

        trainer = Trainer(run, Path(args.data), Path(args.out), device, dist=dist)
        if trainer.try_resume() and dist.is_main:
            print(f"resuming from {trainer.state_path} at step {trainer.step}", file=sys.stderr)
        res = trainer.run()
        if dist.is_main:
            print(f"model {res.model_id} written to {res.model_path} after {res.steps} steps "
                  f"({res.seconds / 60:.1f} min): train PSNR {res.final_psnr:.2f} dB, "
                  f"MIM {res.final_mim_bits:.3f} bits/sub-index")
        if run.ar.steps > 0:  # an ``ar:`` section with steps also trains the AR prior
            from resilient_tx.training.token_train import ArTrainer

            model = load_model(res.model_path)
            ar = ArTrainer(model, trainer.images, run.ar, run.train, Path(args.out), device,
                           dist=dist)
            ar_res = ar.run()
            if dist.is_main:
                _report(ar_res, "AR prior")
    return 0


def _train_on_tokens(args: argparse.Namespace, run: RunConfig, device: torch.device,
                     dist: DistInfo) -> int:
    """``--only mim|ar --init MODEL``: train on the frozen tokens of an existing model."""
    import dataclasses

    from resilient_tx.config import read_yaml
    from resilient_tx.errors import InputError
    from resilient_tx.training.token_train import ArTrainer, MimFinetuner, TokenPhase
    from resilient_tx.training.trainer import load_training_images
    from resilient_tx.zoo.registry import get_model

    model = get_model(args.init)
    if args.only == "mim" and "derived_from" in model.meta:
        raise InputError(f"{args.init} is a k-means rate point that shares the MIM of "
                         f"{model.meta['derived_from']}; fine-tune that one instead")
    images = load_training_images(Path(args.data))
    out = Path(args.out)
    phase: TokenPhase
    if args.only == "mim":
        # A model: section may only resize the MIM (a fresh one, trained from scratch).
        raw = read_yaml(args.config, "config file") if args.config else None
        changes = dict((raw or {}).get("model") or {}) if isinstance(raw, dict) else {}
        phase = MimFinetuner(model, images, run.train, out, device, changes or None,
                             dist=dist)
    else:
        ar = run.ar if run.ar.steps > 0 else dataclasses.replace(run.ar, steps=20000)
        phase = ArTrainer(model, images, ar, run.train, out, device, dist=dist)
    if phase.try_resume() and dist.is_main:
        print(f"resuming from {phase.state_path} at step {phase.step}", file=sys.stderr)
    res = phase.run()
    if dist.is_main:
        _report(res, "fine-tuned model" if args.only == "mim" else "AR prior")
    return 0


def _report(res: PhaseResult, what: str) -> None:
    ident = f" {res.model_id}" if res.model_id else ""
    print(f"{what}{ident} written to {res.path} after {res.steps} steps "
          f"({res.seconds / 60:.1f} min): {res.final_bits:.3f} bits/sub-index")


def _codec(args: argparse.Namespace, model_id: bytes | None = None):
    """Codec for --model PATH, else --rate NAME, else (decoding) the shipped model with the
    stream's id. Device and threads are set here, at run time, never at import."""
    from resilient_tx.codec.image_codec import Codec
    from resilient_tx.config import DEFAULT_RATE
    from resilient_tx.runtime import resolve_device, set_threads
    from resilient_tx.zoo.registry import find_by_id, get_model

    set_threads(args.threads)
    device = resolve_device(args.device)
    if getattr(args, "model", None):
        model = get_model(str(Path(args.model).resolve()))
    elif model_id is not None:
        model = find_by_id(model_id)
    else:
        model = get_model(getattr(args, "rate", None) or DEFAULT_RATE)
    return Codec(model, device)


STDIO = "-"  # as an input or output path: standard input / standard output


def _cmd_encode(args: argparse.Namespace) -> int:
    import time

    from resilient_tx.images import load_rgb, load_rgb_bytes

    if args.effort < 0:  # before reading the image: a usage error should be instant
        raise InputError(f"--effort must be >= 0 gradient steps, got {args.effort}")
    if args.image == STDIO:
        image = load_rgb_bytes(sys.stdin.buffer.read(), max_pixels=args.max_pixels)
    else:
        image = load_rgb(args.image, max_pixels=args.max_pixels)
    codec = _codec(args)
    t0 = time.perf_counter()
    steps = codec.steps() + codec.refine_steps(image.shape[1], image.shape[0], args.effort)
    with progress_bar(args, steps, "encoding") as bar:
        blob = bytes(codec.encode(image, args.effort, bar.update))
    dt = time.perf_counter() - t0
    _write_output(args.output, blob)
    h, w = image.shape[:2]
    # With the stream on stdout, the summary goes to stderr so the two never mix.
    print(f"{args.image}: {w}x{h} -> {args.output}: {len(blob)} bytes, "
          f"{len(blob) * 8 / (w * h):.4f} bpp, model {codec.model.name} "
          f"({codec.model.model_id_hex}), encode {dt:.2f} s",
          file=sys.stderr if args.output == STDIO else sys.stdout)
    return 0


def _write_output(output: str, blob: bytes) -> None:
    if output == STDIO:
        sys.stdout.buffer.write(blob)
        sys.stdout.buffer.flush()
        return
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)


def _cmd_decode(args: argparse.Namespace) -> int:
    import io
    import time

    from resilient_tx.codec.container import EncodedImage
    from resilient_tx.images import check_pixels, save_rgb, write_rgb

    if args.input == STDIO:
        blob = sys.stdin.buffer.read()
    else:
        src = Path(args.input)
        if not src.is_file():
            raise InputError(f"no such file: {src}")
        blob = src.read_bytes()
    enc = EncodedImage.parse(blob)
    # A header may announce any size up to 65535 x 65535: refuse before any work.
    check_pixels(enc.width, enc.height, args.max_pixels, args.input)
    codec = _codec(args, model_id=enc.model_id)
    t0 = time.perf_counter()
    with progress_bar(args, codec.steps(), "decoding") as bar:
        image = codec.decode(enc, bar.update)
    dt = time.perf_counter() - t0
    if args.output == STDIO:
        png = io.BytesIO()
        write_rgb(image, png)
        _write_output(STDIO, png.getvalue())
    else:
        save_rgb(image, args.output)
    print(f"{args.input} -> {args.output}: {enc.width}x{enc.height}, model {codec.model.name} "
          f"({codec.model.model_id_hex}), decode {dt:.2f} s",
          file=sys.stderr if args.output == STDIO else sys.stdout)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from resilient_tx.config import DEFAULT_RATE
    from resilient_tx.zoo.registry import available_rates, get_model

    print(f"{'rate':<10}{'f':>4}{'M':>4}{'V':>5}{'raw bpp':>9}  {'model id':<18}origin")
    for name in available_rates():
        m = get_model(name)
        c = m.cfg
        raw = c.raw_bits_per_token / c.downsample**2
        if "derived_from" in m.meta:  # k-means rate point (kmeans.py): no training of its own
            origin = f"k-means of {m.meta['derived_from']}'s codebooks"
        else:
            origin = (f"trained {m.meta.get('train_steps', '?')} steps on "
                      f"{m.meta.get('train_images', '?')} images")
        star = " (default)" if name == DEFAULT_RATE else ""
        print(f"{name:<10}{c.downsample:>4}{c.num_subvectors:>4}{c.codebook_size:>5}{raw:>9.4f}  "
              f"{m.model_id_hex:<18}{origin}{star}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from resilient_tx.app.demo import run_demo

    run_demo(args)
    return 0


def _add_pixel_cap(p: argparse.ArgumentParser) -> None:
    from resilient_tx.config import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse images of more than N pixels (default: %(default)s, 16 MP)")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu or cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch; 0 = torch's default (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resilient-tx",
        description="Loss-resilient learned image transmission (PQ-VAE + quincunx MIM).",
        epilog="Exit status: 0 on success, 1 when the work failed, 2 for a usage error.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v: what the transports and the receiver do; -vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a PQ-VAE + MIM model on a folder of images",
                       description="Jointly train the PQ-VAE and the MIM entropy model "
                       "(no MIM gradient into the encoder), or with --only just the MIM or the AR "
                       "inpainting prior of an existing model. Resumes from OUT/last*.pt.")
    t.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    t.add_argument("--config", help="YAML file with model: and train: sections")
    t.add_argument("--out", default="runs/train", help="output folder (default: %(default)s)")
    t.add_argument("--steps", type=int, help="override train.steps")
    t.add_argument("--time-budget", type=float, metavar="MIN",
                   help="stop both phases in time to finish within MIN minutes; steps in the "
                   "config become caps and the LR schedules shrink to fit")
    t.add_argument("--only", choices=("mim", "ar"),
                   help="train only this part on the frozen tokens of --init: 'mim' continues "
                   "the MIM entropy model (new model id, same autoencoder); 'ar' trains the "
                   "autoregressive inpainting prior (config section ar:)")
    t.add_argument("--init", metavar="MODEL",
                   help="rate name (low, high) or model file that --only starts from")
    t.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    t.add_argument("--threads", type=int, help="CPU threads (default: config / torch default)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("encode", help="compress an image to an .rtx file",
                       description="Compress an image (PNG, JPEG, ...; grayscale and RGBA are "
                       "converted to RGB) into an .rtx file: header + one bitstream per stage.")
    e.add_argument("image", help="input image ('-': read it from standard input)")
    e.add_argument("-o", "--output", required=True,
                   help="output .rtx file ('-': write it to standard output)")
    e.add_argument("--rate", help="shipped rate point (see `resilient-tx models`; default: low)")
    e.add_argument("--model", help="model file to use instead of a shipped rate point")
    e.add_argument("--effort", type=int, default=0, metavar="N",
                   help="refine the latent by N gradient steps before quantizing: better "
                   "quality, slower encoding, any decoder reads it (default: %(default)s)")
    _add_pixel_cap(e)
    _add_runtime_flags(e)
    e.set_defaults(func=_cmd_encode)

    d = sub.add_parser("decode", help="decompress an .rtx file to PNG",
                       description="Decode an .rtx file. The model is found from the id in the "
                       "file's header among the shipped ones, or given with --model.")
    d.add_argument("input", help="input .rtx file ('-': read it from standard input)")
    d.add_argument("-o", "--output", required=True,
                   help="output image, format from its suffix (PNG recommended; '-': PNG to "
                   "standard output)")
    d.add_argument("--model", help="model file (must be the one the stream was made with)")
    _add_pixel_cap(d)
    _add_runtime_flags(d)
    d.set_defaults(func=_cmd_decode)

    m = sub.add_parser("models", help="list the shipped rate points")
    m.set_defaults(func=_cmd_models)

    demo = sub.add_parser("demo", help="codec round trip, then a lossy loopback transmission",
                          description="Round-trip an image (default: the bundled Kodak sample) "
                          "through every shipped rate point and report rate, quality and speed; "
                          "then send it to a receiver in the same process over loopback UDP "
                          "with simulated packet loss and write original | received side by "
                          "side, plus the receiver's report.")
    demo.add_argument("--image", help="image to use instead of the bundled sample")
    demo.add_argument("--rate", action="append", help="rate point(s) to run (default: all)")
    demo.add_argument("--out", default="out/demo",
                      help="where to write PNGs (default: %(default)s)")
    demo.add_argument("--loss", type=float, default=0.3,
                      help="simulated packet loss for the transmission (default: %(default)s)")
    demo.add_argument("--fec", default=None,
                      help="FEC profile (default: for_loss:LOSS, parity planned for --loss)")
    demo.add_argument("--seed", type=int, default=1, help="loss pattern seed (default: 1)")
    _add_runtime_flags(demo)
    demo.set_defaults(func=_cmd_demo)

    from resilient_tx.app import recv, send
    from resilient_tx.app.derive_rate import add_parser as add_derive_rate_parser

    send.add_parser(sub)
    recv.add_parser(sub)
    add_derive_rate_parser(sub)
    return p


#: Exit statuses: a runtime failure (a corrupted stream, a busy port, a failed build) is
#: 1; a usage error (a bad flag value, a missing input file, an invalid config) is 2, as
#: argparse itself uses for its own errors; 130 and 143 follow the shell's 128 + signal.
EXIT_RUNTIME, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that it unwinds like Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("resilient-tx")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (
        logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("resilient-tx: %(levelname)s: %(name)s: %(message)s"))
    root = logging.getLogger("resilient_tx")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"resilient-tx: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ResilientTxError as exc:
        print(f"resilient-tx: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # unwritable output, full disk, a busy port, ...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"resilient-tx: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("resilient-tx: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except _Terminated:
        print("resilient-tx: terminated", file=sys.stderr)
        return EXIT_SIGTERM


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    # Idle OpenMP threads sleep instead of spinning: the codec runs many small operations,
    # and spinning threads burn the CPU a busy machine's other work (or our own other
    # thread) needs. Read when torch loads, which the commands do lazily, after this; a
    # value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # SIGTERM (e.g. from a service manager) stops the command the way Ctrl-C does. Signal
    # handlers can only be set from the main thread; tests call main() from others too.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return _run(args)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    raise SystemExit(main())
