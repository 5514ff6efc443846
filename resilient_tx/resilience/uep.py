"""Unequal error protection: the parity per stage that costs the least expected quality.

The rule-based
profiles of ``configs/fec.yaml`` give each stage a fixed parity ratio. This module instead
chooses every stage's parity count together, for a known loss rate p and the actual shape of
one image's packets, by minimising the expected gap to the oracle -- the same image received
without loss at (1 - p) x the bytes.

Model (i.i.d. loss; :func:`packetizer.spread_stages` makes bursty loss look close to it per
stage). Stage s goes out as k data and m parity packets of one size; with L ~ Binomial(k+m, p)
of them lost it is complete when L <= m. When it is not, the data chunks that were lost stay
lost -- the others still decode, each chunk being its own bitstream -- an expected share
``e(k, m) = E[L; L > m] / (k + m)`` of the stage. A stage is decoded only when every stage
in its context (:func:`~resilient_tx.codec.stage_coder.context_stages`) is complete, so the
expected share of the image's tokens left to the inpainter is::

    lost(m) = sum_s f_s * (1 - (1 - e(k_s, m_s)) * prod_{j in context(s)} P(L_j <= m_j))

with f_s the stage's share of the tokens (1/16, 1/16, 1/8, 1/4, 1/2 for the quincunx stages,
PQ-MIM paper Sec. 3.2). The cost is the expected PSNR lost to inpainting plus what the parity
bytes would have bought as rate::

    J(m) = db_per_lost * lost(m) + db_per_doubling * log2(wire bytes / data bytes)

Both constants are fitted to loss sweeps (see :class:`DistortionModel`). J is not convex in m
(a one-chunk stage gains little from the first extra copy when the stage after it is weak),
so :func:`allocate` runs coordinate descent with an exhaustive search per stage until no
stage changes, from the floor the profile's rules give.

Packet size. Small images have only 1-3 chunks per stage at 1200-byte packets, and RS over
so few packets needs whole extra copies. The packetizer therefore also cuts the stages into
1/2, 1/3 and 1/4 of the packet size and keeps the cut whose plan has the lowest
:func:`score` (the cost on absolute bytes, so header overheads compare fairly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

from resilient_tx.errors import ConfigError, InputError

MAX_CODEWORD = 255  # GF(256): k + m <= 255 (fec.py)


@dataclass(frozen=True)
class DistortionModel:
    """PSNR cost of lost tokens against the PSNR value of bytes.

    ``db_per_lost``: PSNR drop (dB) per unit share of the tokens inpainted by the MIM,
    fitted to loss sweeps of the shipped rates (``configs/fec.yaml`` holds the values).
    ``db_per_doubling``: PSNR gained per doubling of bytes along the codec's
    rate-distortion curve, read off ``rd_eval`` between the shipped rate points.
    """

    db_per_lost: float = 10.0
    db_per_doubling: float = 1.1

    def __post_init__(self) -> None:
        for key in ("db_per_lost", "db_per_doubling"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
                raise ConfigError(f"distortion model: {key} must be a positive number, got {v!r}")


@dataclass(frozen=True)
class StageShape:
    """What the planner needs to know of one stage's packets."""

    k: int  # data chunks
    packet_bytes: int  # one packet of this stage on the wire, header included
    share: float  # the stage's share of the image's tokens
    context: int  # how many leading stages it is conditioned on

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_CODEWORD or self.packet_bytes < 1:
            raise InputError(f"stage needs 1 <= k <= 255 and packets of >= 1 byte: {self}")
        if not 0 <= self.share <= 1 or self.context < 0:
            raise InputError(f"stage share must be in [0, 1], context >= 0: {self}")


def tail_terms(n: int, p: float, m: int) -> list[tuple[int, float]]:
    """(i, P(X = i)) for i = m+1 .. n, X ~ Binomial(n, p): more than m of n packets lost."""
    q = 1.0 - p
    return [(i, math.comb(n, i) * p**i * q ** (n - i)) for i in range(m + 1, n + 1)]


