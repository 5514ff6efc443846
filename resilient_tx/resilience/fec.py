"""Systematic Reed-Solomon erasure code across the k chunks of one quincunx stage.

A stage's k data chunks become k data shards, each laid out as::

    length u16 (little-endian) | chunk bytes | zero padding up to the longest chunk

and ``parity`` parity shards of the same length follow. Byte j of shards 0..n-1
(n = k + parity) is one codeword of reedsolo's RS(n, k) code over GF(256), so any k of
the n shards give back every chunk exactly, length prefix included. Shards arrive behind
the packet CRC, so the decoder only ever sees erasures, never errors, and uses reedsolo's
erasure-only decoding (``erase_pos``, ``only_erasures=True``).

Speed. All ~1150 codewords of a stage share one erasure pattern, and RS encoding and
erasure decoding are linear over GF(256). So reedsolo itself computes the k columns of
the (pattern-specific) linear map, by encoding or decoding unit vectors, and numpy applies
that map to all codewords at once with reedsolo's GF(256) log/antilog tables. That is k
reedsolo calls per stage instead of one per byte position, and the matrix for an erasure
pattern is cached. The test suite checks the batched output against reedsolo's per-codeword output.

Profiles: named parity counts per stage in YAML, see
:class:`FecProfile` and ``resilient_tx/configs/fec.yaml``. Protection is unequal: stage 1
conditions every later stage, so earlier stages get at least as much parity per chunk.
:func:`for_loss` plans for a known loss rate instead: the parity of all of an image's
stages is chosen together to minimise the expected quality lost (:mod:`uep`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache, lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import reedsolo

from resilient_tx.config import DEFAULT_MAX_PACKET, coerce, field_types, read_yaml
from resilient_tx.errors import ConfigError, FecError, InputError
from resilient_tx.resilience import uep
from resilient_tx.resilience.packet import max_payload

MAX_CODEWORD = 255  # GF(256): a codeword holds at most 255 symbols, so k + parity <= 255
PREFIX = struct.Struct("<H")
PREFIX_SIZE = PREFIX.size
MAX_CHUNK = 0xFFFF - PREFIX_SIZE  # a shard must fit the packet's u16 payload length
PROFILES_PATH = Path(__file__).parents[1] / "configs" / "fec.yaml"


# ---------------------------------------------------------------------------- coding


def max_chunk_size(max_packet: int = DEFAULT_MAX_PACKET) -> int:
    """Largest chunk whose shard still fits one packet of ``max_packet`` bytes."""
    return max_payload(max_packet) - PREFIX_SIZE


def encode_shards(chunks: Sequence[bytes], parity: int) -> list[bytes]:
    """Return the k data shards then ``parity`` parity shards, all of one length.

    Raises :class:`InputError` for no chunks, a chunk over :data:`MAX_CHUNK` bytes, a
    negative parity or k + parity > 255.
    """
    _check_code(len(chunks), parity, InputError)
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, (bytes, bytearray)) or len(chunk) > MAX_CHUNK:
            raise InputError(f"chunk {i} must be bytes of at most {MAX_CHUNK} bytes")
    width = PREFIX_SIZE + max(len(c) for c in chunks)
    data = np.zeros((len(chunks), width), dtype=np.uint8)
    for i, chunk in enumerate(chunks):
        framed = PREFIX.pack(len(chunk)) + bytes(chunk)
        data[i, : len(framed)] = np.frombuffer(framed, dtype=np.uint8)
    rows = list(data)
    if parity:
        rows += list(_gf_matmul(_parity_matrix(len(chunks), parity), data))
    return [row.tobytes() for row in rows]


def decode_shards(shards: Mapping[int, bytes], k: int, parity: int) -> list[bytes] | None:
    """Recover the k original chunks from any k of the n = k + parity shards.

    ``shards`` maps shard index (0..n-1; index >= k is parity) to the shard bytes.
    Returns ``None`` when fewer than k shards are present, i.e. more than ``parity`` were
    lost: an ordinary channel outcome, not an error. The data shards that did arrive are
    still usable on their own through :func:`strip_shard`.

    Raises :class:`FecError` when the shards contradict each other or the code
    parameters (which come off the wire) are impossible: k < 1, parity < 0, k + parity >
    255, an index outside 0..n-1, unequal shard lengths, a length prefix over its shard.
    """
    _check_code(k, parity, FecError)
    _check_shards(shards, k + parity)
    if len(shards) < k:
        return None
    missing = tuple(i for i in range(k) if i not in shards)
    if missing:
        shards = {**shards, **_recover(shards, k, parity, missing)}
    return [strip_shard(shards[i]) for i in range(k)]


def _recover(shards: Mapping[int, bytes], k: int, parity: int,
             missing: tuple[int, ...]) -> dict[int, bytes]:
    """The ``missing`` data shards, computed from the first k shards present."""
    known = tuple(sorted(shards)[:k])
    rows = np.stack([np.frombuffer(shards[i], dtype=np.uint8) for i in known])
    recovered = _gf_matmul(_recovery_matrix(k, parity, known, missing), rows)
    return {i: row.tobytes() for i, row in zip(missing, recovered, strict=True)}


def strip_shard(shard: bytes) -> bytes:
    """The chunk inside one data shard (drop the length prefix and the padding).

    Raises :class:`FecError` if the shard is shorter than its prefix or the prefix claims
    more bytes than the shard holds.
    """
    if len(shard) < PREFIX_SIZE:
        raise FecError(f"shard of {len(shard)} bytes has no {PREFIX_SIZE}-byte length prefix")
    (length,) = PREFIX.unpack_from(shard)
    if length > len(shard) - PREFIX_SIZE:
        raise FecError(f"shard length prefix {length} exceeds its "
                       f"{len(shard) - PREFIX_SIZE} payload bytes")
    return bytes(shard[PREFIX_SIZE: PREFIX_SIZE + length])


def _check_code(k: int, parity: int, error: type[Exception]) -> None:
    for name, value, low in (("k", k, 1), ("parity", parity, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise error(f"{name} must be an int >= {low}, got {value!r}")
    if k + parity > MAX_CODEWORD:
        raise error(f"k + parity = {k} + {parity} exceeds the {MAX_CODEWORD}-symbol "
                    "GF(256) Reed-Solomon codeword")


def _check_shards(shards: Mapping[int, bytes], n: int) -> None:
    """Raise :class:`FecError` unless indices are in 0..n-1 and all lengths agree."""
    bad = [i for i in shards if isinstance(i, bool) or not isinstance(i, int)
           or not 0 <= i < n]
    if bad:
        raise FecError(f"shard index {bad[0]!r} outside the stage's 0..{n - 1}")
    lengths = {len(s) for s in shards.values()}
    if len(lengths) > 1:
        raise FecError(f"shards of one stage differ in length: {sorted(lengths)}")
    if lengths and min(lengths) < PREFIX_SIZE:
        raise FecError(f"shards of {min(lengths)} bytes have no {PREFIX_SIZE}-byte "
                       "length prefix")


# ------------------------------------------------------- GF(256) linear maps via reedsolo


@cache
def _codec(parity: int) -> reedsolo.RSCodec:
    # RSCodec re-installs its own GF tables on every call, so a codec made elsewhere
    # with other parameters (e.g. a JPEG+FEC baseline) cannot corrupt ours.
    return reedsolo.RSCodec(parity)


@lru_cache(maxsize=1)
def _mul_table() -> np.ndarray:
    """256x256 GF(256) product table from reedsolo's log/antilog tables (prim 0x11d)."""
    codec = _codec(1)
    log = np.frombuffer(bytes(codec.gf_log), dtype=np.uint8).astype(np.intp)
    exp = np.frombuffer(bytes(codec.gf_exp), dtype=np.uint8)
    table = exp[log[:, None] + log[None, :]]
    table[0, :] = 0  # log(0) is undefined; 0 * x = 0
    table[:, 0] = 0
    table.flags.writeable = False
    return table


