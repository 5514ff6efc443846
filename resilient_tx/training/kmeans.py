"""K-means rate points: smaller codebooks derived from a trained model, without retraining.

VQGAN extreme-compression paper (Mao et al.), Sec. 2.2 "Adjusting Variable Bitrates": a
trained codebook is clustered with k-means into a smaller one, and an image is represented by
the indices of the nearest *new* codewords -- fewer bits per index, some loss of quality. The
paper then fine-tunes; we do not (its "Ours w/o Fine-tune" variant, Sec. 3.2).

This module finds the clustering and counts the new marginals; the networks that run a
derived point live in :mod:`resilient_tx.model.derived` (:class:`DerivedPQMIM` shares the
base's encoder and decoder, :class:`MergedMIM` merges the base MIM's distribution over each
cluster), its file format and model id in :mod:`resilient_tx.zoo.derived`, and the
``resilient-tx derive-rate`` command in :mod:`resilient_tx.app.derive_rate`.

Per sub-quantizer of a base model (M sub-codebooks of V entries, PQ-MIM paper Sec. 3.1):

* **Clustering** (:func:`spherical_kmeans`). Weighted spherical k-means on the l2-normalised
  lookup vectors: the quantizer assigns by cosine similarity, so the clustering uses the same
  geometry (assign to the centroid of largest cosine; centroid = normalised weighted mean).
  Each entry is weighted by its usage count on the training set -- the base model's stage-1
  marginals hold exactly that -- so frequently used entries pull the centroids toward them.
  Seeded weighted k-means++ init, a few restarts, at most ``MAX_ITER`` Lloyd iterations in
  numpy float64: deterministic. No empty cluster survives (one is re-seeded with the entry
  that costs most in its own cluster). Result: ``assign`` (V,) -> cluster, ``centroids``
  (k, lookup_dim) and ``rep`` (k,): the used original entry nearest each centroid.
* **Stage-1 marginals** (:func:`count_tokens`). The derived tokens' own (M, k) histograms
  over the training images and their mirror images (as :mod:`resilient_tx.training.trainer`
  counts the base ones), by re-tokenising, for every k of a base at once (the encoder runs
  once per image). Summing the base histogram over each cluster's members would be free
  but is not the same: a latent's nearest centroid is not always the cluster of its
  nearest original entry. Both are measured and stored in ``meta``: ``marginal_bits`` and
  ``cluster_sum_bits`` are bits per sub-index of the derived training tokens under each
  histogram's integer CDF. The re-tokenised counts code the training tokens in fewer bits
  and re-tokenising is cheap, so they are what we ship.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resilient_tx.codec import entropy
from resilient_tx.errors import InputError
from resilient_tx.images import list_images, load_rgb, to_tensor
from resilient_tx.model import PQMIM, pad_to_multiple
from resilient_tx.model.derived import DerivedCodebooks, DerivedPQMIM, check_k
from resilient_tx.zoo.checkpoint import LoadedModel
from resilient_tx.zoo.derived import DerivedRatePoint

N_INIT = 8  # k-means restarts; V is a few hundred points, so restarts cost nothing
MAX_ITER = 100


# ----------------------------------------------------------------------------- k-means
@dataclass(frozen=True)
class KMeansFit:
    """Weighted spherical k-means of one sub-codebook (Sec. 2.2)."""

    assign: np.ndarray  # (V,) int64 cluster of every original entry
    centroids: np.ndarray  # (k, D) float64, unit length
    rep: np.ndarray  # (k,) int64 original entry nearest each centroid
    distortion: float  # usage-weighted mean of 1 - cos(entry, its centroid)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _kmeanspp(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding with 1 - cos (half the squared chord) as distance."""
    v = len(x)
    p = w / w.sum() if w.sum() > 0 else np.full(v, 1.0 / v)
    picks = [int(rng.choice(v, p=p))]
    d = np.clip(1.0 - x @ x[picks[0]], 0.0, None)
    for _ in range(1, k):
        score = w * d
        if score.sum() <= 0:  # every used entry is already a centre: spread over the rest
            score = d.copy()
        if score.sum() <= 0:  # only duplicates left
            score = np.ones(v)
            score[picks] = 0.0
        picks.append(int(rng.choice(v, p=score / score.sum())))
        d = np.minimum(d, np.clip(1.0 - x @ x[picks[-1]], 0.0, None))
    return x[picks].copy()


