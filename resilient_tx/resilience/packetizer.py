"""Sender side of the packet layer: tokens -> per-stage chunks -> FEC shards -> packets.

What a chunk holds and how it is coded belongs to the stage coder
(:mod:`~resilient_tx.codec.stage_coder`: context rule, chunk format). This module only
*cuts*: for each quincunx stage it chooses how many chunks k (each must fit a packet after
the FEC prefix and the packet header) and the layout seed that balances their bytes, adds
the Reed-Solomon parity the FEC profile plans (:mod:`fec`, :mod:`uep`), and wraps every
shard in a packet header. A loss-rate profile also chooses the packet size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from resilient_tx.codec import entropy, layout
from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.refine import check_effort
from resilient_tx.codec.stage_coder import CHUNK_HEADER, DEPTH_MASK, StageCoder, check_depth
from resilient_tx.config import DEFAULT_MAX_PACKET, SenderConfig
from resilient_tx.errors import InputError
from resilient_tx.resilience import fec, uep
from resilient_tx.resilience.packet import (
    HEADER_SIZE,
    HEADER_SIZES,
    MAX_NAME_BYTES,
    MAX_U16,
    META_STAGE,
    VERSION,
    VERSIONS,
    Packet,
    max_payload,
)

PACKET_DIVISORS = (1, 2, 3, 4)  # packet sizes a loss-rate profile tries: max_packet / d
FIRST_STAGE_DIVISORS = (6, 8, 12)  # and smaller ones for stage 1 alone (see Packetizer._cuts)
MIN_PLANNED_CHUNK = 64  # smaller chunks would spend more on headers than they save


@dataclass(frozen=True)
class _CodedStage:
    """One stage's symbols and CDFs, with what every packet-size trial needs of them."""

    symbols: torch.Tensor  # (n, M)
    cdf: torch.Tensor  # (n, M, V+1)
    bits: np.ndarray  # (n,) ideal code length of each token, for balancing chunks
    share: float  # of the grid's tokens
    context: int  # leading stages it is coded given


def _coded_stage(coder: StageCoder, tokens: torch.Tensor, stage: int) -> _CodedStage:
    sym, cdf = coder.symbols(tokens, stage), coder.cdfs(stage, tokens)
    bits = entropy.code_lengths(cdf, sym).reshape(sym.shape[0], sym.shape[1]).sum(-1)
    return _CodedStage(sym, cdf, bits, coder.share(stage), coder.context(stage))


@dataclass(frozen=True)
class StagePlan:
    """How one stage was cut: k data chunks (+ parity), the layout seed, the chunk bytes."""

    stage: int
    k: int
    parity: int
    seed: int
    chunks: tuple[bytes, ...]


@dataclass(frozen=True)
class _Cut:
    """Every stage cut at one chunk capacity: (layout seed, chunks) per stage, and the
    shapes the parity planner sees."""

    stages: tuple[tuple[int, tuple[bytes, ...]], ...]
    shapes: tuple[uep.StageShape, ...]

    def plans(self, parity: tuple[int, ...]) -> tuple[StagePlan, ...]:
        return tuple(StagePlan(s, len(chunks), par, seed, chunks)
                     for s, ((seed, chunks), par) in enumerate(zip(self.stages, parity,
                                                                   strict=True), start=1))


@dataclass(frozen=True)
class PacketizedImage:
    """Everything the sender produced for one image; ``tokens`` is kept for measurement."""

    image_id: int
    width: int
    height: int
    packets: tuple[Packet, ...]
    stages: tuple[StagePlan, ...]
    tokens: torch.Tensor  # (M, h, w) the sender's tokens, the ground truth for the receiver

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.packets)

    @property
    def chunk_bytes(self) -> int:
        return sum(len(c) for st in self.stages for c in st.chunks)