def _gf_matmul(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """GF(256) product (r x k) @ (k x width), vectorised over the width (the byte columns).

    One loop step per input row keeps temporaries at r x width; a single 3-D gather would
    need r x k x width index arrays (hundreds of MB for k = 200).
    """
    table = _mul_table()
    out = np.zeros((matrix.shape[0], rows.shape[1]), dtype=np.uint8)
    for i in range(matrix.shape[1]):
        out ^= table[matrix[:, i]][:, rows[i]]  # row j of table[c] is c * j in GF(256)
    return out


@lru_cache(maxsize=256)
def _parity_matrix(k: int, parity: int) -> np.ndarray:
    """(parity x k): column i is reedsolo's parity of the i-th unit message."""
    columns = []
    for i in range(k):
        unit = bytearray(k)
        unit[i] = 1
        columns.append(bytes(_codec(parity).encode(unit))[k:])
    return _frozen(np.frombuffer(b"".join(columns), dtype=np.uint8).reshape(k, parity).T)


@lru_cache(maxsize=1024)
def _recovery_matrix(k: int, parity: int, known: tuple[int, ...],
                     missing: tuple[int, ...]) -> np.ndarray:
    """(len(missing) x k): maps the k ``known`` symbols to the ``missing`` data symbols.

    Column i is reedsolo's erasure decoding of the codeword that is 1 at ``known[i]`` and
    0 at the other known positions, with every unknown position erased (exactly
    ``parity`` of them, the most RS can fill, and enough to pin the codeword down).
    """
    n = k + parity
    erased = sorted(set(range(n)) - set(known))
    columns = []
    for position in known:
        word = bytearray(n)
        word[position] = 1
        _, full, _ = _codec(parity).decode(word, erase_pos=erased, only_erasures=True)
        columns.append(bytes(full[j] for j in missing))
    return _frozen(np.frombuffer(b"".join(columns), dtype=np.uint8).reshape(k, len(missing)).T)


def _frozen(matrix: np.ndarray) -> np.ndarray:
    """A read-only copy: cached matrices are shared by every later call."""
    out = np.ascontiguousarray(matrix).copy()
    out.flags.writeable = False
    return out


# ---------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class FecProfile:
    """Parity count per quincunx stage (stages as in PQ-MIM paper Sec. 3.2).

    For stage s with k data chunks the parity is the largest of
    ``ceil(overhead[s] * k)``, ``min_parity[s]`` and, when ``loss_rate`` > 0, the
    smallest m with P(more than m of the k + m packets lost) <= ``targets[s]`` under
    i.i.d. loss at ``loss_rate`` (see :func:`loss_parity`). Stages past the end of a
    tuple reuse its last entry. The result is capped at 255 - k (GF(256) codeword).

    Protection must be unequal in the right direction: stage 1 conditions everything,
    so ``overhead`` and ``min_parity`` may not grow and ``targets`` may not shrink with
    the stage number.

    With a ``distortion`` model and ``loss_rate`` > 0 the profile plans all stages of an
    image together (:meth:`plan`, :func:`uep.allocate`) for the channel ``loss_rate`` with
    mean loss bursts of ``burst`` packets (1 = i.i.d.): the rules above are then only a
    floor, and the parity is what minimises the expected quality lost on that channel.
    The guard raises that floor, in case the loss rate was underestimated: each stage
    that every later stage is conditioned on gets enough parity to survive i.i.d. loss at
    ``uep.guard_rate(loss_rate, guard)`` (for ``guard`` = 3: max(3p, p + 0.2), capped at
    max(p, 0.5)) with failure probability at most its entry of ``guard_targets`` (1 = no
    floor; :func:`uep.guard_floor`). ``guard`` = 1 turns it off.
    """

    name: str
    overhead: tuple[float, ...] = (0.0,)
    min_parity: tuple[int, ...] = (0,)
    loss_rate: float = 0.0
    targets: tuple[float, ...] = (1.0,)
    distortion: uep.DistortionModel | None = None
    burst: float = 1.0
    guard: float = 1.0
    guard_targets: tuple[float, ...] = uep.GUARD_TARGETS

    def __post_init__(self) -> None:
        _check_stage_tuple(self.name, "overhead", self.overhead,
                           lambda v: math.isfinite(v) and v >= 0, -1)
        _check_stage_tuple(self.name, "min_parity", self.min_parity,
                           lambda v: isinstance(v, int) and v >= 0, -1)
        _check_stage_tuple(self.name, "targets", self.targets, lambda v: 0 < v <= 1, +1)
        _check_stage_tuple(self.name, "guard_targets", self.guard_targets,
                           lambda v: 0 < v <= 1, +1)
        rate = self.loss_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"FEC profile {self.name!r}: loss_rate must be in [0, 1), "
                              f"got {self.loss_rate}")
        try:
            uep.Channel(rate, self.burst)
        except InputError as exc:
            raise ConfigError(f"FEC profile {self.name!r}: {exc}") from None
        g = self.guard
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 1 <= g < math.inf:
            raise ConfigError(f"FEC profile {self.name!r}: guard must be a finite number "
                              f">= 1 (1 = off), got {g!r}")

    @property
    def channel(self) -> uep.Channel:
        """The loss channel a loss-rate profile plans for."""
        return uep.Channel(self.loss_rate, self.burst)

    def parity(self, stage: int, k: int) -> int:
        """Parity shards for 1-based ``stage`` holding ``k`` data chunks."""
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 1:
            raise InputError(f"stage must be an int >= 1, got {stage!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CODEWORD:
            raise InputError(f"k must be an int in [1, {MAX_CODEWORD}], got {k!r}")
        # The epsilon keeps float fuzz (0.1 * 30 = 3.0000000000000004) from adding a shard.
        wanted = max(math.ceil(_at(self.overhead, stage) * k - 1e-9),
                     _at(self.min_parity, stage))
        if self.loss_rate > 0:
            wanted = max(wanted, loss_parity(k, self.loss_rate, _at(self.targets, stage)))
        return min(wanted, MAX_CODEWORD - k)

    def parities(self, ks: Sequence[int]) -> tuple[int, ...]:
        """Parity per stage by the rules alone, for stage sizes ``ks`` (stage 1 first)."""
        return tuple(self.parity(s, k) for s, k in enumerate(ks, start=1))

    @property
    def plans_per_image(self) -> bool:
        """True when parity (and packet size) are planned per image for a loss rate."""
        return self.distortion is not None and self.loss_rate > 0

    def score(self, stages: Sequence[uep.StageShape], parity: Sequence[int]) -> float:
        """Expected cost of sending ``stages`` with ``parity`` (lower is better; comparable
        across packet sizes); 0 for a rule-based profile, which does not plan."""
        if self.distortion is None or not self.plans_per_image:
            return 0.0
        return uep.score(stages, parity, self.channel, self.distortion)

    def floor(self, stages: Sequence[uep.StageShape]) -> tuple[int, ...]:
        """The least parity per stage: the rules, and for a planning profile the guard."""
        rules = self.parities([st.k for st in stages])
        if not self.plans_per_image:
            return rules
        guard = uep.guard_floor(stages, self.loss_rate, self.guard, self.guard_targets)
        return tuple(max(a, b) for a, b in zip(rules, guard, strict=True))

    def plan(self, stages: Sequence[uep.StageShape]) -> tuple[int, ...]:
        """Parity per stage for one image's stages: the rules, or the expected-quality
        optimum above the :meth:`floor` when the profile has a distortion model and a
        loss rate."""
        floor = self.floor(stages)
        if self.distortion is None or not self.plans_per_image:
            return floor
        return uep.allocate(stages, self.channel, self.distortion, floor)


def loss_parity(k: int, p: float, target: float) -> int:
    """Smallest m <= 255 - k with P(Binomial(k + m, p) > m) <= ``target``.

    That is the probability that a stage sent as k + m packets, each lost independently
    with probability p, has more losses than RS can fill. If no m fits in the codeword,
    returns 255 - k (the most protection GF(256) allows).
    """
    return uep.survival_parity(k, p, target)


def for_loss(p: float, model: uep.DistortionModel | None = None,
             path: str | Path | None = None, *, burst: float = 1.0,
             guard: float | None = None,
             guard_targets: tuple[float, ...] | None = None) -> FecProfile:
    """Profile planned for loss rate ``p`` with mean loss bursts of ``burst`` packets
    (1 = i.i.d.): per image, the parity per stage that minimises the expected gap to a
    loss-free picture at the same bytes (:mod:`uep`), above the guard floor
    (:class:`FecProfile`).

    ``model``, ``guard`` and ``guard_targets`` default to the ``for_loss`` section of the
    profiles YAML. Raises :class:`InputError` unless 0 <= p < 1, the burst is possible at
    p (:class:`uep.Channel`) and ``guard`` >= 1.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"target loss rate must be in [0, 1), got {p!r}")
    uep.Channel(p, burst)  # InputErrors for the caller, not a profile's ConfigErrors
    if guard is not None and (isinstance(guard, bool) or not isinstance(guard, (int, float))
                              or not 1 <= guard < math.inf):
        raise InputError(f"guard must be a finite number >= 1 (1 = off), got {guard!r}")
    section = _load_yaml(path).for_loss
    name = f"for_loss({p:g}" + (f",burst:{burst:g}" if burst != 1 else "") + (
        f",guard:{guard:g})" if guard is not None else ")")
    return FecProfile(name=name, loss_rate=float(p),
                      distortion=section.model if model is None else model, burst=float(burst),
                      guard=section.guard if guard is None else guard,
                      guard_targets=section.guard_targets if guard_targets is None
                      else guard_targets)


SPEC_PREFIX = "for_loss:"
SPEC_OPTIONS = ("burst", "guard")
SPEC_HELP = "none|light|strong|<profile>|for_loss:P[,burst:L][,guard:G]"


def parse_spec(text: str, path: str | Path | None = None) -> FecProfile:
    """The profile a FEC spec string names (``--fec``): a profile name of the YAML
    (``none``, ``light``, ``strong``, ...), ``for_loss:P`` (plan for i.i.d. loss at P),
    ``for_loss:P,burst:L`` (Gilbert loss with mean bursts of L packets) and optionally
    ``,guard:G`` (the guard factor, 1 = off).

    Raises :class:`InputError` (:class:`ConfigError` for an unknown profile name) with a
    one-line message for anything else.
    """
    if not isinstance(text, str):
        raise InputError(f"FEC spec must be a string ({SPEC_HELP}), got {text!r}")
    if not text.startswith(SPEC_PREFIX):
        return get_profile(text, path)
    rate, *options = text[len(SPEC_PREFIX):].split(",")
    p = _spec_number(text, "the loss rate P", rate)
    kwargs: dict[str, float] = {}
    for option in options:
        key, sep, value = option.partition(":")
        if not sep or key not in SPEC_OPTIONS:
            raise InputError(f"FEC spec {text!r}: unknown option {option!r}; "
                             f"expected {SPEC_HELP}")
        if key in kwargs:
            raise InputError(f"FEC spec {text!r}: {key} given twice")
        kwargs[key] = _spec_number(text, key, value)
    try:
        return for_loss(p, path=path, burst=kwargs.get("burst", 1.0),
                        guard=kwargs.get("guard"))
    except ConfigError:
        raise  # the YAML file itself is broken: its own message says where
    except InputError as exc:
        raise InputError(f"FEC spec {text!r}: {exc}") from None


def _spec_number(text: str, what: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(f"FEC spec {text!r}: {what} must be a number, got {value!r} "
                         f"(expected {SPEC_HELP})") from None


def distortion_model(path: str | Path | None = None) -> uep.DistortionModel:
    """The distortion model of the ``for_loss`` section of the profiles YAML (default
    ``configs/fec.yaml``)."""
    return _load_yaml(path).for_loss.model


def load_profiles(path: str | Path | None = None) -> dict[str, FecProfile]:
    """All named profiles of the YAML file (default ``resilient_tx/configs/fec.yaml``)."""
    return _load_yaml(path).profiles


def get_profile(name: str, path: str | Path | None = None) -> FecProfile:
    """The named profile; :class:`ConfigError` listing the available names otherwise."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise ConfigError(f"unknown FEC profile {name!r}; available: "
                          f"{', '.join(sorted(profiles))} (or for_loss:P[,burst:L][,guard:G] "
                          "for a loss rate P)")
    return profiles[name]


