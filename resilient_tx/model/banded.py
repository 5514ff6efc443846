"""Inference of an XCiT stack in bands of token rows: time and memory linear in the tokens.

An :class:`~resilient_tx.model.xcit.XCiTBlock` computes ``x + g1 XCA(LN1 x)``, then
``+ g2 LPI(LN2 x)``, then ``+ g3 MLP(LN3 x)``. LPI (two depthwise 3x3 convs) and the MLP
are local, so they run band by band, the LPI with a halo of two rows. XCA is the only
global part, and only through one d_h x d_h matrix per head. Its
``softmax(norm(q) norm(k)^T tau)`` needs, over all n tokens, only the second moments of
``u = LN1(x)``::

    S = sum_t u_t u_t^T,   s = sum_t u_t          (accumulated in float64)

because ``q = Wq u + bq`` and ``k = Wk u + bk`` give every sum of ``q_i k_j`` and the
token-wise norms of q and k from S, s and n. Given the softmaxed A, the branch at one
token is an affine map of u: ``proj(blockdiag(A) (Wv u + bv))`` is
``(Wp BD(A) Wv) u + (Wp BD(A) bv + bp)``, a single C x C matrix. So a block is three
sweeps over the bands: accumulate S and s (fused into the previous block's last sweep),
add the attention branch, add LPI and MLP; when only some tokens' outputs are wanted (one
coding stage's), the last block's MLP and the final norm run on those alone. Each
sweep's working set is one band, which stays in cache, where the whole-grid path writes a
dozen full-size temporaries per block through memory (which is what made it superlinear
once those outgrew the cache).

The result equals the whole-grid path up to floating-point rounding (other summation
order and association; GELU through ``torch.erf``, whose float64 kernel is vectorised where
``F.gelu``'s is not). In float64 that is many orders of magnitude below the entropy coder's
1/16-nat logit grid (:mod:`resilient_tx.codec.entropy`), so the integer CDFs come out the
same, as they do between CPU and CUDA. The bands are a fixed function of the grid width,
so an encoder and a decoder always cut them the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from resilient_tx.model.xcit import XCiTBlock, XCiTStack

#: Grids with more tokens than this run in bands (at downsampling 16: over 1 megapixel).
#: Smaller grids keep the whole-grid path, so their results stay exactly as before.
BANDED_MIN_TOKENS = 4096
#: Tokens per band: large enough for efficient matrix products, small enough that a
#: band's temporaries stay in cache.
BAND_TOKENS = 2048
_SQRT_HALF = math.sqrt(0.5)
_NORM_EPS = 1e-12  # F.normalize's default


def is_large(height: int, width: int) -> bool:
    """Whether a ``height`` x ``width`` token grid counts as large: one that inference
    runs in bands and row streams (a fixed function of the grid, the same everywhere)."""
    return height * width > BANDED_MIN_TOKENS


def use_bands(height: int, width: int) -> bool:
    """Whether to run in bands now: a large grid, and no gradient being recorded (the
    banded path is inference only)."""
    return is_large(height, width) and not torch.is_grad_enabled()


def band_rows(width: int) -> int:
    """Token rows per band for a grid ``width`` tokens wide."""
    return max(1, BAND_TOKENS // max(width, 1))


def bands(height: int, width: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges [r0, r1) covering ``height`` rows."""
    rows = band_rows(width)
    for r0 in range(0, height, rows):
        yield r0, min(r0 + rows, height)


def twice_gelu(x: torch.Tensor) -> torch.Tensor:
    """``2 * F.gelu(x)`` (the exact, erf form) on a new tensor.

    The factor 1/2 is left to the next layer's weights: halving a weight is exact, so
    that layer's output is the same as if this one had halved every value (one pass less).
    """
    return torch.mul(x, _SQRT_HALF).erf_().add_(1.0).mul_(x)


