"""The image codec: image <-> tokens <-> per-stage bitstreams (PQ-MIM paper, Sec. 3.1-3.2).

Stage 1 is coded with each sub-codebook's marginal histogram; stage s >= 2 with the MIM's
conditionals p(q_s | q_<s), one softmax per sub-quantizer. The MIM runs in float64 and its
logits go through :mod:`resilient_tx.codec.entropy`'s integer CDF construction, so an encoder
on one machine and a decoder on another (CPU vs CUDA, any thread count) agree bit for bit.

Large images (a token grid over :data:`~resilient_tx.model.banded.BANDED_MIN_TOKENS`, about
a megapixel) take paths whose time and memory grow linearly with the pixels: the PQ-VAE's
conv stacks stream over chunks of rows (:mod:`~resilient_tx.model.streaming`), its XCiT
and the MIM run in bands of token rows (:mod:`~resilient_tx.model.banded`), and CDFs are
built a chunk of positions at a time, in torchac's int16 form. The file format is the
same; the CDFs are the same integers (the MIM's float64 result moves only by rounding,
far below the 1/16-nat grid), so either path decodes the other's files. Which path a
grid takes depends on the grid alone, never on the device or the thread count. Only the
pixels of a large image may depend on the machine: on a CPU with native bfloat16 the
decoder's conv head runs in bfloat16 there (:func:`~resilient_tx.runtime.native_bf16`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch

from resilient_tx.codec import entropy
from resilient_tx.codec.container import EncodedImage, StageStream
from resilient_tx.codec.partition import quincunx_stages, stage_indices, token_grid
from resilient_tx.codec.refine import (
    check_effort,
    refine_tile_count,
    refine_tiled,
    refine_tokens,
)
from resilient_tx.codec.stage_coder import StageCoder, TokenProbabilities, TrunkAndHeads
from resilient_tx.errors import InputError, ModelMismatchError
from resilient_tx.images import to_tensor, to_uint8
from resilient_tx.model import pad_to_multiple
from resilient_tx.model.banded import is_large
from resilient_tx.runtime import native_bf16
from resilient_tx.zoo.checkpoint import LoadedModel

#: Pixel rows per chunk fed to the encoder's conv stem for a large image (a multiple of
#: every downsampling factor).
STREAM_PIXEL_ROWS = 256


def _pad_edges(image: np.ndarray, multiple: int) -> np.ndarray:
    """``image`` (H, W, 3) edge-padded to multiples of ``multiple``, as
    :func:`pad_to_multiple` pads (no copy when nothing is missing)."""
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else image


def _image_chunks(padded: np.ndarray, rows: int,
                  device: torch.device) -> Iterator[torch.Tensor]:
    """A padded image (:func:`_pad_edges`) as (1, 3, r, W') float chunks in [0, 1], top
    first."""
    for top in range(0, padded.shape[0], rows):
        yield to_tensor(padded[top : top + rows]).to(device)


class Codec:
    """Codec bound to one loaded model and one device. Stateless between calls."""

    def __init__(self, model: LoadedModel, device: torch.device | str = "cpu",
                 reduced_precision: bool | None = None) -> None:
        self.model = model
        self.device = torch.device(device)
        self.net = model.net.to(self.device).eval()
        # A large image's pixels (never its tokens or CDFs) may come from a bfloat16 copy
        # of the decoder's conv head where the CPU runs bfloat16 natively: about 40 % less
        # decoder time for pixels within +-2 levels of float32's (None: decide by the CPU).
        self._reduced = (native_bf16(self.device) if reduced_precision is None
                         else reduced_precision)
        self._bf16_head: torch.nn.Module | None = None  # made on first use
        # The entropy model runs in float64: see the entropy module for why.
        mim64: TrunkAndHeads = copy.deepcopy(model.net.mim).double().to(self.device).eval()
        self.cfg = model.cfg
        self.probs = TokenProbabilities(mim64, model.marginals, self.device)
        self.marginal_cdf = self.probs.marginal_cdf  # (M, V+1)

    # ----- geometry -------------------------------------------------------------------
    def grid(self, width: int, height: int) -> tuple[int, int]:
        """Token grid (h, w) of a ``width`` x ``height`` image."""
        return token_grid(width, height, self.cfg.downsample)

    def stage_coder(self, h: int, w: int, depth: int = 0) -> StageCoder:
        """A fresh stage coder for one (h, w) token grid and context depth."""
        return StageCoder(self.probs, self.cfg.num_subvectors, h, w, self.cfg.stages, depth)

    def stages(self, h: int, w: int) -> list[np.ndarray]:
        """Flat raster positions of each stage's tokens, in coding order."""
        return stage_indices(h, w, self.cfg.stages)

    def stage_map(self, h: int, w: int) -> torch.Tensor:
        """(h, w) int64 quincunx stage (1-based) of every token."""
        return torch.from_numpy(quincunx_stages(h, w, self.cfg.stages))

    # ----- image <-> tokens -----------------------------------------------------------
    def image_to_tokens(self, image: np.ndarray, effort: int = 0,
                        tick: Callable[[], None] | None = None) -> torch.Tensor:
        """(H, W, 3) uint8 -> tokens (M, h, w) int64 on CPU.

        ``effort`` > 0 refines the latent by that many gradient steps through the frozen
        decoder before quantizing (:mod:`~resilient_tx.codec.refine`): slower to encode,
        decoded by any receiver as usual; 0 is the plain encoder. A large image is refined
        in tiles, and ``tick`` is called after each (:meth:`refine_steps` times).
        """
        check_effort(effort)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError("expected an (H, W, 3) uint8 RGB image")
        height, width = image.shape[:2]
        if is_large(*self.grid(width, height)):
            padded = _pad_edges(image, self.cfg.downsample)
            chunks = _image_chunks(padded, STREAM_PIXEL_ROWS, self.device)
            if effort == 0:
                return self.net.tokens_streamed(chunks)[0].cpu()
            z0 = self.net.latent_streamed(chunks)
            return refine_tiled(self.net, padded, z0, height, width, effort,
                                tick=tick)[0].cpu()
        x = pad_to_multiple(to_tensor(image).to(self.device), self.cfg.downsample)
        if effort == 0:
            return self.net.tokens(x)[0].cpu()
        return refine_tokens(self.net, x, height, width, effort)[0].cpu()

    def tokens_to_image(self, tokens: torch.Tensor, width: int, height: int,
                        draft: bool = False) -> np.ndarray:
        """Tokens (M, h, w) -> the (height, width, 3) uint8 image they decode to.

        ``draft`` (a preview, soon replaced): the bfloat16 head whatever the size, where
        the CPU runs it natively (pixels within a level or two)."""
        if not is_large(*tokens.shape[1:]) and not (draft and self._reduced):
            x = self.net.reconstruct(tokens[None].to(self.device))
            return to_uint8(x[..., :height, :width])
        # Chunks of rows, each turned into pixels at once: a large image's floats are
        # never held whole.
        out = np.empty((height, width, 3), dtype=np.uint8)
        top = 0
        for rows in self.net.reconstruct_streamed(tokens[None].to(self.device),
                                                  convs=self._head()):
            keep = min(rows.shape[2], height - top)
            if keep > 0:
                out[top : top + keep] = to_uint8(rows[..., :keep, :width])
            top += rows.shape[2]
        return out

    def _head(self) -> torch.nn.Module | None:
        """The bfloat16 copy of the decoder's conv head, or None for float32: made when a
        large image or a draft first needs it, so a codec that never sees one (most of a
        receiver's rate points) never pays for the copy."""
        if self._reduced and self._bf16_head is None:
            self._bf16_head = self.net.decoder_convs_as(torch.bfloat16)
        return self._bf16_head

    # ----- tokens <-> stage bitstreams ------------------------------------------------
    def stage_cdfs(self, known: torch.Tensor, stage: int, positions: np.ndarray,
                   hidden: torch.Tensor) -> torch.Tensor:
        """CDFs of ``positions`` of ``stage`` under any ``hidden`` mask (for probes that
        try other contexts than the stage coder's rule)."""
        return self.probs.cdfs(known, stage, positions, hidden)

    def encode_tokens(self, tokens: torch.Tensor) -> tuple[StageStream, ...]:
        """Tokens (M, h, w) -> one stream per stage, each given all earlier stages."""
        return self.stage_coder(*tokens.shape[1:]).compress(tokens)

    def decode_tokens(self, streams: tuple[StageStream, ...], h: int, w: int) -> torch.Tensor:
        """Inverse of :meth:`encode_tokens` on an (h, w) grid."""
        return self.stage_coder(h, w).decompress(streams)

    def marginal_only_bytes(self, tokens: torch.Tensor) -> int:
        """Bytes to code the same tokens with the stage-1 marginals only (MIM ablation)."""
        m = tokens.shape[0]
        sym = tokens.reshape(m, -1).T.contiguous()
        cdf = self.marginal_cdf.unsqueeze(0).expand(sym.shape[0], -1, -1)
        return len(entropy.encode(cdf, sym))

    # ----- whole images -----------------------------------------------------------------
    def encode(self, image: np.ndarray, effort: int = 0,
               progress: Callable[[], None] | None = None) -> EncodedImage:
        """(H, W, 3) uint8 -> an ``.rtx`` image; ``effort`` as in :meth:`image_to_tokens`.
        ``progress`` is called :meth:`steps` times: after the tokens, then per stage."""
        height, width = image.shape[:2]
        tokens = self.image_to_tokens(image, effort, progress)
        if progress is not None:
            progress()
        streams = self.stage_coder(*tokens.shape[1:]).compress(tokens, progress)
        return EncodedImage(self.model.model_id, width, height, streams)

    def steps(self) -> int:
        """How many times :meth:`encode` and :meth:`decode` call their ``progress``
        (:meth:`encode`: :meth:`refine_steps` more)."""
        return 1 + self.cfg.stages

    def refine_steps(self, width: int, height: int, effort: int) -> int:
        """The extra ``progress`` calls of :meth:`encode` with ``effort``: one per tile
        when a large image is refined, else none."""
        h, w = self.grid(width, height)
        return refine_tile_count(h, w) if effort and is_large(h, w) else 0

    def decode(self, enc: EncodedImage,
               progress: Callable[[], None] | None = None) -> np.ndarray:
        """An ``.rtx`` image -> (H, W, 3) uint8; ``progress`` as in :meth:`encode`."""
        if enc.model_id != self.model.model_id:
            raise ModelMismatchError(
                f"stream was made by model {enc.model_id.hex()}, but this decoder has model "
                f"{self.model.model_id_hex} ({self.model.name})"
            )
        h, w = self.grid(enc.width, enc.height)
        tokens = self.stage_coder(h, w).decompress(enc.stages, progress)
        image = self.tokens_to_image(tokens, enc.width, enc.height)
        if progress is not None:
            progress()
        return image