def _chunk_capacity(max_packet: int, header_size: int = HEADER_SIZE) -> int:
    """Bitstream bytes one chunk may hold so that its shard fits a ``max_packet`` packet."""
    return max_payload(max_packet, header_size) - fec.PREFIX_SIZE - CHUNK_HEADER.size


def name_payload(name: str) -> bytes:
    """The metadata payload for a file name: its last path component, UTF-8, cut at
    :data:`MAX_NAME_BYTES` bytes on a character boundary (the receiver sanitises it
    again; this only keeps a sender from announcing its directories)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    raw = base.encode("utf-8", "surrogateescape")[:MAX_NAME_BYTES]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def with_positions(packets: tuple[Packet, ...], meta: Packet | None,
                   wire_version: int = VERSION) -> tuple[Packet, ...]:
    """Versions 2 and 3: the metadata packet first and last (two copies), and every
    packet's ``seq`` (its place in this order) and ``total``."""
    order = list(packets)
    if meta is not None:
        order = [meta, *order, dataclasses.replace(meta, index=1)]
    total = len(order)
    if total > MAX_U16:
        raise InputError(f"{total} packets for one image; at most {MAX_U16} fit the header")
    layout = None if wire_version == VERSION else wire_version
    return tuple(dataclasses.replace(p, seq=i, total=total, wire_version=layout)
                 for i, p in enumerate(order))


def spread_stages(stages: list[list[Packet]]) -> tuple[Packet, ...]:
    """Send order: each stage's packets spread evenly over the whole image's transmission.

    Packet i of a stage of n goes out at relative time (i + 0.5) / n (ties: earlier stage
    first), so a burst of b consecutive losses (Gilbert-Elliott) takes about b packets
    from b different stages -- each within reach of its own FEC -- instead of b from one
    stage, which would lose that stage and, through the context chain, everything after
    it. Under i.i.d. loss the order changes nothing. The receiver is order-independent.
    """
    keyed = [((i + 0.5) / len(group), s, i, p)
             for s, group in enumerate(stages) for i, p in enumerate(group)]
    return tuple(p for *_, p in sorted(keyed, key=lambda t: t[:3]))


