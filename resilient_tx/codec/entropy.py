"""Logits -> integer CDFs -> torchac bitstreams. The only module that cares about determinism.

Why integers: the sender and receiver must derive *bit-identical* CDFs, or the arithmetic
decoder silently drifts into other symbols. Float32 softmax differs in the last bit between
CPU and CUDA and between thread counts. So (PQ-MIM paper Sec. 3.2 gives the model; this
is the engineering around it):

1. the caller computes logits in float64 (so device/thread noise is ~1e-13, not ~1e-6);
2. logits are rounded to a grid of ``1/LOGIT_GRID`` nats -- a flip needs the noise to straddle
   a rounding boundary, which at float64 noise levels is ~1e-11 per logit;
3. from there on everything is int64: a fixed exp table (built with :mod:`decimal`, so it is
   identical on every platform), integer frequency allocation, integer cumsum. The result
   can be had directly in the int16 form torchac reads (:func:`to_torchac`), a quarter of
   the memory, which is what a large image's stages are coded from.

Every stage also carries a CRC32 of its symbols (:func:`symbols_crc`): if anything still
desynchronises, decoding reports :class:`ChecksumError` instead of producing a wrong image.
"""

from __future__ import annotations

import zlib
from decimal import Decimal, getcontext
from functools import lru_cache

import numpy as np
import torch

from resilient_tx.codec import backend
from resilient_tx.errors import BitstreamError, ChecksumError

PRECISION = 16  # torchac's fixed CDF precision: the total mass is 2**16
TOTAL = 1 << PRECISION
LOGIT_GRID = 16  # logits are rounded to multiples of 1/16 nat
LOGIT_RANGE = 24  # logits more than 24 nats below the max get the floor frequency anyway
_EXP_SCALE = 1 << 30


@lru_cache(maxsize=1)
def _exp_table() -> torch.Tensor:
    """round(2**30 * exp(-k / LOGIT_GRID)) for k = 0 .. LOGIT_GRID * LOGIT_RANGE, exactly."""
    getcontext().prec = 50
    vals = [
        int((Decimal(_EXP_SCALE) * (Decimal(-k) / LOGIT_GRID).exp()).to_integral_value())
        for k in range(LOGIT_GRID * LOGIT_RANGE + 1)
    ]
    return torch.tensor(vals, dtype=torch.int64)


@lru_cache(maxsize=4)
def _exp_table_on(device: str) -> torch.Tensor:
    return _exp_table().to(device)


