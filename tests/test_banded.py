"""Banded inference of XCiT stacks (model/banded.py) against the whole-grid path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from resilient_tx.codec import entropy
from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.config import DEFAULT_RATE
from resilient_tx.model import banded
from resilient_tx.model.xcit import XCiTStack
from resilient_tx.zoo.registry import get_model


@pytest.fixture
def always_banded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every grid counts as large, and bands are a few rows (many band edges)."""
    monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 0)
    monkeypatch.setattr(banded, "BAND_TOKENS", 24)


def _stack(dtype: torch.dtype, dim: int = 16, depth: int = 2) -> XCiTStack:
    stack = XCiTStack(dim, depth, heads=4).to(dtype).eval()
    with torch.no_grad():  # gains of 1, not 0.1: every branch should matter in the check
        for blk in stack.blocks:
            for g in (blk.g1, blk.g2, blk.g3):
                g.fill_(1.0)
    return stack


def _whole(stack: XCiTStack, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    with torch.no_grad():
        for blk in stack.blocks:
            x = blk(x, h, w)
        return stack.norm(x)


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (7, 1), (5, 7), (13, 6)])
def test_float64_bands_equal_the_whole_grid_to_rounding(always_banded, hw) -> None:
    h, w = hw
    stack = _stack(torch.float64)
    x = torch.randn(2, h * w, 16, dtype=torch.float64)
    with torch.no_grad():
        got = stack.forward_tokens(x, h, w)
    torch.testing.assert_close(got, _whole(stack, x, h, w), rtol=0, atol=1e-11)


def test_float32_bands_equal_the_whole_grid_to_float32_rounding(always_banded) -> None:
    stack = _stack(torch.float32, dim=32)
    x = torch.randn(1, 9 * 11, 32)
    with torch.no_grad():
        got = stack.forward_tokens(x, 9, 11)
    torch.testing.assert_close(got, _whole(stack, x, 9, 11), rtol=1e-4, atol=1e-4)


def test_kept_rows_are_those_of_the_full_output(always_banded) -> None:
    stack = _stack(torch.float64)
    x = torch.randn(1, 8 * 5, 16, dtype=torch.float64)
    with torch.no_grad():
        full = stack.forward_tokens(x, 8, 5)
        for keep in ([0, 3, 17, 39], [39, 2, 2, 11], [5]):
            k = torch.tensor(keep)
            torch.testing.assert_close(stack.forward_tokens(x, 8, 5, k), full[:, k],
                                       rtol=0, atol=1e-12)


def test_the_input_is_left_untouched(always_banded) -> None:
    stack = _stack(torch.float64)
    x = torch.randn(1, 6 * 6, 16, dtype=torch.float64)
    before = x.clone()
    with torch.no_grad():
        stack.forward_tokens(x, 6, 6)
    assert torch.equal(x, before)


def test_bands_need_inference_mode_and_a_large_grid() -> None:
    side = int(banded.BANDED_MIN_TOKENS**0.5)
    assert not banded.is_large(side, side)
    assert banded.is_large(side + 1, side)
    with torch.no_grad():
        assert banded.use_bands(side + 1, side)
    assert not banded.use_bands(side + 1, side)  # gradients on: the trainable path


@pytest.mark.parametrize("hw", [(1, 1), (3, 4000), (47, 250), (188, 250)])
def test_bands_cover_every_row_once(hw) -> None:
    h, w = hw
    rows = [r for r0, r1 in banded.bands(h, w) for r in range(r0, r1)]
    assert rows == list(range(h))
    assert all((r1 - r0) * w <= max(banded.BAND_TOKENS, w) for r0, r1 in banded.bands(h, w))


def test_twice_gelu_is_twice_the_exact_gelu() -> None:
    x = torch.randn(1000, dtype=torch.float64) * 4
    torch.testing.assert_close(banded.twice_gelu(x), 2 * F.gelu(x), rtol=1e-15, atol=1e-15)


def test_shipped_mim_gives_identical_integer_cdfs_in_bands(always_banded) -> None:
    """The property the entropy coder relies on: float64 rounding differences of the
    banded path stay far below the 1/16-nat logit grid, so every CDF is the same."""
    mim = copy.deepcopy(get_model(DEFAULT_RATE).net.mim).double().eval()
    h, w = 12, 16
    tokens = torch.randint(0, mim.v, (1, mim.m, h, w))
    grid = torch.from_numpy(quincunx_stages(h, w))
    for stage in (2, 5):
        mask = (grid >= stage)[None]
        pos = torch.nonzero(grid.reshape(-1) == stage).flatten()
        with torch.no_grad():
            banded_rows = mim.features_at(tokens, mask, pos)
            monkey_min = banded.BANDED_MIN_TOKENS
            banded.BANDED_MIN_TOKENS = 10**9
            try:
                whole_rows = mim.features(tokens, mask)[0, pos]
            finally:
                banded.BANDED_MIN_TOKENS = monkey_min
            a = entropy.logits_to_cdf(mim.heads_at(banded_rows[None], torch.arange(len(pos))))
            b = entropy.logits_to_cdf(mim.heads_at(whole_rows[None], torch.arange(len(pos))))
        assert (banded_rows - whole_rows).abs().max() < 1e-11
        assert torch.equal(a, b)
