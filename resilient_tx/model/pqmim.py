"""PQ-MIM: PQ-VAE (encoder, product quantizer, decoder) plus the MIM entropy model.

Follows the CompressAI split: this module is pure network maths (``forward`` for
training, ``tokens``/``reconstruct`` for coding, and their ``*_streamed`` forms that hold a
large image only a few rows at a time); turning probabilities into bits lives in
:mod:`resilient_tx.codec.entropy` and :mod:`resilient_tx.codec.image_codec`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resilient_tx.config import ModelConfig
from resilient_tx.model import banded
from resilient_tx.model.autoencoder import Decoder, Encoder
from resilient_tx.model.mim import MaskedTokenModel, TokenModel
from resilient_tx.model.quantizer import ProductQuantizer
from resilient_tx.model.streaming import row_chunks, stream_rows

#: Token rows per chunk when the decoder streams (16 pixel rows each at f = 16).
STREAM_TOKEN_ROWS = 8
#: Memory format of streamed conv activations: oneDNN's convolutions run faster on it.
CHANNELS_LAST = torch.channels_last


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

    # ----- large images: row streams (see model/streaming.py and model/banded.py) ----------
    @torch.no_grad()
    def tokens_streamed(self, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
        """:meth:`tokens` of an image given as consecutive chunks of rows (B, 3, r, W) in
        [0, 1], top first (any ``r``; the whole image's H and W multiples of f).

        The conv stem streams over the chunks (memory of a few chunks), the token-level
        XCiT runs in bands; the tokens equal :meth:`tokens`' up to float rounding."""
        return self.indices_banded(self.latent_streamed(chunks))

    @torch.no_grad()
    def indices_banded(self, z: torch.Tensor) -> torch.Tensor:
        """The quantizer's indices (B, M, h, w) of a latent, a band of rows at a time (the
        per-position temporaries of a large grid stay small)."""
        rows = banded.band_rows(z.shape[-1])
        return torch.cat([self.quantizer.indices(z[..., r0 : r0 + rows, :])
                          for r0 in range(0, z.shape[-2], rows)], dim=2)

    @torch.no_grad()
    def latent_streamed(self, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
        """The encoder's latent (B, C, h, w) before quantization, from chunks of rows as
        :meth:`tokens_streamed` takes them."""
        stem = stream_rows(self.encoder.convs,
                           (self._to_model_range(c).contiguous(memory_format=CHANNELS_LAST)
                            for c in chunks))
        return self.encoder.xcit(torch.cat(list(stem), dim=2))

    @torch.no_grad()
    def reconstruct_streamed(self, indices: torch.Tensor, token_rows: int = STREAM_TOKEN_ROWS,
                             convs: nn.Module | None = None) -> Iterator[torch.Tensor]:
        """:meth:`reconstruct` as consecutive chunks of image rows (B, 3, r, W), top first:
        the token-level XCiT runs in bands, the conv head streams ``token_rows`` token
        rows at a time, so the full-resolution image is never held as floats.

        ``convs`` stands in for the decoder's conv stack: a copy of it in another dtype
        (:meth:`decoder_convs_as`) runs the head in that dtype; the rows come out float32."""
        head = self.decoder.convs if convs is None else convs
        dtype = next(head.parameters()).dtype
        z = self.decoder.xcit(self.quantizer.codes_from_indices(indices))
        z = z.contiguous(memory_format=CHANNELS_LAST)  # a view already, when banded
        chunks = (c.to(dtype) for c in row_chunks(z, token_rows))
        for rows in stream_rows(head, chunks):
            yield ((rows.float() + 1.0) * 0.5).clamp(0.0, 1.0)

    def decoder_convs_as(self, dtype: torch.dtype) -> nn.Module:
        """A detached copy of the decoder's conv stack in ``dtype``, for
        :meth:`reconstruct_streamed` (the module itself stays as it is)."""
        return copy.deepcopy(self.decoder.convs).to(dtype).eval()


def pad_to_multiple(x: torch.Tensor, f: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) on the bottom/right to multiples of f (cropped back later)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % f, (-w) % f
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")
