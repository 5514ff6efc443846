"""Encoder-side effort: refine the continuous latent through the frozen decoder.

The encoder is trained to produce latents whose *nearest* codewords decode well on
average; for one given image, a few gradient steps on its latent usually find tokens that
decode it better. Only the latent z moves (the weights stay frozen), and the tokens are
still the model's own quantizer's nearest codewords of the refined z, so the decoder and
the bitstream format are unchanged and every existing receiver decodes the result.

Each step's forward pass is the *hard* quantized reconstruction, so the loss it reports is
the true error of the tokens the current z would send; the backward pass is the
straight-through estimator of the PQ-VAE's training (PQ-MIM paper, Sec. 3.1), optionally
replaced by the gradient of a softmax assignment over the codebook at a temperature (the
soft-to-hard relaxation of Agustsson et al. 2017). The step with the lowest error is kept,
and the result is checked against the unrefined tokens with the receiver's own
reconstruction, so effort never decodes worse than effort 0.

A large image (a token grid the codec streams, over about a megapixel) is refined a tile
of :data:`TILE_TOKENS` squared tokens at a time, each seen with :data:`HALO_TOKENS` of
context on every side, so memory stays that of one small decoder pass with gradients.
The decoder's attention is global, so a tile's pass only approximates the whole image's;
the final check is made on the whole image, as the receiver decodes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from resilient_tx.errors import InputError
from resilient_tx.images import to_tensor
from resilient_tx.model.pqmim import PQMIM
from resilient_tx.model.quantizer import ProductQuantizer

#: Tokens per side of the tiles a large image is refined in, and their context halo.
TILE_TOKENS = 16
HALO_TOKENS = 4


@dataclass(frozen=True)
class RefineSettings:
    """Optimiser settings of :func:`refine_tokens`.

    ``step`` is Adam's learning rate as a share of the latent's RMS, so it means the same
    for every model whatever the scale of its latents. ``temperature`` 0 is the plain
    straight-through gradient; > 0 uses the softmax assignment's gradient instead.
    """

    step: float = 0.05
    temperature: float = 0.0


def check_effort(effort: int) -> int:
    """``effort`` if it is a valid number of refinement steps, else :class:`InputError`."""
    if isinstance(effort, bool) or not isinstance(effort, int) or effort < 0:
        raise InputError(f"effort must be an integer >= 0, got {effort!r}")
    return effort


def _hard_codes(pq: ProductQuantizer, z: torch.Tensor, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantized latent of z (value: exactly the hard codes) with a surrogate gradient.

    Mirrors :meth:`ProductQuantizer.indices` and :meth:`~ProductQuantizer.codes_from_indices`
    (same ops, same order), so the value equals what a receiver decodes from the indices.
    """
    b, _, h, w = z.shape
    low = pq.down(z).reshape(b, pq.m, pq.lookup_dim, h, w).permute(0, 1, 3, 4, 2)
    look = F.normalize(low, dim=-1)  # (B, M, h, w, k)
    cb = pq.normalized_codebooks()
    sims = torch.einsum("bmhwk,mvk->bmhwv", look, cb)
    idx = sims.argmax(dim=-1)
    hard = torch.stack([cb[i][idx[:, i]] for i in range(pq.m)], dim=1)
    if temperature > 0:
        soft = torch.einsum("bmhwv,mvk->bmhwk", (sims / temperature).softmax(-1), cb)
        surrogate = soft
    else:
        surrogate = look
    # hard + (s - s) is exactly hard in value (x - x == 0), unlike s + (hard - s).
    q = hard + (surrogate - surrogate.detach())
    codes = pq.up(q.permute(0, 1, 4, 2, 3).reshape(b, pq.m * pq.lookup_dim, h, w))
    return codes, idx


def _uint8_mse(recon: torch.Tensor, x: torch.Tensor, height: int, width: int) -> float:
    """MSE of the 8-bit image a receiver would show (rounded as ``images.to_uint8``)."""
    r = (recon[..., :height, :width].clamp(0, 1) * 255.0 + 0.5).floor()
    t = (x[..., :height, :width] * 255.0).round()
    return float(((r - t) ** 2).mean())


def refine_tokens(net: PQMIM, x: torch.Tensor, height: int, width: int, effort: int,
                  settings: RefineSettings | None = None) -> torch.Tensor:
    """Tokens (B, M, h, w) of ``x`` after ``effort`` gradient steps on its latent.

    ``x`` is (B, 3, H, W) in [0, 1], padded to multiples of the downsampling factor; only
    its top-left ``height`` x ``width`` (the real image) counts. Effort 0 is exactly
    ``net.tokens(x)``. The network must be in eval mode; its weights are not changed.
    """
    check_effort(effort)
    base = net.tokens(x)
    if effort == 0:
        return base
    s = settings or RefineSettings()
    with torch.no_grad():
        z0 = net.encoder(PQMIM._to_model_range(x))
    best_z = _descend(net, x, z0, height, width, effort, s)
    return _keep_better(net, x, base, best_z, height, width)


