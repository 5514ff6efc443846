"""The loss channel the parity planner plans for, and the order packets go out in.

:class:`Channel` is a stationary loss rate p and a mean burst length L. L = 1 means
i.i.d. loss (the channel simulator's ``bernoulli`` model); L > 1 means the "simple
Gilbert" chain of :mod:`resilient_tx.transport.channel` (loss probability 0 in Good, 1 in
Bad) with r = P(Bad -> Good) = 1 / L and q = P(Good -> Bad) = p r / (1 - p), started in
its stationary state. Note that i.i.d. loss itself has mean burst 1 / (1 - p): a Gilbert
channel with 1 < L < 1 / (1 - p) spreads its losses *more* evenly than i.i.d. loss.

Send order. :func:`send_positions` reproduces the packetizer's rule
(``packetizer.spread_stages``): packet i of a stage of n packets goes out at key
(i + 0.5) / n, ties broken by stage, then by index. Under bursty loss *where* a stage's
packets sit in that order decides how many of them one burst takes, so the planner needs
the positions, not only the counts.

Sampled patterns. :func:`patterns` draws loss patterns of the chain, seeded by a fixed
seed through numpy's PCG64, so every machine draws the same ones. The draws are common
random numbers: the uniforms depend only on the sample and the position, never on p, L or
on how long a pattern is asked for, so two plans (or two channels) are compared on the
same draws, and a longer pattern extends a shorter one instead of replacing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from resilient_tx.errors import InputError

#: Fixed seed of the sampled loss patterns (any constant would do; it must never change
#: silently, or plans made under bursty loss would change with it).
PATTERN_SEED = 0x5EED_B0257
_BLOCK = 256  # positions drawn at a time; a pattern is a prefix of whole blocks


@dataclass(frozen=True)
class Channel:
    """Stationary loss rate and mean loss-burst length (module docstring)."""

    loss_rate: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        p, burst = self.loss_rate, self.burst
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise InputError(f"loss rate must be in [0, 1), got {p!r}")
        if (isinstance(burst, bool) or not isinstance(burst, (int, float))
                or not 1 <= burst < math.inf):
            raise InputError(f"mean burst length must be a finite number >= 1, got {burst!r}")
        # q <= 1: the Good state must be able to enter Bad often enough for rate p.
        if burst > 1 and burst < p / (1 - p):
            raise InputError(f"mean burst length {burst:g} is impossible at loss rate {p:g}: "
                             f"Gilbert-Elliott needs burst >= p / (1 - p) = "
                             f"{p / (1 - p):.3g}")

    @property
    def iid(self) -> bool:
        """True when losses are independent (L = 1, or no loss at all)."""
        return self.burst == 1 or self.loss_rate == 0

    @property
    def transitions(self) -> tuple[float, float]:
        """Gilbert-Elliott (q, r) = (P(Good -> Bad), P(Bad -> Good)) per packet."""
        r = 1.0 / self.burst
        return self.loss_rate * r / (1.0 - self.loss_rate), r


def send_positions(ns: Sequence[int]) -> list[list[int]]:
    """Each stage's packet positions (0-based) in the packetizer's send order, for stages
    of ``ns[s]`` packets; ``out[s][i]`` is where packet i of stage s goes out."""
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in ns):
        raise InputError(f"packet counts must be ints >= 0, got {list(ns)!r}")
    return [list(p) for p in _positions(tuple(ns))]


@lru_cache(maxsize=4096)
def _positions(ns: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    # The key is computed exactly as spread_stages computes it, so float ties agree.
    keyed = sorted(((i + 0.5) / n, s, i) for s, n in enumerate(ns) for i in range(n))
    out = [[0] * n for n in ns]
    for position, (_, s, i) in enumerate(keyed):
        out[s][i] = position
    return tuple(tuple(p) for p in out)


def position_arrays(ns: Sequence[int]) -> tuple[np.ndarray, ...]:
    """:func:`send_positions` as read-only index arrays (cached: the planner asks for the
    same shapes many times)."""
    return _position_arrays(tuple(ns))


@lru_cache(maxsize=4096)
def _position_arrays(ns: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    out = []
    for p in _positions(ns):
        a = np.asarray(p, dtype=np.intp)
        a.flags.writeable = False
        out.append(a)
    return tuple(out)


def patterns(channel: Channel, samples: int, length: int) -> np.ndarray:
    """``samples`` sampled loss patterns of at least ``length`` positions, as a read-only
    (positions, samples) boolean array (True = lost); row t is position t of every
    pattern. Deterministic for the same channel and ``samples`` (module docstring)."""
    for name, value, low in (("samples", samples, 1), ("length", length, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}")
    return _patterns(channel, samples, max(1, -(-length // _BLOCK)))


@lru_cache(maxsize=32)
def _patterns(channel: Channel, samples: int, blocks: int) -> np.ndarray:
    out = np.concatenate([_block(channel, samples, b) for b in range(blocks)])
    out.flags.writeable = False
    return out


def _uniforms(samples: int, block: int) -> np.ndarray:
    """The uniforms of one block: the same for every channel (common random numbers).
    Not cached: redrawing is cheap next to the memory eight bytes a draw would hold."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence((PATTERN_SEED, block))))
    return rng.random((_BLOCK, samples))


@lru_cache(maxsize=64)
def _block(channel: Channel, samples: int, block: int) -> np.ndarray:
    """Positions block * _BLOCK .. of the chain; it continues from the previous block's
    last state, so the blocks join into one chain."""
    u = _uniforms(samples, block)
    p = channel.loss_rate
    out = np.empty((_BLOCK, samples), dtype=bool)
    if channel.iid:
        np.less(u, p, out=out)
    else:
        q, r = channel.transitions
        state = u[0] < p if block == 0 else _next(_block(channel, samples, block - 1)[-1],
                                                  u[0], q, r)
        out[0] = state
        for t in range(1, _BLOCK):
            out[t] = _next(out[t - 1], u[t], q, r)
    out.flags.writeable = False
    return out


def _next(bad: np.ndarray, u: np.ndarray, q: float, r: float) -> np.ndarray:
    """One step of the chain: Bad stays Bad unless u < r, Good turns Bad when u < q."""
    return np.where(bad, u >= r, u < q)
