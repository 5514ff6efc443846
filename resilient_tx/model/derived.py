"""The networks of a k-means rate point: a trained model seen through smaller codebooks.

VQGAN extreme-compression paper (Mao et al.), Sec. 2.2 "Adjusting Variable Bitrates": each
sub-codebook of a trained PQ-MIM (M sub-codebooks of V entries, PQ-MIM paper Sec. 3.1) is
clustered into k entries; an image is then coded as indices of the nearest *new* codeword.
This module holds only the networks that run such a clustering; finding it is
:mod:`resilient_tx.training.kmeans`, its file format :mod:`resilient_tx.zoo.derived`.

* **Autoencoder** (:class:`DerivedPQMIM`). Encoder, decoder and the quantizer's projections
  are the base model's own modules (shared, not copied: a rate point costs no weights); the
  codebooks are the centroids. Tokenising assigns each latent to its nearest centroid and
  decoding feeds the centroid to the decoder. Sharing means a process should run all models
  of a family on one device, which every caller here does.
* **Entropy model** (:class:`MergedMIM`). The base MIM, wrapped: a known small index j enters
  it as original entry ``rep[j]``, and the distribution over the k clusters merges the base
  distribution: small logit_j = logsumexp of the original logits i with ``assign[i] == j``.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from resilient_tx.errors import InputError
from resilient_tx.model.mim import TokenModel
from resilient_tx.model.pqmim import PQMIM
from resilient_tx.model.quantizer import ProductQuantizer


def check_k(k: int, v: int) -> None:
    """k must shrink the codebook and leave at least two symbols."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 2 <= k < v:
        raise InputError(f"k must be an integer in [2, {v}) for a {v}-entry codebook, got {k!r}")


@dataclass(frozen=True)
class DerivedCodebooks:
    """K-means of all M sub-codebooks of a base model, as tensors."""

    assign: torch.Tensor  # (M, V) int64 cluster of every original entry
    centroids: torch.Tensor  # (M, k, D) float32, unit length
    rep: torch.Tensor  # (M, k) int64 original entry standing in for each cluster

    @property
    def k(self) -> int:
        return int(self.rep.shape[1])


class MergedMIM(TokenModel):
    """The base MIM seen through a k-means clustering: same interface, V = k (Sec. 2.2).

    Inputs: small index j is embedded as the base entry ``rep[j]``. Outputs: the probability
    of cluster j is the base probability summed over its members, i.e. logit_j = logsumexp
    of the member logits. Runs in whatever dtype it is cast to (the codec uses float64);
    the index maps are buffers so ``.double()`` / ``.to(device)`` carry them along.
    """

    # Buffers, declared so that type checkers see tensors rather than nn.Module's getattr.
    assign: torch.Tensor  # (M, V) int64
    rep: torch.Tensor  # (M, k) int64
    member: torch.Tensor  # (M, V, k) one-hot membership, floating

    def __init__(self, base: TokenModel, assign: torch.Tensor, rep: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.m, self.v = int(rep.shape[0]), int(rep.shape[1])
        self.register_buffer("assign", assign.to(torch.int64).clone())
        self.register_buffer("rep", rep.to(torch.int64).clone())
        # Floating so that it follows the module's dtype.
        self.register_buffer("member", nn.functional.one_hot(assign.to(torch.int64),
                                                             self.v).float())

    def expand(self, tokens: torch.Tensor) -> torch.Tensor:
        """Small indices (B, M, h, w) -> the base indices the MIM sees."""
        b, m, h, w = tokens.shape
        safe = tokens.clamp(0, self.v - 1)  # masked slots may hold any placeholder
        flat = safe.transpose(0, 1).reshape(m, -1)
        return self.rep.gather(1, flat).reshape(m, b, h, w).transpose(0, 1)

    def merge(self, logits: torch.Tensor) -> torch.Tensor:
        """Base logits (..., M, V) -> cluster logits (..., M, k), a grouped logsumexp."""
        top = logits.amax(-1, keepdim=True)
        # Shifted by the row max, the cluster holding it sums to >= 1; clusters far below
        # underflow to the dtype's tiny (a finite ~ -700 / -87 nats), never to -inf.
        s = torch.einsum("...mv,mvk->...mk", (logits - top).exp(), self.member.to(logits.dtype))
        return s.clamp_min(torch.finfo(logits.dtype).tiny).log() + top

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.merge(self.base(self.expand(tokens), mask))

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.base.features(self.expand(tokens), mask)

    def features_at(self, tokens: torch.Tensor, mask: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor:
        return self.base.features_at(self.expand(tokens), mask, positions)

    def heads_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.merge(self.base.heads_at(features, positions))


class DerivedPQMIM(PQMIM):
    """A PQ-MIM whose codebooks are k-means centroids of a base model's (Sec. 2.2).

    Shares the base's encoder, decoder and quantizer projections; ``cfg.codebook_size`` is k.
    All of :class:`PQMIM`'s methods work unchanged.
    """

    def __init__(self, base: PQMIM, books: DerivedCodebooks) -> None:
        nn.Module.__init__(self)  # not PQMIM.__init__: it would build weights thrown away
        cfg = dataclasses.replace(base.cfg, codebook_size=books.k)
        self.cfg = cfg
        self.encoder = base.encoder
        self.decoder = base.decoder
        device = base.quantizer.codebooks.device
        q = ProductQuantizer(cfg.latent_dim, cfg.num_subvectors, books.k, cfg.lookup_dim)
        q.down, q.up = base.quantizer.down, base.quantizer.up
        with torch.no_grad():
            q.codebooks.copy_(books.centroids)
        self.quantizer = q.to(device)
        self.mim = MergedMIM(base.mim, books.assign, books.rep).to(device)
        self.eval()