def _at(values: tuple[Any, ...], stage: int) -> Any:
    return values[min(stage, len(values)) - 1]


def _check_stage_tuple(name: str, key: str, values: tuple[Any, ...],
                       ok: Callable[[Any], bool], direction: int) -> None:
    """Entries valid per ``ok``; ``direction`` -1: may not increase, +1: may not decrease."""
    where = f"FEC profile {name!r}: {key}"
    if not isinstance(values, tuple) or not values:
        raise ConfigError(f"{where} must be a non-empty tuple, one entry per stage")
    if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and ok(v)
               for v in values):
        raise ConfigError(f"{where} has an invalid entry: {values}")
    if any((b - a) * direction < 0 for a, b in pairwise(values)):
        trend = "decrease" if direction > 0 else "increase"
        raise ConfigError(f"{where} may not {trend} with the stage ({values}): earlier "
                          "stages condition later ones and need at least as much protection")


@dataclass(frozen=True)
class _ForLoss:
    """The ``for_loss`` section of the profiles YAML."""

    model: uep.DistortionModel
    guard: float = 1.0
    guard_targets: tuple[float, ...] = uep.GUARD_TARGETS


@dataclass(frozen=True)
class _Profiles:
    profiles: dict[str, FecProfile]
    for_loss: _ForLoss