class Packetizer:
    """Turns images into packets for one codec (rate point), FEC profile and packet size."""

    def __init__(self, codec: Codec, profile: fec.FecProfile, rate_point: int = 0,
                 max_packet: int = DEFAULT_MAX_PACKET, min_chunks: int = 1,
                 context_depth: int = SenderConfig.context_depth,
                 effort: int = SenderConfig.effort, wire_version: int = VERSION,
                 extra_bytes: int = 0) -> None:
        if min_chunks < 1:
            raise InputError(f"min_chunks must be >= 1, got {min_chunks}")
        if wire_version not in VERSIONS:
            raise InputError(f"wire version must be one of {VERSIONS}, got {wire_version!r}")
        self.wire_version = wire_version
        # Bytes each packet gains after packetizing (a signature trailer): the planner
        # counts them as rate.
        self.extra_bytes = extra_bytes
        self.header_size = HEADER_SIZES[wire_version]
        self.context_depth = check_depth(context_depth)
        self.effort = check_effort(effort)  # encoder refinement steps per image
        self.codec = codec
        self.profile = profile
        self.rate_point = rate_point
        self.max_packet = max_packet
        self.capacity = _chunk_capacity(max_packet, self.header_size)
        if self.capacity < 16:
            raise InputError(f"max packet {max_packet} bytes leaves no room for data")
        self.min_chunks = min_chunks

    def packetize(self, image: np.ndarray, image_id: int,
                  name: str | None = None) -> PacketizedImage:
        """Encode, cut, protect and order one image's packets; ``name`` (version 2 on)
        travels in two metadata packets so the receiver can name its file after it."""
        height, width = image.shape[:2]
        if width > MAX_U16 or height > MAX_U16:
            raise InputError(f"image {width}x{height} is larger than 65535 px a side")
        tokens = self.codec.image_to_tokens(image, self.effort)
        return self.packetize_tokens(tokens, image_id, width, height, name)

    def packetize_tokens(self, tokens: torch.Tensor, image_id: int, width: int, height: int,
                         name: str | None = None,
                         plans: tuple[StagePlan, ...] | None = None) -> PacketizedImage:
        """:meth:`packetize` for tokens already computed (``image_to_tokens``), and with
        ``plans`` already made (:meth:`plan_within`)."""
        plans = self.plan_stages(tokens) if plans is None else plans
        packets = spread_stages([self._stage_packets(plan, image_id, width, height)
                                 for plan in plans])
        if self.wire_version >= 2:
            meta = None if not name else self._meta_packet(name, image_id, width, height)
            packets = with_positions(packets, meta, self.wire_version)
        return PacketizedImage(image_id, width, height, packets, plans, tokens)

    def meta_bytes(self, name: str | None) -> int:
        """Wire bytes of the metadata packets :meth:`packetize` adds for ``name``."""
        if self.wire_version < 2 or not name:
            return 0
        room = max_payload(self.max_packet, self.header_size)
        return 2 * (self.header_size + min(len(name_payload(name)), room) + self.extra_bytes)

    def _meta_packet(self, name: str, image_id: int, width: int, height: int) -> Packet:
        payload = name_payload(name)[: max_payload(self.max_packet, self.header_size)]
        return Packet(image_id=image_id, model_id=self.codec.model.model_id, width=width,
                      height=height, rate_point=self.rate_point, stage=META_STAGE, index=0,
                      k=1, n=2, payload=payload, flags=self.context_depth & DEPTH_MASK,
                      seq=0, total=1)

    def plan_stages(self, tokens: torch.Tensor) -> tuple[StagePlan, ...]:
        """Cut every stage and give it the parity the profile plans; for a loss-rate
        profile also the packet size whose plan has the lowest expected cost."""
        best: tuple[float, _Cut, tuple[int, ...]] | None = None
        for cut in self._cuts(tokens):
            # Parity is planned for all stages at once: a loss-rate profile weighs them
            # together, and then also picks the packet size with the lowest expected cost.
            parity = self.profile.plan(cut.shapes)
            score = self.profile.score(cut.shapes, parity)
            if best is None or score < best[0]:
                best = (score, cut, parity)
        if best is None:
            raise AssertionError("_capacities() is never empty")
        return best[1].plans(best[2])

    def plan_within(self, tokens: torch.Tensor,
                    budget: int) -> tuple[tuple[StagePlan, ...], float] | None:
        """The plan with the least expected share of tokens lost at the profile's loss
        rate that puts at most ``budget`` bytes on the wire (packet size and parity chosen
        together, never below the profile's floor), and that share; None if nothing fits.
        """
        if self.profile.distortion is None:
            raise InputError(f"a byte budget needs a loss-rate FEC profile (auto or "
                             f"for_loss:P), not {self.profile.name!r}")
        best: tuple[float, int, _Cut, tuple[int, ...]] | None = None
        for cut in self._cuts(tokens):
            parity = uep.allocate_within(cut.shapes, self.profile.channel,
                                         self.profile.distortion, budget,
                                         self.profile.floor(cut.shapes))
            if parity is None:
                continue
            lost = uep.expected_lost(cut.shapes, parity, self.profile.channel)
            wire = uep.wire_bytes(cut.shapes, parity)
            if best is None or (lost, wire) < best[:2]:
                best = (lost, wire, cut, parity)
        return None if best is None else (best[2].plans(best[3]), best[0])

    def _cuts(self, tokens: torch.Tensor) -> list[_Cut]:
        """Every stage cut at each chunk capacity to try, with the shapes the planner sees.

        Stage 1 may also be cut smaller than the rest: it is a few packets that every
        other stage depends on, and protecting it with more, smaller packets costs fewer
        bytes than with whole extra copies of large ones.
        """
        _, h, w = tokens.shape
        coder = self.codec.stage_coder(h, w, self.context_depth)
        coded = [_coded_stage(coder, tokens, s) for s in range(1, coder.num_stages + 1)]
        cache: dict[tuple[int, int], tuple[int, tuple[bytes, ...]] | None] = {}

        def cut(s: int, capacity: int) -> tuple[int, tuple[bytes, ...]] | None:
            if (s, capacity) not in cache:
                cache[s, capacity] = self._cut_stage(coder, coded[s], capacity)
            return cache[s, capacity]

        per_packet = self.header_size + fec.PREFIX_SIZE + self.extra_bytes
        caps = self._capacities()
        firsts = caps + self._capacities(FIRST_STAGE_DIVISORS) if len(caps) > 1 else caps
        out = []
        for capacity in caps:
            for first in sorted({c for c in firsts if c <= capacity}, reverse=True):
                tried = [cut(s, first if s == 0 else capacity) for s in range(len(coded))]
                cuts = tuple(c for c in tried if c is not None)
                if len(cuts) < len(tried):  # some stage needs more than one codeword
                    continue
                shapes = tuple(uep.StageShape(len(chunks),
                                              per_packet + max(len(c) for c in chunks),
                                              st.share, st.context)
                               for (_, chunks), st in zip(cuts, coded, strict=True))
                out.append(_Cut(cuts, shapes))
        if not out:
            most = max(math.ceil(st.bits.sum() / 8 / self.capacity) for st in coded)
            raise InputError(
                f"image too large to send at this rate: a stage would need about {most} "
                f"packets of {self.max_packet} bytes, and one stage may use at most "
                f"{fec.MAX_CODEWORD}; send it at a lower rate, smaller, or with larger packets")
        return out

    def _capacities(self, divisors: tuple[int, ...] = PACKET_DIVISORS) -> list[int]:
        """Chunk capacities to try: the configured one, and for a loss-rate profile also
        1/2, 1/3 and 1/4 of the packet size (more, smaller chunks per stage let RS average
        over more packets, at the price of more headers); or those of ``divisors``."""
        if not self.profile.plans_per_image:
            return [self.capacity]
        out = [self.capacity] if divisors == PACKET_DIVISORS else []
        for d in divisors:
            if d == 1:
                continue
            cap = _chunk_capacity(max(self.max_packet // d, self.header_size + 1),
                                  self.header_size)
            if cap >= MIN_PLANNED_CHUNK and cap not in out:
                out.append(cap)
        return out

    def _cut_stage(self, coder: StageCoder, st: _CodedStage,
                   capacity: int) -> tuple[int, tuple[bytes, ...]] | None:
        """(layout seed, chunk bytes) of one stage: k chunks of at most ``capacity`` bytes
        of bitstream each, balanced in bytes; None if that takes more chunks than one
        Reed-Solomon codeword holds (a large image cut into small packets)."""
        n = st.symbols.shape[0]
        k = max(self.min_chunks, math.ceil(st.bits.sum() / 8 / (0.9 * capacity)))
        k = min(k, max(1, n), fec.MAX_CODEWORD)  # the estimate is a little generous
        while k <= fec.MAX_CODEWORD:  # the estimate rarely undershoots: one more chunk
            seed = layout.best_seed(st.bits, k)
            chunks = coder.encode_chunks(st.symbols, st.cdf, k, seed)
            if max(len(c) for c in chunks) <= capacity + CHUNK_HEADER.size or k >= n:
                return seed, chunks
            k += 1
        return None

    def _stage_packets(self, plan: StagePlan, image_id: int, width: int,
                       height: int) -> list[Packet]:
        shards = fec.encode_shards(list(plan.chunks), plan.parity)
        n = len(shards)
        return [Packet(image_id=image_id, model_id=self.codec.model.model_id, width=width,
                       height=height, rate_point=self.rate_point, stage=plan.stage, index=i,
                       k=plan.k, n=n, payload=shard, flags=self.context_depth & DEPTH_MASK)
                for i, shard in enumerate(shards)]
