"""The masked token model (model/mim.py): trunk features of a whole grid or of some rows."""

from __future__ import annotations

import pytest
import torch

from resilient_tx.config import ModelConfig
from resilient_tx.model import banded
from resilient_tx.model.mim import MaskedTokenModel


@pytest.fixture
def mim(tiny_config: ModelConfig) -> MaskedTokenModel:
    return MaskedTokenModel(tiny_config).double().eval()


def _inputs(mim: MaskedTokenModel, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, mim.v, (1, mim.m, h, w))
    return tokens, torch.rand(1, h, w) < 0.6


def test_features_at_are_the_features_of_those_positions(mim: MaskedTokenModel) -> None:
    tokens, mask = _inputs(mim, 5, 6)
    pos = torch.tensor([1, 4, 9, 29])
    with torch.no_grad():
        assert torch.equal(mim.features_at(tokens, mask, pos), mim.features(tokens, mask)[0, pos])


def test_a_large_grid_gives_the_same_features_in_bands(mim: MaskedTokenModel,
                                                       monkeypatch) -> None:
    tokens, mask = _inputs(mim, 9, 7)
    pos = torch.nonzero(mask.reshape(-1)).flatten()
    with torch.no_grad():
        whole, whole_logits = mim.features(tokens, mask), mim(tokens, mask)
        monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 0)
        monkeypatch.setattr(banded, "BAND_TOKENS", 14)  # two rows a band
        torch.testing.assert_close(mim.features(tokens, mask), whole, rtol=0, atol=1e-12)
        torch.testing.assert_close(mim.features_at(tokens, mask, pos), whole[0, pos],
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(mim(tokens, mask), whole_logits, rtol=0, atol=1e-12)


def test_hidden_token_values_are_ignored_in_bands(mim: MaskedTokenModel, monkeypatch) -> None:
    monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 0)
    tokens, mask = _inputs(mim, 6, 6)
    other = torch.where(mask[:, None], torch.randint(0, mim.v, tokens.shape), tokens)
    with torch.no_grad():
        assert torch.equal(mim.features(tokens, mask), mim.features(other, mask))
