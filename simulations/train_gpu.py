"""One bounded training run on a GPU machine: train, evaluate on Kodak, collect the files.

Within ``--minutes`` (default 9, start-up included) it

1. trains, in a worker process (``torchrun`` with ``--gpus N`` > 1): either on from a
   shipped model (``--init low``: its weights, a fresh warmup + cosine schedule) or a new
   model from ``--config`` (default ``resilient_tx/configs/gpu_low.yaml``). The trainer's
   time budget is set so training ends ``--eval-minutes`` before the end; on CUDA it runs
   the efficient path (bf16 autocast, channels-last, images held on the GPU, fused AdamW).
   The model is stored with int8 weights and must come out at most 16 MiB;
2. runs ``simulations/rd_eval.py --images KODAK --out OUT/rd --model-files OUT/model.pt``
   (plus whichever of its options it offers: device, codecs, image limit) with the time
   left;
3. leaves in the output folder (``$OUT`` if set, else ``--out``): ``model.pt``, ``log.csv``
   (the training log), ``train_gpu.log`` (everything printed), ``train_gpu.json`` (a
   summary: steps, timings, sizes, ids) and ``rd/`` (rd_eval's ``rd.json``, ``rd.csv`` and
   ``rd.png``): seven files, within what a device machine hands back (eight). The resumable
   checkpoint and rd_eval's other files stay in ``--work`` (a temporary folder by default):
   the checkpoint is far larger than a model file.

It needs only the checkout (with its shipped models) and the training images (``--data``).

    python simulations/train_gpu.py --data ../shared/data/bsds500 --init low
    python simulations/train_gpu.py --data ../shared/data/bsds500 --config my_arch.yaml
    python simulations/train_gpu.py --data ../shared/data/bsds500 --gpus 2
    python simulations/train_gpu.py --data ../shared/data/bsds500 --dry-run   # tiny, CPU

``--dry-run`` checks the whole pipeline on the CPU in a few minutes: 8 images, 64-px
crops, a few steps, a tiny model (or the ``--init`` model), one Kodak image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulations.sim_common import shared_data  # noqa: E402

MAX_MODEL_MIB = 16.0
#: Seconds kept free at the end: process exits, copying, the summary.
END_MARGIN_S = 15.0
#: A tiny architecture for ``--dry-run`` without ``--init`` (trains in seconds on a CPU).
TINY_MODEL = {"widths": [8, 8, 8], "latent_dim": 16, "num_subvectors": 2, "codebook_size": 16,
              "latent_blocks": 1, "latent_heads": 2, "mim_dim": 16, "mim_depth": 1,
              "mim_heads": 2}
DRY_TRAIN = {"steps": 10, "batch_size": 2, "crop": 64, "warmup_steps": 1,
             "mim_extra_steps": 3, "mim_extra_batch": 2, "checkpoint_every": 3}


class Log:
    """Prints and appends to ``train_gpu.log``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"[train_gpu {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")

    def run(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> int:
        """Run ``cmd``, its output appended to the log and echoed; killed after ``timeout``
        seconds (return code 124)."""
        self(" ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True)
        copier = threading.Thread(target=self._copy, args=(proc,), daemon=True)
        copier.start()
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: torchrun's ranks too
            proc.wait()
            self(f"killed after {timeout:.0f} s")
            rc = 124
        copier.join(timeout=5)
        return rc

    def _copy(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with self.path.open("a") as f:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
                f.flush()


# ----------------------------------------------------------------------------- plan


def _run_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The run config (model / train sections) the worker trains with, as plain data."""
    from resilient_tx.config import load_run_config
    from resilient_tx.training.efficiency import scale_lr

    run = load_run_config(args.config)
    train = dataclasses.asdict(run.train)
    model = dataclasses.asdict(run.model)
    if args.dry_run:
        train.update(DRY_TRAIN)
        if not args.init:
            model.update(TINY_MODEL)
    if args.batch:  # a batch other than the config's: square-root rule for the peak LR
        train["lr"] = scale_lr(train["lr"], args.batch, train["batch_size"])
        train["batch_size"] = args.batch
    train["lr"] *= args.lr_factor
    train["weight_storage"] = "int8"
    return {"model": model, "train": train}


def _plan(args: argparse.Namespace, out: Path, work: Path, t_start: float) -> dict[str, Any]:
    eval_s = 60 * args.eval_minutes
    return {"run": _run_dict(args), "init": args.init, "data": str(Path(args.data).resolve()),
            "images": 8 if args.dry_run else args.images, "work": str(work), "out": str(out),
            "device": args.device, "threads": args.threads,
            # Wall-clock (epoch) time at which training must be over, start-up included.
            "train_until": t_start + 60 * args.minutes - eval_s - END_MARGIN_S}


# ----------------------------------------------------------------------------- worker


def _load_init(name: str | None) -> Any:
    from resilient_tx.errors import InputError
    from resilient_tx.zoo.registry import get_model

    if not name:
        return None
    model = get_model(name)
    if "derived_from" in model.meta:
        raise InputError(f"{name} is a k-means rate point; start from its base "
                         f"{model.meta['derived_from']}")
    return model


def worker(plan_path: Path) -> int:
    """Train as the plan says (one rank of it under torchrun); rank 0 writes the result."""
    import torch

    from resilient_tx.config import ModelConfig, RunConfig, TrainConfig
    from resilient_tx.runtime import resolve_device, set_threads
    from resilient_tx.training import distributed
    from resilient_tx.training.trainer import Trainer, load_training_images

    plan = json.loads(plan_path.read_text())
    set_threads(plan["threads"])
    init = _load_init(plan["init"])
    model_cfg = init.cfg if init is not None else ModelConfig(**plan["run"]["model"])
    images = load_training_images(Path(plan["data"]))[: plan["images"] or None]
    with distributed.session(resolve_device(plan["device"])) as (dist, device):
        if device.type == "cuda":  # training only, as `resilient-tx train` sets them
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        train = TrainConfig(**plan["run"]["train"])
        run = RunConfig(model=model_cfg, train=train)
        trainer = Trainer(run, None, Path(plan["work"]), device, dist=dist, init=init,
                          images=images)
        if trainer.try_resume() and dist.is_main:
            print(f"resuming from {trainer.state_path} at step {trainer.step}", flush=True)
        # What is left of the slot now that the images are loaded and the trainer built.
        budget = distributed.agree(dist, int(plan["train_until"] - time.time()))
        if budget <= 0:
            raise SystemExit("train_gpu: no time left to train")
        res = trainer.run(float(budget))
        if dist.is_main:
            summary = {**dataclasses.asdict(res), "model_path": str(res.model_path),
                       "device": str(device), "ranks": dist.world_size,
                       "train_budget_s": budget, "images": len(images),
                       "batch_per_rank": train.batch_size, "lr_peak": trainer.lr,
                       "efficiency": dataclasses.asdict(trainer.eff)}
            (Path(plan["work"]) / "result.json").write_text(json.dumps(summary, indent=1))
    return 0


# ----------------------------------------------------------------------------- driver


def _train_cmd(args: argparse.Namespace, plan_path: Path) -> list[str]:
    me = [str(Path(__file__).resolve()), "--worker", str(plan_path)]
    if args.gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(args.gpus), *me]
    return [sys.executable, *me]


#: rd_eval's files that are copied to the output folder.
RD_FILES = ("rd.json", "rd.csv", "rd.png")


def _rd_eval_cmd(args: argparse.Namespace, model: Path, out: Path, device: str) -> list[str]:
    """rd_eval with the options its --help offers (the script keeps growing)."""
    script = ROOT / "simulations" / "rd_eval.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, check=False).stdout
    cmd = [sys.executable, str(script), "--images", args.kodak, "--out", str(out / "rd")]
    optional = {"--model-files": [str(model)], "--device": [device],
                "--limit": ["1" if args.dry_run else str(args.eval_limit)],
                "--codecs": args.eval_codecs, "--jpeg-q": [str(q) for q in args.eval_jpeg_q],
                "--threads": [str(args.threads)]}
    for flag, values in optional.items():
        if flag in help_text and values:
            cmd += [flag, *values]
    return cmd


def _copy_files(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Copy those of ``names`` that exist in ``src`` to ``dst``."""
    import shutil

    for name in names:
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


def _collect(work: Path, out: Path, log: Log) -> dict[str, Any]:
    """Copy the model and the log from the work folder; check the model's size."""
    result = json.loads((work / "result.json").read_text())
    _copy_files(work, out, ("model.pt", "log.csv"))
    mib = (out / "model.pt").stat().st_size / 2**20
    result.update(model_path=str(out / "model.pt"), model_mib=round(mib, 2))
    log(f"model {result['model_id']}: {mib:.2f} MiB, {result['steps']} joint steps, "
        f"train PSNR {result['final_psnr']:.2f} dB, MIM {result['final_mim_bits']:.3f} bits")
    if mib > MAX_MODEL_MIB:
        log(f"ERROR: model.pt is {mib:.2f} MiB, over the {MAX_MODEL_MIB:.0f} MiB limit")
    return result


def _device_of(args: argparse.Namespace) -> str:
    if args.device != "auto":
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def drive(args: argparse.Namespace, t_start: float) -> int:
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train_gpu.log")
    if args.work is None:  # nothing to resume later: the folder goes when the run ends
        with tempfile.TemporaryDirectory(prefix="train_gpu_") as tmp:
            return _drive_in(args, out, Path(tmp), log, t_start)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    return _drive_in(args, out, work, log, t_start)


def _drive_in(args: argparse.Namespace, out: Path, work: Path, log: Log,
              t_start: float) -> int:
    plan = _plan(args, out, work, t_start)
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    log(f"output {out}, work {work}, {args.minutes:g} min in all, "
        f"train until {time.strftime('%H:%M:%S', time.localtime(plan['train_until']))}")
    end = t_start + 60 * args.minutes
    env = {**os.environ, "TQDM_MININTERVAL": "10"}  # a readable log: few progress updates
    rc = log.run(_train_cmd(args, plan_path), end - time.time() - END_MARGIN_S / 2, env)
    summary: dict[str, Any] = {"train_rc": rc, "train_s": round(time.time() - t_start, 1)}
    if rc != 0 or not (work / "result.json").is_file():
        log(f"training failed (exit {rc})")
        return _finish(out, summary, log, 1, t_start)
    summary["result"] = _collect(work, out, log)
    t_eval = time.time()
    eval_cmd = _rd_eval_cmd(args, out / "model.pt", work, _device_of(args))
    summary["eval_rc"] = log.run(eval_cmd, end - time.time() - 5)
    summary["eval_s"] = round(time.time() - t_eval, 1)
    _copy_files(work / "rd", out / "rd", RD_FILES)
    ok = summary["eval_rc"] == 0 and summary["result"]["model_mib"] <= MAX_MODEL_MIB
    return _finish(out, summary, log, 0 if ok else 1, t_start)


def _finish(out: Path, summary: dict[str, Any], log: Log, rc: int, t_start: float) -> int:
    summary["total_s"] = round(time.time() - t_start, 1)
    (out / "train_gpu.json").write_text(json.dumps(summary, indent=1))
    log(f"done in {summary['total_s']:.0f} s (exit {rc}); summary in {out / 'train_gpu.json'}")
    return rc


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="training images (BSDS500; never Kodak)")
    p.add_argument("--init", help="start from this model (a shipped rate name or a file)")
    p.add_argument("--config", default=str(ROOT / "resilient_tx/configs/gpu_low.yaml"),
                   help="run config (its model: section is ignored with --init)")
    p.add_argument("--batch", type=int, default=0,
                   help="batch per GPU instead of the config's (LR by the square-root rule)")
    p.add_argument("--lr-factor", type=float, default=1.0,
                   help="multiply the peak learning rate (e.g. 0.5 for a gentler fine-tune)")
    p.add_argument("--images", type=int, default=0, help="use the first N images (0 = all)")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock limit, all included")
    p.add_argument("--eval-minutes", type=float, default=2.0,
                   help="kept for the Kodak evaluation at the end")
    p.add_argument("--kodak", default=str(shared_data("kodak")),
                   help="evaluation images (default: %(default)s)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate the first N (0 = all)")
    # The classical sweeps cost more than our codec (WebP and AVIF at their slow settings):
    # a short run compares with a few JPEG points only; the full comparison is rd_eval's.
    p.add_argument("--eval-codecs", nargs="*", default=["JPEG"],
                   help="classical codecs rd_eval compares with, if it takes --codecs "
                   "(default: %(default)s)")
    p.add_argument("--eval-jpeg-q", type=int, nargs="*", default=[2, 5, 10, 20],
                   help="JPEG qualities, if rd_eval takes --jpeg-q (default: %(default)s)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (processes) to train on")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--out", default="out/train_gpu", help="output folder when $OUT is unset")
    p.add_argument("--work", help="checkpoint folder, kept for a resume (default: a "
                   "temporary one, removed at the end)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny end-to-end check: 8 images, 64-px crops, a few steps, 1 Kodak image")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None and not args.data:
        p.error("--data is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.time()  # the --minutes clock starts here
    args = _parse(argv)
    from resilient_tx.errors import ResilientTxError

    try:
        return worker(args.worker) if args.worker is not None else drive(args, t_start)
    except ResilientTxError as exc:
        print(f"train_gpu: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
