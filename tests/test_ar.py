"""AR token prior (VQGAN extreme-compression paper, Sec. 2.3): causality and windows."""

from __future__ import annotations

import pytest
import torch

from resilient_tx.config import ArConfig
from resilient_tx.model.ar import ArPrior, window_origin

CFG = ArConfig(window=6, dim=16, depth=2, heads=2, mlp_ratio=2.0)
M, V = 3, 20


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prior() -> ArPrior:
    torch.manual_seed(0)
    net = ArPrior(CFG, M, V).eval()
    with torch.no_grad():  # a trained-looking spread of logits, not a near-uniform init
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return net


def _tokens(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (1, M, h, w), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("hw", [(6, 6), (4, 6), (1, 5), (6, 1), (3, 4)])
def test_predictions_never_depend_on_later_tokens(prior: ArPrior, hw: tuple[int, int]) -> None:
    h, w = hw
    tok = _tokens(h, w, h * 10 + w)
    lost = torch.zeros(1, h, w, dtype=torch.bool)
    with torch.no_grad():
        base = prior(tok, lost)
        assert base.shape == (1, h * w, M, V)
        for i in range(h * w):
            other = tok.clone().reshape(1, M, -1)
            other[:, :, i:] = (other[:, :, i:] + 7) % V  # change token i and everything after
            lost2 = lost.clone().reshape(1, -1)
            lost2[:, i:] = True
            out = prior(other.reshape(1, M, h, w), lost2.reshape(1, h, w))
            # Slots 0..i predict tokens 0..i from tokens < i: untouched by the change.
            assert torch.allclose(out[:, : i + 1], base[:, : i + 1], atol=1e-5)
            if i + 1 < h * w:  # ... and the change is visible to the next slot
                assert not torch.allclose(out[:, i + 1], base[:, i + 1], atol=1e-5)


def test_truncated_sequence_gives_the_same_predictions(prior: ArPrior) -> None:
    tok = _tokens(5, 6, 1)
    lost = torch.rand(1, 5, 6, generator=torch.Generator().manual_seed(2)) < 0.3
    with torch.no_grad():
        full = prior(tok, lost)
        for n in (1, 7, 30):
            assert torch.allclose(prior(tok, lost, length=n), full[:, :n], atol=1e-5)


def test_lost_token_replaces_the_content(prior: ArPrior) -> None:
    tok = _tokens(4, 4, 3)
    lost = torch.zeros(1, 4, 4, dtype=torch.bool)
    lost[0, 1, 1] = True
    other = tok.clone()
    other[0, :, 1, 1] = (other[0, :, 1, 1] + 5) % V
    with torch.no_grad():
        # A lost input is the lost embedding whatever value the slot holds ...
        assert torch.allclose(prior(tok, lost), prior(other, lost), atol=1e-6)
        # ... and differs from seeing the real token.
        assert not torch.allclose(prior(tok, lost), prior(tok, ~lost & lost), atol=1e-5)


def test_bad_windows_and_lengths_raise(prior: ArPrior) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        prior(_tokens(7, 3, 0), torch.zeros(1, 7, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="length"):
        prior(_tokens(2, 2, 0), torch.zeros(1, 2, 2, dtype=torch.bool), length=5)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 20), (20, 3), (16, 16), (17, 40)])
def test_window_is_centred_and_clipped(h: int, w: int) -> None:
    win = 8
    for r in range(h):
        for c in range(w):
            top, left, wh, ww = window_origin(r, c, h, w, win)
            assert (wh, ww) == (min(win, h), min(win, w))
            assert 0 <= top <= r < top + wh <= h and 0 <= left <= c < left + ww <= w
            if win // 2 <= r < h - win // 2:  # away from the border: centred
                assert r - top == win // 2
            if win // 2 <= c < w - win // 2:
                assert c - left == win // 2