def _load_yaml(path: str | Path | None) -> _Profiles:
    p = Path(path) if path is not None else PROFILES_PATH
    return _parse_profiles(read_yaml(p, "FEC profile file"), p)


def _parse_profiles(data: Any, where: Path) -> _Profiles:
    if not isinstance(data, dict) or set(data) != {"profiles", "for_loss"}:
        raise ConfigError(f"{where}: expected exactly the sections 'profiles' and 'for_loss'")
    if not isinstance(data["profiles"], dict) or not data["profiles"]:
        raise ConfigError(f"{where}: 'profiles' must map names to profiles")
    profiles = {str(name): _profile(str(name), body, where)
                for name, body in data["profiles"].items()}
    return _Profiles(profiles, _for_loss_section(data["for_loss"], where))


_GUARD_KEYS = ("guard", "guard_targets")


def _for_loss_section(body: Any, where: Path) -> _ForLoss:
    model_keys = {f.name for f in fields(uep.DistortionModel)}
    known = model_keys | set(_GUARD_KEYS)
    if not isinstance(body, dict) or set(body) - known:
        raise ConfigError(f"{where}: 'for_loss' must be a mapping with keys among "
                          f"{', '.join(sorted(known))}")
    try:
        hints = field_types(uep.DistortionModel)
        model = uep.DistortionModel(**{k: coerce(hints[k], v, f"for_loss.{k}")
                                       for k, v in body.items() if k in model_keys})
        profile_hints = field_types(FecProfile)
        guard = {k: coerce(profile_hints[k], body[k], f"for_loss.{k}")
                 for k in _GUARD_KEYS if k in body}
        # Validated as a profile would be, so a bad value fails on loading, not on use.
        FecProfile("for_loss", **guard)
        return _ForLoss(model, **guard)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _profile(name: str, body: Any, where: Path) -> FecProfile:
    known = {"overhead", "min_parity", "loss_rate", "targets"}
    if not isinstance(body, dict) or set(body) - known:
        raise ConfigError(f"{where}: profile {name!r} must be a mapping with keys "
                          f"among {', '.join(sorted(known))}")
    hints = field_types(FecProfile)
    try:
        kwargs = {key: coerce(hints[key], value, f"profile {name!r}.{key}")
                  for key, value in body.items()}
        return FecProfile(name=name, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