# ----- XCA from second moments ----------------------------------------------------------------
class Moments:
    """Running ``S = sum u u^T``, ``s = sum u`` and count of one block's LN1 outputs."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.square = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, u: torch.Tensor) -> None:
        """Accumulate the rows of ``u`` (n, C): a band's sums in u's own precision, the
        running totals in float64 (for a float32 stack the band's product costs half of
        a float64 one, and its rounding is that of the float32 path it replaces)."""
        if u.dtype == torch.float64:
            self.square.addmm_(u.T, u)
        else:
            self.square += (u.T @ u).to(torch.float64)
        self.total += u.sum(0, dtype=torch.float64)
        self.count += u.shape[0]


def attention_map(block: XCiTBlock, mom: Moments, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, c)`` with ``g1 * XCA(u) = u @ M.T + c`` for every token, given the block's
    moments over the whole grid (see the module docstring)."""
    attn = block.attn
    dim = mom.total.shape[0]
    w = attn.qkv.weight.to(torch.float64)
    b = attn.qkv.bias.to(torch.float64)
    wq, wk, wv = w[:dim], w[dim : 2 * dim], w[2 * dim :]
    bq, bk, bv = b[:dim], b[dim : 2 * dim], b[2 * dim :]
    n, s_mat, s_vec = mom.count, mom.square, mom.total
    qs, ks = wq @ s_vec, wk @ s_vec
    wq_s = wq @ s_mat
    cross = wq_s @ wk.T + torch.outer(qs, bk) + torch.outer(bq, ks) + n * torch.outer(bq, bk)
    q_sq = (wq_s * wq).sum(1) + 2 * bq * qs + n * bq * bq
    k_sq = ((wk @ s_mat) * wk).sum(1) + 2 * bk * ks + n * bk * bk
    q_norm = q_sq.clamp_min(0).sqrt().clamp_min(_NORM_EPS)
    k_norm = k_sq.clamp_min(0).sqrt().clamp_min(_NORM_EPS)
    d = dim // attn.heads
    mix = torch.zeros(dim, dim, dtype=torch.float64, device=w.device)
    tau = attn.temperature.to(torch.float64).reshape(-1)
    for h in range(attn.heads):
        sl = slice(h * d, (h + 1) * d)
        logits = cross[sl, sl] / torch.outer(q_norm[sl], k_norm[sl]) * tau[h]
        mix[sl, sl] = logits.softmax(-1)
    wp, bp = attn.proj.weight.to(torch.float64), attn.proj.bias.to(torch.float64)
    g1 = block.g1.to(torch.float64)
    m = g1[:, None] * (wp @ mix @ wv)
    c = g1 * (wp @ (mix @ bv) + bp)
    return m.to(dtype), c.to(dtype)


