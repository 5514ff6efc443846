"""Unequal error protection: the parity per stage that costs the least expected quality.

The rule-based
profiles of ``configs/fec.yaml`` give each stage a fixed parity ratio. This module instead
chooses every stage's parity count together, for a known loss channel and the actual shape
of one image's packets, by minimising the expected gap to the oracle -- the same image
received without loss at (1 - p) x the bytes.

Model. Stage s goes out as k data and m parity packets of one size; with L of them lost
it is complete when L <= m. When it is not, the data chunks that were lost stay lost --
the others still decode, each chunk being its own bitstream. A stage is decoded only when
every stage in its context (:func:`~resilient_tx.codec.stage_coder.context_stages`) is
complete. The share of the image's tokens left to the inpainter is the expectation of::

    lost = sum_s f_s * (1 - (1 - e_s) * prod_{j in context(s)} [stage j complete])

with f_s the stage's share of the tokens (1/16, 1/16, 1/8, 1/4, 1/2 for the quincunx
stages, PQ-MIM paper Sec. 3.2) and e_s the share of its data chunks lost (0 when the
stage is complete). The channel is a :class:`~resilient_tx.resilience.burst.Channel`:

* i.i.d. loss at rate p (burst 1): L ~ Binomial(k+m, p) independently per stage, so the
  expectation factorises into ``e(k, m) = E[L; L > m] / (k + m)`` and the product of
  ``P(L_j <= m_j)``, computed exactly.
* bursty loss (Gilbert-Elliott, mean burst > 1): the stages' packets are interleaved in
  the packetizer's send order (:func:`send_positions`), so one burst hits several stages
  at once and the stages' fates are correlated; the product of marginals would be wrong.
  The expectation is then estimated over :data:`MC_SAMPLES` loss patterns of the chain,
  drawn once from a fixed seed (:func:`burst.patterns`), by applying the receiver's rule
  above to each pattern (:func:`receiver_outcome`). The same patterns serve every plan
  (common random numbers), so plans are compared on equal draws, and the result is the
  same on every machine.

The cost is the expected PSNR lost to inpainting plus what the parity bytes would have
bought as rate::

    J(m) = db_per_lost * lost(m) + db_per_doubling * log2(wire bytes / data bytes)

Both constants are fitted to loss sweeps (see :class:`DistortionModel`). J is not convex in m
(a one-chunk stage gains little from the first extra copy when the stage after it is weak),
so :func:`allocate` runs coordinate descent with an exhaustive search per stage until no
stage changes, from the floor the profile's rules give.

Guard. A loss estimate can be too low, and the stages that every later stage is
conditioned on (:func:`shared_context`; stages 1 and 2 at the default context depth) take
the whole image down with them. :func:`guard_floor` gives each of them at least the
parity that keeps its failure probability at or below its target under i.i.d. loss at
:func:`guard_rate` -- ``max(g p, p + 0.1 (g - 1))`` for a guard factor g, capped at
``max(p, 0.5)`` -- so a plan made for p degrades gently when the channel turns out worse.
The default targets (:data:`GUARD_TARGETS`) guard stage 1 only: it is a small share of the
bytes, and guarding stage 2 as well would double the price. The floor is computed for
i.i.d. loss even on a bursty channel, because the send order spreads a stage's few packets
over the whole image. g = 1 turns the guard off.

Byte budget. :func:`allocate_within` answers the other question: with at most B bytes on
the wire for a given set of stages, which parity loses the fewest tokens. Under i.i.d.
loss the expected share kept nests, ``V = g_1 + c_1 (g_2 + c_2 (g_3 + g_4 + g_5))`` at
context depth 2 (c: a stage's completion probability, g: its share times the part of it
decoded), so a dynamic program over the budget, from the innermost level out, finds the
optimum (up to the budget's rounding into :data:`DP_CELLS` cells). That plan, and the
floor, are then refined on the channel's own estimate -- exact, or sampled for bursty
loss -- by adding parity greedily by expected gain per byte (up to four packets at once:
a one-chunk stage gains little from a single extra copy in some regimes) and moving
packets between stages while that helps; the better of the two wins.

Packet size. Small images have only 1-3 chunks per stage at 1200-byte packets, and RS over
so few packets needs whole extra copies. The packetizer therefore also cuts the stages into
1/2, 1/3 and 1/4 of the packet size and keeps the cut whose plan has the lowest
:func:`score` (the cost on absolute bytes, so header overheads compare fairly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np

from resilient_tx.errors import ConfigError, InputError
from resilient_tx.resilience.burst import Channel as Channel
from resilient_tx.resilience.burst import patterns, position_arrays
from resilient_tx.resilience.burst import send_positions as send_positions

MAX_CODEWORD = 255  # GF(256): k + m <= 255 (fec.py)
MC_SAMPLES = 4096  # loss patterns per estimate under bursty loss
GUARD_STEP = 0.1  # the guard rate is at least p + GUARD_STEP * (g - 1)
GUARD_CAP = 0.5  # ... and at most max(p, GUARD_CAP)
#: Failure probability per shared context stage at the guard rate (stage 1, stage 2, ...;
#: 1 = no floor): stage 1 conditions every other stage and is the cheapest to guard.
GUARD_TARGETS = (0.02, 1.0)
LOOKAHEAD = 4  # packets allocate_within may add to one stage in one step
DP_CELLS = 4096  # budget resolution of allocate_within's exact search

_Objective = Callable[[Sequence[int]], float]  # a plan's cost for allocate_within


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


@dataclass(frozen=True)
class Outcome:
    """What the receiver makes of a batch of loss patterns (:func:`receiver_outcome`)."""

    complete: np.ndarray  # (stages, patterns) True where the stage's FEC succeeded
    lost: np.ndarray  # (patterns,) share of the image's tokens left to the inpainter


def as_channel(channel: Channel | float) -> Channel:
    """``channel``, or i.i.d. loss at rate ``channel`` when it is a number."""
    return channel if isinstance(channel, Channel) else Channel(channel)


# ------------------------------------------------------------------ expected loss


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


def expected_lost(stages: Sequence[StageShape], parity: Sequence[int],
                  channel: Channel | float, samples: int = MC_SAMPLES) -> float:
    """Expected share of the image's tokens that must be inpainted (module docstring):
    exact under i.i.d. loss, over ``samples`` fixed loss patterns under bursty loss.
    A bare number is an i.i.d. loss rate."""
    ch = as_channel(channel)
    if len(parity) != len(stages) or any(m < 0 for m in parity):
        raise InputError(f"need a parity >= 0 per stage, got {parity!r}")
    if ch.iid:
        return _iid_lost(stages, parity, ch.loss_rate)
    return _sampled_lost(tuple(stages), tuple(parity), ch, samples)


def _iid_lost(stages: Sequence[StageShape], parity: Sequence[int], p: float) -> float:
    terms = [_loss_terms(st.k, m, p) for st, m in zip(stages, parity, strict=True)]
    out = 0.0
    for st, (_, lost) in zip(stages, terms, strict=True):
        ok = 1.0 - lost
        for complete, _ in terms[: st.context]:
            ok *= complete
        out += st.share * (1.0 - ok)
    return out


@lru_cache(maxsize=65536)
def _sampled_lost(stages: tuple[StageShape, ...], parity: tuple[int, ...], channel: Channel,
                  samples: int) -> float:
    total = sum(st.k for st in stages) + sum(parity)
    outcome = receiver_outcome(stages, parity, patterns(channel, samples, total))
    return float(outcome.lost.mean())


def receiver_outcome(stages: Sequence[StageShape], parity: Sequence[int],
                     lost: np.ndarray) -> Outcome:
    """The receiver's rule applied to loss patterns in send order.

    ``lost`` is (positions, patterns), True = lost, row t the t-th packet sent; the stages'
    packets sit at :func:`send_positions` (data first within a stage, then parity), and
    rows past the image's last packet are ignored.
    """
    ns = [st.k + m for st, m in zip(stages, parity, strict=True)]
    if lost.ndim != 2 or lost.shape[0] < sum(ns):
        raise InputError(f"loss patterns must be (>= {sum(ns)} positions, patterns), "
                         f"got shape {lost.shape}")
    complete = np.empty((len(stages), lost.shape[1]), dtype=bool)
    share = np.zeros(lost.shape[1])
    for s, (st, m, where) in enumerate(zip(stages, parity, position_arrays(ns), strict=True)):
        gone = lost[where]
        complete[s] = gone.sum(axis=0) <= m
        decodable = complete[: st.context].all(axis=0)
        data_lost = gone[: st.k].sum(axis=0) / st.k
        share += st.share * np.where(decodable, np.where(complete[s], 0.0, data_lost), 1.0)
    return Outcome(complete, share)


def wire_bytes(stages: Sequence[StageShape], parity: Sequence[int]) -> int:
    """Bytes on the wire of ``stages`` sent with ``parity``."""
    return sum((st.k + m) * st.packet_bytes for st, m in zip(stages, parity, strict=True))


def score(stages: Sequence[StageShape], parity: Sequence[int], channel: Channel | float,
          model: DistortionModel) -> float:
    """J(m) with the rate term on absolute wire bytes, so that plans cut into different
    packet sizes (different header overheads, different k) can be compared; for any one
    cut it differs from :func:`cost` by a constant, so both rank parities alike."""
    return (model.db_per_lost * expected_lost(stages, parity, channel)
            + model.db_per_doubling * math.log2(wire_bytes(stages, parity)))


def cost(stages: Sequence[StageShape], parity: Sequence[int], channel: Channel | float,
         model: DistortionModel) -> float:
    """J(m): expected dB lost to inpainting plus the dB the parity bytes cost as rate
    (0 parity, 0 loss -> 0)."""
    data = sum(st.k * st.packet_bytes for st in stages)
    return score(stages, parity, channel, model) - model.db_per_doubling * math.log2(data)


# ------------------------------------------------------------------ planning


def _trial(stages: Sequence[StageShape], parity: list[int], s: int, channel: Channel,
           model: DistortionModel, m: int) -> tuple[float, int]:
    """Sort key of parity ``m`` for stage ``s`` with the others fixed (ties: less parity)."""
    return score(stages, [*parity[:s], m, *parity[s + 1:]], channel, model), m


def _floor(stages: Sequence[StageShape], floor: Sequence[int] | None) -> list[int]:
    """The floor, checked, one entry per stage (zeros when None)."""
    lows = list(floor) if floor is not None else [0] * len(stages)
    if len(lows) != len(stages) or any(isinstance(m, bool) or not isinstance(m, int) or m < 0
                                       for m in lows):
        raise InputError(f"floor must give a parity >= 0 per stage, got {floor!r}")
    return lows


def allocate(stages: Sequence[StageShape], channel: Channel | float, model: DistortionModel,
             floor: Sequence[int] | None = None) -> tuple[int, ...]:
    """Parity per stage minimising :func:`cost` (via :func:`score`, the same ranking
    without the constant) on ``channel`` (a bare number: i.i.d. loss at that rate), never
    below ``floor``.

    Deterministic: the same shapes and channel give the same answer on every machine (it
    only decides how many parity packets are sent; the receiver reads k and n from the
    packets).
    """
    ch = as_channel(channel)
    stages = tuple(stages)  # hashable: bursty estimates are cached per plan
    lows = _floor(stages, floor)
    parity = [min(m, MAX_CODEWORD - st.k) for m, st in zip(lows, stages, strict=True)]
    if ch.loss_rate == 0:
        return tuple(parity)
    for _ in range(32):  # converges in 2-4 rounds in practice; the bound is a safeguard
        changed = False
        for s, st in enumerate(stages):
            top = min(MAX_CODEWORD - st.k, parity[s] + 4 * st.k + 24)
            best = min(range(min(lows[s], top), top + 1),
                       key=partial(_trial, stages, parity, s, ch, model))
            if best != parity[s]:
                parity[s], changed = best, True
        if not changed:
            break
    return tuple(parity)


def guard_rate(p: float, guard: float) -> float:
    """Loss rate the shared context stages must survive when planning for ``p`` with
    guard factor ``guard`` (module docstring); ``p`` itself when ``guard`` <= 1."""
    if guard <= 1:
        return p
    return min(max(guard * p, p + GUARD_STEP * (guard - 1)), max(p, GUARD_CAP))


def shared_context(stages: Sequence[StageShape]) -> int:
    """How many leading stages every later stage is conditioned on."""
    n = 0
    while n < len(stages) - 1 and all(st.context > n for st in stages[n + 1:]):
        n += 1
    return n


@lru_cache(maxsize=65536)
def survival_parity(k: int, p: float, target: float) -> int:
    """Smallest m <= 255 - k with P(Binomial(k + m, p) > m) <= ``target``: the parity that
    lets k data packets survive i.i.d. loss at ``p`` but with probability ``target``;
    255 - k (the most GF(256) allows) when no m fits."""
    for m in range(MAX_CODEWORD - k + 1):
        if binomial_tail(k + m, p, m) <= target:
            return m
    return MAX_CODEWORD - k


def guard_floor(stages: Sequence[StageShape], p: float, guard: float,
                targets: Sequence[float] = GUARD_TARGETS) -> tuple[int, ...]:
    """Least parity per stage under the guard rule (module docstring): shared context stage
    s survives :func:`guard_rate` with failure probability <= ``targets[s]`` (the last
    entry for stages past the end; 1 = no floor); 0 for the other stages, and 0
    everywhere when ``guard`` <= 1 or ``p`` = 0."""
    if not targets or any(isinstance(t, bool) or not isinstance(t, (int, float))
                          or not 0 < t <= 1 for t in targets):
        raise InputError(f"guard targets must be in (0, 1], got {targets!r}")
    if guard <= 1 or p == 0:
        return (0,) * len(stages)
    rate, n = guard_rate(p, guard), shared_context(stages)
    return tuple(survival_parity(st.k, rate, targets[min(s, len(targets) - 1)]) if s < n
                 else 0 for s, st in enumerate(stages))


# ------------------------------------------------------------------ byte budget


def allocate_within(stages: Sequence[StageShape], channel: Channel | float,
                    model: DistortionModel, budget_bytes: int,
                    floor: Sequence[int] | None = None) -> tuple[int, ...] | None:
    """Parity per stage (never below ``floor``) minimising ``db_per_lost`` x the expected
    share of tokens lost, with at most ``budget_bytes`` on the wire; None when even the
    floor (zeros by default) does not fit.

    Two starts, each refined by greedy additions and moves between stages on the
    channel's own estimate (module docstring); the better plan wins. Deterministic.
    """
    ch = as_channel(channel)
    if (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float))
            or not budget_bytes >= 0):
        raise InputError(f"byte budget must be a number >= 0, got {budget_bytes!r}")
    stages = tuple(stages)
    lows = tuple(min(m, MAX_CODEWORD - st.k)
                 for m, st in zip(_floor(stages, floor), stages, strict=True))
    if wire_bytes(stages, lows) > budget_bytes:
        return None
    if ch.loss_rate == 0 or not stages:
        return lows

    def objective(plan: Sequence[int]) -> float:
        return model.db_per_lost * expected_lost(stages, plan, ch)

    starts = [list(lows)]
    if _nested(stages):
        extra = int(min(budget_bytes - wire_bytes(stages, lows),
                        sum((MAX_CODEWORD - st.k - m) * st.packet_bytes
                            for st, m in zip(stages, lows, strict=True))))
        starts.insert(0, _knapsack(stages, ch.loss_rate, lows, extra))
    plans = [_refine(stages, start, lows, objective, budget_bytes) for start in starts]
    best: list[int] = min(plans, key=objective)  # ties: the first, the knapsack's
    return tuple(best)


def _refine(stages: tuple[StageShape, ...], parity: list[int], lows: tuple[int, ...],
            objective: _Objective, budget: float) -> list[int]:
    """Greedy additions, then moves between stages, until neither helps."""
    for _ in range(64):  # each round strictly improves; the bound is a safeguard
        parity = _greedy(stages, parity, objective, budget)
        moved = _exchange(stages, parity, lows, objective, budget)
        if moved is None:
            break
        parity = moved
    return parity


def _nested(stages: Sequence[StageShape]) -> bool:
    """True when the expected share kept nests as ``V = sum_{ctx=0} g + c_0 (sum_{ctx=1} g
    + c_1 (...))`` (g_s: f_s times the share of stage s decoded when its context is
    complete, c_s: P(stage s complete)), which holds for every context depth: each stage
    is conditioned on at most the stages before it, and a stage that some later stage is
    conditioned on is itself conditioned on all stages before it."""
    top = max((st.context for st in stages), default=0)
    return all(st.context <= s and (st.context == s or s >= top)
               for s, st in enumerate(stages))


def _knapsack(stages: tuple[StageShape, ...], p: float, lows: tuple[int, ...],
              extra: int) -> list[int]:
    """The parity that keeps the most tokens under i.i.d. loss at ``p`` with at most
    ``extra`` bytes above ``lows``: dynamic programming over the nesting of
    :func:`_nested`, from the innermost level out, with the budget in at most
    :data:`DP_CELLS` cells (each packet's bytes rounded up to whole cells, so the plan
    always fits; exact when ``extra`` <= DP_CELLS)."""
    unit = max(1, -(-extra // DP_CELLS))
    cells = extra // unit
    value = np.zeros(cells + 1)  # best value of the levels done so far, per budget
    steps: list[tuple[int, np.ndarray, int]] = []
    top = max(st.context for st in stages)
    for t in range(top, -1, -1):
        group = [s for s, st in enumerate(stages) if st.context == t]
        for s in sorted(group, key=lambda s: s != t):  # stage t first: it scales the rest
            st, width = stages[s], -(-stages[s].packet_bytes // unit)
            choices = range(min(MAX_CODEWORD - st.k - lows[s], cells // width) + 1)
            terms = [_loss_terms(st.k, lows[s] + j, p) for j in choices]
            scale = [c if s == t else 1.0 for c, _ in terms]
            value, choice = _dp_step(value, [st.share * (1 - e) for _, e in terms], scale,
                                     width)
            steps.append((s, choice, width))
    parity, budget = list(lows), cells
    for s, choice, width in reversed(steps):
        j = int(choice[budget])
        parity[s] += j
        budget -= j * width
    return parity


def _dp_step(value: np.ndarray, gain: list[float], scale: list[float],
             width: int) -> tuple[np.ndarray, np.ndarray]:
    """One stage of :func:`_knapsack`: new[b] = max_j gain[j] + scale[j] * value[b - j w],
    and the j that attains it (the least on ties)."""
    cells = value.size - 1
    best = np.full(cells + 1, -np.inf)
    choice = np.zeros(cells + 1, dtype=np.intp)
    for j, (g, c) in enumerate(zip(gain, scale, strict=True)):
        cost = j * width
        candidate = g + c * value[: cells + 1 - cost]
        better = candidate > best[cost:]
        best[cost:][better] = candidate[better]
        choice[cost:][better] = j
    return best, choice


def _greedy(stages: tuple[StageShape, ...], parity: list[int], objective: _Objective,
            budget: float) -> list[int]:
    """Add parity by the best expected gain per byte until nothing that fits helps."""
    parity = list(parity)
    here, spent = objective(parity), wire_bytes(stages, parity)
    while True:
        best: tuple[float, list[int], float, int] | None = None
        for s, st in enumerate(stages):
            for d in range(1, LOOKAHEAD + 1):
                if st.k + parity[s] + d > MAX_CODEWORD or spent + d * st.packet_bytes > budget:
                    break
                trial = [*parity[:s], parity[s] + d, *parity[s + 1:]]
                value = objective(trial)
                rate = (here - value) / (d * st.packet_bytes)
                if value < here and (best is None or rate > best[0]):
                    best = (rate, trial, value, d * st.packet_bytes)
        if best is None:
            return parity
        _, parity, here, cost_bytes = best
        spent += cost_bytes


def _exchange(stages: tuple[StageShape, ...], parity: list[int], lows: tuple[int, ...],
              objective: _Objective, budget: float) -> list[int] | None:
    """The best plan that takes 1..LOOKAHEAD parity packets from one stage and spends the
    freed bytes on 1..LOOKAHEAD packets of another, if it beats ``parity``; else None."""
    here, spent = objective(parity), wire_bytes(stages, parity)
    best: tuple[float, list[int]] | None = None
    for a, sa in enumerate(stages):
        for r in range(1, min(LOOKAHEAD, parity[a] - lows[a]) + 1):
            for b, sb in enumerate(stages):
                for d in range(1, LOOKAHEAD + 1) if b != a else ():
                    extra = d * sb.packet_bytes - r * sa.packet_bytes
                    if sb.k + parity[b] + d > MAX_CODEWORD or spent + extra > budget:
                        break
                    trial = list(parity)
                    trial[a] -= r
                    trial[b] += d
                    value = objective(trial)
                    if value < here - 1e-12 and (best is None or value < best[0]):
                        best = (value, trial)
    return None if best is None else best[1]
