"""Training throughput: images per second of the joint trainer and of the MIM-only phase.

For each speed setting ("path") this builds the joint trainer on the same training images,
runs ``--warmup`` steps (not timed: allocator warm-up, cuDNN autotuning, compilation) and
then times ``--steps`` joint steps and ``--steps`` MIM-only steps on frozen tokens,
waiting for the device before the clock stops. The paths take turns for ``--rounds``
rounds and each keeps its fastest (least disturbed) round. Joint throughput is training crops of
``--crop`` px per second; MIM throughput is token crops (24 x 24 tokens) per second. It
prints a table and writes ``OUT/bench_train.json``.

Paths (see resilient_tx/training/efficiency.py):

    baseline        float32, NCHW, crops cut on the host (the CPU default)
    fast            what pays on the device: on CUDA bf16 autocast + channels-last +
                    images on the GPU + fused AdamW (the CUDA default); on the CPU only
                    the on-device data path
    fast+compile    fast, plus torch.compile of the joint forward
    bf16 | channels_last | device_data | compile   one option alone
    all             every option but compilation, on any device

    python simulations/bench_train.py --device cpu --images 8 --batch 4 --crop 128
    python simulations/bench_train.py --device cuda --batch 64 --paths baseline fast fast+compile
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resilient_tx.config import RunConfig, load_run_config  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.training.efficiency import Efficiency, scale_lr  # noqa: E402
from resilient_tx.training.loop import StepStats, materialise  # noqa: E402
from resilient_tx.training.trainer import Trainer, encode_dataset, load_training_images  # noqa: E402
from simulations.sim_common import shared_data  # noqa: E402

PATHS = ("baseline", "fast", "fast+compile", "bf16", "channels_last", "device_data", "compile",
         "all")


def efficiency(path: str, device: torch.device) -> Efficiency:
    """The :class:`Efficiency` a path name stands for (module doc)."""
    if path == "baseline":
        return Efficiency.baseline()
    if path in ("fast", "fast+compile"):
        return Efficiency.fast(device, compile=path == "fast+compile")
    if path == "all":
        return Efficiency(bf16=True, channels_last=True, device_data=True,
                          fused_adamw=device.type == "cuda")
    return replace(Efficiency(), **{path: True})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Throughput:
    path: str
    joint_img_s: float  # training crops per second, joint PQ-VAE + MIM steps
    joint_step_ms: float
    mim_crops_s: float  # token crops per second, MIM-only steps
    mim_step_ms: float
    first_step_s: float  # the first joint step alone (compilation, autotuning)
    peak_mem_mib: float  # CUDA memory the path holds plus its largest step's; 0 on the CPU
    efficiency: dict[str, object]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


class PathBench:
    """One path's trainer, warmed up, timed in blocks of steps (see :func:`measure_all`)."""

    def __init__(self, path: str, run: RunConfig, images: list[np.ndarray],
                 device: torch.device, warmup: int, tmp: Path) -> None:
        self.path, self.device, self.run = path, device, run
        self.step = 0  # steps taken (the trainer's step function gets the index)
        self.eff = efficiency(path, device)
        before = _allocated(device)
        self.trainer = Trainer(run, None, tmp / path, device, eff=self.eff, images=images)
        self.trainer.net.train()
        self.first_s = self._block(self.trainer.train_step, 1)
        self._block(self.trainer.train_step, max(0, warmup - 1))
        tokens = encode_dataset(self.trainer.net, images, device)
        loop, self.mim_step = self.trainer.mim_phase(tokens)
        loop.module.train()
        self._block(self.mim_step, warmup)
        self.persistent = _allocated(device) - before  # weights, optimizer, images, tokens
        self.transient = 0  # most memory a timed block needed beyond that
        self.joint_s: list[float] = []
        self.mim_s: list[float] = []

    def _block(self, fn: Callable[[int], StepStats], n: int) -> float:
        """Seconds for ``n`` steps (statistics read back, as the loop does), after the
        device has drained its queue."""
        dev = self.device
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = _allocated(dev)
        t0 = time.perf_counter()
        rows = [fn(self.step + i) for i in range(n)]
        materialise(rows)
        _sync(dev)
        seconds = time.perf_counter() - t0
        if dev.type == "cuda":
            self.transient = max(self.transient, torch.cuda.max_memory_allocated(dev) - start)
        self.step += n
        return seconds

    def time_round(self, steps: int) -> None:
        self.joint_s.append(self._block(self.trainer.train_step, steps))
        self.mim_s.append(self._block(self.mim_step, steps))

    def result(self, steps: int) -> Throughput:
        cfg = self.run.train
        joint, mim = min(self.joint_s), min(self.mim_s)  # the least disturbed round
        return Throughput(self.path, cfg.batch_size * steps / joint, 1e3 * joint / steps,
                          cfg.mim_extra_batch * steps / mim, 1e3 * mim / steps, self.first_s,
                          (self.persistent + self.transient) / 2**20, asdict(self.eff))


