"""The loss sweep's figures, drawn from its summary rows (so ``--replot`` needs no codec).

Every figure copes with any subset of inpainters, with or without the classical baselines
(JPEG, and AVIF / WebP files with an erasure code), and keeps its legend beside the axes,
off the curves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resilient_tx.images import load_rgb, save_rgb

TUNED = "jpeg+fec*"
#: The classical codecs ``--baselines`` chooses from; AVIF and WebP travel as whole files.
BASELINES = ("jpeg", "avif", "webp")
FILE_CODECS = ("avif", "webp")
#: Summary rows of the classical baselines (per-fraction runs, "NAME@FRACTION", aside).
CLASSICAL_METHODS = ("jpeg", "jpeg+fec", TUNED,
                     *(f"{c}+fec{star}" for c in FILE_CODECS for star in ("", "*")))
#: Inpainters in the order a figure prefers them: the first one swept stands for ours.
OURS_ORDER = ("mim", "ar", "neighbor", "none")
#: FEC profiles for the inpainter comparison, best first: fixed parity that leaves tokens
#: to inpaint at high loss (for_loss plans parity for the loss, so little is ever missing).
COMPARE_ORDER = ("light", "strong", "none")
STYLES = {"mim": "o-", "ar": "x--", "neighbor": "^-", "none": "v:", "jpeg": "s--",
          "jpeg+fec": "d-.", TUNED: "P-.", "avif+fec": "*:", "avif+fec*": "*-.",
          "webp+fec": "h:", "webp+fec*": "h-."}
EXAMPLES = "examples"  # subfolder of OUT with the example reconstructions as PNGs

Row = dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def classical(method: str) -> bool:
    """Whether ``method`` is a classical baseline (a summary row or a per-fraction run)."""
    return method in CLASSICAL_METHODS or "@" in method


def ours(rows: list[Row]) -> str | None:
    """The inpainter that stands for our scheme in the main figure: MIM when swept."""
    names = {r["inpainter"] for r in rows if not classical(r["inpainter"])}
    ranked = [n for n in OURS_ORDER if n in names] + sorted(names - set(OURS_ORDER))
    return ranked[0] if ranked else None


def compare_setting(fecs: Sequence[str], depths: Sequence[int],
                    preferred: str | None = None) -> tuple[str, int]:
    """(FEC profile, context depth) at which the inpainters are compared: ``preferred``
    when swept, else the first of :data:`COMPARE_ORDER` swept; the deepest context."""
    choices = [f for f in (preferred, *COMPARE_ORDER) if f is not None and f in fecs]
    return (choices or sorted(fecs))[0], max(depths)


def plot(rows: list[Row], path: Path, want: Callable[[Row], bool], title: str) -> bool:
    """PSNR and MS-SSIM against loss, one column per loss model, for the rows ``want``
    keeps; one colour per (FEC profile, depth), line style by method (one colour per
    method when only one setting is kept). False (and no file) when no row is kept."""
    kept = [r for r in rows if want(r)]
    if not kept:
        return False
    plt = _pyplot()
    settings = sorted({(r["fec"], r["depth"]) for r in kept})
    by_method = len(settings) == 1  # colours would otherwise say nothing
    keys = sorted({r["inpainter"] for r in kept}) if by_method else settings
    colour = {key: plt.get_cmap("tab10")(i % 10) for i, key in enumerate(keys)}
    models = sorted({r["loss_model"] for r in kept})
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models) + 3.5, 8),
                             squeeze=False, layout="constrained")
    for col, lm in enumerate(models):
        series: dict[tuple[str, int, str], list[Row]] = defaultdict(list)
        for r in kept:
            if r["loss_model"] == lm:
                series[(r["fec"], r["depth"], r["inpainter"])].append(r)
        for (f, d, method), pts in sorted(series.items()):
            pts.sort(key=lambda r: r["loss"])
            bpp = np.mean([r["wire_bpp"] for r in pts])
            for row, key in ((0, "psnr"), (1, "ms_ssim")):
                axes[row][col].plot([100 * r["loss"] for r in pts], [r[key] for r in pts],
                                    STYLES.get(method, "o-"), ms=4,
                                    color=colour[method if by_method else (f, d)],
                                    label=f"{method}, FEC {f}, depth {d} ({bpp:.3f} bpp)")
        for row, name in ((0, "PSNR (dB)"), (1, "MS-SSIM")):
            ax = axes[row][col]
            ax.set_title(f"{lm} loss")
            ax.set_xlabel("packet loss (%)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
    _legend_beside(fig, axes)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _legend_beside(fig: Any, axes: Any) -> None:
    """One legend for all panels, right of them (same label in two columns: one entry)."""
    entries: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside right center", fontsize=7)


@dataclass(frozen=True)
class Figures:
    """What :func:`plot_all` drew: the method standing for ours and the comparison setting."""

    ours: str | None
    compare_fec: str
    compare_depth: int


def plot_all(rows: list[Row], out: Path, preferred_fec: str | None = None) -> Figures:
    """OUT/loss_sweep.png (ours vs JPEG at the deepest context swept) and OUT/inpainters.png
    (every inpainter at one fixed FEC setting, see :func:`compare_setting`)."""
    depth = max((r["depth"] for r in rows), default=0)
    main = ours(rows)
    keep = {main, *CLASSICAL_METHODS}
    codecs = sorted({r["inpainter"].split("+")[0].upper() for r in rows
                     if r["inpainter"] in CLASSICAL_METHODS})
    plot(rows, out / "loss_sweep.png", lambda r: r["depth"] == depth and r["inpainter"] in keep,
         f"resilient-tx ({main} inpainting, context depth {depth})"
         + (f" vs {', '.join(codecs)} at the same bytes" if codecs else ""))
    fec, d = compare_setting(sorted({r["fec"] for r in rows}), [depth], preferred_fec)
    plot(rows, out / "inpainters.png",
         lambda r: (r["fec"], r["depth"]) == (fec, d) and not classical(r["inpainter"]),
         f"inpainters at FEC {fec}, context depth {d}{_lost_note(rows, fec, d)}")
    return Figures(main, fec, d)


def _lost_note(rows: list[Row], fec: str, depth: int) -> str:
    """A second title line: the share of tokens inpainted at the highest loss swept."""
    at = [r for r in rows if (r["fec"], r["depth"]) == (fec, depth)
          and not classical(r["inpainter"])]
    if not at:
        return ""
    top = max(at, key=lambda r: (r["loss"], r["loss_model"]))
    return (f"\nat {top['loss']:.0%} {top['loss_model']} loss, "
            f"{top['tokens_inpainted']:.0%} of the tokens are inpainted")


def example_name(loss: float, inpainter: str) -> str:
    return f"loss{loss:.3f}_{inpainter}.png"


def save_example(out: Path, loss: float, inpainter: str, recon: np.ndarray) -> None:
    save_rgb(recon, out / EXAMPLES / example_name(loss, inpainter))


def plot_examples(out: Path, original: np.ndarray, losses: Sequence[float],
                  inpainters: Sequence[str], title: str) -> bool:
    """OUT/examples.png: the original, then one row per inpainter and one column per loss
    rate, from the PNGs in OUT/examples/ (those missing are left blank). False (no file)
    when none is there."""
    files = {(p, n): out / EXAMPLES / example_name(p, n) for p in losses for n in inpainters}
    if not any(f.is_file() for f in files.values()):
        return False
    plt = _pyplot()
    rows, cols = len(inpainters), len(losses) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows + 0.6), squeeze=False,
                             layout="constrained")
    axes[0][0].imshow(original)
    axes[0][0].set_title("original", fontsize=8)
    for (p, n), f in files.items():
        ax = axes[list(inpainters).index(n)][list(losses).index(p) + 1]
        if f.is_file():
            ax.imshow(load_rgb(f))
        ax.set_title(f"{n}, {p:.0%} loss", fontsize=8)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(out / "examples.png", dpi=90)
    plt.close(fig)
    return True
