"""PQ-VAE encoder and decoder (PQ-MIM paper, Sec. 3.1).

The paper uses XCiT for its linear cost in the pixel count. We keep that property with a
convolutional stem/head (pixel (un)shuffle by 4, residual convs at 1/4 .. 1/f resolution)
and XCiT blocks at token resolution: every layer is local or channel-wise, so cost grows
linearly with pixels and any image size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resilient_tx.config import ModelConfig
from resilient_tx.model.streaming import Chain, ConvRows, Pointwise, Residual
from resilient_tx.model.xcit import XCiTStack


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # start as identity: faster, stabler early training
        bias = self.conv2.bias
        assert bias is not None  # Conv2d's default bias=True; Optional only in its type
        nn.init.zeros_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))

    def row_stream(self) -> Residual:
        """The same block over a stream of rows (:mod:`~resilient_tx.model.streaming`)."""
        return Residual(Chain([Pointwise(F.silu), ConvRows(self.conv1), Pointwise(F.silu),
                               ConvRows(self.conv2)]))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.widths[: cfg.levels]
        layers: list[nn.Module] = [nn.PixelUnshuffle(4), nn.Conv2d(48, widths[0], 3, padding=1)]
        for lvl, ch in enumerate(widths):
            layers += [ResBlock(ch) for _ in range(cfg.res_blocks)]
            if lvl + 1 < len(widths):
                layers.append(nn.Conv2d(ch, widths[lvl + 1], 4, stride=2, padding=1))
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], cfg.latent_dim, 1)]
        self.convs = nn.Sequential(*layers)
        self.xcit = XCiTStack(cfg.latent_dim, cfg.latent_blocks, cfg.latent_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.xcit(self.convs(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = list(reversed(cfg.widths[: cfg.levels]))
        self.xcit = XCiTStack(cfg.latent_dim, cfg.latent_blocks, cfg.latent_heads)
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 3, padding=1)]
        for lvl, ch in enumerate(widths):
            layers += [ResBlock(ch) for _ in range(cfg.res_blocks + 1)]
            if lvl + 1 < len(widths):
                nxt = widths[lvl + 1]
                layers += [nn.Conv2d(ch, nxt * 4, 3, padding=1), nn.PixelShuffle(2)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], 48, 3, padding=1), nn.PixelShuffle(4)]
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.xcit(z))
