"""The image codec: image <-> tokens <-> per-stage bitstreams (PQ-MIM paper, Sec. 3.1-3.2).

Stage 1 is coded with each sub-codebook's marginal histogram; stage s >= 2 with the MIM's
conditionals p(q_s | q_<s), one softmax per sub-quantizer. The MIM runs in float64 and its
logits go through :mod:`resilient_tx.codec.entropy`'s integer CDF construction, so an encoder
on one machine and a decoder on another (CPU vs CUDA, any thread count) agree bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from resilient_tx.codec import entropy
from resilient_tx.codec.container import EncodedImage, StageStream
from resilient_tx.codec.partition import quincunx_stages, stage_indices
from resilient_tx.errors import BitstreamError, InputError, ModelMismatchError
from resilient_tx.images import to_tensor, to_uint8
from resilient_tx.model import pad_to_multiple
from resilient_tx.zoo.checkpoint import LoadedModel


@dataclass(frozen=True)
class StageCoding:
    """Where a stage's tokens sit in the raster token grid and how they are ordered."""

    positions: np.ndarray  # flat raster indices, shape (n,)


class Codec:
    """Codec bound to one loaded model and one device. Stateless between calls."""

    def __init__(self, model: LoadedModel, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)
        self.net = model.net.to(self.device).eval()
        # The entropy model runs in float64: see the entropy module for why.
        self.mim64 = copy.deepcopy(model.net.mim).double().to(self.device).eval()
        self.cfg = model.cfg
        self.marginal_cdf = entropy.counts_to_cdf(model.marginals)  # (M, V+1)

    # ----- geometry -------------------------------------------------------------------
    def grid(self, width: int, height: int) -> tuple[int, int]:
        f = self.cfg.downsample
        return -(-height // f), -(-width // f)

    def stages(self, h: int, w: int) -> list[np.ndarray]:
        return stage_indices(h, w, self.cfg.stages)

    def stage_map(self, h: int, w: int) -> torch.Tensor:
        """(h, w) int64 quincunx stage (1-based) of every token."""
        return torch.from_numpy(quincunx_stages(h, w, self.cfg.stages))

    # ----- image <-> tokens -----------------------------------------------------------
    def image_to_tokens(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> tokens (M, h, w) int64 on CPU."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError("expected an (H, W, 3) uint8 RGB image")
        x = pad_to_multiple(to_tensor(image).to(self.device), self.cfg.downsample)
        return self.net.tokens(x)[0].cpu()

    def tokens_to_image(self, tokens: torch.Tensor, width: int, height: int) -> np.ndarray:
        x = self.net.reconstruct(tokens[None].to(self.device))
        return to_uint8(x[..., :height, :width])

    # ----- probabilities --------------------------------------------------------------
    @torch.no_grad()
    def stage_cdfs(self, known: torch.Tensor, stage: int, positions: np.ndarray,
                   hidden: torch.Tensor, cache: dict[bytes, torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """int64 CDFs (n, M, V+1) for ``positions`` of ``stage`` (1-based).

        ``known`` (M, h, w) holds every token of earlier stages; ``hidden`` (h, w) is True
        where a token is not (yet) known to the decoder. With a ``cache`` (one per image),
        the MIM trunk runs once per distinct ``hidden`` mask: the caller promises that equal
        masks come with equal visible tokens, which holds for the stages that share a
        context under a context depth. The heads then run per stage, so the CDFs are
        exactly those of an uncached call.
        """
        n = len(positions)
        if stage == 1:
            return self.marginal_cdf.unsqueeze(0).expand(n, -1, -1)
        key = hidden.detach().cpu().numpy().tobytes()
        feats = cache.get(key) if cache is not None else None
        if feats is None:
            feats = self.mim64.features(known[None].to(self.device),
                                        hidden[None].to(self.device))
            if cache is not None:
                cache[key] = feats
        sel = self.mim64.heads_at(feats, torch.from_numpy(positions).to(self.device))
        return entropy.logits_to_cdf(sel)

    def _stage_symbols(self, tokens: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        m = tokens.shape[0]
        return tokens.reshape(m, -1)[:, torch.from_numpy(positions)].T.contiguous()  # (n, M)

    # ----- tokens <-> stage bitstreams ------------------------------------------------
    def encode_tokens(self, tokens: torch.Tensor) -> tuple[StageStream, ...]:
        m, h, w = tokens.shape
        grid_stage = self.stage_map(h, w)
        out = []
        for s, pos in enumerate(self.stages(h, w), start=1):
            sym = self._stage_symbols(tokens, pos)
            cdf = self.stage_cdfs(tokens, s, pos, grid_stage >= s)
            out.append(StageStream(entropy.encode(cdf, sym), sym.shape[0],
                                   entropy.symbols_crc(sym)))
        return tuple(out)

    def decode_tokens(self, streams: tuple[StageStream, ...], h: int, w: int) -> torch.Tensor:
        stages = self.stages(h, w)
        if len(streams) != len(stages):
            raise BitstreamError(f"expected {len(stages)} stages, found {len(streams)}")
        m = self.cfg.num_subvectors
        tokens = torch.zeros(m, h * w, dtype=torch.int64)
        hidden = torch.ones(h * w, dtype=torch.bool)
        for s, (pos, st) in enumerate(zip(stages, streams, strict=True), start=1):
            if st.symbols != len(pos):
                raise BitstreamError(f"stage {s}: {st.symbols} symbols, grid needs {len(pos)}")
            cdf = self.stage_cdfs(tokens.reshape(m, h, w), s, pos, hidden.reshape(h, w))
            sym = entropy.decode(cdf.reshape(-1, cdf.shape[-1]), st.data).reshape(-1, m)
            entropy.check_crc(sym, st.crc, f"stage {s}")
            idx = torch.from_numpy(pos)
            tokens[:, idx] = sym.T
            hidden[idx] = False
        return tokens.reshape(m, h, w)

    def marginal_only_bytes(self, tokens: torch.Tensor) -> int:
        """Bytes to code the same tokens with the stage-1 marginals only (MIM ablation)."""
        m = tokens.shape[0]
        sym = tokens.reshape(m, -1).T.contiguous()
        cdf = self.marginal_cdf.unsqueeze(0).expand(sym.shape[0], -1, -1)
        return len(entropy.encode(cdf, sym))

    # ----- whole images -----------------------------------------------------------------
    def encode(self, image: np.ndarray) -> EncodedImage:
        height, width = image.shape[:2]
        tokens = self.image_to_tokens(image)
        return EncodedImage(self.model.model_id, width, height, self.encode_tokens(tokens))

    def decode(self, enc: EncodedImage) -> np.ndarray:
        if enc.model_id != self.model.model_id:
            raise ModelMismatchError(
                f"stream was made by model {enc.model_id.hex()}, but this decoder has model "
                f"{self.model.model_id_hex} ({self.model.name})"
            )
        h, w = self.grid(enc.width, enc.height)
        tokens = self.decode_tokens(enc.stages, h, w)
        return self.tokens_to_image(tokens, enc.width, enc.height)
