"""Multi-pass context coding of one token grid in quincunx stages (PQ-MIM paper, Sec. 3.2).

This module is the one place that knows how a stage is coded:

* **the context rule**: stage ``s`` is coded given the tokens of stages ``1..c(s)``, where
  ``c(s) = s - 1`` for context depth 0 (the paper's chain) and ``min(s - 1, depth)``
  otherwise. With a depth, one lost stage no longer makes every later stage undecodable,
  at the price of some bits (the MIM was trained with arbitrary masks, so it handles the
  shorter context). The depth travels in the low :data:`DEPTH_MASK` bits of a packet's
  flags;
* **the hidden mask**: every token beyond the context is hidden from the MIM;
* **the probabilities**: stage 1 from each sub-codebook's marginal histogram, later stages
  from the float64 MIM, turned into integer CDFs by :mod:`~resilient_tx.codec.entropy`.
  Stages that share a context (all stages after ``depth``) share one trunk pass; a stage
  with a context of its own asks the trunk for its own positions only;
* **a chunk**: some of a stage's tokens, chosen by :mod:`~resilient_tx.codec.layout`, as
  ``layout seed u8 | CRC32 u32 of its symbols | torchac bytes``. The seed lets the decoder
  rebuild which tokens the chunk holds; the CRC catches any desynchronisation, so a chunk
  either decodes to exactly the sender's tokens or is rejected.

The ``.rtx`` file is the special case "depth 0, one chunk per stage" (:meth:`compress` /
:meth:`decompress`); the packet layer cuts each stage into several chunks
(:meth:`encode_chunks` / :meth:`decode_chunk`). CompressAI's checkerboard latent codec is
the model: several context passes in one object.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from resilient_tx.codec import entropy, layout
from resilient_tx.codec.container import StageStream
from resilient_tx.codec.partition import quincunx_stages, stage_indices
from resilient_tx.errors import BitstreamError, InputError

CHUNK_HEADER = struct.Struct("<BI")  # layout seed, CRC32 of the chunk's symbols
DEPTH_MASK = 0x07  # packet flag bits that hold the context depth
CDF_CHUNK = 2048  # positions whose CDFs are built at once (see TokenProbabilities.cdfs)
MAX_CONTEXT_DEPTH = DEPTH_MASK


def context_stages(stage: int, depth: int) -> int:
    """How many leading stages stage ``stage`` is conditioned on (depth 0 = all earlier)."""
    return stage - 1 if depth == 0 else min(stage - 1, depth)


def check_depth(depth: int) -> int:
    """``depth`` if it fits the packet flags, else :class:`InputError`."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not (
            0 <= depth <= MAX_CONTEXT_DEPTH):
        raise InputError(f"context depth must be an int in [0, {MAX_CONTEXT_DEPTH}], "
                         f"got {depth!r}")
    return depth


def depth_from_flags(flags: int) -> int:
    """The context depth a packet's flags announce."""
    return flags & DEPTH_MASK


