"""Cross-covariance transformer block (XCiT, El-Nouby et al. 2021), used by PQ-MIM (Sec. 3.1).

Attention is taken between *channels* (a d_h x d_h matrix per head) instead of between
tokens, so the cost is linear in the number of tokens; the local patch interaction (a
depthwise 3x3 conv) supplies spatial mixing. No absolute position embedding is used, so
one model serves any grid size. For inference on large grids the same stack runs in bands
of token rows (:mod:`~resilient_tx.model.banded`), which bounds its working memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resilient_tx.model import banded


class XCA(nn.Module):
    """Cross-covariance attention: softmax(norm(K)^T norm(Q) * tau) applied to V."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, d_h, n)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (b, heads, d_h, d_h)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))


class LPI(nn.Module):
    """Local patch interaction: two depthwise 3x3 convs over the token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        if x.dtype == torch.float64:
            # PyTorch has no fast float64 depthwise conv on CPU (it loops over the
            # channels one by one), and the entropy model runs in float64 (entropy.py).
            y = x.reshape(b, h, w, c)
            y = _depthwise3x3(F.gelu(_depthwise3x3(y, self.conv1)), self.conv2)
            return y.reshape(b, n, c)
        y = x.transpose(1, 2).reshape(b, c, h, w)
        y = self.conv2(F.gelu(self.conv1(y)))
        return y.reshape(b, c, n).transpose(1, 2)


def _depthwise3x3(y: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` (3x3, groups = channels, padding 1) on channels-last (B, H, W, C) input,
    as nine in-place shifted multiply-adds: same maths as the conv, vectorised over
    channels, and much faster than PyTorch's float64 CPU convolution."""
    _, h, w, _ = y.shape
    pad = F.pad(y, (0, 0, 1, 1, 1, 1))  # zero padding of W and H by 1 on each side
    weight = conv.weight[:, 0].permute(1, 2, 0)  # (3, 3, C)
    out = torch.empty_like(y)
    out.copy_(conv.bias.expand_as(y) if conv.bias is not None else torch.zeros_like(y))
    for dy in range(3):
        for dx in range(3):
            out.addcmul_(pad[:, dy : dy + h, dx : dx + w, :], weight[dy, dx])
    return out


class XCiTBlock(nn.Module):
    """x + XCA, x + LPI, x + MLP, each pre-normalised and scaled by a small learned gain."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, init_gain: float = 0.1):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = XCA(dim, heads)
        self.lpi = LPI(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        # Layer-scale keeps the deep residual stack stable early in training.
        self.g1 = nn.Parameter(init_gain * torch.ones(dim))
        self.g2 = nn.Parameter(init_gain * torch.ones(dim))
        self.g3 = nn.Parameter(init_gain * torch.ones(dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.g1 * self.attn(self.norm1(x))
        x = x + self.g2 * self.lpi(self.norm2(x), h, w)
        return x + self.g3 * self.mlp(self.norm3(x))


class XCiTStack(nn.Module):
    """A stack of XCiT blocks acting on (B, C, H, W) feature maps."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(XCiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward_tokens(self, x: torch.Tensor, h: int, w: int,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h*w, C) tokens in raster order -> the stack's output, same shape, or only
        the rows at flat positions ``keep``, (B, len(keep), C).

        Inference on a large grid runs in bands of rows (:mod:`~resilient_tx.model.banded`:
        the same result up to rounding, memory and time linear in the tokens, and with
        ``keep`` the last MLP only where needed); training and small grids take the
        whole-grid path below."""
        if banded.use_bands(h, w):
            return banded.forward_tokens(self, x, h, w, keep)
        for blk in self.blocks:
            x = blk(x, h, w)
        y = self.norm(x)
        return y if keep is None else y[:, keep]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.forward_tokens(x.flatten(2).transpose(1, 2), h, w)
        return y.transpose(1, 2).reshape(b, c, h, w)
