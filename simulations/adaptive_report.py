"""The adaptive sweep's strategy names, summary, targets, output files and plot.

Kept apart from :mod:`simulations.adaptive_sweep`, which runs the sequences; these only
read its per-frame results and scenarios. The strategy names live here because both the
runner and the summary tell the strategies apart by them.
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

ORACLE = "oracle"
FILE_CODECS = {"avif": "AVIF", "webp": "WEBP"}  # strategy -> classical codec
AT = "@"  # auto@SPEC: auto within the mean bytes per frame that strategy SPEC spent
BUDGETED = f"{AUTO}{AT}for_loss:0.1"  # auto at the bytes of the cheaper fixed plan
STRATEGIES = (AUTO, "for_loss:0.1", BUDGETED, "for_loss:0.5", ORACLE, *FILE_CODECS)
LOW_PSNR = 20.0  # a frame below this many dB counts as failed
TOLERANCE = 0.05  # auto's estimate has caught up with a step once this close to the rate


def budget_source(strategy: str) -> str | None:
    """SPEC of ``auto@SPEC``, whose mean bytes per frame it spends; None for the rest."""
    head, at, spec = strategy.partition(AT)
    return spec if at and head == AUTO else None


def adaptive(strategy: str) -> bool:
    """Whether the strategy plans from the receiver's reports (its frames have estimates)."""
    return strategy == AUTO or budget_source(strategy) is not None


# ----------------------------------------------------------------------------- summary
def summarise(results: Sequence[FrameResult]) -> list[dict[str, Any]]:
    """One row per (channel, strategy) over every frame and trial."""
    groups: dict[tuple[str, str], list[FrameResult]] = defaultdict(list)
    for r in results:
        groups[(r.channel, r.strategy)].append(r)
    rows = []
    for (ch, st), rs in groups.items():
        psnr = np.array([r.psnr for r in rs])
        trials = len({r.trial for r in rs})
        bpp = float(np.mean([r.wire_bpp for r in rs]))
        row: dict[str, Any] = {
            "channel": ch, "strategy": st, "frames": len(rs), "trials": trials,
            "mean_psnr": float(psnr.mean()), "p5_psnr": float(np.percentile(psnr, 5)),
            "below_20db": float(np.mean(psnr < LOW_PSNR)),
            "bytes_per_sequence": sum(r.bytes for r in rs) / trials, "wire_bpp": bpp,
            "psnr_per_bpp": float(psnr.mean()) / bpp if bpp else float("nan")}
        for seg in sorted({r.segment for r in rs}):
            of = [r for r in rs if r.segment == seg]
            row[f"seg{seg + 1}_psnr"] = float(np.mean([r.psnr for r in of]))
            if adaptive(st):
                row[f"seg{seg + 1}_estimate"] = float(np.mean([r.est_loss for r in of]))
        if adaptive(st):
            row["estimate_lag"] = estimate_lags(rs)
        rows.append(row)
    return rows


def estimate_lags(auto: Sequence[FrameResult]) -> list[int | None]:
    """Per segment, the frames from its start until an adaptive strategy's estimate
    (averaged over the trials) is within :data:`TOLERANCE` of the segment's loss; None: it
    never got there."""
    est: dict[int, list[float]] = defaultdict(list)
    for r in auto:
        if r.est_loss is not None:
            est[r.frame].append(r.est_loss)
    lags: list[int | None] = []
    for seg in sorted({r.segment for r in auto}):
        frames = sorted({(r.frame, r.true_loss) for r in auto if r.segment == seg})
        first = frames[0][0]
        lags.append(next((f - first for f, p in frames
                          if abs(np.mean(est[f]) - p) <= TOLERANCE), None))
    return lags