class TrunkAndHeads(Protocol):
    """What the stage coder needs of a masked token model (``model.mim.MIM`` and the
    k-means view of it both provide it)."""

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def features_at(self, tokens: torch.Tensor, mask: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor: ...

    def heads_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


class TokenProbabilities:
    """p(tokens of stage s | visible tokens) as integer CDFs, identical on every device.

    Stage 1 uses the stored marginals; later stages the MIM in float64 (see
    :mod:`~resilient_tx.codec.entropy` for why float64 and integer CDFs).
    """

    def __init__(self, mim64: TrunkAndHeads, marginals: torch.Tensor,
                 device: torch.device) -> None:
        self.mim64 = mim64
        self.device = device
        self.marginal_cdf = entropy.counts_to_cdf(marginals)  # (M, V+1)

    @torch.no_grad()
    def features(self, known: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """MIM trunk output for tokens ``known`` (M, h, w) with ``hidden`` (h, w) masked."""
        return self.mim64.features(known[None].to(self.device), hidden[None].to(self.device))

    @torch.no_grad()
    def cdfs(self, known: torch.Tensor, stage: int, positions: np.ndarray,
             hidden: torch.Tensor, features: torch.Tensor | None = None,
             dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """CDFs (n, M, V+1) for ``positions`` of ``stage`` (1-based), int64 or, with
        ``dtype=torch.int16``, already in torchac's form (:func:`entropy.to_torchac`).

        ``known`` (M, h, w) holds every visible token; values under ``hidden`` are ignored
        (the MIM replaces them by its mask token). ``features`` from :meth:`features` for
        the same inputs saves the trunk pass. More than :data:`CDF_CHUNK` positions are
        done a chunk at a time, which bounds the float64 logits and the integer
        temporaries of a large image (every row's CDF depends on its own logits only).
        """
        n = len(positions)
        if stage == 1:
            return self.marginal_cdf.to(dtype).unsqueeze(0).expand(n, -1, -1)
        pos = torch.from_numpy(positions).to(self.device)
        if features is None:  # this stage's trunk pass alone: only its own rows are needed
            rows = self.mim64.features_at(known[None].to(self.device),
                                          hidden[None].to(self.device), pos)[None]
            at = torch.arange(n, device=self.device)
        else:
            rows, at = features, pos
        if n <= CDF_CHUNK:
            return entropy.logits_to_cdf(self.mim64.heads_at(rows, at), dtype)
        out = torch.empty(n, *self.marginal_cdf.shape, dtype=dtype)
        for i in range(0, n, CDF_CHUNK):
            sel = self.mim64.heads_at(rows, at[i : i + CDF_CHUNK])
            out[i : i + CDF_CHUNK] = entropy.logits_to_cdf(sel, dtype)
        return out


@dataclass(frozen=True)
class DecodedChunk:
    """The exact tokens one chunk carried: flat raster positions and their symbols."""

    positions: np.ndarray  # (n,) flat raster indices into the grid
    symbols: torch.Tensor  # (n, M) int64


class StageCoder:
    """Codes the tokens of one (h, w) grid stage by stage, for one context depth.

    One instance per image: it caches the last MIM trunk pass, which the stages after
    ``depth`` share. Callers must give it the stages in order with exact context tokens
    (:meth:`decodable` says when that holds at the receiver).
    """

    def __init__(self, probs: TokenProbabilities, num_subvectors: int, height: int,
                 width: int, stages: int, depth: int = 0) -> None:
        self.probs = probs
        self.m = num_subvectors
        self.height, self.width = height, width
        self.depth = check_depth(depth)
        self.positions: tuple[np.ndarray, ...] = tuple(stage_indices(height, width, stages))
        self.stage_map = torch.from_numpy(quincunx_stages(height, width, stages))
        self._trunk: tuple[bytes, torch.Tensor] | None = None

    # ----- the context rule -------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.positions)

    def context(self, stage: int) -> int:
        return context_stages(stage, self.depth)

    def hidden(self, stage: int) -> torch.Tensor:
        """(h, w) True where a token is beyond stage ``stage``'s context."""
        return self.stage_map > self.context(stage)

    def shares_trunk(self, stage: int) -> bool:
        """Whether ``stage``'s MIM pass serves other stages too (all stages after a
        nonzero depth share one context), so that the whole grid's features are kept."""
        return self.depth > 0 and stage > self.depth

    def decodable(self, stage: int, complete: Sequence[bool]) -> bool:
        """Whether ``stage`` can be decoded exactly, given which earlier stages are
        complete (``complete[i]`` for stage ``i + 1``)."""
        return all(complete[: self.context(stage)])

    def share(self, stage: int) -> float:
        """The stage's share of the grid's tokens."""
        return len(self.positions[stage - 1]) / (self.height * self.width)

    # ----- probabilities and symbols ----------------------------------------------------
    def cdfs(self, stage: int, tokens: torch.Tensor,
             dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """CDFs (n, M, V+1) of every token of ``stage`` given ``tokens`` (M, h, w), whose
        entries inside the stage's context must be exact (the rest is ignored); ``dtype``
        as in :meth:`TokenProbabilities.cdfs`."""
        hidden = self.hidden(stage)
        feats = None
        if stage > 1 and self.shares_trunk(stage):
            key = hidden.numpy().tobytes()
            if self._trunk is None or self._trunk[0] != key:
                self._trunk = None  # let the old features go before the new pass
                self._trunk = key, self.probs.features(tokens, hidden)
            feats = self._trunk[1]
        return self.probs.cdfs(tokens, stage, self.positions[stage - 1], hidden, feats, dtype)

    def symbols(self, tokens: torch.Tensor, stage: int) -> torch.Tensor:
        """The stage's tokens (n, M) in coding order."""
        idx = torch.from_numpy(self.positions[stage - 1])
        return tokens.reshape(self.m, -1)[:, idx].T.contiguous()

    # ----- chunks -----------------------------------------------------------------------
    def encode_chunks(self, symbols: torch.Tensor, cdf: torch.Tensor, k: int,
                      seed: int) -> tuple[bytes, ...]:
        """A stage's ``symbols`` (n, M) under ``cdf`` (n, M, L) as ``k`` chunks laid out
        by ``seed`` (:func:`layout.chunk_members`)."""
        if k == 1:  # one chunk holds the whole stage in order, whatever the seed
            return (_encode_chunk(cdf, symbols, seed),)
        members = layout.chunk_members(symbols.shape[0], k, seed)
        return tuple(_encode_chunk(cdf[idx], symbols[idx], seed) for idx in members)

    def decode_chunk(self, stage: int, cdf: torch.Tensor, k: int, index: int,
                     chunk: bytes) -> DecodedChunk | None:
        """Chunk ``index`` of ``k`` of ``stage`` under the stage's ``cdf``, or None if it
        is malformed or fails its CRC (then nothing of it may be used)."""
        try:
            idx, sym, crc = self._decode(stage, cdf, k, index, chunk)
        except BitstreamError:  # e.g. data for a chunk that, per its header, holds no tokens
            return None
        if entropy.symbols_crc(sym) != crc:
            return None
        return DecodedChunk(self.positions[stage - 1][idx], sym)

    def _decode(self, stage: int, cdf: torch.Tensor, k: int, index: int,
                chunk: bytes) -> tuple[np.ndarray, torch.Tensor, int]:
        if len(chunk) < CHUNK_HEADER.size:
            raise BitstreamError(f"stage {stage}: chunk shorter than its header")
        seed, crc = CHUNK_HEADER.unpack_from(chunk)
        idx = layout.chunk_members(len(self.positions[stage - 1]), k, seed)[index]
        sel = cdf if k == 1 else cdf[torch.from_numpy(idx)]  # k == 1: idx is every token
        sym = entropy.decode(sel.reshape(-1, sel.shape[-1]), chunk[CHUNK_HEADER.size:])
        return idx, sym.reshape(len(idx), self.m), crc

    # ----- whole grids: the .rtx case, depth 0 and one chunk per stage --------------------
    def compress(self, tokens: torch.Tensor,
                 progress: Callable[[], None] | None = None) -> tuple[StageStream, ...]:
        """Every stage of ``tokens`` (M, h, w) as one stream (a one-chunk stage whose
        header is kept in the stream's fields); ``progress`` is called after each stage."""
        out = []
        for s in range(1, self.num_stages + 1):
            sym = self.symbols(tokens, s)
            (chunk,) = self.encode_chunks(sym, self.cdfs(s, tokens, torch.int16), 1, 0)
            _, crc = CHUNK_HEADER.unpack_from(chunk)
            out.append(StageStream(chunk[CHUNK_HEADER.size:], sym.shape[0], crc))
            if progress is not None:
                progress()
        return tuple(out)

    def decompress(self, streams: Sequence[StageStream],
                   progress: Callable[[], None] | None = None) -> torch.Tensor:
        """Inverse of :meth:`compress`: tokens (M, h, w); :class:`ChecksumError` if a
        stage's symbols fail their CRC; ``progress`` is called after each stage."""
        if len(streams) != self.num_stages:
            raise BitstreamError(f"expected {self.num_stages} stages, found {len(streams)}")
        tokens = torch.zeros(self.m, self.height * self.width, dtype=torch.int64)
        for s, st in enumerate(streams, start=1):
            pos = self.positions[s - 1]
            if st.symbols != len(pos):
                raise BitstreamError(f"stage {s}: {st.symbols} symbols, grid needs {len(pos)}")
            cdf = self.cdfs(s, tokens.reshape(self.m, self.height, self.width), torch.int16)
            chunk = CHUNK_HEADER.pack(0, st.crc) + st.data
            _, sym, crc = self._decode(s, cdf, 1, 0, chunk)
            entropy.check_crc(sym, crc, f"stage {s}")
            tokens[:, torch.from_numpy(pos)] = sym.T
            if progress is not None:
                progress()
        return tokens.reshape(self.m, self.height, self.width)


def _encode_chunk(cdf: torch.Tensor, symbols: torch.Tensor, seed: int) -> bytes:
    head = CHUNK_HEADER.pack(seed, entropy.symbols_crc(symbols))
    return head + entropy.encode(cdf.reshape(-1, cdf.shape[-1]), symbols.reshape(-1))
