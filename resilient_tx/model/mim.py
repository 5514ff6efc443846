"""Masked image model: the conditional entropy model of PQ-MIM (Sec. 3.2, 3.3, 4.1).

Input: token indices (B, M, h, w) and a mask (B, h, w), True where the token is unknown.
Known tokens are embedded (sum of one embedding per sub-codebook); unknown ones become a
learned mask embedding. An XCiT trunk (linear in tokens) is followed by M linear heads,
one softmax distribution per sub-quantizer: p(q_s | q_<s).
"""

from __future__ import annotations

import torch
from torch import nn

from resilient_tx.config import ModelConfig
from resilient_tx.model import banded
from resilient_tx.model.xcit import XCiTStack


class TokenModel(nn.Module):
    """What the codec and the inpainters call on an entropy model over token grids.

    Logits are over ``v`` entries for each of ``m`` sub-quantizers. Subclasses define
    :meth:`forward`, :meth:`features` and :meth:`heads_at`; the trained MIM is one, the
    MIM seen through a k-means clustering (:mod:`resilient_tx.model.derived`) another, so
    a :class:`~resilient_tx.model.pqmim.PQMIM` may hold either.
    """

    m: int
    v: int

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, h, w, M, V) for tokens (B, M, h, w), ``mask`` True where unknown."""
        raise NotImplementedError

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Trunk output (B, h*w, D) in raster order, before the per-sub-quantizer heads."""
        raise NotImplementedError

    def features_at(self, tokens: torch.Tensor, mask: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor:
        """:meth:`features` of batch item 0 at flat ``positions`` only, (n, D).

        For one stage whose trunk pass no other stage shares: on a large grid the last
        block's MLP then runs on those positions alone."""
        return self.features(tokens, mask)[0, positions]

    def heads_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (n, M, V) from batch item 0 of :meth:`features` output at ``positions``.

        Lets a caller that needs several stages under the same context (context depth,
        see packetizer.py) run the trunk once and the heads per stage.
        """
        raise NotImplementedError

    def logits_at(self, tokens: torch.Tensor, mask: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
        """Logits (n, M, V) of batch item 0 at flat raster ``positions`` only.

        Coding needs one stage's positions at a time; running the M heads (a D x V matmul
        each) on those alone instead of the whole grid saves most of their cost.
        """
        return self.heads_at(self.features(tokens, mask), positions)


class MaskedTokenModel(TokenModel):
    """The trained MIM: per-sub-codebook embeddings, an XCiT trunk and M linear heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.m = cfg.num_subvectors
        self.v = cfg.codebook_size
        self.embed = nn.ModuleList(
            nn.Embedding(cfg.codebook_size, cfg.mim_dim) for _ in range(self.m))
        self.mask_token = nn.Parameter(torch.zeros(cfg.mim_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.trunk = XCiTStack(cfg.mim_dim, cfg.mim_depth, cfg.mim_heads, cfg.mim_mlp_ratio)
        self.heads = nn.ModuleList(nn.Linear(cfg.mim_dim, cfg.codebook_size) for _ in range(self.m))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return logits (B, h, w, M, V). Unknown positions' token values are ignored."""
        b, m, h, w = tokens.shape
        logits = self._heads(self.features(tokens, mask))  # (B, N, M, V)
        return logits.reshape(b, h, w, m, self.v)

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._trunk(tokens, mask, None)

    def features_at(self, tokens: torch.Tensor, mask: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor:
        return self._trunk(tokens, mask, positions)[0]

    def _trunk(self, tokens: torch.Tensor, mask: torch.Tensor,
               keep: torch.Tensor | None) -> torch.Tensor:
        b, m, h, w = tokens.shape
        if banded.use_bands(h, w):
            # Band by band, as the trunk will run: no full-grid temporaries.
            x = torch.empty(b, h, w, self.mask_token.shape[0], dtype=self.mask_token.dtype,
                            device=tokens.device)
            for r0, r1 in banded.bands(h, w):
                x[:, r0:r1] = self._embed(tokens[:, :, r0:r1], mask[:, r0:r1])
        else:
            x = self._embed(tokens, mask)
        return self.trunk.forward_tokens(x.reshape(b, h * w, -1), h, w, keep)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Trunk input (B, h, w, D): summed sub-codebook embeddings, or the mask token."""
        safe = tokens.clamp(0, self.v - 1)  # masked slots may hold any placeholder
        x = sum(self.embed[i](safe[:, i]) for i in range(self.m))
        return torch.where(mask[..., None], self.mask_token.to(x.dtype), x)

    def heads_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self._heads(features[0, positions])

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(y) for head in self.heads], dim=-2)