# ----- LPI on a band ------------------------------------------------------------------------
def _conv_rows(t: torch.Tensor, top: int, height: int, weight: torch.Tensor,
               start: torch.Tensor, rows: tuple[int, int],
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Output rows ``rows = (o0, o1)`` of a depthwise 3x3 conv (zero padding) of an image
    ``height`` rows high, from ``t`` (r, w, C) holding its rows ``top .. top + r - 1``,
    which must include rows o0 - 1 .. o1 (those inside the image).

    The sum starts from ``start`` (the bias, or the residual plus the bias), broadcast to
    the output; ``out``, if given, receives the result. ``weight`` is (3, 3, C). Each tap
    adds to the part of the output its shifted input covers, so no padded copy is made:
    the products left out are exactly those with the zero padding."""
    o0, o1 = rows
    n, w = o1 - o0, t.shape[1]
    centre = t[o0 - top : o1 - top]
    if out is None:
        out = torch.addcmul(start, centre, weight[1, 1])
    else:
        torch.addcmul(start, centre, weight[1, 1], out=out)
    for dy in range(3):
        # Output row o0 + i reads image row o0 + i + dy - 1, which must lie in the image.
        i0, i1 = max(0, 1 - dy - o0), min(n, height - o0 - dy + 1)
        for dx in range(3):
            if (dy, dx) == (1, 1) or i1 <= i0:
                continue
            j0, j1 = max(0, 1 - dx), min(w, w - dx + 1)
            src = t[o0 + i0 + dy - 1 - top : o0 + i1 + dy - 1 - top, j0 + dx - 1 : j1 + dx - 1]
            out[i0:i1, j0:j1].addcmul_(src, weight[dy, dx])
    return out


class _Local:
    """A block's LPI and MLP with the layer-scale gains folded into the last layers."""

    def __init__(self, block: XCiTBlock, dtype: torch.dtype) -> None:
        lpi, mlp = block.lpi, block.mlp
        g2, g3 = block.g2.to(dtype), block.g3.to(dtype)
        self.block = block
        # Taps as contiguous (3, 3, C): a strided per-tap vector would slow every multiply.
        self.w1 = _taps(lpi.conv1.weight, dtype)
        self.b1 = _bias(lpi.conv1.bias, lpi.conv1.weight, dtype)
        # conv2 and fc2 read twice_gelu's output: their weights take its 1/2 (exactly).
        self.w2 = (_taps(lpi.conv2.weight, dtype) * (g2 * 0.5)).contiguous()
        self.b2 = _bias(lpi.conv2.bias, lpi.conv2.weight, dtype) * g2
        fc1, fc2 = cast(nn.Linear, mlp[0]), cast(nn.Linear, mlp[2])
        self.fc1_w, self.fc1_b = fc1.weight.to(dtype), fc1.bias.to(dtype)
        self.fc2_wt = (fc2.weight.to(dtype) * (g3[:, None] * 0.5)).T.contiguous()
        self.fc2_b = fc2.bias.to(dtype) * g3

    def lpi(self, x: torch.Tensor, out: torch.Tensor, r0: int, r1: int, height: int,
            width: int) -> torch.Tensor:
        """Rows [r0, r1) of ``x + LPI(...)``, written to the same rows of ``out`` (n, C) and
        returned (a view); ``x`` (n, C) holds the attention branch's output for the whole
        grid (the LPI reads two rows beyond the band on each side)."""
        norm = self.block.norm2
        a, b = max(r0 - 2, 0), min(r1 + 2, height)
        c = x.shape[1]
        t = F.layer_norm(x[a * width : b * width], (c,), norm.weight, norm.bias,
                         norm.eps).view(b - a, width, c)
        # conv1 on the rows that conv2 needs for the band: one more on each side.
        c0, c1 = max(r0 - 1, 0), min(r1 + 1, height)
        t = twice_gelu(_conv_rows(t, a, height, self.w1, self.b1, (c0, c1)))
        core = x[r0 * width : r1 * width].view(r1 - r0, width, c)
        y = out[r0 * width : r1 * width]
        _conv_rows(t, c0, height, self.w2, core + self.b2, (r0, r1), y.view(r1 - r0, width, c))
        return y

    def mlp_(self, y: torch.Tensor) -> torch.Tensor:
        """``y + MLP(LN3 y)`` in place, for rows y (n, C)."""
        norm = self.block.norm3
        hidden = twice_gelu(F.linear(F.layer_norm(y, (y.shape[1],), norm.weight, norm.bias,
                                                  norm.eps), self.fc1_w, self.fc1_b))
        return y.addmm_(hidden, self.fc2_wt).add_(self.fc2_b)


def _taps(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A depthwise 3x3 kernel (C, 1, 3, 3) as contiguous taps (3, 3, C)."""
    return weight[:, 0].permute(1, 2, 0).to(dtype).contiguous()


def _bias(bias: torch.Tensor | None, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if bias is None:
        return torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)
    return bias.to(dtype)


def _ln1(block: XCiTBlock, x: torch.Tensor) -> torch.Tensor:
    n = block.norm1
    return F.layer_norm(x, (x.shape[-1],), n.weight, n.bias, n.eps)


# ----- the stack ------------------------------------------------------------------------------
def forward_tokens(stack: XCiTStack, x: torch.Tensor, height: int, width: int,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
    """``stack.forward_tokens(x, height, width, keep)`` for x (B, n, C), band by band.

    With ``keep`` (flat positions), only those tokens' outputs are returned
    (B, len(keep), C), and the last block's MLP and the final norm run on them alone."""
    if keep is not None:
        distinct, back = torch.unique(keep, sorted=True, return_inverse=True)
        if len(distinct) != len(keep) or bool((distinct != keep).any()):
            return forward_tokens(stack, x, height, width, distinct)[:, back]
    if x.shape[0] == 1:
        return _one(stack, x[0], height, width, keep)[None]
    return torch.stack([_one(stack, item, height, width, keep) for item in x])


def _one(stack: XCiTStack, x: torch.Tensor, height: int, width: int,
         keep: torch.Tensor | None) -> torch.Tensor:
    """One batch item (n, C); ``x`` itself is not modified."""
    blocks = [cast("XCiTBlock", blk) for blk in stack.blocks]
    cur = x.clone()
    spare = torch.empty_like(cur)
    mom = _moments(blocks[0], cur, height, width) if blocks else None
    for i, blk in enumerate(blocks):
        assert mom is not None  # set for every block that exists
        m_mat, c_vec = attention_map(blk, mom, cur.dtype)
        m_t = m_mat.T.contiguous()
        for r0, r1 in bands(height, width):
            xb = cur[r0 * width : r1 * width]
            xb.addmm_(_ln1(blk, xb), m_t).add_(c_vec)
        local = _Local(blk, cur.dtype)
        if i + 1 == len(blocks):
            return _last(stack, local, cur, spare, height, width, keep)
        nxt = blocks[i + 1]
        mom = Moments(cur.shape[1], cur.device)
        for r0, r1 in bands(height, width):
            y = local.mlp_(local.lpi(cur, spare, r0, r1, height, width))
            mom.add(_ln1(nxt, y))
        cur, spare = spare, cur
    return _final_norm(stack, cur if keep is None else cur[keep])  # a stack without blocks


def _last(stack: XCiTStack, local: _Local, cur: torch.Tensor, spare: torch.Tensor,
          height: int, width: int, keep: torch.Tensor | None) -> torch.Tensor:
    """The last block's LPI everywhere (its neighbours need it), then its MLP and the
    final norm on the kept rows only."""
    if keep is None:
        for r0, r1 in bands(height, width):
            local.mlp_(local.lpi(cur, spare, r0, r1, height, width))
        return _final_norm(stack, spare, out=cur)
    out = torch.empty(len(keep), cur.shape[1], dtype=cur.dtype, device=cur.device)
    for r0, r1 in bands(height, width):
        i0, i1 = (int(v) for v in torch.searchsorted(keep, torch.tensor(
            [r0 * width, r1 * width], device=keep.device)))
        y = local.lpi(cur, spare, r0, r1, height, width)
        if i1 > i0:
            out[i0:i1] = local.mlp_(y[keep[i0:i1] - r0 * width])
    return _final_norm(stack, out, out=out)


def _final_norm(stack: XCiTStack, x: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``stack.norm`` of x's rows, band-sized pieces at a time; ``out`` (may be x itself)
    receives it, else a new tensor."""
    if out is None:
        out = torch.empty_like(x)
    norm = stack.norm
    for i in range(0, x.shape[0], BAND_TOKENS):
        out[i : i + BAND_TOKENS] = F.layer_norm(x[i : i + BAND_TOKENS], (x.shape[1],),
                                                norm.weight, norm.bias, norm.eps)
    return out


def _moments(block: XCiTBlock, x: torch.Tensor, height: int, width: int) -> Moments:
    mom = Moments(x.shape[1], x.device)
    for r0, r1 in bands(height, width):
        mom.add(_ln1(block, x[r0 * width : r1 * width]))
    return mom