def _fill_empty(x: np.ndarray, w: np.ndarray, a: np.ndarray, c: np.ndarray, k: int) -> None:
    """Give every empty cluster the entry that costs most in its own (non-singleton) cluster.

    In place on ``a`` and ``c``. An empty cluster would be a symbol with no original entry
    behind it: no MIM probability mass and no representative embedding.
    """
    counts = np.bincount(a, minlength=k)
    for j in np.flatnonzero(counts == 0):
        movable = counts[a] > 1
        d = np.clip(1.0 - np.einsum("vd,vd->v", x, c[a]), 0.0, None)
        score = np.where(movable, w * d, -1.0)
        if score.max() <= 0:
            score = np.where(movable, d, -1.0)
        if score.max() <= 0:
            score = np.where(movable, 1.0, -1.0)
        i = int(np.argmax(score))
        counts[a[i]] -= 1
        counts[j] += 1
        a[i] = j
        c[j] = x[i]


def _centroids(x: np.ndarray, w: np.ndarray, a: np.ndarray, k: int,
               prev: np.ndarray) -> np.ndarray:
    s = np.zeros((k, x.shape[1]))
    np.add.at(s, a, w[:, None] * x)
    plain = np.zeros_like(s)  # clusters of unused entries only: their plain mean
    np.add.at(plain, a, x)
    s = np.where(np.bincount(a, weights=w, minlength=k)[:, None] > 0, s, plain)
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    return np.where(norm > 1e-12, s / np.maximum(norm, 1e-12), prev)