def weights_to_cdf(weights: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Non-negative int64 weights (..., L) -> CDF (..., L + 1) from 0 to 2**16.

    Every symbol gets at least frequency 1 (so any symbol stays codable); the rounding
    remainder goes to the heaviest symbol. Pure integer arithmetic: deterministic anywhere.
    ``dtype`` int16 gives :func:`to_torchac`'s form directly.
    """
    if weights.dtype != torch.int64:
        raise TypeError("weights must be int64")
    n = weights.shape[-1]
    if n > TOTAL // 2:
        raise ValueError(f"alphabet of {n} symbols too large for {PRECISION}-bit CDFs")
    return _cdf_of(weights.clamp_min(0), dtype)


def _cdf_of(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`weights_to_cdf` of weights already known to be >= 0, written with in-place
    steps: the same integers, fewer full-size temporaries."""
    n = w.shape[-1]
    total = w.sum(-1, keepdim=True).clamp_min_(1)
    freq = torch.mul(w, TOTAL - n).floor_divide_(total).add_(1)
    remainder = TOTAL - freq.sum(-1, keepdim=True)
    freq.scatter_add_(-1, w.argmax(-1, keepdim=True), remainder)
    out = torch.empty(*w.shape[:-1], n + 1, dtype=dtype, device=w.device)
    out[..., 0] = 0
    out[..., 1:] = freq.cumsum_(-1)
    return out


def logits_to_cdf(logits: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """float64 logits (..., L) -> CDF (..., L + 1), identical on every device; int64, or
    with ``dtype`` int16 :func:`to_torchac`'s form."""
    if logits.dtype != torch.float64:
        raise TypeError("entropy-model logits must be float64 for cross-device determinism")
    # NaN/inf would index outside the exp table; a model that emits them still gets a
    # valid (if poor) CDF rather than a crash: NaN -> 0, +-inf -> +-1e6 nats.
    # Everything below is exact (rounding to the grid, then integers; the differences of
    # whole numbers below 2**53 are exact in float64 too), so it runs where the logits are
    # -- on a GPU that saves the copy and the CPU work -- and returns on CPU.
    r = torch.nan_to_num(logits, nan=0.0, posinf=1e6, neginf=-1e6).clamp_(-1e6, 1e6)
    r = r.mul_(LOGIT_GRID).round_()
    z = torch.sub(r.amax(-1, keepdim=True), r, out=r).clamp_max_(LOGIT_GRID * LOGIT_RANGE)
    idx = z.to(torch.int64)
    weights = _exp_table_on(str(idx.device)).index_select(0, idx.reshape(-1)).view(idx.shape)
    return _cdf_of(weights, dtype).cpu()


def counts_to_cdf(counts: torch.Tensor) -> torch.Tensor:
    """Histogram counts (..., L) -> int64 CDF (..., L + 1). Used for stage 1 (marginals)."""
    return weights_to_cdf(counts.to(torch.int64).cpu())


def to_torchac(cdf: torch.Tensor) -> torch.Tensor:
    """An int64 CDF in the int16 form torchac reads (no copy if it already is int16)."""
    # torchac reads int16 as uint16; 2**16 (last entry) wraps to 0 and is ignored by the coder.
    return cdf.to(torch.int16)


def encode(cdf: torch.Tensor, symbols: torch.Tensor) -> bytes:
    """Arithmetic-code ``symbols`` (N,) int with CDFs (N, L + 1), int64 or already
    :func:`to_torchac`'s int16 (a quarter of the memory). Empty input -> b''."""
    symbols = symbols.reshape(-1).cpu()
    if symbols.numel() == 0:
        return b""
    cdf = cdf.reshape(symbols.numel(), -1)
    if int(symbols.min()) < 0 or int(symbols.max()) >= cdf.shape[-1] - 1:
        raise ValueError("symbol outside the CDF's alphabet")
    return backend.torchac().encode_int16_normalized_cdf(to_torchac(cdf), symbols.to(torch.int16))


def decode(cdf: torch.Tensor, data: bytes) -> torch.Tensor:
    """Inverse of :func:`encode` for ``cdf.shape[0]`` symbols (CDFs int64 or int16, as
    there). Returns int64 (N,)."""
    n = cdf.shape[0]
    if n == 0:
        if data:
            raise BitstreamError("stage has no symbols but carries data")
        return torch.zeros(0, dtype=torch.int64)
    sym = backend.torchac().decode_int16_normalized_cdf(to_torchac(cdf.reshape(n, -1)), data)
    # The decoder reads past a truncated stream without complaint; the CRC will catch it.
    return sym.to(torch.int64) & 0xFFFF


def symbols_crc(symbols: torch.Tensor) -> int:
    """CRC32 of symbols as little-endian uint16: the sender/receiver desync check."""
    arr = symbols.reshape(-1).cpu().numpy().astype("<u2", copy=False)
    return zlib.crc32(arr.tobytes()) & 0xFFFFFFFF


def check_crc(symbols: torch.Tensor, expected: int, what: str) -> None:
    got = symbols_crc(symbols)
    if got != expected:
        raise ChecksumError(
            f"{what}: decoded symbols fail their CRC32 (got {got:08x}, expected {expected:08x});"
            " the stream is corrupted or was coded with different probabilities"
        )


def code_lengths(cdf: torch.Tensor, symbols: torch.Tensor) -> np.ndarray:
    """Ideal code length in bits of each symbol under its CDF (for measurement and balancing)."""
    if symbols.numel() == 0:  # an empty quincunx stage of a tiny image
        return np.zeros(0)
    cdf = cdf.reshape(symbols.numel(), -1)
    s = symbols.reshape(-1, 1).cpu()
    freq = (cdf.gather(-1, s + 1) - cdf.gather(-1, s)).reshape(-1).double()
    return (PRECISION - torch.log2(freq)).numpy()
