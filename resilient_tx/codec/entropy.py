"""Logits -> integer CDFs -> torchac bitstreams. The only module that cares about determinism.

Why integers: the sender and receiver must derive *bit-identical* CDFs, or the arithmetic
decoder silently drifts into other symbols. Float32 softmax differs in the last bit between
CPU and CUDA and between thread counts. So (PQ-MIM paper Sec. 3.2 gives the model; this
is the engineering around it):

1. the caller computes logits in float64 (so device/thread noise is ~1e-13, not ~1e-6);
2. logits are rounded to a grid of ``1/LOGIT_GRID`` nats -- a flip needs the noise to straddle
   a rounding boundary, which at float64 noise levels is ~1e-11 per logit;
3. from there on everything is int64: a fixed exp table (built with :mod:`decimal`, so it is
   identical on every platform), integer frequency allocation, integer cumsum.

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


def weights_to_cdf(weights: torch.Tensor) -> torch.Tensor:
    """Non-negative int64 weights (..., L) -> int64 CDF (..., L + 1) from 0 to 2**16.

    Every symbol gets at least frequency 1 (so any symbol stays codable); the rounding
    remainder goes to the heaviest symbol. Pure integer arithmetic: deterministic anywhere.
    """
    if weights.dtype != torch.int64:
        raise TypeError("weights must be int64")
    n = weights.shape[-1]
    if n > TOTAL // 2:
        raise ValueError(f"alphabet of {n} symbols too large for {PRECISION}-bit CDFs")
    w = weights.clamp_min(0)
    total = w.sum(-1, keepdim=True).clamp_min(1)
    freq = 1 + (w * (TOTAL - n)) // total
    remainder = TOTAL - freq.sum(-1, keepdim=True)
    top = w.argmax(-1, keepdim=True)
    freq = freq.scatter_add(-1, top, remainder)
    zero = torch.zeros(*freq.shape[:-1], 1, dtype=torch.int64, device=freq.device)
    return torch.cat([zero, freq.cumsum(-1)], dim=-1)


def logits_to_cdf(logits: torch.Tensor) -> torch.Tensor:
    """float64 logits (..., L) -> int64 CDF (..., L + 1), identical on every device."""
    if logits.dtype != torch.float64:
        raise TypeError("entropy-model logits must be float64 for cross-device determinism")
    # NaN/inf would index outside the exp table; a model that emits them still gets a
    # valid (if poor) CDF rather than a crash: NaN -> 0, +-inf -> +-1e6 nats.
    # Everything below is exact (rounding to the grid, then integers), so it runs where
    # the logits are -- on a GPU that saves the copy and the CPU work -- and returns on CPU.
    safe = torch.nan_to_num(logits, nan=0.0).clamp(-1e6, 1e6)
    z = torch.round(safe * LOGIT_GRID).to(torch.int64)
    z = (z.amax(-1, keepdim=True) - z).clamp_max(LOGIT_GRID * LOGIT_RANGE)
    return weights_to_cdf(_exp_table_on(str(z.device))[z]).cpu()


def counts_to_cdf(counts: torch.Tensor) -> torch.Tensor:
    """Histogram counts (..., L) -> int64 CDF (..., L + 1). Used for stage 1 (marginals)."""
    return weights_to_cdf(counts.to(torch.int64).cpu())


def _to_torchac(cdf: torch.Tensor) -> torch.Tensor:
    # torchac reads int16 as uint16; 2**16 (last entry) wraps to 0 and is ignored by the coder.
    return cdf.to(torch.int16)


def encode(cdf: torch.Tensor, symbols: torch.Tensor) -> bytes:
    """Arithmetic-code ``symbols`` (N,) int with CDFs (N, L + 1) int64. Empty input -> b''."""
    symbols = symbols.reshape(-1).cpu()
    if symbols.numel() == 0:
        return b""
    cdf = cdf.reshape(symbols.numel(), -1)
    if int(symbols.min()) < 0 or int(symbols.max()) >= cdf.shape[-1] - 1:
        raise ValueError("symbol outside the CDF's alphabet")
    return backend.torchac().encode_int16_normalized_cdf(_to_torchac(cdf), symbols.to(torch.int16))


def decode(cdf: torch.Tensor, data: bytes) -> torch.Tensor:
    """Inverse of :func:`encode` for ``cdf.shape[0]`` symbols. Returns int64 (N,)."""
    n = cdf.shape[0]
    if n == 0:
        if data:
            raise BitstreamError("stage has no symbols but carries data")
        return torch.zeros(0, dtype=torch.int64)
    sym = backend.torchac().decode_int16_normalized_cdf(_to_torchac(cdf.reshape(n, -1)), data)
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
