"""PQ-MIM's streamed coding paths (model/pqmim.py) against the whole-image ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resilient_tx.config import ModelConfig
from resilient_tx.model import PQMIM, banded
from resilient_tx.model.autoencoder import ResBlock
from resilient_tx.model.streaming import row_chunks

CFG = ModelConfig(widths=(8, 12, 16), latent_dim=16, num_subvectors=2, codebook_size=16,
                  latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)


@pytest.fixture
def net() -> PQMIM:
    model = PQMIM(CFG).eval()
    for blk in model.modules():  # residual convs start at zero: make them count
        if isinstance(blk, ResBlock):
            nn.init.normal_(blk.conv2.weight, std=0.1)
    return model


@pytest.mark.parametrize("bands", [False, True])
@pytest.mark.parametrize("rows", [16, 48, 1024])
def test_streamed_tokens_are_the_whole_image_tokens(net: PQMIM, monkeypatch, bands: bool,
                                                    rows: int) -> None:
    if bands:
        monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 0)
        monkeypatch.setattr(banded, "BAND_TOKENS", 6)
    x = torch.rand(1, 3, 96, 80)
    want = net.tokens(x)
    got = net.tokens_streamed(row_chunks(x, rows))
    assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("token_rows", [1, 2, 8])
def test_streamed_reconstruction_is_the_whole_image_one(net: PQMIM, monkeypatch,
                                                        token_rows: int) -> None:
    monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 0)
    monkeypatch.setattr(banded, "BAND_TOKENS", 6)
    idx = torch.randint(0, CFG.codebook_size, (1, CFG.num_subvectors, 20, 3))
    want = net.reconstruct(idx)
    parts = list(net.reconstruct_streamed(idx, token_rows))
    got = torch.cat(parts, dim=2)
    # Rows come out while the tokens go in (the pipeline holds back only a few).
    assert len(parts) > 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
