"""Autoregressive token prior over a sliding window (VQGAN extreme-compression paper,
Sec. 2.3 "transformer for lost indices"; the sliding-window restoration of Fig. 1(c)).

A causal (GPT-style) transformer reads a ``wh x ww`` window of the token grid in raster
order and predicts every token's M sub-indices from the tokens before it. Slot ``i`` of
the input holds token ``i - 1`` (a learned BOS at slot 0) plus two position embeddings:
where that token sits in the window and where the token to predict sits. Both are
(row, column) embeddings, so windows cut short by a small image's border need nothing
special. A token marked lost is replaced by a learned "lost" embedding, the paper's
special token. Attention is full causal inside the window, which is at most
``window**2`` tokens: the image-level cost is linear in tokens because each prediction
only ever sees its own window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resilient_tx.config import ArConfig


class CausalBlock(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, heads, n, d_h)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class ArPrior(nn.Module):
    """p(q_i | q_<i) over a raster-ordered token window; one softmax per sub-quantizer."""

    def __init__(self, cfg: ArConfig, num_subvectors: int, codebook_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.m, self.v = num_subvectors, codebook_size
        d = cfg.dim
        self.embed = nn.ModuleList(nn.Embedding(codebook_size, d) for _ in range(self.m))
        self.lost = nn.Parameter(torch.randn(d) * 0.02)
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        # (row, col) of the token in the slot, and of the token the slot predicts.
        self.row_in, self.col_in = nn.Embedding(cfg.window, d), nn.Embedding(cfg.window, d)
        self.row_out, self.col_out = nn.Embedding(cfg.window, d), nn.Embedding(cfg.window, d)
        self.blocks = nn.ModuleList(
            CausalBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, codebook_size) for _ in range(self.m))

    def _inputs(self, tokens: torch.Tensor, lost: torch.Tensor, n: int) -> torch.Tensor:
        """Embedded slots 0..n-1 (B, n, D) for a window (B, M, wh, ww)."""
        b, m, wh, ww = tokens.shape
        if wh > self.cfg.window or ww > self.cfg.window:
            raise ValueError(f"window {wh}x{ww} exceeds the prior's {self.cfg.window}")
        flat = tokens.reshape(b, m, wh * ww)[:, :, : n - 1].clamp(0, self.v - 1)
        content = sum(self.embed[i](flat[:, i]) for i in range(m))  # (B, n-1, D)
        gone = lost.reshape(b, wh * ww)[:, : n - 1, None]
        content = torch.where(gone, self.lost.to(content.dtype), content)
        idx = torch.arange(wh * ww, device=tokens.device)
        rows, cols = idx // ww, idx % ww
        content = content + self.row_in(rows[: n - 1]) + self.col_in(cols[: n - 1])
        first = self.bos.to(content.dtype).expand(b, 1, -1)
        x = torch.cat([first, content], dim=1)
        return x + self.row_out(rows[:n]) + self.col_out(cols[:n])

    def forward(self, tokens: torch.Tensor, lost: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        """Logits (B, n, M, V): slot i predicts window token i from tokens 0..i-1.

        ``tokens`` (B, M, wh, ww) int64, ``lost`` (B, wh, ww) bool (True = replaced by the
        lost token). ``length`` = n <= wh*ww truncates the sequence: the causal mask
        means the first n predictions never depend on what follows, so inference asks
        for exactly the slots it needs.
        """
        total = tokens.shape[2] * tokens.shape[3]
        n = total if length is None else length
        if not 1 <= n <= total:
            raise ValueError(f"length must be in [1, {total}], got {n}")
        x = self._inputs(tokens, lost, n)
        for blk in self.blocks:
            x = blk(x)
        y = self.norm(x)
        return torch.stack([head(y) for head in self.heads], dim=-2)


def window_origin(r: int, c: int, h: int, w: int, window: int) -> tuple[int, int, int, int]:
    """Top, left, height and width of the window centred on (r, c), clipped to the grid.

    As in the paper's restoration (Fig. 1(c)), the window is centred on the token to
    predict where the image allows; near a border it slides inwards instead of shrinking.
    """
    wh, ww = min(window, h), min(window, w)
    top = min(max(r - wh // 2, 0), h - wh)
    left = min(max(c - ww // 2, 0), w - ww)
    return top, left, wh, ww