def _descend(net: PQMIM, x: torch.Tensor, z0: torch.Tensor, height: int, width: int,
             effort: int, s: RefineSettings) -> torch.Tensor:
    """``effort`` Adam steps on z; returns the z whose hard reconstruction was best."""
    z = z0.clone().requires_grad_(True)
    lr = s.step * float(z0.pow(2).mean().sqrt())
    opt = torch.optim.Adam([z], lr=lr)
    target = x[..., :height, :width]
    best_err, best_z = float("inf"), z0
    for i in range(effort + 1):
        with torch.enable_grad():
            codes, _ = _hard_codes(net.quantizer, z, s.temperature)
            recon = (net.decoder(codes) + 1.0) * 0.5
            err = _uint8_mse(recon.detach(), x, height, width)
            if err < best_err:
                best_err, best_z = err, z.detach().clone()
            if i == effort:  # the last z is only evaluated, not stepped from
                break
            loss = F.mse_loss(recon[..., :height, :width], target)
            # Gradient for z only: the frozen weights never accumulate a .grad.
            (grad,) = torch.autograd.grad(loss, [z])
        z.grad = grad
        opt.step()
    return best_z


@torch.no_grad()
def _keep_better(net: PQMIM, x: torch.Tensor, base: torch.Tensor, z: torch.Tensor,
                 height: int, width: int) -> torch.Tensor:
    """The refined tokens if the receiver's reconstruction of them is strictly better."""
    refined = net.quantizer.indices(z)
    if torch.equal(refined, base):
        return base
    err_base = _uint8_mse(net.reconstruct(base), x, height, width)
    err_refined = _uint8_mse(net.reconstruct(refined), x, height, width)
    return refined if err_refined < err_base else base


def _tiles(h: int, w: int) -> Iterator[tuple[slice, slice, slice, slice]]:
    """(rows, cols) of each tile in the grid and (rows, cols) of the tile in its haloed
    window, for a grid of h x w tokens."""
    for r0 in range(0, h, TILE_TOKENS):
        for c0 in range(0, w, TILE_TOKENS):
            r1, c1 = min(r0 + TILE_TOKENS, h), min(c0 + TILE_TOKENS, w)
            wr, wc = max(r0 - HALO_TOKENS, 0), max(c0 - HALO_TOKENS, 0)
            yield (slice(r0, r1), slice(c0, c1),
                   slice(r0 - wr, r1 - wr), slice(c0 - wc, c1 - wc))


def refine_tile_count(h: int, w: int) -> int:
    """How many tiles :func:`refine_tiled` refines on an h x w token grid."""
    return -(-h // TILE_TOKENS) * -(-w // TILE_TOKENS)


def refine_tiled(net: PQMIM, padded: np.ndarray, z0: torch.Tensor, height: int, width: int,
                 effort: int, settings: RefineSettings | None = None,
                 tick: Callable[[], None] | None = None) -> torch.Tensor:
    """Tokens (1, M, h, w) of a large image after ``effort`` steps on each tile's latent.

    ``padded`` is the image (H', W', 3) uint8 edge-padded to multiples of the downsampling
    factor, ``z0`` its latent (1, C, h, w) (``PQMIM.latent_streamed``); ``height`` x
    ``width`` is the real image. ``tick`` is called after each tile.
    """
    check_effort(effort)
    s = settings or RefineSettings()
    f = net.cfg.downsample
    _, _, h, w = z0.shape
    z = z0.clone()
    for rows, cols, in_r, in_c in _tiles(h, w):
        wr0, wc0 = rows.start - in_r.start, cols.start - in_c.start
        wr1, wc1 = min(rows.stop + HALO_TOKENS, h), min(cols.stop + HALO_TOKENS, w)
        x = to_tensor(padded[wr0 * f : wr1 * f, wc0 * f : wc1 * f]).to(z0.device)
        real_h, real_w = min(height - wr0 * f, x.shape[-2]), min(width - wc0 * f, x.shape[-1])
        best = _descend(net, x, z0[..., wr0:wr1, wc0:wc1], real_h, real_w, effort, s)
        z[..., rows, cols] = best[..., in_r, in_c]
        if tick is not None:
            tick()
    base, refined = net.indices_banded(z0), net.indices_banded(z)
    if torch.equal(refined, base):
        return base
    better = _streamed_error(net, refined, padded, height, width) < _streamed_error(
        net, base, padded, height, width)
    return refined if better else base


@torch.no_grad()
def _streamed_error(net: PQMIM, tokens: torch.Tensor, padded: np.ndarray, height: int,
                    width: int) -> float:
    """:func:`_uint8_mse` of a large image's streamed reconstruction, a few rows at a time."""
    total, top = 0.0, 0
    for rows in net.reconstruct_streamed(tokens):
        keep = min(rows.shape[2], height - top)
        if keep > 0:
            target = to_tensor(padded[top : top + keep, :width]).to(rows.device)
            total += _uint8_mse(rows[..., :keep, :width], target, keep, width) * keep
        top += rows.shape[2]
    return total / height
