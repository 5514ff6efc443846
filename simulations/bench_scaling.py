"""Encode/decode cost against image size: CPU seconds and peak memory, up to 12 megapixels.

Every step (encode = image -> tokens -> entropy-coded ``.rtx`` bytes; decode = bytes ->
tokens -> image) runs in a fresh subprocess, so one step's peak memory is never inflated
by an earlier one. Each subprocess loads the model, warms up on a 64 x 64 crop (one-time
initialisation is not per-pixel cost), then measures the step alone:

* **CPU s**: user + system time of the process during the step (``resource.getrusage``),
  all threads together. On a shared machine this is far steadier than wall time;
* **peak MB**: the process's peak resident set (``ru_maxrss``), model and interpreter
  included, i.e. what ``/usr/bin/time -v`` reports for the whole command;
* **base MB**: the resident set just before the step, so peak - base is the step's own.

The subprocesses run with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: with
the default (spinning) policy, idle OpenMP threads burn CPU while they wait, so CPU seconds
come out near threads x wall time and grow with whatever else the machine runs.

Scaling is reported as CPU seconds and step memory per megapixel: flat columns mean cost
linear in the pixel count. Images are a photo mirror-tiled to each size (not enlarged,
which would blur it), so the content keeps a real photo's detail per pixel.

    python simulations/bench_scaling.py                       # 2 threads, CPU
    python simulations/bench_scaling.py --sizes 768x512,4000x3000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from resilient_tx.app.demo import sample_path  # noqa: E402
from resilient_tx.codec.container import EncodedImage  # noqa: E402
from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.config import DEFAULT_RATE  # noqa: E402
from resilient_tx.errors import InputError, ResilientTxError  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import fail, plain, shared_data  # noqa: E402

PROG = "bench_scaling.py"
SIZES = "768x512,1000x750,2000x1500,2828x2121,4000x3000"
STEPS = ("encode", "decode")


@dataclass(frozen=True)
class StepCost:
    """What one step cost in its own process."""

    cpu_s: float  # user + system seconds of the step, all threads
    wall_s: float
    base_mb: float  # resident set just before the step
    peak_mb: float  # the process's peak resident set


@dataclass(frozen=True)
class SizeCost:
    width: int
    height: int
    encode: StepCost
    decode: StepCost
    bytes: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def default_source() -> Path:
    """A Kodak photo when the shared data set is there, else the bundled sample."""
    kodak = shared_data("kodak") / "kodim23.png"
    return kodak if kodak.is_file() else sample_path()


def tiled(src: np.ndarray, width: int, height: int) -> np.ndarray:
    """``src`` mirror-tiled (no seams, no blur) and cropped to ``width`` x ``height``."""
    h, w = src.shape[:2]
    reps = (-(-height // h), -(-width // w))
    strip = np.concatenate([src if c % 2 == 0 else src[:, ::-1] for c in range(reps[1])], 1)
    full = np.concatenate([strip if r % 2 == 0 else strip[::-1] for r in range(reps[0])], 0)
    return np.ascontiguousarray(full[:height, :width])


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"WxH,WxH"`` -> [(W, H), ...]; :class:`InputError` on anything else."""
    out = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise InputError(f"--sizes: expected WxH[,WxH...], got {item!r}") from None
        if w < 1 or h < 1:
            raise InputError(f"--sizes: sides must be positive, got {item!r}")
        out.append((w, h))
    return out