def binomial_tail(n: int, p: float, m: int) -> float:
    """P(X > m) for X ~ Binomial(n, p), summed exactly (n <= 255, no scipy needed)."""
    return math.fsum(w for _, w in tail_terms(n, p, m))


@lru_cache(maxsize=65536)
def _loss_terms(k: int, m: int, p: float) -> tuple[float, float]:
    """(P(stage complete), expected share of its data chunks lost) for k data, m parity."""
    n = k + m
    terms = tail_terms(n, p, m)
    return (max(0.0, 1.0 - math.fsum(w for _, w in terms)),
            math.fsum(w * i / n for i, w in terms))


def expected_lost(stages: Sequence[StageShape], parity: Sequence[int], p: float) -> float:
    """Expected share of the image's tokens that must be inpainted (module docstring)."""
    terms = [_loss_terms(st.k, m, p) for st, m in zip(stages, parity, strict=True)]
    out = 0.0
    for st, (_, lost) in zip(stages, terms, strict=True):
        ok = 1.0 - lost
        for complete, _ in terms[: st.context]:
            ok *= complete
        out += st.share * (1.0 - ok)
    return out


def score(stages: Sequence[StageShape], parity: Sequence[int], p: float,
          model: DistortionModel) -> float:
    """J(m) with the rate term on absolute wire bytes, so that plans cut into different
    packet sizes (different header overheads, different k) can be compared; for any one
    cut it differs from :func:`cost` by a constant, so both rank parities alike."""
    wire = sum((st.k + m) * st.packet_bytes for st, m in zip(stages, parity, strict=True))
    return (model.db_per_lost * expected_lost(stages, parity, p)
            + model.db_per_doubling * math.log2(wire))


def cost(stages: Sequence[StageShape], parity: Sequence[int], p: float,
         model: DistortionModel) -> float:
    """J(m): expected dB lost to inpainting plus the dB the parity bytes cost as rate
    (0 parity, 0 loss -> 0)."""
    data = sum(st.k * st.packet_bytes for st in stages)
    return score(stages, parity, p, model) - model.db_per_doubling * math.log2(data)


def _trial(stages: Sequence[StageShape], parity: list[int], s: int, p: float,
           model: DistortionModel, m: int) -> tuple[float, int]:
    """Sort key of parity ``m`` for stage ``s`` with the others fixed (ties: less parity)."""
    return score(stages, [*parity[:s], m, *parity[s + 1:]], p, model), m


def allocate(stages: Sequence[StageShape], p: float, model: DistortionModel,
             floor: Sequence[int] | None = None) -> tuple[int, ...]:
    """Parity per stage minimising :func:`cost` (via :func:`score`, the same ranking
    without the constant) at loss rate ``p``, never below ``floor``.

    Deterministic: the same shapes and p give the same answer on every machine (it only
    decides how many parity packets are sent; the receiver reads k and n from the packets).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"loss rate must be in [0, 1), got {p!r}")
    lows = list(floor) if floor is not None else [0] * len(stages)
    if len(lows) != len(stages) or any(m < 0 for m in lows):
        raise InputError(f"floor must give a parity >= 0 per stage, got {floor!r}")
    parity = [min(m, MAX_CODEWORD - st.k) for m, st in zip(lows, stages, strict=True)]
    if p == 0:
        return tuple(parity)
    for _ in range(32):  # converges in 2-4 rounds in practice; the bound is a safeguard
        changed = False
        for s, st in enumerate(stages):
            top = min(MAX_CODEWORD - st.k, parity[s] + 4 * st.k + 24)
            best = min(range(lows[s], top + 1),
                       key=partial(_trial, stages, parity, s, p, model))
            if best != parity[s]:
                parity[s], changed = best, True
        if not changed:
            break
    return tuple(parity)
