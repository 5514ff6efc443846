"""Receiver side of the packet layer: packets -> exact tokens where possible.

The receiver walks the quincunx stages in order (PQ-MIM paper Sec. 3.2):

1. FEC-recover the stage if at least k of its n shards arrived (:mod:`fec`);
2. otherwise keep whichever data chunks arrived;
3. decode each available chunk *only if the stage's context is complete* (the stage
   coder's rule): then its probabilities are exactly the sender's, and the chunk's CRC32
   confirms every symbol;
4. bytes of stages whose context is incomplete are counted as unusable, never guessed at.

Every position not decoded this way is left to the inpainter, on purpose. Nothing here
touches a socket: :class:`ImageAssembler` is a state machine fed packets by a transport
or a simulator, in any order, with duplicates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.stage_coder import StageCoder, depth_from_flags
from resilient_tx.errors import BitstreamError, PacketError
from resilient_tx.resilience import fec
from resilient_tx.resilience.packet import MAX_NAME_BYTES, Packet


@dataclass(frozen=True)
class ReceiveReport:
    """What happened to one image: packets, FEC, tokens decoded and inpainted, bytes."""

    image_id: int
    width: int
    height: int
    packets_sent: int  # announced by the packets (version 1: by the stages seen)
    packets_received: int  # distinct packets accepted
    packets_recovered: int  # data chunks rebuilt by FEC
    packets_rejected: int  # inconsistent with the image's other packets
    tokens: int
    tokens_decoded: int
    tokens_inpainted: int
    bytes_received: int
    bytes_unusable: int  # arrived but could not contribute exact tokens
    complete_stages: int


@dataclass
class _Stage:
    k: int
    n: int
    header: int  # header bytes of each of its packets (version 1 or 2)
    shards: dict[int, bytes] = field(default_factory=dict)


class ImageAssembler:
    """Collects the packets of one image id. ``add`` never raises on packet content."""

    def __init__(self, first: Packet) -> None:
        self.image_id = first.image_id
        self.model_id = first.model_id
        self.width, self.height = first.width, first.height
        self.rate_point = first.rate_point
        self.flags = first.flags
        self.total = first.total  # packets the sender sent (None: version 1)
        self.stages: dict[int, _Stage] = {}
        self.name: bytes | None = None  # the sender's file name, as sent (version 2 on)
        self._meta: set[int] = set()
        self.bytes_received = 0
        self.rejected = 0
        self.add(first)

    def add(self, p: Packet) -> bool:
        """Accept a packet; False if it is a duplicate or contradicts earlier packets."""
        if (p.image_id, p.model_id, p.width, p.height, p.rate_point, p.flags, p.total) != (
                self.image_id, self.model_id, self.width, self.height, self.rate_point,
                self.flags, self.total):
            self.rejected += 1
            return False
        if p.is_meta:
            return self._add_meta(p)
        st = self.stages.setdefault(p.stage, _Stage(p.k, p.n, p.header_size))
        if (st.k, st.n) != (p.k, p.n) or (st.shards and p.index not in st.shards
                                           and len(p.payload) != _shard_len(st)):
            self.rejected += 1
            return False
        if p.index in st.shards:
            return False  # duplicate: harmless, not counted twice
        st.shards[p.index] = p.payload
        self.bytes_received += p.size
        return True

    def _add_meta(self, p: Packet) -> bool:
        """A copy of the metadata packet: the first one names the image."""
        if p.k != 1 or len(p.payload) > MAX_NAME_BYTES or (
                self.name is not None and p.index not in self._meta and p.payload != self.name):
            self.rejected += 1
            return False
        if p.index in self._meta:
            return False
        self._meta.add(p.index)
        self.name = p.payload if self.name is None else self.name
        self.bytes_received += p.size
        return True

    @property
    def packets_received(self) -> int:
        return len(self._meta) + sum(len(st.shards) for st in self.stages.values())

    @property
    def packets_sent(self) -> int:
        """Packets the sender sent for this image: announced in every packet from version 2
        on; for version 1, only those of the stages seen (a stage lost whole is missed)."""
        if self.total is not None:
            return self.total
        return sum(st.n for st in self.stages.values())

    def is_complete(self, num_stages: int) -> bool:
        """Every stage has at least k shards, so FEC (or nothing) yields all its chunks."""
        return self.stages_complete(num_stages) == num_stages

    def stages_complete(self, num_stages: int) -> int:
        """How many leading stages have at least k shards (FEC can complete them)."""
        for s in range(1, num_stages + 1):
            st = self.stages.get(s)
            if st is None or len(st.shards) < st.k:
                return s - 1
        return num_stages

    def snapshot(self) -> ImageAssembler:
        """A copy that later packets do not change (a preview decodes it in another thread
        while this one keeps collecting)."""
        twin = copy.copy(self)
        twin.stages = {s: _Stage(st.k, st.n, st.header, dict(st.shards))
                       for s, st in self.stages.items()}
        twin._meta = set(self._meta)
        return twin


def _wire_bytes(st: _Stage, indices) -> int:
    """Bytes on the wire (header included) of the given received shards."""
    return sum(st.header + len(st.shards[i]) for i in indices)


def _shard_len(st: _Stage) -> int:
    return len(next(iter(st.shards.values())))


@dataclass
class _Decoding:
    tokens: torch.Tensor  # (M, h*w)
    known: torch.Tensor  # (h*w,) bool
    recovered: int = 0
    unusable: int = 0
    complete: int = 0


def _decode_tokens(codec: Codec, asm: ImageAssembler, stages: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, _Decoding]:
    """Exact tokens (M, h, w) and the mask of positions decoded exactly (h, w), from the
    first ``stages`` stages only if given."""
    h, w = codec.grid(asm.width, asm.height)
    m = codec.cfg.num_subvectors
    coder = codec.stage_coder(h, w, depth_from_flags(asm.flags))
    dec = _Decoding(torch.zeros(m, h * w, dtype=torch.int64), torch.zeros(h * w, dtype=torch.bool))
    complete: list[bool] = []  # complete[i]: stage i + 1 decoded exactly
    for s in range(1, coder.num_stages + 1):
        st = asm.stages.get(s)
        if stages is not None and s > stages:
            break  # left for later, not lost: nothing is counted against it
        if st is None:
            complete.append(False)
        elif not coder.decodable(s, complete):
            dec.unusable += _wire_bytes(st, st.shards)  # context inexact: never guess
            complete.append(False)
        else:
            complete.append(_decode_stage(coder, s, st, dec))
    return dec.tokens.reshape(m, h, w), dec.known.reshape(h, w), dec


def _available_chunks(st: _Stage) -> tuple[dict[int, bytes], int]:
    """Data chunks we have (FEC-recovered if possible) and how many FEC rebuilt."""
    try:
        full = fec.decode_shards(st.shards, st.k, st.n - st.k)
    except BitstreamError:
        full = None
    if full is not None:
        return dict(enumerate(full)), sum(1 for i in range(st.k) if i not in st.shards)
    chunks = {}
    for i, shard in st.shards.items():
        if i < st.k:
            try:
                chunks[i] = fec.strip_shard(shard)
            except BitstreamError:
                continue
    return chunks, 0


def _decode_stage(coder: StageCoder, s: int, st: _Stage, dec: _Decoding) -> bool:
    """Decode what can be decoded of stage ``s``; True if the whole stage is now exact."""
    chunks, recovered = _available_chunks(st)
    dec.recovered += recovered
    cdf = coder.cdfs(s, dec.tokens.reshape(coder.m, coder.height, coder.width))
    ok = 0
    for j, chunk in chunks.items():
        got = coder.decode_chunk(s, cdf, st.k, j, chunk)
        if got is not None:
            where = torch.from_numpy(got.positions)
            dec.tokens[:, where] = got.symbols.T
            dec.known[where] = True
            ok += 1
        elif j in st.shards:
            dec.unusable += _wire_bytes(st, [j])
    if len(chunks) < st.k:
        # Parity shards that could not complete the stage carried nothing usable.
        dec.unusable += _wire_bytes(st, [i for i in st.shards if i >= st.k])
    exact = ok == st.k
    dec.complete += int(exact)
    return exact


def _report(asm: ImageAssembler, dec: _Decoding) -> ReceiveReport:
    n_tokens = int(dec.known.numel())
    decoded = int(dec.known.sum())
    return ReceiveReport(
        image_id=asm.image_id, width=asm.width, height=asm.height,
        packets_sent=asm.packets_sent,
        packets_received=asm.packets_received, packets_recovered=dec.recovered,
        packets_rejected=asm.rejected, tokens=n_tokens, tokens_decoded=decoded,
        tokens_inpainted=n_tokens - decoded, bytes_received=asm.bytes_received,
        bytes_unusable=dec.unusable, complete_stages=dec.complete)


@dataclass(frozen=True)
class ExactTokens:
    """What the packets of one image gave: tokens where ``known`` (h, w) is True are the
    sender's exactly; the rest are placeholders for the inpainter."""

    tokens: torch.Tensor  # (M, h, w)
    known: torch.Tensor  # (h, w) bool
    report: ReceiveReport


def decode(codec: Codec, asm: ImageAssembler, stages: int | None = None) -> ExactTokens:
    """Decode every exactly decodable token of an assembled image, with its report; with
    ``stages``, of its first stages only (a preview: decoding what came of later stages
    too would cost almost what the final picture costs, whose work starts after it)."""
    tokens, known, dec = _decode_tokens(codec, asm, stages)
    return ExactTokens(tokens, known, _report(asm, dec))


def assemble(datagrams: Iterable[bytes]) -> ImageAssembler | None:
    """The packets of one image, from raw datagrams (malformed ones count as lost);
    None if no valid packet arrived."""
    asm: ImageAssembler | None = None
    for raw in datagrams:
        try:
            p = Packet.parse(raw)
        except PacketError:
            continue
        if asm is None:
            asm = ImageAssembler(p)
        else:
            asm.add(p)
    return asm