# ----- one step, in its own process ----------------------------------------------------------
def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_mb() -> float:
    """Current resident set in MB (Linux /proc; 0 where it is unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_step(args: argparse.Namespace) -> StepCost:
    """The step ``args.child`` on the sizes/files in ``args``, measured in this process."""
    set_threads(args.threads)
    codec = Codec(get_model(args.rate), resolve_device(args.device))
    warm = np.zeros((64, 64, 3), np.uint8)
    codec.decode(codec.encode(warm))
    blob_path = Path(args.blob)
    if args.child == "encode":
        w, h = parse_sizes(args.sizes)[0]
        image = tiled(load_rgb(args.image), w, h)
        base, c0, t0 = _rss_mb(), _cpu_s(), time.perf_counter()
        blob = bytes(codec.encode(image))
    else:
        enc = EncodedImage.parse(blob_path.read_bytes())
        base, c0, t0 = _rss_mb(), _cpu_s(), time.perf_counter()
        codec.decode(enc)
    cost = StepCost(_cpu_s() - c0, time.perf_counter() - t0, base, _peak_mb())
    if args.child == "encode":
        blob_path.write_bytes(blob)
    return cost


def _spawn(step: str, args: argparse.Namespace, size: tuple[int, int], blob: Path) -> StepCost:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step,
           "--sizes", f"{size[0]}x{size[1]}", "--blob", str(blob), "--image", str(args.image),
           "--rate", args.rate, "--threads", str(args.threads), "--device", args.device]
    # Waiting OpenMP threads sleep instead of spinning: on a machine shared with other
    # work, a spinning thread whose partner was descheduled burns CPU seconds that measure
    # the neighbours, not the codec. An explicit setting in the environment is kept.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise InputError(f"{step} at {size[0]}x{size[1]} failed: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return StepCost(**json.loads(done.stdout.strip().splitlines()[-1]))


def _least(costs: Sequence[StepCost]) -> StepCost:
    """The least disturbed of repeated runs: each figure's minimum (other processes on
    the machine only ever add time, and memory is nearly the same every run)."""
    return StepCost(*(min(getattr(c, f) for c in costs) for f in StepCost.__dataclass_fields__))


def measure(args: argparse.Namespace, size: tuple[int, int], work: Path) -> SizeCost:
    blob = work / f"{size[0]}x{size[1]}.rtx"
    enc, dec = [], []
    for _ in range(args.repeats):
        enc.append(_spawn("encode", args, size, blob))
        dec.append(_spawn("decode", args, size, blob))
    return SizeCost(size[0], size[1], _least(enc), _least(dec), blob.stat().st_size)


# ----- the table -------------------------------------------------------------------------------
def _row(r: SizeCost) -> str:
    mp = r.megapixels
    e, d = r.encode, r.decode
    return (f"{r.width:>5}x{r.height:<5}{mp:>6.2f}{e.cpu_s:>8.1f}{d.cpu_s:>8.1f}"
            f"{e.cpu_s / mp:>10.2f}{d.cpu_s / mp:>10.2f}{e.peak_mb:>8.0f}{d.peak_mb:>8.0f}"
            f"{(e.peak_mb - e.base_mb) / mp:>8.0f}{(d.peak_mb - d.base_mb) / mp:>8.0f}"
            f"{e.wall_s:>7.1f}{d.wall_s:>7.1f}")


HEADER = (f"{'size':>11}{'MP':>6}{'enc s':>8}{'dec s':>8}{'enc s/MP':>10}{'dec s/MP':>10}"
          f"{'enc MB':>8}{'dec MB':>8}{'eMB/MP':>8}{'dMB/MP':>8}{'enc w':>7}{'dec w':>7}")


def spread(rows: Sequence[SizeCost]) -> dict[str, float]:
    """Largest / smallest CPU seconds per megapixel of each step (1.0 = exactly linear)."""
    out = {}
    for step in STEPS:
        per = [getattr(r, step).cpu_s / r.megapixels for r in rows]
        out[step] = max(per) / min(per)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default=DEFAULT_RATE, help="rate point (default: %(default)s)")
    p.add_argument("--image", metavar="FILE", default=None,
                   help="source photo (default: Kodak kodim23 if present, else the sample)")
    p.add_argument("--sizes", default=SIZES, help="WxH list (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per step, each in a fresh process; the minimum is kept")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--out", default="out/bench_scaling.json", help="JSON report")
    p.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--blob", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.image = args.image or str(default_source())
    try:
        if args.child:
            print(json.dumps(asdict(run_step(args))))
            return 0
        sizes = parse_sizes(args.sizes)
        if args.repeats < 1:
            raise InputError(f"--repeats must be >= 1, got {args.repeats}")
        print(f"rate {args.rate}, {args.device}, {args.threads} threads, source {args.image}, "
              f"min of {args.repeats}; CPU s = user + sys of the step; MB = process peak "
              "RSS; MB/MP = (peak - RSS before the step) per megapixel; w = wall s",
              flush=True)
        print(HEADER, flush=True)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                rows.append(measure(args, size, Path(tmp)))
                print(_row(rows[-1]), flush=True)
    except ResilientTxError as exc:
        return fail(PROG, str(exc))
    ratio = spread(rows)
    print(f"CPU s/MP, largest / smallest over the sizes: encode {ratio['encode']:.2f}x, "
          f"decode {ratio['decode']:.2f}x (1.00x = linear)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rate": args.rate, "device": args.device, "threads": args.threads,
                               "image": args.image, "rows": [asdict(r) for r in rows],
                               "spread": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
