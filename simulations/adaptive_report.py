"""The adaptive sweep's outputs: its JSON and CSV files and its plot.

Kept apart from :mod:`simulations.adaptive_sweep`, which runs the sequence and sums it up;
these only read its per-frame results and scenarios.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resilient_tx.resilience.adaptive import AUTO

if TYPE_CHECKING:
    from simulations.adaptive_sweep import FrameResult, Scenario


def write_outputs(out: Path, args: dict[str, Any], rows: list[dict[str, Any]],
                  results: Sequence[FrameResult]) -> None:
    """adaptive_sweep.json (everything), adaptive_sweep.csv (frames), adaptive_summary.csv."""
    frames = [dataclasses.asdict(r) for r in results]
    (out / "adaptive_sweep.json").write_text(json.dumps(
        {"args": args, "summary": rows, "frames": frames}, indent=1))
    for name, recs in (("adaptive_sweep.csv", frames), ("adaptive_summary.csv", rows)):
        fields = list(dict.fromkeys(k for rec in recs for k in rec))
        with (out / name).open("w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=fields)
            wr.writeheader()
            wr.writerows(recs)


def plot(out: Path, results: Sequence[FrameResult], scs: Sequence[Scenario]) -> Path:
    """PSNR per frame of every strategy (mean over trials), with the true loss and auto's
    estimate on a second axis; one panel per channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(scs), 1, figsize=(13, 4 * len(scs)), squeeze=False)
    for ax, sc in zip(axes[:, 0], scs, strict=True):
        mine = [r for r in results if r.channel == sc.loss_model]
        for st in dict.fromkeys(r.strategy for r in mine):
            per = _per_frame(mine, st, "psnr")
            ax.plot(list(per), list(per.values()), label=st, lw=1.2)
        ax.set(xlabel="frame", ylabel="PSNR (dB)", title=f"{sc.loss_model} loss"
               + (f", mean burst {sc.burst:g}" if sc.loss_model == "gilbert" else ""))
        twin = ax.twinx()
        frames = range(sc.frames)
        twin.step(frames, [sc.loss(i) for i in frames], where="mid", color="k", ls="--",
                  label="true loss")
        est = _per_frame(mine, AUTO, "est_loss")
        if est:
            twin.plot(list(est), list(est.values()), "k:", label="auto's estimate")
        twin.set(ylabel="loss rate", ylim=(0, 1))
        (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left", bbox_to_anchor=(1.07, 1.0))
    fig.tight_layout()
    path = out / "adaptive_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_frame(results: Sequence[FrameResult], strategy: str, attr: str) -> dict[int, float]:
    values: dict[int, list[float]] = defaultdict(list)
    for r in results:
        if r.strategy == strategy and getattr(r, attr) is not None:
            values[r.frame].append(getattr(r, attr))
    return {f: float(np.mean(v)) for f, v in sorted(values.items())}
