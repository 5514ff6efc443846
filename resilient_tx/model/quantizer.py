"""Product quantizer with low-dimensional l2-normalised lookup (PQ-MIM paper, Sec. 3.1, 4.1).

The latent (B, d, h, w) is split into M sub-vectors of d/M channels. Each sub-vector is
projected to a ``lookup_dim``-dimensional vector and l2-normalised (factorised codes as in
ViT-VQGAN), matched against its own l2-normalised codebook of V_s entries by cosine
similarity, then projected back to d/M channels. Gradients pass straight through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class QuantizerOutput:
    codes: torch.Tensor  # (B, d, h, w) quantised latent, straight-through
    indices: torch.Tensor  # (B, M, h, w) int64
    loss: torch.Tensor  # codebook + commitment loss, averaged over sub-vectors


class ProductQuantizer(nn.Module):
    """M independent sub-quantizers, each with its own projection pair and codebook."""

    usage: torch.Tensor  # (M, V) buffer; declared so type checkers see a tensor

    def __init__(
        self, latent_dim: int, num_subvectors: int, codebook_size: int, lookup_dim: int
    ) -> None:
        super().__init__()
        self.m = num_subvectors
        self.v = codebook_size
        sub = latent_dim // num_subvectors
        # Grouped 1x1 convs = one independent linear map per sub-vector.
        self.down = nn.Conv2d(latent_dim, num_subvectors * lookup_dim, 1, groups=num_subvectors)
        self.up = nn.Conv2d(num_subvectors * lookup_dim, latent_dim, 1, groups=num_subvectors)
        self.codebooks = nn.Parameter(torch.randn(num_subvectors, codebook_size, lookup_dim))
        self.lookup_dim = lookup_dim
        self.sub_dim = sub
        # Usage counts since the last dead-code restart; a buffer so it follows .to(device).
        self.register_buffer("usage", torch.zeros(num_subvectors, codebook_size), persistent=False)

    def normalized_codebooks(self) -> torch.Tensor:
        return F.normalize(self.codebooks, dim=-1)

    def _lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> l2-normalised lookups (B, M, h, w, lookup_dim)."""
        b, _, h, w = z.shape
        low = self.down(z).reshape(b, self.m, self.lookup_dim, h, w).permute(0, 1, 3, 4, 2)
        return F.normalize(low, dim=-1)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-entry indices (B, M, h, w) for latent z."""
        look = self._lookup(z)
        sims = torch.einsum("bmhwk,mvk->bmhwv", look, self.normalized_codebooks())
        return sims.argmax(dim=-1)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`indices`: (B, M, h, w) int -> quantised latent (B, d, h, w)."""
        cb = self.normalized_codebooks()  # (M, V, k)
        b, m, h, w = indices.shape
        if m != self.m:
            raise ValueError(f"expected {self.m} sub-indices per token, got {m}")
        gathered = torch.stack([cb[i][indices[:, i]] for i in range(m)], dim=1)  # (B,M,h,w,k)
        low = gathered.permute(0, 1, 4, 2, 3).reshape(b, m * self.lookup_dim, h, w)
        return self.up(low)

    def forward(self, z: torch.Tensor, commitment: float = 0.25) -> QuantizerOutput:
        look = self._lookup(z)  # (B, M, h, w, k)
        cb = self.normalized_codebooks()
        sims = torch.einsum("bmhwk,mvk->bmhwv", look, cb)
        idx = sims.argmax(dim=-1)
        q = torch.stack([cb[i][idx[:, i]] for i in range(self.m)], dim=1)
        loss = F.mse_loss(q, look.detach()) + commitment * F.mse_loss(look, q.detach())
        st = look + (q - look).detach()  # straight-through estimator
        b, m, h, w, k = st.shape
        codes = self.up(st.permute(0, 1, 4, 2, 3).reshape(b, m * k, h, w))
        if self.training:
            with torch.no_grad():
                for i in range(m):
                    # index_add_ rather than bincount: no host sync on a GPU per step.
                    flat = idx[:, i].reshape(-1)
                    self.usage[i].index_add_(0, flat, torch.ones_like(flat, dtype=self.usage.dtype))
        return QuantizerOutput(codes=codes, indices=idx, loss=loss)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, min_usage: float = 1.0) -> int:
        """Re-seed entries used fewer than ``min_usage`` times with random current lookups.

        Dead codes waste rate-free capacity; restarting them on live encoder outputs is
        the usual remedy (Dhariwal et al. 2020, Zeghidour et al. 2021). Returns how many
        entries were restarted.
        """
        look = self._lookup(z)  # (B, M, h, w, k)
        restarted = 0
        for i in range(self.m):
            dead = torch.nonzero(self.usage[i] < min_usage).flatten()
            if dead.numel() == 0:
                continue
            pool = look[:, i].reshape(-1, self.lookup_dim)
            pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device)
            noise = 0.01 * torch.randn_like(pool[pick])
            self.codebooks.data[i, dead] = F.normalize(pool[pick] + noise, dim=-1)
            restarted += dead.numel()
        self.usage.zero_()
        return restarted
