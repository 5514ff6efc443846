"""Quincunx partition of a token grid (resilient_tx.codec.partition)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.codec import partition
from resilient_tx.codec.partition import (
    DEFAULT_STAGES,
    quincunx_stages,
    stage_indices,
    stage_masks,
)

SIDES = st.integers(min_value=1, max_value=64)
ODD_GRIDS = [(1, 1), (1, 2), (1, 9), (2, 1), (9, 1), (3, 5), (5, 3), (47, 31), (31, 47)]

# For stage s of 5, the lattice neighbours that are supposed to be coded before it:
# stage 5 (checkerboard) -> 4-neighbours, stage 4 -> diagonals, then the same at spacing 2.
NEIGHBOURS = {
    5: [(0, 1), (0, -1), (1, 0), (-1, 0)],
    4: [(1, 1), (1, -1), (-1, 1), (-1, -1)],
    3: [(0, 2), (0, -2), (2, 0), (-2, 0)],
    2: [(2, 2), (2, -2), (-2, 2), (-2, -2)],
}


def stage_counts(grid: np.ndarray, stages: int = DEFAULT_STAGES) -> list[int]:
    """Number of cells in each stage 1..stages."""
    return [int((grid == s).sum()) for s in range(1, stages + 1)]


def expected_counts(h: int, w: int) -> list[int]:
    """Closed-form stage sizes for S = 5, derived by counting lattice points.

    Stage 5: (i + j) odd; stage 4: i and j odd; stages 3/2/1 repeat that on the
    ceil(h/2) x ceil(w/2) coarse lattice of even cells, stage 1 taking the rest.
    """
    h2, w2 = -(-h // 2), -(-w // 2)
    return [
        -(-h2 // 2) * -(-w2 // 2),
        (h2 // 2) * (w2 // 2),
        (h2 * w2) // 2,
        (h // 2) * (w // 2),
        (h * w) // 2,
    ]


def check_basic(grid: np.ndarray, h: int, w: int, stages: int) -> None:
    assert grid.shape == (h, w)
    assert np.issubdtype(grid.dtype, np.integer)
    assert grid.min() >= 1 and grid.max() <= stages
    assert grid[0, 0] == 1


def check_masks_and_indices(h: int, w: int, stages: int) -> None:
    grid = quincunx_stages(h, w, stages)
    masks = stage_masks(h, w, stages)
    idx = stage_indices(h, w, stages)
    assert len(masks) == stages and len(idx) == stages
    # Masks: a partition of the grid, consistent with the stage map.
    total = np.zeros((h, w), dtype=np.int64)
    for s, m in enumerate(masks, start=1):
        assert m.shape == (h, w) and m.dtype == bool
        np.testing.assert_array_equal(m, grid == s)
        total += m
    np.testing.assert_array_equal(total, 1)
    # Indices: raster order within each stage, all cells exactly once over all stages.
    for s, ix in enumerate(idx, start=1):
        assert np.all(np.diff(ix) > 0)
        np.testing.assert_array_equal(ix, np.flatnonzero(masks[s - 1].reshape(-1)))
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(h * w))


# --------------------------------------------------------------------------- coverage


@settings(max_examples=80, deadline=None)
@given(h=SIDES, w=SIDES, stages=st.integers(min_value=1, max_value=7))
def test_every_cell_exactly_once_any_size(h: int, w: int, stages: int) -> None:
    grid = quincunx_stages(h, w, stages)
    check_basic(grid, h, w, stages)
    assert sum(stage_counts(grid, stages)) == h * w
    check_masks_and_indices(h, w, stages)


@pytest.mark.parametrize("h,w", ODD_GRIDS)
def test_odd_grids(h: int, w: int) -> None:
    grid = quincunx_stages(h, w)
    check_basic(grid, h, w, DEFAULT_STAGES)
    assert stage_counts(grid) == expected_counts(h, w)
    check_masks_and_indices(h, w, DEFAULT_STAGES)


def test_single_cell_is_stage_one() -> None:
    for stages in range(1, 8):
        np.testing.assert_array_equal(quincunx_stages(1, 1, stages), [[1]])


def test_default_is_five_stages() -> None:
    assert DEFAULT_STAGES == 5
    np.testing.assert_array_equal(quincunx_stages(12, 20), quincunx_stages(12, 20, 5))


# --------------------------------------------------------------------------- stage sizes


@settings(max_examples=60, deadline=None)
@given(a=st.integers(min_value=1, max_value=16), b=st.integers(min_value=1, max_value=16))
def test_exact_fractions_for_multiples_of_four(a: int, b: int) -> None:
    h, w = 4 * a, 4 * b
    n = h * w
    counts = stage_counts(quincunx_stages(h, w))
    assert counts == [n // 16, n // 16, n // 8, n // 4, n // 2]
    assert counts[0] * 16 == n and counts[4] * 2 == n  # exact, no rounding


@settings(max_examples=60, deadline=None)
@given(stages=st.integers(min_value=1, max_value=7), a=st.integers(1, 4), b=st.integers(1, 4))
def test_exact_fractions_for_any_stage_count(stages: int, a: int, b: int) -> None:
    # With S stages the coarsest lattice has spacing 2**ceil((S-1)/2); on grids whose sides
    # are multiples of it, stage s >= 2 holds exactly N / 2**(S-s+1) and stage 1 the rest.
    spacing = 2 ** (stages // 2)
    h, w = spacing * a, spacing * b
    n = h * w
    counts = stage_counts(quincunx_stages(h, w, stages), stages)
    expected = [n >> (stages - 1)] + [n >> (stages - s + 1) for s in range(2, stages + 1)]
    assert counts == expected


@settings(max_examples=100, deadline=None)
@given(h=SIDES, w=SIDES)
def test_closed_form_counts_any_size(h: int, w: int) -> None:
    assert stage_counts(quincunx_stages(h, w)) == expected_counts(h, w)


@settings(max_examples=100, deadline=None)
@given(h=SIDES, w=SIDES)
def test_guaranteed_doubling_any_size(h: int, w: int) -> None:
    c1, c2, c3, c4, c5 = stage_counts(quincunx_stages(h, w))
    # These hold for every grid: each checkerboard stage is at least twice the stage that
    # splits the rest of its lattice, and stage 1 (which holds (0, 0)) is never smaller
    # than stage 2.
    assert c5 >= 2 * c4
    assert c3 >= 2 * c2
    assert c1 >= max(c2, 1)
    # Sizes approach the ideal 1/16, 1/16, 1/8, 1/4, 1/2 up to an edge effect of O(h + w).
    n = h * w
    for c, frac in zip((c1, c2, c3, c4, c5), (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2), strict=True):
        assert abs(c - frac * n) <= (h + w) / 2 + 1


@settings(max_examples=100, deadline=None)
@given(h=st.integers(4, 64), w=st.integers(4, 64))
def test_counts_non_increasing_towards_stage_two(h: int, w: int) -> None:
    # For sides >= 4 the later stages are never smaller than earlier ones (5 >= 4 >= 3 >= 2).
    # Stage 1 is excluded: it equals stage 2 on multiples of 4 and exceeds it otherwise.
    c1, c2, c3, c4, c5 = stage_counts(quincunx_stages(h, w))
    assert c5 >= c4 >= c3 >= c2
    assert c1 >= c2


def test_thin_grids_have_no_odd_row_stages() -> None:
    # A single row or column has no odd rows on either lattice, so one or both of the
    # "odd rows" stages (4 and 2) are empty: that is where the doubling cannot hold.
    row = quincunx_stages(1, 8)[0]
    col = quincunx_stages(8, 1)[:, 0]
    np.testing.assert_array_equal(row, [1, 5, 3, 5, 1, 5, 3, 5])
    np.testing.assert_array_equal(col, [1, 5, 3, 5, 1, 5, 3, 5])
    assert stage_counts(quincunx_stages(1, 8)) == [2, 0, 2, 0, 4]
    assert stage_counts(quincunx_stages(8, 1)) == [2, 0, 2, 0, 4]


def test_large_grid() -> None:
    h, w = 129, 257
    grid = quincunx_stages(h, w)
    check_basic(grid, h, w, DEFAULT_STAGES)
    counts = stage_counts(grid)
    assert counts == expected_counts(h, w)
    assert counts[4] >= counts[3] >= counts[2] >= counts[1]


# --------------------------------------------------------------------------- neighbours


@settings(max_examples=60, deadline=None)
@given(h=SIDES, w=SIDES)
def test_stage_five_four_neighbours_are_earlier(h: int, w: int) -> None:
    grid = quincunx_stages(h, w)
    for i, j in zip(*np.nonzero(grid == 5), strict=True):
        for di, dj in NEIGHBOURS[5]:
            y, x = i + di, j + dj
            if 0 <= y < h and 0 <= x < w:
                assert grid[y, x] < 5


@pytest.mark.parametrize("h,w", [(8, 8), (16, 12), (13, 17), (47, 31)])
def test_every_stage_has_its_lattice_neighbours_earlier(h: int, w: int) -> None:
    grid = quincunx_stages(h, w)
    for s, offsets in NEIGHBOURS.items():
        cells = list(zip(*np.nonzero(grid == s), strict=True))
        assert cells or min(h, w) < 3
        for i, j in cells:
            inside = [(i + di, j + dj) for di, dj in offsets
                      if 0 <= i + di < h and 0 <= j + dj < w]
            assert inside, (s, i, j)
            for y, x in inside:
                assert grid[y, x] < s, (s, (i, j), (y, x))


# --------------------------------------------------------------------------- stage counts


@pytest.mark.parametrize("stages", range(1, 8))
def test_stage_counts_one_to_seven(stages: int) -> None:
    h, w = 16, 24
    grid = quincunx_stages(h, w, stages)
    check_basic(grid, h, w, stages)
    assert set(np.unique(grid).tolist()) == set(range(1, stages + 1))  # no empty stage here
    check_masks_and_indices(h, w, stages)


def test_one_stage_is_everything() -> None:
    np.testing.assert_array_equal(quincunx_stages(5, 7, 1), np.ones((5, 7)))


def test_two_stages_is_a_checkerboard() -> None:
    i, j = np.indices((6, 9))
    np.testing.assert_array_equal(quincunx_stages(6, 9, 2), np.where((i + j) % 2, 2, 1))


def test_more_stages_refine_the_coarse_lattice() -> None:
    # Going from S to S + 1 stages shifts every stage up by one and splits the old stage 1.
    for stages in range(1, 7):
        a = quincunx_stages(32, 32, stages)
        b = quincunx_stages(32, 32, stages + 1)
        np.testing.assert_array_equal(b[a >= 2], a[a >= 2] + 1)
        assert set(np.unique(b[a == 1]).tolist()) == {1, 2}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("h,w", [(0, 1), (1, 0), (0, 0), (-1, 4), (4, -3)])
def test_invalid_sizes_raise(h: int, w: int) -> None:
    with pytest.raises(ValueError, match="at least 1x1"):
        quincunx_stages(h, w)
    with pytest.raises(ValueError):
        stage_masks(h, w)
    with pytest.raises(ValueError):
        stage_indices(h, w)


@pytest.mark.parametrize("stages", [0, -1])
def test_invalid_stage_count_raises(stages: int) -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        quincunx_stages(4, 4, stages)


# --------------------------------------------------------------------------- docstring


def parse_docstring_diagram() -> np.ndarray:
    doc = partition.__doc__
    assert doc is not None
    rows = re.findall(r"^\s*(?:i=)?(\d)\s{2,}((?:\d )+\d)\s*$", doc, flags=re.MULTILINE)
    assert [int(r[0]) for r in rows] == list(range(8)), rows
    return np.array([[int(v) for v in r[1].split()] for r in rows])


def test_docstring_diagram_matches() -> None:
    diagram = parse_docstring_diagram()
    assert diagram.shape == (8, 8)
    np.testing.assert_array_equal(quincunx_stages(8, 8), diagram)
    # ... and it is the corner of any larger grid (the pattern is periodic with period 4).
    np.testing.assert_array_equal(quincunx_stages(20, 28)[:8, :8], diagram)
    np.testing.assert_array_equal(quincunx_stages(20, 28)[4:12, 8:16], diagram)


def test_token_grid_pads_up_to_whole_tokens() -> None:
    from resilient_tx.codec.partition import token_grid

    assert token_grid(768, 512, 16) == (32, 48)
    assert token_grid(1, 1, 16) == (1, 1)
    assert token_grid(17, 33, 16) == (3, 2)
