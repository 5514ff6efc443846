"""Fill missing tokens of a partially received image (PQ-MIM paper, Sec. 4.3).

Sec. 4.3, "Predicting missing patches": the conditional entropy model that codes stage
s from stages < s is a masked image model, so it can equally predict *any* hidden tokens
from the observed ones. The receiver uses this to conceal tokens it could not decode
exactly (lost packets, or stages whose context is incomplete); the PQ-VAE decoder then
turns the completed grid into pixels.

Every inpainter implements :class:`Inpainter`: ``fill(tokens, known)`` takes tokens
``(M, h, w)`` int64 and a ``known`` mask ``(h, w)`` bool, and returns a *new* tensor in
which known positions are bit-identical to the input and unknown positions are filled.
The values the input holds at unknown positions are never read.

* :class:`MimInpainter` -- iterative MIM fill, in quincunx stage order or MaskGIT-style
  confidence order (Sec. 4.3, "Number of prediction stages", Fig. 9). Deterministic: each
  sub-quantizer's index is picked from its own softmax, independently of the others
  (the codebook entry nearest the posterior mean by default, or the argmax).
* :class:`ArInpainter` -- sliding-window autoregressive fill with the AR prior
  (VQGAN extreme-compression paper, Sec. 2.3).
* :class:`NeighborInpainter` -- copy the nearest known token (Euclidean on the grid).
* :class:`NoInpainter` -- a fixed token: each sub-codebook's most frequent index.

:func:`get_inpainter` builds one by name (:data:`INPAINTERS` is the registry).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.errors import InputError, ModelMismatchError
from resilient_tx.model.ar import window_origin
from resilient_tx.zoo.checkpoint import LoadedModel, LoadedPrior

ORDERS = ("quincunx", "confidence")
#: How a predicted distribution becomes an index, per sub-quantizer (see MimInpainter).
DECISIONS = ("mean", "argmax")
DEFAULT_DECISION = "mean"
#: Chosen by measurement on the bundled sample; see :class:`MimInpainter`.
DEFAULT_ORDER = "quincunx"
DEFAULT_CONFIDENCE_STEPS = 8
#: Unknown positions handled per block by the nearest-neighbour search (bounds memory).
_NN_BLOCK = 1024
#: Positions whose per-entry probabilities the MIM inpainter holds at once.
PREDICT_CHUNK = 4096


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Inpainter(ABC):
    """Common interface: fill the unknown positions of a token grid (Sec. 4.3)."""

    name: ClassVar[str]

    def __init__(self, model: LoadedModel) -> None:
        self.num_subvectors = model.cfg.num_subvectors
        self.codebook_size = model.cfg.codebook_size

    def fill(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Return a new (M, h, w) int64 CPU tensor: known tokens copied, the rest filled.

        ``tokens`` values at unknown positions are ignored (they may be garbage).
        """
        self._check(tokens, known)
        tokens, known = tokens.detach().cpu(), known.detach().cpu()
        if bool(known.all()):
            return tokens.clone()
        out = self._fill(torch.where(known, tokens, 0), known).to(torch.int64).cpu()
        return torch.where(known, tokens, out)  # known positions bit-identical, by construction

    @abstractmethod
    def _fill(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """(M, h, w) with every unknown position filled; ``known`` has at least one False."""

    def _check(self, tokens: torch.Tensor, known: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.ndim != 3:
            raise InputError("tokens must be an (M, h, w) int64 tensor")
        if not isinstance(known, torch.Tensor) or known.dtype != torch.bool or known.ndim != 2:
            raise InputError("known must be an (h, w) bool tensor")
        if tokens.shape[0] != self.num_subvectors or tuple(tokens.shape[1:]) != tuple(known.shape):
            raise InputError(f"tokens {tuple(tokens.shape)} and known {tuple(known.shape)} do not "
                             f"match a model with M={self.num_subvectors}")
        if 0 in known.shape:
            raise InputError(f"token grid must be at least 1x1, got {tuple(known.shape)}")
        vals = tokens.detach().cpu()[:, known.detach().cpu()]
        if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= self.codebook_size):
            raise InputError(f"known token indices must lie in [0, {self.codebook_size})")


class NoInpainter(Inpainter):
    """Baseline "no inpainting": every unknown token becomes one fixed token.

    The fixed token is, per sub-codebook, the most frequent index in the model's
    training-set marginals (the stage-1 model of Sec. 3.2); ties go to the lowest index.
    """

    name = "none"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self.token = model.marginals.to(torch.int64).argmax(dim=1)  # (M,)

    def _fill(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return self.token[:, None, None].expand_as(tokens).clone()


class NeighborInpainter(Inpainter):
    """Baseline: copy the nearest known token (squared Euclidean grid distance).

    Ties go to the known position first in raster order. With nothing known, falls back
    to :class:`NoInpainter`'s fixed token.
    """

    name = "neighbor"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self.fallback = NoInpainter(model)

    def _fill(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        if not bool(known.any()):
            return self.fallback._fill(tokens, known)
        m, h, w = tokens.shape
        src = nearest_known(known)  # (h*w,) flat index of the nearest known cell
        return tokens.reshape(m, h * w)[:, src].reshape(m, h, w)


def nearest_known(known: torch.Tensor) -> torch.Tensor:
    """For each cell of an (h, w) mask with some True, the flat index of its nearest True cell.

    Exact squared Euclidean distance in integers; ties resolve to the lowest flat index
    (``argmin`` returns the first minimum). Memory is bounded by searching in blocks.
    """
    h, w = known.shape
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)  # (h*w, 2)
    kidx = torch.nonzero(known.reshape(-1)).squeeze(1)
    kc = coords[kidx]
    out = torch.arange(h * w)
    uidx = torch.nonzero(~known.reshape(-1)).squeeze(1)
    for start in range(0, len(uidx), _NN_BLOCK):
        blk = uidx[start:start + _NN_BLOCK]
        d2 = ((coords[blk, None, :] - kc[None, :, :]) ** 2).sum(-1)  # (b, K) int64
        out[blk] = kidx[d2.argmin(dim=1)]
    return out


class MimInpainter(Inpainter):
    """Iterative MIM fill of the unknown tokens given all known ones (Sec. 4.3, Fig. 10).

    ``order="quincunx"``: unknown tokens are filled stage by stage (stage 1 first), each
    pass conditioning on every token known or already filled -- the order the MIM codes
    in (Sec. 3.2), so every prediction sees its nearest neighbours from earlier stages.
    Stages with no unknown token cost no pass.

    ``order="confidence"`` (MaskGIT, Sec. 4.3 "Number of prediction stages"): at each of
    ``steps`` passes all remaining unknowns are predicted and the most confident ones are
    committed, so that a cosine schedule ``cos(pi/2 * t/steps)`` of them stays unknown
    after pass t. Confidence is the product over sub-quantizers of the max probability.

    Prediction is deterministic and per sub-quantizer, each independently of the others
    (the M heads are conditionally independent given the context):

    * ``decision="mean"`` (default): the codebook entry nearest (cosine, as the quantizer
      itself assigns) to the posterior-mean lookup vector ``sum_v p(v) c_v`` -- a
      minimum-expected-latent-error pick. It hedges between likely entries instead of
      betting on one, which is what lets the MIM beat neighbour copy.
    * ``decision="argmax"``: the argmax of each sub-quantizer's softmax.

    The MIM runs in float32 on ``device`` (CUDA when available by default); unlike
    entropy coding, inpainting needs no cross-machine bit-exactness.

    Default order: quincunx, the coding order: each pass fills a stage whose neighbours
    are known or already filled, in at most S passes instead of ``steps``; confidence
    order is the alternative.
    """

    name = "mim"

    def __init__(self, model: LoadedModel, device: torch.device | str | None = None,
                 order: str = DEFAULT_ORDER, steps: int = DEFAULT_CONFIDENCE_STEPS,
                 decision: str = DEFAULT_DECISION) -> None:
        super().__init__(model)
        if order not in ORDERS:
            raise InputError(f"unknown inpainting order {order!r} (one of {', '.join(ORDERS)})")
        if decision not in DECISIONS:
            raise InputError(f"unknown decision {decision!r} (one of {', '.join(DECISIONS)})")
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        self.order, self.steps, self.decision = order, steps, decision
        self.stages = model.cfg.stages
        self.device = torch.device(device) if device is not None else default_device()
        # A private float32 copy: the shared LoadedModel may live on another device.
        self.mim = copy.deepcopy(model.net.mim).float().to(self.device).eval()
        with torch.no_grad():  # (M, V, k) unit vectors the decoder actually sees
            self.codebooks = model.net.quantizer.normalized_codebooks().detach().float().to(
                self.device)

    @torch.no_grad()
    def _predict(self, tokens: torch.Tensor, unknown: torch.Tensor,
                 positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted tokens (M, n) and log-confidence (n,) at flat raster ``positions``.

        The heads and the softmax run :data:`PREDICT_CHUNK` positions at a time: a large
        photo's per-position probabilities over every entry would otherwise take
        gigabytes, for a few tokens each pass needs."""
        toks, mask = tokens[None].to(self.device), unknown[None].to(self.device)
        at = positions.to(self.device)
        feats = self.mim.features_at(toks, mask, at)[None]  # (1, n, D)
        idx_parts, conf_parts = [], []
        for i in range(0, len(at), PREDICT_CHUNK):
            rows = torch.arange(i, min(i + PREDICT_CHUNK, len(at)), device=self.device)
            logp = torch.log_softmax(self.mim.heads_at(feats, rows).float(), dim=-1)
            best, idx = logp.max(dim=-1)  # (n, M): log max-probability and argmax
            if self.decision == "mean":
                idx = nearest_to_mean(logp.exp(), self.codebooks)
            idx_parts.append(idx.T.cpu())
            conf_parts.append(best.sum(dim=-1).cpu())
        return torch.cat(idx_parts, dim=1), torch.cat(conf_parts)

    def _fill(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        if self.order == "quincunx":
            return self._fill_quincunx(tokens.clone(), ~known)
        return self._fill_confidence(tokens.clone(), ~known)

    def _fill_quincunx(self, tokens: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        h, w = unknown.shape
        grid = torch.from_numpy(quincunx_stages(h, w, self.stages))
        flat = tokens.view(tokens.shape[0], -1)  # tokens is a fresh contiguous clone
        for s in range(1, self.stages + 1):
            sel = unknown & (grid == s)
            if bool(sel.any()):
                pos = sel.reshape(-1).nonzero().squeeze(1)
                flat[:, pos] = self._predict(tokens, unknown, pos)[0]
                unknown = unknown & ~sel
        return tokens

    def _fill_confidence(self, tokens: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        total = int(unknown.sum())
        flat = tokens.view(tokens.shape[0], -1)
        for t in range(1, self.steps + 1):
            left = int(unknown.sum())
            if left == 0:
                break
            n = max(1, left - cosine_left(total, t, self.steps))
            pos = unknown.reshape(-1).nonzero().squeeze(1)  # raster order
            pred, conf = self._predict(tokens, unknown, pos)
            # Most confident first; ties in raster order (a stable sort).
            pick = torch.sort(conf, descending=True, stable=True).indices[:n]
            flat[:, pos[pick]] = pred[:, pick]
            unknown = unknown.clone()
            unknown.view(-1)[pos[pick]] = False
        return tokens


def nearest_to_mean(probs: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """(..., M, V) probabilities -> (..., M) index of the entry nearest (cosine) the expected
    lookup vector ``sum_v p(v) c_v`` of each sub-quantizer; ``codebooks`` is (M, V, k)."""
    mean = torch.einsum("...mv,mvk->...mk", probs, codebooks)
    return torch.einsum("...mk,mvk->...mv", mean, codebooks).argmax(dim=-1)


def cosine_left(total: int, step: int, steps: int) -> int:
    """MaskGIT cosine schedule: tokens still unknown after ``step`` of ``steps`` (0 at the end)."""
    return 0 if step >= steps else math.floor(total * math.cos(math.pi / 2 * step / steps))


class ArInpainter(Inpainter):
    """Sliding-window autoregressive fill (VQGAN extreme-compression paper, Sec. 2.3, Fig. 1(c)).

    Unknown tokens are filled one at a time in raster order. Each is predicted by the AR
    prior from the window centred on it (:func:`~resilient_tx.model.ar.window_origin`),
    reading only the window tokens before it in raster order: by then every one of those
    is either known or already filled, so the prior always sees a complete causal context
    (the paper feeds its own predictions back the same way). Known tokens *after* the
    position are invisible to it -- the price of a causal model, and why the MIM, which
    sees both sides, is expected to do better.

    ``window`` (default: the prior's training window) sets the context; smaller windows
    are cheaper and see less. The decision rule is the MIM's (``"mean"`` by default, see
    :class:`MimInpainter`), so the two differ only in their model. Deterministic; runs in
    float32 on ``device`` (CUDA when available by default). Cost: one causal prefix of at
    most ``window**2`` tokens per unknown token, computed in batches: the holes are grouped
    into waves (:func:`ar_waves`) whose members read only known tokens and earlier waves,
    so the result is exactly that of the one-at-a-time definition, with fewer passes.
    """

    name = "ar"

    def __init__(self, model: LoadedModel, prior: LoadedPrior | None = None,
                 device: torch.device | str | None = None, window: int | None = None,
                 decision: str = DEFAULT_DECISION) -> None:
        super().__init__(model)
        if prior is None:
            from resilient_tx.zoo.registry import (
                get_prior,  # the zoo knows where shipped priors live
            )

            prior = get_prior(model)
        if prior.base_model_id != model.model_id:
            raise ModelMismatchError(
                f"AR prior was trained for model {prior.base_model_id.hex()}, "
                f"not {model.model_id_hex}")
        trained = prior.net.cfg.window
        self.window = trained if window is None else window
        if isinstance(self.window, bool) or not isinstance(self.window, int) \
                or not 2 <= self.window <= trained:
            raise InputError(f"AR window must be in [2, {trained}] (the prior's training "
                             f"window), got {self.window}")
        if decision not in DECISIONS:
            raise InputError(f"unknown decision {decision!r} (one of {', '.join(DECISIONS)})")
        self.decision = decision
        self.device = torch.device(device) if device is not None else default_device()
        self.net = copy.deepcopy(prior.net).float().to(self.device).eval()
        with torch.no_grad():
            self.codebooks = model.net.quantizer.normalized_codebooks().detach().float().to(
                self.device)

    @torch.no_grad()
    def _fill(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        m, h, w = tokens.shape
        out = tokens.to(self.device)
        for wave in ar_waves(known, self.window):
            # Every hole of a wave reads only known tokens and holes of earlier waves, so
            # batched passes give what filling them one by one in raster order would.
            origins = [window_origin(r, c, h, w, self.window) for r, c in wave]
            wh, ww = origins[0][2], origins[0][3]  # the same for every hole of a grid
            slots = [(r - t) * ww + (c - left)
                     for (r, c), (t, left, _, _) in zip(wave, origins, strict=True)]
            for group in prefix_groups(slots):
                self._fill_batch(out, [wave[i] for i in group], [origins[i] for i in group],
                                 [slots[i] for i in group], wh, ww)
        return out.cpu()

    def _fill_batch(self, out: torch.Tensor, holes: list[tuple[int, int]],
                    origins: list[tuple[int, int, int, int]], slots: list[int], wh: int,
                    ww: int) -> None:
        """Predict ``holes`` (none reading another) in one pass and write them into ``out``."""
        wins = torch.stack([out[:, t:t + wh, left:left + ww] for t, left, _, _ in origins])
        lost = torch.zeros(len(holes), wh, ww, dtype=torch.bool, device=self.device)
        logits = self.net(wins, lost, length=max(slots) + 1)
        at = torch.tensor(slots, device=self.device)
        logits = logits[torch.arange(len(holes), device=self.device), at].float()
        if self.decision == "mean":
            idx = nearest_to_mean(torch.softmax(logits, dim=-1), self.codebooks)
        else:
            idx = logits.argmax(dim=-1)  # (B, M)
        rows = torch.tensor([r for r, _ in holes], device=self.device)
        cols = torch.tensor([c for _, c in holes], device=self.device)
        out[:, rows, cols] = idx.T


#: Holes of one wave whose causal prefixes differ by at most this many slots share a
#: batch: a batch runs to its longest prefix, so mixing short and long ones wastes work.
PREFIX_SPREAD = 32


def prefix_groups(slots: list[int]) -> list[list[int]]:
    """Indices into ``slots`` grouped for batching, shortest prefixes first."""
    groups: list[list[int]] = []
    first = -PREFIX_SPREAD - 1
    for i in sorted(range(len(slots)), key=slots.__getitem__):
        if slots[i] - first > PREFIX_SPREAD:
            groups.append([])
            first = slots[i]
        groups[-1].append(i)
    return groups


def ar_waves(known: torch.Tensor, window: int) -> list[list[tuple[int, int]]]:
    """The unknown positions of ``known`` (h, w) grouped into waves for the AR fill.

    A hole depends on the earlier holes (raster order) inside the causal part of its
    window: the window's rows above it and its own row to its left. Its wave is one more
    than the latest wave it depends on, so every wave can be predicted in one batch.
    """
    h, w = known.shape
    wave_of = np.full((h, w), -1, dtype=np.int64)  # -1: known, depends on nothing
    waves: list[list[tuple[int, int]]] = []
    for p in torch.nonzero(~known.reshape(-1)).squeeze(1).tolist():
        r, c = divmod(p, w)
        top, left, _, ww = window_origin(r, c, h, w, window)
        above = wave_of[top:r, left:left + ww]
        before = wave_of[r, left:c]
        dep = max(int(above.max()) if above.size else -1, int(before.max()) if before.size else -1)
        wave_of[r, c] = dep + 1
        if dep + 1 == len(waves):
            waves.append([])
        waves[dep + 1].append((r, c))
    return waves


#: name -> factory(model, device). Other modules may register more.
INPAINTERS: dict[str, Callable[[LoadedModel, torch.device], Inpainter]] = {
    "mim": lambda model, device: MimInpainter(model, device),
    "ar": lambda model, device: ArInpainter(model, device=device),
    "neighbor": lambda model, device: NeighborInpainter(model),
    "none": lambda model, device: NoInpainter(model),
}


def get_inpainter(name: str, model: LoadedModel, device: torch.device | str | None = None,
                  ar_window: int | None = None) -> Inpainter:
    """The inpainter registered as ``name`` (see :data:`INPAINTERS`), bound to ``model``.

    ``ar_window`` sets the AR prior's sliding window (tokens per side; default: the
    prior's training window) and is ignored by the other inpainters.
    """
    if name not in INPAINTERS:
        raise InputError(f"unknown inpainter {name!r} (one of {', '.join(sorted(INPAINTERS))})")
    dev = torch.device(device) if device is not None else default_device()
    if name == "ar" and ar_window is not None:
        return ArInpainter(model, device=dev, window=ar_window)
    return INPAINTERS[name](model, dev)