def _lloyd(x: np.ndarray, w: np.ndarray, c: np.ndarray, k: int,
           max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.full(len(x), -1)
    for _ in range(max_iter):
        new = np.argmax(x @ c.T, axis=1)
        _fill_empty(x, w, new, c, k)
        if np.array_equal(new, a):
            break
        a = new
        c = _centroids(x, w, a, k, c)
    a = np.argmax(x @ c.T, axis=1)  # final nearest-centroid membership, as tokenising does
    _fill_empty(x, w, a, c, k)
    return a.astype(np.int64), c


def spherical_kmeans(x: np.ndarray, weights: np.ndarray, k: int, seed: int | Sequence[int] = 0,
                     n_init: int = N_INIT, max_iter: int = MAX_ITER) -> KMeansFit:
    """Cluster unit vectors ``x`` (V, D) weighted by ``weights`` (V,) into ``k`` (Sec. 2.2).

    Deterministic for a given seed: numpy float64 throughout, ties go to the lowest index.
    The restart with the lowest weighted distortion wins.
    """
    x = _normalise(np.asarray(x, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64)
    if x.ndim != 2 or w.shape != (x.shape[0],):
        raise InputError(f"expected vectors (V, D) and weights (V,), got {x.shape}, {w.shape}")
    if not (np.isfinite(x).all() and np.isfinite(w).all() and (w >= 0).all()):
        raise InputError("codebook vectors and weights must be finite, weights >= 0")
    check_k(k, x.shape[0])
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(max(1, n_init)):
        a, c = _lloyd(x, w, _kmeanspp(x, w, k, rng), k, max_iter)
        cost = 1.0 - np.einsum("vd,vd->v", x, c[a])
        dist = float((w * cost).sum() / w.sum()) if w.sum() > 0 else float(cost.mean())
        runs.append((dist, a, c))
    dist, a, c = min(runs, key=lambda r: r[0])  # ties: the earliest restart
    rep = np.empty(k, dtype=np.int64)
    for j in range(k):
        members = np.flatnonzero(a == j)
        used = members[w[members] > 0]  # an unused entry's MIM embedding was never trained
        pool = used if len(used) else members
        rep[j] = pool[int(np.argmax(x[pool] @ c[j]))]
    return KMeansFit(assign=a, centroids=c, rep=rep, distortion=dist)


def cluster_codebooks(base: LoadedModel, k: int, seed: int = 0) -> tuple[DerivedCodebooks,
                                                                          float]:
    """K-means every sub-codebook of ``base``, weighted by its marginals. Returns the
    codebooks and the mean weighted distortion (1 - cos) over sub-quantizers."""
    check_k(k, base.cfg.codebook_size)
    with torch.no_grad():
        cb = base.net.quantizer.normalized_codebooks().detach().double().cpu().numpy()
    fits = [spherical_kmeans(cb[m], base.marginals[m].double().numpy(), k, seed=[seed, m])
            for m in range(base.cfg.num_subvectors)]
    books = DerivedCodebooks(
        assign=torch.from_numpy(np.stack([f.assign for f in fits])),
        centroids=torch.from_numpy(np.stack([f.centroids for f in fits])).float(),
        rep=torch.from_numpy(np.stack([f.rep for f in fits])))
    return books, float(np.mean([f.distortion for f in fits]))


# ----------------------------------------------------------------------------- marginals
def training_files(data: str | Path, limit: int = 0) -> list[Path]:
    """Training images under ``data`` (first ``limit`` if > 0); Kodak is refused."""
    files = list_images(data)
    if any("kodak" in str(f).lower() for f in files):
        raise InputError("refusing to count marginals on Kodak: it is the evaluation set")
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    return files[: limit or None]


@torch.no_grad()
def count_tokens(base: LoadedModel, nets: Sequence[PQMIM], files: Sequence[Path],
                 device: torch.device | str = "cpu", mirror: bool = True,
                 progress: bool = True) -> list[torch.Tensor]:
    """(M, V_net) int64 token histograms of every net sharing ``base``'s encoder.

    Each image (and its mirror image, as the trainer does for the base marginals) is
    encoded once; every net's quantizer then assigns the same latent.
    """
    from tqdm import tqdm

    for net in (base.net, *nets):
        net.to(device).eval()
    counts = [torch.zeros(n.cfg.num_subvectors, n.cfg.codebook_size, dtype=torch.int64)
              for n in nets]
    for f in tqdm(files, desc="tokenising training images", disable=not progress):
        x = to_tensor(load_rgb(f)).to(device)
        for img in ((x, x.flip(3)) if mirror else (x,)):
            z = base.net.encoder(PQMIM._to_model_range(pad_to_multiple(img, base.cfg.downsample)))
            for c, net in zip(counts, nets, strict=True):
                idx = net.quantizer.indices(z)[0].cpu()  # (M, h, w)
                for m in range(c.shape[0]):
                    c[m] += torch.bincount(idx[m].reshape(-1), minlength=c.shape[1])
    return counts


def cluster_sum_marginals(base: LoadedModel, books: DerivedCodebooks) -> torch.Tensor:
    """The free alternative: base counts summed over each cluster's members."""
    out = torch.zeros(books.assign.shape[0], books.k, dtype=torch.int64)
    return out.scatter_add_(1, books.assign, base.marginals.to(torch.int64))


def code_bits(counts: torch.Tensor, model_counts: torch.Tensor) -> float:
    """Bits per sub-index to code a histogram ``counts`` with ``model_counts``' integer CDF."""
    cdf = entropy.counts_to_cdf(model_counts)
    bits = entropy.PRECISION - torch.log2((cdf[:, 1:] - cdf[:, :-1]).double())
    return float((counts.double() * bits).sum() / counts.sum().clamp_min(1))


def _total_variation(recount: torch.Tensor, stored: torch.Tensor) -> float:
    """Mean over sub-quantizers of the total-variation distance between two (M, V)
    histograms: token counts ``recount`` and a model's stored marginals."""
    ref = stored.double()
    return 0.5 * float((recount / recount.sum(1, keepdim=True).clamp_min(1)
                        - ref / ref.sum(1, keepdim=True)).abs().sum(1).mean())


def derive_rate_points(base: LoadedModel, ks: Sequence[int], files: Sequence[Path],
                       seed: int = 0, device: torch.device | str = "cpu",
                       progress: bool = True) -> list[DerivedRatePoint]:
    """K-means rate points of ``base`` for every k, with re-tokenised marginals (Sec. 2.2)."""
    if not ks or len(set(ks)) != len(ks):
        raise InputError(f"give one or more distinct k values, got {list(ks)}")
    for k in ks:
        check_k(k, base.cfg.codebook_size)
    clustered = [cluster_codebooks(base, k, seed) for k in ks]
    nets = [DerivedPQMIM(base.net, books) for books, _ in clustered]
    recount, *counts = count_tokens(base, [base.net, *nets], files, device, progress=progress)
    # Sanity check of the tokenising path: with the full training set this recounts the
    # base's own marginals (small differences: they were counted with fp32 weights).
    base_tv = _total_variation(recount, base.marginals)
    out = []
    for (books, distortion), marg in zip(clustered, counts, strict=True):
        meta = {"k": books.k, "kmeans_seed": seed, "kmeans_distortion": round(distortion, 6),
                "marginal_images": len(files), "marginal_mirrored": True,
                "marginal_bits": round(code_bits(marg, marg), 4),
                "cluster_sum_bits": round(code_bits(marg, cluster_sum_marginals(base, books)), 4),
                "base_recount_tv": round(base_tv, 5)}
        out.append(DerivedRatePoint(base.name, base.model_id, books, marg, meta))
    return out