def measure_all(paths: Sequence[str], run: RunConfig, images: list[np.ndarray],
                device: torch.device, steps: int, warmup: int, rounds: int) -> list[Throughput]:
    """Every path's throughput. The paths take turns, round by round, and each keeps its
    fastest round: on a shared machine a burst of load then hits one round of every path
    rather than all rounds of one."""
    with tempfile.TemporaryDirectory() as tmp:
        benches = [PathBench(p, run, images, device, warmup, Path(tmp)) for p in paths]
        for _ in range(rounds):
            for b in benches:
                b.time_round(steps)
        return [b.result(steps) for b in benches]


def _run_config(args: argparse.Namespace) -> RunConfig:
    run = load_run_config(args.config)
    t = run.train
    batch = args.batch or t.batch_size
    mim_batch = args.mim_batch or t.mim_extra_batch
    # Throughput does not depend on the learning rate; scaled anyway, as a real run would.
    train = replace(t, batch_size=batch, crop=args.crop or t.crop,
                    lr=scale_lr(t.lr, batch, t.batch_size), mim_extra_batch=mim_batch,
                    dead_code_every=0)
    return replace(run, train=train)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _print_table(rows: list[Throughput], run: RunConfig, device: torch.device) -> None:
    t = run.train
    print(f"{_device_name(device)}: joint batch {t.batch_size} x {t.crop} px, "
          f"MIM batch {t.mim_extra_batch}")
    print(f"{'path':<14}{'joint img/s':>12}{'ms/step':>9}{'MIM crops/s':>13}{'ms/step':>9}"
          f"{'1st step s':>11}{'peak MiB':>10}{'speed-up':>9}")
    base = rows[0].joint_img_s
    for r in rows:
        print(f"{r.path:<14}{r.joint_img_s:>12.2f}{r.joint_step_ms:>9.1f}{r.mim_crops_s:>13.1f}"
              f"{r.mim_step_ms:>9.1f}{r.first_step_s:>11.2f}{r.peak_mem_mib:>10.0f}"
              f"{r.joint_img_s / base:>8.2f}x")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(shared_data("bsds500")),
                   help="training images (default: %(default)s)")
    p.add_argument("--images", type=int, default=32, help="use the first N images (0 = all)")
    p.add_argument("--config", default=str(ROOT / "resilient_tx/configs/gpu_low.yaml"),
                   help="run config: model and train sections (default: %(default)s)")
    p.add_argument("--batch", type=int, default=0, help="joint batch (default: the config's)")
    p.add_argument("--mim-batch", type=int, default=0, help="MIM batch (default: the config's)")
    p.add_argument("--crop", type=int, default=0, help="crop side in px (default: the config's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase and round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the fastest is kept")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--paths", nargs="+", default=["baseline", "fast"], choices=PATHS)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--out", default="out/bench_train", help="output folder")
    args = p.parse_args(argv)
    try:
        set_threads(args.threads)
        device = resolve_device(args.device)
        run = _run_config(args)
        images = load_training_images(Path(args.data))[: args.images or None]
    except ResilientTxError as exc:
        print(f"bench_train: error: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda":  # as `resilient-tx train` sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = measure_all(args.paths, run, images, device, args.steps, args.warmup, args.rounds)
    _print_table(rows, run, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": _device_name(device), "torch": torch.__version__,
              "images": len(images), "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds,
              "train": asdict(run.train), "model": asdict(run.model),
              "results": [asdict(r) for r in rows]}
    (out / "bench_train.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'bench_train.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
