"""Seeded packet channel simulator: loss, reordering, duplication, bit corruption.

Pure and reproducible: :func:`transmit` maps a list of datagrams, a
:class:`ChannelConfig` and an explicit integer seed to the delivered datagrams and a
:class:`ChannelStats`; the same three inputs always give the same output.

Loss models
    ``bernoulli``: every packet is lost independently with probability p.

    ``gilbert``: the Gilbert-Elliott two-state Markov chain in its classic "simple
    Gilbert" form, with loss probability 0 in the Good state and 1 in the Bad state, so a
    burst (a maximal run of consecutive losses) is exactly one sojourn in Bad. With
    q = P(Good -> Bad) and r = P(Bad -> Good) per packet:

    * mean burst length  L = 1 / r          (sojourn in Bad is Geometric(r))
    * mean loss rate     p = q / (q + r)    (stationary probability of Bad)

    hence r = 1 / L and q = p r / (1 - p) = p / ((1 - p) L). q <= 1 requires
    L >= p / (1 - p); L = 1 / (1 - p) gives q = p, r = 1 - p, i.e. i.i.d. loss. The
    chain starts in its stationary distribution, so every packet has loss rate p.

Impairments, applied in this order to the packets that survive loss:

* duplication: each survivor is, with probability ``duplicate_rate``, followed by one
  extra copy;
* corruption: each delivered copy independently gets, with probability
  ``corrupt_rate``, ``corrupt_bits`` distinct bits flipped. CRC-32 detects any 1 to 3
  flipped bits, so with the default of 1 bit ``Packet.parse`` rejects every one;
* reordering: each delivered copy is, with probability ``reorder_rate``, delayed by a
  uniform 1..``reorder_depth`` positions (it then arrives after that many packets sent
  after it, fewer at the end of the stream).

Each model draws from its own child of ``SeedSequence(seed)``, so with one seed the loss
pattern does not change when, say, the reorder rate does (common random numbers across
the points of a sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from resilient_tx.errors import InputError

LOSS_MODELS = ("bernoulli", "gilbert")
_STREAMS = ("loss", "duplicate", "corrupt", "reorder")


@dataclass(frozen=True)
class ChannelConfig:
    """Channel parameters (module docstring gives the model definitions)."""

    loss_model: str = "bernoulli"
    loss_rate: float = 0.0  # stationary probability that a sent packet is lost
    burst_length: float = 1.0  # mean run of consecutive losses; "gilbert" only
    duplicate_rate: float = 0.0
    corrupt_rate: float = 0.0
    corrupt_bits: int = 1  # bits flipped in a corrupted packet (<= 3: CRC always catches)
    reorder_rate: float = 0.0
    reorder_depth: int = 3  # a delayed packet moves back 1..reorder_depth positions

    def __post_init__(self) -> None:
        if self.loss_model not in LOSS_MODELS:
            raise InputError(f"unknown loss model {self.loss_model!r}; available: "
                             f"{', '.join(LOSS_MODELS)}")
        _check_rate("loss_rate", self.loss_rate, upper_open=True)
        for name in ("duplicate_rate", "corrupt_rate", "reorder_rate"):
            _check_rate(name, getattr(self, name), upper_open=False)
        _check_number("burst_length", self.burst_length, low=1.0)
        _check_int("corrupt_bits", self.corrupt_bits, low=1)
        _check_int("reorder_depth", self.reorder_depth, low=1)
        if self.loss_model == "gilbert":
            _check_gilbert(self.loss_rate, self.burst_length)

    @property
    def transitions(self) -> tuple[float, float]:
        """Gilbert-Elliott (q, r) = (P(Good -> Bad), P(Bad -> Good)) per packet."""
        r = 1.0 / self.burst_length
        return self.loss_rate * r / (1.0 - self.loss_rate), r


@dataclass(frozen=True)
class ChannelStats:
    """What the channel did to one :func:`transmit` call."""

    sent: int
    delivered: int  # datagrams handed to the receiver, duplicates and corrupted included
    lost: int
    duplicated: int  # extra copies delivered
    corrupted: int  # delivered copies with flipped bits
    reordered: int  # delivered copies that arrive after a copy of a later-sent packet

    @property
    def loss_rate(self) -> float:
        """Fraction of sent packets lost (0 for an empty transmission)."""
        return self.lost / self.sent if self.sent else 0.0


def transmit(packets: Sequence[bytes], config: ChannelConfig,
             seed: int) -> tuple[list[bytes], ChannelStats]:
    """Send ``packets`` through the channel; return the arrivals in order and the stats."""
    if not all(isinstance(p, (bytes, bytearray)) for p in packets):
        raise InputError("transmit expects a sequence of bytes packets")
    rngs = _rngs(seed)
    lost = _loss_mask(len(packets), config, rngs["loss"])
    survivors = [bytes(p) for p, gone in zip(packets, lost, strict=True) if not gone]
    copies, duplicated = _duplicate(survivors, config.duplicate_rate, rngs["duplicate"])
    copies, corrupted = _corrupt(copies, config, rngs["corrupt"])
    order = _reorder(len(copies), config, rngs["reorder"])
    delivered = [copies[i][1] for i in order]
    sent_index = np.array([copies[i][0] for i in order], dtype=np.int64)
    stats = ChannelStats(sent=len(packets), delivered=len(delivered), lost=int(lost.sum()),
                         duplicated=duplicated, corrupted=corrupted,
                         reordered=_count_reordered(sent_index))
    return delivered, stats


def loss_pattern(n: int, config: ChannelConfig, seed: int) -> np.ndarray:
    """The boolean loss mask (True = lost) that :func:`transmit` applies to n packets."""
    _check_int("n", n, low=0)
    return _loss_mask(n, config, _rngs(seed)["loss"])


def burst_lengths(lost: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of True in a boolean mask (the loss bursts)."""
    padded = np.concatenate(([False], np.asarray(lost, dtype=bool), [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return edges[1::2] - edges[::2]


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    children = np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children,
                                                                       strict=True)}


def _loss_mask(n: int, config: ChannelConfig, rng: np.random.Generator) -> np.ndarray:
    if config.loss_rate == 0 or n == 0:
        return np.zeros(n, dtype=bool)
    if config.loss_model == "bernoulli":
        return rng.random(n) < config.loss_rate
    return _gilbert_mask(n, config, rng)


def _gilbert_mask(n: int, config: ChannelConfig, rng: np.random.Generator) -> np.ndarray:
    """Sample the chain by sojourns, not per packet: alternating Geometric run lengths.

    Good runs are Geometric(q), Bad runs Geometric(r); memorylessness makes the first run
    (starting from the stationary state) Geometric too.
    """
    q, r = config.transitions
    bad = bool(rng.random() < config.loss_rate)
    mask = np.empty(0, dtype=bool)
    # Enough runs for n packets in one draw on average; loop only for the tail.
    runs = max(16, int(2 * n * q * r / (q + r)) + 16)
    while mask.size < n:
        leave = np.tile([r, q] if bad else [q, r], runs // 2)
        lengths = rng.geometric(leave)
        states = np.tile([bad, not bad], runs // 2)
        mask = np.concatenate((mask, np.repeat(states, lengths)))
    return mask[:n]


def _duplicate(packets: list[bytes], rate: float,
               rng: np.random.Generator) -> tuple[list[tuple[int, bytes]], int]:
    """(sent position, bytes) per copy; a duplicate directly follows its original."""
    extra = rng.random(len(packets)) < rate
    copies = []
    for i, (packet, twice) in enumerate(zip(packets, extra, strict=True)):
        copies.extend([(i, packet)] * (2 if twice else 1))
    return copies, int(extra.sum())


def _corrupt(copies: list[tuple[int, bytes]], config: ChannelConfig,
             rng: np.random.Generator) -> tuple[list[tuple[int, bytes]], int]:
    hit = rng.random(len(copies)) < config.corrupt_rate
    out, corrupted = [], 0
    for (index, packet), flip in zip(copies, hit, strict=True):
        if flip and packet:
            packet = _flip_bits(packet, config.corrupt_bits, rng)
            corrupted += 1
        out.append((index, packet))
    return out, corrupted


def _flip_bits(packet: bytes, bits: int, rng: np.random.Generator) -> bytes:
    data = np.frombuffer(packet, dtype=np.uint8).copy()
    positions = rng.choice(8 * data.size, size=min(bits, 8 * data.size), replace=False)
    # XOR once per position; positions are distinct, so no flip undoes another.
    np.bitwise_xor.at(data, positions // 8, (1 << (positions % 8)).astype(np.uint8))
    return data.tobytes()


def _reorder(count: int, config: ChannelConfig, rng: np.random.Generator) -> np.ndarray:
    """Arrival order: a delayed copy sorts just after the copy ``delay`` places later."""
    delayed = rng.random(count) < config.reorder_rate
    delay = rng.integers(1, config.reorder_depth + 1, size=count)
    keys = np.arange(count) + np.where(delayed, delay + 0.5, 0.0)
    return np.argsort(keys, kind="stable")


def _count_reordered(sent_index: np.ndarray) -> int:
    """Copies arriving after some copy of a packet sent later than them."""
    if sent_index.size == 0:
        return 0
    latest_before = np.maximum.accumulate(np.concatenate(([-1], sent_index[:-1])))
    return int(np.count_nonzero(sent_index < latest_before))


def _check_rate(name: str, value: float, upper_open: bool) -> None:
    _check_number(name, value, low=0.0)
    if value > 1 or (upper_open and value == 1):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise InputError(f"{name} must be in {bound}, got {value}")


def _check_number(name: str, value: float, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise InputError(f"{name} must be a number >= {low}, got {value!r}")
    if value == float("inf"):
        raise InputError(f"{name} must be finite")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an int >= {low}, got {value!r}")


def _check_gilbert(p: float, burst: float) -> None:
    """q = p / ((1 - p) L) is a probability only if L >= p / (1 - p)."""
    if burst < p / (1 - p):
        raise InputError(f"mean burst length {burst} is impossible at loss rate {p}: "
                         f"Gilbert-Elliott needs burst_length >= p / (1 - p) = "
                         f"{p / (1 - p):.3g}")
