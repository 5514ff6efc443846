"""The XCiT stack (model/xcit.py): kept rows, and which path a grid takes."""

from __future__ import annotations

import pytest
import torch

from resilient_tx.model import banded
from resilient_tx.model.xcit import XCiTStack


def test_kept_rows_of_the_whole_grid_path_are_exact() -> None:
    stack = XCiTStack(16, 2, 4).double().eval()
    x = torch.randn(2, 6 * 7, 16, dtype=torch.float64)
    keep = torch.tensor([0, 5, 41, 13])
    with torch.no_grad():
        full = stack.forward_tokens(x, 6, 7)
        assert torch.equal(stack.forward_tokens(x, 6, 7, keep), full[:, keep])


def test_large_grids_take_the_banded_path_only_without_gradients(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    real = banded.forward_tokens

    def spy(stack, x, h, w, keep=None):
        calls.append((h, w))
        return real(stack, x, h, w, keep)

    monkeypatch.setattr(banded, "forward_tokens", spy)
    monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 20)
    stack = XCiTStack(8, 1, 2).eval()
    small, large = torch.randn(1, 4 * 5, 8), torch.randn(1, 5 * 5, 8)
    with torch.no_grad():
        stack.forward_tokens(small, 4, 5)
        out = stack.forward_tokens(large, 5, 5)
    assert calls == [(5, 5)]
    grad_out = stack.forward_tokens(large, 5, 5)  # training: the differentiable path
    assert calls == [(5, 5)] and grad_out.requires_grad
    torch.testing.assert_close(out, grad_out.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(3, 4), (1, 9)])
def test_the_image_form_is_the_token_form_reshaped(hw) -> None:
    h, w = hw
    stack = XCiTStack(8, 1, 2).eval()
    img = torch.randn(1, 8, h, w)
    with torch.no_grad():
        tokens = stack.forward_tokens(img.flatten(2).transpose(1, 2), h, w)
        assert torch.equal(stack(img), tokens.transpose(1, 2).reshape(1, 8, h, w))
