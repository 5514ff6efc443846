"""Quincunx partition of a token grid into coding stages (PQ-MIM paper, Sec. 3.2, Fig. 4).

Pure index maths: no torch, no I/O.

With S = 5 stages on a grid whose sides are multiples of 4, stage sizes double:
1/16, 1/16, 1/8, 1/4, 1/2 of the tokens. The pattern on an 8x8 corner::

    j ->  0 1 2 3 4 5 6 7
    i=0   1 5 3 5 1 5 3 5
      1   5 4 5 4 5 4 5 4
      2   3 5 2 5 3 5 2 5
      3   5 4 5 4 5 4 5 4
      4   1 5 3 5 1 5 3 5
      5   5 4 5 4 5 4 5 4
      6   3 5 2 5 3 5 2 5
      7   5 4 5 4 5 4 5 4

Read it from the last stage back: stage 5 is the checkerboard ``(i + j)`` odd; of the
remaining quincunx lattice, stage 4 is the cells with ``i`` odd; what is left is the
square lattice of even cells at twice the spacing, which is split the same way again
(stage 3: checkerboard on the coarse lattice, stage 2: its odd rows). Stage 1 is the
lattice of multiples of 4. Every stage >= 2 cell therefore has its nearest neighbours
in earlier stages, which is what makes the conditional model sharp.

Small or odd grids work too (stage sizes then only approximate the doubling); cell
(0, 0) is always in stage 1, so stage 1 is never empty.
"""

from __future__ import annotations

import numpy as np

DEFAULT_STAGES = 5


def token_grid(width: int, height: int, downsample: int) -> tuple[int, int]:
    """Token grid (h, w) of a ``width`` x ``height`` image at ``downsample`` pixels per
    token side (the image is padded up to whole tokens)."""
    return -(-height // downsample), -(-width // downsample)


def quincunx_stages(height: int, width: int, stages: int = DEFAULT_STAGES) -> np.ndarray:
    """Return an int array of shape (height, width) with the stage (1..stages) of each cell."""
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    if stages < 1:
        raise ValueError(f"need at least one stage, got {stages}")
    i = np.arange(height)[:, None]
    j = np.arange(width)[None, :]
    out = np.ones((height, width), dtype=np.int64)
    unassigned = np.ones((height, width), dtype=bool)
    stage, spacing = stages, 1
    # Peel stages off from the last (finest) to the first, halving the lattice each time.
    while stage > 1:
        on_lattice = unassigned & (i % spacing == 0) & (j % spacing == 0)
        checker = on_lattice & (((i // spacing) + (j // spacing)) % 2 == 1)
        out[checker] = stage
        unassigned &= ~checker
        stage -= 1
        if stage == 1:
            break
        odd_rows = unassigned & (i % spacing == 0) & ((i // spacing) % 2 == 1)
        out[odd_rows] = stage
        unassigned &= ~odd_rows
        stage -= 1
        spacing *= 2
    return out


def stage_masks(height: int, width: int, stages: int = DEFAULT_STAGES) -> list[np.ndarray]:
    """One boolean (height, width) mask per stage, in coding order."""
    grid = quincunx_stages(height, width, stages)
    return [grid == s for s in range(1, stages + 1)]


def stage_indices(height: int, width: int, stages: int = DEFAULT_STAGES) -> list[np.ndarray]:
    """Flat raster indices of each stage's cells, in coding order (raster order within)."""
    grid = quincunx_stages(height, width, stages).reshape(-1)
    return [np.flatnonzero(grid == s) for s in range(1, stages + 1)]
