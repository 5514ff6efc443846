"""PQ-MIM: PQ-VAE (encoder, product quantizer, decoder) plus the MIM entropy model.

Follows the CompressAI split: this module is pure network maths (``forward`` for
training, ``tokens``/``reconstruct`` for coding); turning probabilities into bits lives in
:mod:`resilient_tx.codec.entropy` and :mod:`resilient_tx.codec.image_codec`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resilient_tx.config import ModelConfig
from resilient_tx.model.autoencoder import Decoder, Encoder
from resilient_tx.model.mim import MaskedTokenModel, TokenModel
from resilient_tx.model.quantizer import ProductQuantizer


@dataclass(frozen=True)
class ForwardOutput:
    recon: torch.Tensor  # (B, 3, H, W) in [0, 1] scale, unclamped
    indices: torch.Tensor  # (B, M, h, w)
    pq_loss: torch.Tensor
    latent: torch.Tensor  # pre-quantisation latent (for dead-code restarts)


class PQMIM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ProductQuantizer(
            cfg.latent_dim, cfg.num_subvectors, cfg.codebook_size, cfg.lookup_dim
        )
        self.decoder = Decoder(cfg)
        self.mim: TokenModel = MaskedTokenModel(cfg)  # a derived model swaps in its own

    @staticmethod
    def _to_model_range(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0

    def forward(self, x: torch.Tensor, commitment: float = 0.25) -> ForwardOutput:
        """Autoencoder pass for training. ``x`` is (B, 3, H, W) in [0, 1], H, W multiples of f."""
        z = self.encoder(self._to_model_range(x))
        q = self.quantizer(z, commitment)
        recon = (self.decoder(q.codes) + 1.0) * 0.5
        return ForwardOutput(recon=recon, indices=q.indices, pq_loss=q.loss, latent=z)

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1], H and W multiples of f -> indices (B, M, h, w)."""
        return self.quantizer.indices(self.encoder(self._to_model_range(x)))

    @torch.no_grad()
    def reconstruct(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, M, h, w) -> image (B, 3, H, W) clamped to [0, 1]."""
        codes = self.quantizer.codes_from_indices(indices)
        return ((self.decoder(codes) + 1.0) * 0.5).clamp(0.0, 1.0)


def pad_to_multiple(x: torch.Tensor, f: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) on the bottom/right to multiples of f (cropped back later)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % f, (-w) % f
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")
