"""Command line: ``resilient-tx {train,encode,decode,...}``. ``main(argv)`` is callable from tests."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ResilientTxError


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import load_run_config
    from .runtime import resolve_device, set_threads
    from .train import Trainer

    run = load_run_config(args.config)
    if args.steps is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=args.steps))
    set_threads(args.threads if args.threads is not None else run.train.threads)
    device = resolve_device(args.device)
    trainer = Trainer(run, Path(args.data), Path(args.out), device)
    if trainer.try_resume():
        print(f"resuming from {args.out}/last.pt at step {trainer.step}", file=sys.stderr)
    res = trainer.run()
    print(f"model {res.model_id} written to {res.model_path} after {res.steps} steps "
          f"({res.seconds / 60:.1f} min): train PSNR {res.final_psnr:.2f} dB, "
          f"MIM {res.final_mim_bits:.3f} bits/sub-index")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resilient-tx",
        description="Loss-resilient learned image transmission (PQ-VAE + quincunx MIM).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a PQ-VAE + MIM model on a folder of images",
                       description="Jointly train the PQ-VAE and the MIM entropy model "
                       "(no MIM gradient into the encoder). Resumes from OUT/last.pt.")
    t.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    t.add_argument("--config", help="YAML file with model: and train: sections")
    t.add_argument("--out", default="runs/train", help="output folder (default: %(default)s)")
    t.add_argument("--steps", type=int, help="override train.steps")
    t.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    t.add_argument("--threads", type=int, help="CPU threads (default: config / torch default)")
    t.set_defaults(func=_cmd_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ResilientTxError as exc:
        print(f"resilient-tx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resilient-tx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