def print_table(rows: Sequence[dict[str, Any]], steps: Sequence[float]) -> None:
    segs = "".join(f"{f'@{p:g}':>8}" for p in steps)
    wide = max([12, *(len(r["strategy"]) for r in rows)]) + 2  # auto@SPEC is long
    hdr = (f"{'channel':<10}{'strategy':<{wide}}{'PSNR':>7}{'p5':>7}{'<20dB':>7}{'kB/seq':>9}"
           f"{'bpp':>7}{'dB/bpp':>8}{segs}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        per_seg = "".join(f"{r.get(f'seg{i + 1}_psnr', float('nan')):>8.2f}"
                          for i in range(len(steps)))
        print(f"{r['channel']:<10}{r['strategy']:<{wide}}{r['mean_psnr']:>7.2f}{r['p5_psnr']:>7.2f}"
              f"{r['below_20db']:>7.1%}{r['bytes_per_sequence'] / 1000:>9.1f}"
              f"{r['wire_bpp']:>7.3f}{r['psnr_per_bpp']:>8.1f}{per_seg}")
    for r in (r for r in rows if adaptive(r["strategy"])):
        est = ", ".join(f"{p:g} -> {r[f'seg{i + 1}_estimate']:.3f} (lag {lag})"
                        for i, (p, lag) in enumerate(zip(steps, r["estimate_lag"], strict=True)))
        print(f"{r['strategy']}'s estimate, {r['channel']}: true loss -> mean planned estimate per "
              f"segment (frames until within {TOLERANCE:g}; None: never): {est}")
    print(f"PSNR: mean over frames and trials; p5: 5th percentile; <20dB: share of frames "
          f"below {LOW_PSNR:g} dB; kB/seq: wire kB per sequence; dB/bpp: mean PSNR / mean "
          "wire bpp; @P: mean PSNR of the segment at loss P; auto@SPEC: auto within the "
          "mean bytes per frame SPEC spent.")


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The targets, per channel, each said met or MISSED (with the numbers)."""
    by = {(r["channel"], r["strategy"]): r for r in rows}
    out = []
    for ch in dict.fromkeys(r["channel"] for r in rows):
        checks = _auto_checks(by, ch) + _budget_checks(by, ch)
        out += [f"{ch}: {'met   ' if ok else 'MISSED'} {text}" for ok, text in checks]
    return out


Check = tuple[bool, str]  # met, and the numbers that say so
Rows = dict[tuple[str, str], dict[str, Any]]  # (channel, strategy) -> summary row


def _fixed(by: Rows, ch: str) -> list[str]:
    return [k for (c, k) in by if c == ch and k.startswith("for_loss")]


def _auto_checks(by: Rows, ch: str) -> list[Check]:
    """``auto`` against the oracle, the fixed plans and the classical files."""
    auto = by.get((ch, AUTO))
    if auto is None:
        return []
    checks: list[Check] = []
    if (o := by.get((ch, ORACLE))) is not None:
        checks.append(_oracle_check(AUTO, auto, o))
    for st in _fixed(by, ch):
        f = by[(ch, st)]
        checks.append((auto["psnr_per_bpp"] > f["psnr_per_bpp"],
                       f"dB/bpp auto {auto['psnr_per_bpp']:.1f} vs {st} {f['psnr_per_bpp']:.1f}"))
    for st in FILE_CODECS:
        if (c := by.get((ch, st))) is not None:
            checks.append((auto["p5_psnr"] > c["p5_psnr"], f"p5 PSNR auto "
                           f"{auto['p5_psnr']:.2f} vs {st} {c['p5_psnr']:.2f}"))
            checks.append((auto["mean_psnr"] >= c["mean_psnr"], f"mean PSNR auto "
                           f"{auto['mean_psnr']:.2f} vs {st} {c['mean_psnr']:.2f}"))
    return checks


def _oracle_check(name: str, me: dict[str, Any], oracle: dict[str, Any]) -> Check:
    """The oracle target: mean PSNR within 0.5 dB of the oracle's, at no more bytes."""
    gap = me["mean_psnr"] - oracle["mean_psnr"]
    ratio = me["bytes_per_sequence"] / oracle["bytes_per_sequence"]
    return (gap >= -0.5 and ratio <= 1.0, f"{name} - oracle mean PSNR {gap:+.2f} dB at "
            f"{ratio:.2f}x its bytes (target >= -0.5 dB at <= 1x)")


def _budget_checks(by: Rows, ch: str) -> list[Check]:
    """Each ``auto@SPEC`` against SPEC at (about) SPEC's bytes: mean and p5 PSNR (for the
    oracle: the oracle target), and dB/bpp against every fixed plan (the target plain auto
    misses by spending more)."""
    checks: list[Check] = []
    for (c, st), me in by.items():
        src = budget_source(st)
        if c != ch or not src or (s := by.get((ch, src))) is None:
            continue
        if src == ORACLE:
            checks.append(_oracle_check(st, me, s))
            continue
        ratio = me["bytes_per_sequence"] / s["bytes_per_sequence"]
        for key, what in (("mean_psnr", "mean PSNR"), ("p5_psnr", "p5 PSNR")):
            checks.append((me[key] > s[key], f"{what} {st} {me[key]:.2f} vs {src} "
                           f"{s[key]:.2f} at {ratio:.2f}x its bytes"))
        for fx in _fixed(by, ch):
            f = by[(ch, fx)]
            checks.append((me["psnr_per_bpp"] > f["psnr_per_bpp"], f"dB/bpp {st} "
                           f"{me['psnr_per_bpp']:.1f} vs {fx} {f['psnr_per_bpp']:.1f}"))
    return checks


# ----------------------------------------------------------------------------- outputs
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
    estimate (else an ``auto@SPEC``'s) on a second axis; one panel per channel."""
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
        # One estimate is enough to see the lag: auto's, else the first adaptive strategy's.
        first = next((st for st in dict.fromkeys(r.strategy for r in mine) if adaptive(st)),
                     None)
        est = {} if first is None else _per_frame(mine, first, "est_loss")
        if est:
            twin.plot(list(est), list(est.values()), "k:", label=f"{first}'s estimate")
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
