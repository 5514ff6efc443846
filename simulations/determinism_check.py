"""Cross-machine determinism check: encode in one process, decode in another.

The encoder process runs with ``--encode-threads`` on ``--encode-device``; a second, fresh
process decodes with ``--decode-threads`` on ``--decode-device`` and compares every token
with what the encoder saw. Different thread counts change float summation order, and
CPU vs CUDA changes the maths libraries, so this is the closest stand-in for "sender and
receiver on different machines" that one box can give (entropy module docstring).

Without ``--images`` it checks the photo bundled with the package; for the Kodak set,
download kodim01..24.png into a folder and pass ``--images DIR``.

    python simulations/determinism_check.py                       # 1 -> 2 threads, bundled photo
    python simulations/determinism_check.py --images DIR          # the same on every image in DIR
    python simulations/determinism_check.py --decode-device cuda  # CPU -> CUDA, on a GPU box
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from resilient_tx.codec.container import EncodedImage  # noqa: E402
from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.errors import ResilientTxError  # noqa: E402
from resilient_tx.images import load_rgb  # noqa: E402
from resilient_tx.runtime import resolve_device, set_threads  # noqa: E402
from resilient_tx.zoo.registry import available_rates, get_model  # noqa: E402
from simulations.sim_common import SAMPLES, fail, image_files, plain  # noqa: E402

PROG = "determinism_check.py"


def _encode_side(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    work = Path(args.work)
    files = image_files(args.images, args.limit)
    for rate in args.rates:
        codec = Codec(get_model(rate), resolve_device(args.device))
        for f in tqdm(files, desc=f"encode {rate} ({args.threads} thr, {args.device})"):
            image = load_rgb(f)
            (work / f"{rate}__{f.stem}.rtx").write_bytes(bytes(codec.encode(image)))
            torch.save(codec.image_to_tokens(image), work / f"{rate}__{f.stem}.tokens.pt")
    return 0


def _decode_side(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    work = Path(args.work)
    results = []
    for rate in args.rates:
        codec = Codec(get_model(rate), resolve_device(args.device))
        for rtx in tqdm(sorted(work.glob(f"{rate}__*.rtx")),
                        desc=f"decode {rate} ({args.threads} thr, {args.device})"):
            expected = torch.load(rtx.with_suffix(".tokens.pt"), weights_only=True)
            enc = EncodedImage.parse(rtx.read_bytes())
            try:
                got = codec.decode_tokens(enc.stages, *expected.shape[1:])
                mismatches, error = int((got != expected).sum()), ""
            except ResilientTxError as exc:
                mismatches, error = int(expected.numel()), str(exc)
            results.append({"rate": rate, "image": rtx.stem.split("__", 1)[1],
                            "tokens": int(expected.numel()), "mismatches": mismatches,
                            "error": error})
    (work / "decode_results.json").write_text(json.dumps(results, indent=1))
    return 0


def _run_side(side: str, args: argparse.Namespace, threads: int, device: str) -> None:
    cmd = [sys.executable, __file__, f"--side={side}", f"--work={args.work}",
           f"--images={args.images}", f"--threads={threads}", f"--device={device}",
           f"--limit={args.limit}", "--rates", *args.rates]
    subprocess.run(cmd, check=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", metavar="DIR", default=str(SAMPLES),
                   help="folder of test images (default: the bundled sample photo)")
    p.add_argument("--rates", nargs="+", help="rate points (default: all shipped)")
    p.add_argument("--encode-threads", type=int, default=1)
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--encode-device", default="cpu")
    p.add_argument("--decode-device", default="cpu")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--out", default="out/determinism.json", help="JSON report")
    p.add_argument("--side", choices=["encode", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.rates = args.rates or available_rates()
        if args.side == "encode":
            return _encode_side(args)
        if args.side == "decode":
            return _decode_side(args)
        return _drive(args)
    except ResilientTxError as exc:
        return fail(PROG, str(exc))


def _drive(args: argparse.Namespace) -> int:
    image_files(args.images, args.limit)  # fail here, in one line, not in a child process
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        _run_side("encode", args, args.encode_threads, args.encode_device)
        _run_side("decode", args, args.decode_threads, args.decode_device)
        results = json.loads((Path(tmp) / "decode_results.json").read_text())
    bad = [r for r in results if r["mismatches"] or r["error"]]
    summary = {
        "encode": {"threads": args.encode_threads, "device": args.encode_device},
        "decode": {"threads": args.decode_threads, "device": args.decode_device},
        "images": len({r["image"] for r in results}), "rates": args.rates,
        "streams": len(results), "tokens": sum(r["tokens"] for r in results),
        "mismatched_tokens": sum(r["mismatches"] for r in results), "failed_streams": bad,
        "seconds": round(time.perf_counter() - t0, 1), "per_stream": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"{summary['streams']} streams ({summary['images']} images x {len(args.rates)} rates), "
          f"{summary['tokens']} tokens: {summary['mismatched_tokens']} mismatched, "
          f"{len(bad)} failed; encode {args.encode_threads} thr/{args.encode_device} -> decode "
          f"{args.decode_threads} thr/{args.decode_device}; report {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
