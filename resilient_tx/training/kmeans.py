"""K-means rate points: smaller codebooks derived from a trained model, without retraining.

VQGAN extreme-compression paper (Mao et al.), Sec. 2.2 "Adjusting Variable Bitrates": a
trained codebook is clustered with k-means into a smaller one, and an image is represented by
the indices of the nearest *new* codewords -- fewer bits per index, some loss of quality. The
paper then fine-tunes; we do not (its "Ours w/o Fine-tune" variant, Sec. 3.2).

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
* **Autoencoder** (:class:`DerivedPQMIM`). Encoder, decoder and the quantizer's projections
  are the base model's own modules (shared, not copied: a rate point costs no weights); the
  codebooks are the centroids. Tokenising assigns each latent to its nearest centroid and
  decoding feeds the centroid to the decoder. Sharing means a process should run all models
  of a family on one device, which every caller here does.
* **Entropy model** (:class:`MergedMIM`). The base MIM, wrapped: a known small index j enters
  it as original entry ``rep[j]``, and the distribution over the k clusters merges the base
  distribution: small logit_j = logsumexp of the original logits i with ``assign[i] == j``.
* **Stage-1 marginals**. The derived tokens' own (M, k) histograms over the training images
  (BSDS500 and their mirror images, as ``train.py`` counts the base ones), by re-tokenising:
  about 2 minutes for all 500 images on one CPU thread, for every k of a base at once (the
  encoder runs once per image). Summing the base histogram over each cluster's members would be free
  but is not the same: a latent's nearest centroid is not always the cluster of its nearest
  original entry. Both are measured and stored in ``meta``: ``marginal_bits`` and
  ``cluster_sum_bits`` are bits per sub-index of the derived training tokens under each
  histogram's integer CDF. On ``low`` the cluster sums cost 0.002 (k=16) to 0.05 (k=128)
  bits per sub-index more; re-tokenising is cheap, so it is what we ship.
* **File** (:data:`DERIVED_FORMAT`): a small ``torch.save`` dict (``weights_only``-loadable)
  with the base's name and model id, k, assign, centroids, rep, marginals and meta. Loading
  looks the base up by name and raises :class:`ModelMismatchError` if its id changed: then
  regenerate with ``resilient-tx derive-rate`` (or ``simulations/make_rate_points.py``).
* **Model id**: the first 8 bytes of SHA-256 over the format, the base model id, k, assign,
  centroids, rep and marginals -- different from the base and from every other k.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resilient_tx.codec import entropy
from resilient_tx.errors import InputError, ModelMismatchError, ModelNotFoundError
from resilient_tx.images import list_images, load_rgb, to_tensor
from resilient_tx.model import PQMIM, pad_to_multiple
from resilient_tx.model.quantizer import ProductQuantizer
from resilient_tx.zoo.checkpoint import LoadedModel, read_payload

DERIVED_FORMAT = "resilient-tx-derived/1"
N_INIT = 8  # k-means restarts; V is a few hundred points, so restarts cost nothing
MAX_ITER = 100
#: Training images (never Kodak): ``../shared/data/bsds500`` beside the repository.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "bsds500"
REGENERATE = "python simulations/make_rate_points.py"


# ----------------------------------------------------------------------------- k-means
@dataclass(frozen=True)
class KMeansFit:
    """Weighted spherical k-means of one sub-codebook (Sec. 2.2)."""

    assign: np.ndarray  # (V,) int64 cluster of every original entry
    centroids: np.ndarray  # (k, D) float64, unit length
    rep: np.ndarray  # (k,) int64 original entry nearest each centroid
    distortion: float  # usage-weighted mean of 1 - cos(entry, its centroid)


def check_k(k: int, v: int) -> None:
    """k must shrink the codebook and leave at least two symbols."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 2 <= k < v:
        raise InputError(f"k must be an integer in [2, {v}) for a {v}-entry codebook, got {k!r}")


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


@dataclass(frozen=True)
class DerivedCodebooks:
    """K-means of all M sub-codebooks of a base model, as tensors."""

    assign: torch.Tensor  # (M, V) int64
    centroids: torch.Tensor  # (M, k, D) float32, unit length
    rep: torch.Tensor  # (M, k) int64

    @property
    def k(self) -> int:
        return int(self.rep.shape[1])


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


# ----------------------------------------------------------------------------- the model
class MergedMIM(nn.Module):
    """The base MIM seen through a k-means clustering: same interface, V = k (Sec. 2.2).

    Inputs: small index j is embedded as the base entry ``rep[j]``. Outputs: the probability
    of cluster j is the base probability summed over its members, i.e. logit_j = logsumexp
    of the member logits. Runs in whatever dtype it is cast to (the codec uses float64);
    the index maps are buffers so ``.double()`` / ``.to(device)`` carry them along.
    """

    def __init__(self, base: nn.Module, assign: torch.Tensor, rep: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.m, self.v = int(rep.shape[0]), int(rep.shape[1])
        self.register_buffer("assign", assign.to(torch.int64).clone())
        self.register_buffer("rep", rep.to(torch.int64).clone())
        # (M, V, k) membership; floating so that it follows the module's dtype.
        self.register_buffer("member", nn.functional.one_hot(assign.to(torch.int64),
                                                             self.v).float())

    def expand(self, tokens: torch.Tensor) -> torch.Tensor:
        """Small indices (B, M, h, w) -> the base indices the MIM sees."""
        b, m, h, w = tokens.shape
        safe = tokens.clamp(0, self.v - 1)  # masked slots may hold any placeholder
        flat = safe.transpose(0, 1).reshape(m, -1)
        return self.rep.gather(1, flat).reshape(m, b, h, w).transpose(0, 1)

    def merge(self, logits: torch.Tensor) -> torch.Tensor:
        """Base logits (..., M, V) -> cluster logits (..., M, k), a grouped logsumexp."""
        top = logits.amax(-1, keepdim=True)
        # Shifted by the row max, the cluster holding it sums to >= 1; clusters far below
        # underflow to the dtype's tiny (a finite ~ -700 / -87 nats), never to -inf.
        s = torch.einsum("...mv,mvk->...mk", (logits - top).exp(), self.member.to(logits.dtype))
        return s.clamp_min(torch.finfo(logits.dtype).tiny).log() + top

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.merge(self.base(self.expand(tokens), mask))

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.base.features(self.expand(tokens), mask)

    def logits_at(self, tokens: torch.Tensor, mask: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
        return self.merge(self.base.logits_at(self.expand(tokens), mask, positions))

    def heads_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.merge(self.base.heads_at(features, positions))


class DerivedPQMIM(PQMIM):
    """A PQ-MIM whose codebooks are k-means centroids of a base model's (Sec. 2.2).

    Shares the base's encoder, decoder and quantizer projections; ``cfg.codebook_size`` is k.
    All of :class:`PQMIM`'s methods work unchanged.
    """

    def __init__(self, base: PQMIM, books: DerivedCodebooks) -> None:
        nn.Module.__init__(self)  # not PQMIM.__init__: it would build weights thrown away
        cfg = dataclasses.replace(base.cfg, codebook_size=books.k)
        self.cfg = cfg
        self.encoder = base.encoder
        self.decoder = base.decoder
        q = ProductQuantizer(cfg.latent_dim, cfg.num_subvectors, books.k, cfg.lookup_dim)
        q.down, q.up = base.quantizer.down, base.quantizer.up
        with torch.no_grad():
            q.codebooks.copy_(books.centroids)
        self.quantizer = q.to(base.quantizer.codebooks.device)
        self.mim = MergedMIM(base.mim, books.assign, books.rep).to(
            base.quantizer.codebooks.device)
        self.eval()


def derived_model_id(base_model_id: bytes, books: DerivedCodebooks,
                     marginals: torch.Tensor) -> bytes:
    h = hashlib.sha256(DERIVED_FORMAT.encode())
    h.update(base_model_id)
    h.update(books.k.to_bytes(4, "little"))
    for t in (books.assign.to(torch.int64), books.centroids.to(torch.float32),
              books.rep.to(torch.int64), marginals.to(torch.int64)):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()[:8]


def build_model(base: LoadedModel, books: DerivedCodebooks, marginals: torch.Tensor,
                name: str, meta: dict[str, Any]) -> LoadedModel:
    """The derived rate point as a :class:`LoadedModel`, usable wherever a shipped one is."""
    marginals = marginals.to(torch.int64).cpu()
    return LoadedModel(net=DerivedPQMIM(base.net, books), marginals=marginals,
                       model_id=derived_model_id(base.model_id, books, marginals), name=name,
                       meta={**base.meta, **meta, "derived_from": base.name})


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

    Each image (and its mirror image, as ``train.py`` does for the base marginals) is
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


@dataclass(frozen=True)
class DerivedRatePoint:
    """Everything a derived rate-point file holds."""

    base_name: str
    base_model_id: bytes
    books: DerivedCodebooks
    marginals: torch.Tensor  # (M, k) int64
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.base_name}-k{self.books.k}"


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
    stored = base.marginals.double()
    base_tv = 0.5 * float((recount / recount.sum(1, keepdim=True).clamp_min(1)
                           - stored / stored.sum(1, keepdim=True)).abs().sum(1).mean())
    out = []
    for (books, distortion), marg in zip(clustered, counts, strict=True):
        meta = {"k": books.k, "kmeans_seed": seed, "kmeans_distortion": round(distortion, 6),
                "marginal_images": len(files), "marginal_mirrored": True,
                "marginal_bits": round(code_bits(marg, marg), 4),
                "cluster_sum_bits": round(code_bits(marg, cluster_sum_marginals(base, books)), 4),
                "base_recount_tv": round(base_tv, 5)}
        out.append(DerivedRatePoint(base.name, base.model_id, books, marg, meta))
    return out


# ----------------------------------------------------------------------------- files
@dataclass(frozen=True)
class DerivedHeader:
    base: str
    base_model_id: bytes
    k: int


def save_derived(path: str | Path, point: DerivedRatePoint) -> bytes:
    """Write a derived rate-point file; returns its model id."""
    b = point.books
    payload = {"format": DERIVED_FORMAT, "base": point.base_name,
               "base_model_id": point.base_model_id.hex(), "k": b.k,
               "assign": b.assign.to(torch.int64).cpu(), "centroids": b.centroids.float().cpu(),
               "rep": b.rep.to(torch.int64).cpu(),
               "marginals": point.marginals.to(torch.int64).cpu(), "meta": dict(point.meta)}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(p)  # atomic: a reader never sees half a file
    return derived_model_id(point.base_model_id, b, point.marginals)


def _read(p: Path) -> dict[str, Any]:
    return read_payload(p, DERIVED_FORMAT, "derived rate-point file")


def _header(payload: dict[str, Any], p: Path) -> DerivedHeader:
    try:
        return DerivedHeader(str(payload["base"]), bytes.fromhex(str(payload["base_model_id"])),
                             int(payload["k"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{p}: damaged derived rate-point file ({exc})") from exc


def read_header(path: str | Path) -> DerivedHeader:
    """Base name, base model id and k of a derived file, without building the model."""
    return _header(_read(Path(path)), Path(path))


def is_derived_file(path: str | Path) -> bool:
    """True for a readable derived rate-point file (cheap: tensors are memory-mapped)."""
    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a file, not a zip archive, not loadable: not ours
        return False
    return isinstance(payload, dict) and payload.get("format") == DERIVED_FORMAT


def _validated(payload: dict[str, Any], base: LoadedModel, k: int,
               p: Path) -> tuple[DerivedCodebooks, torch.Tensor]:
    cfg = base.cfg
    m, v = cfg.num_subvectors, cfg.codebook_size
    try:
        check_k(k, v)
        assign = payload["assign"].to(torch.int64)
        rep = payload["rep"].to(torch.int64)
        cent = payload["centroids"].float()
        marg = payload["marginals"].to(torch.int64)
        shapes = (tuple(assign.shape), tuple(rep.shape), tuple(cent.shape), tuple(marg.shape))
        if shapes != ((m, v), (m, k), (m, k, cfg.lookup_dim), (m, k)):
            raise ValueError(f"tensor shapes {shapes} do not fit base {base.name!r} with k={k}")
        if int(assign.min()) < 0 or int(assign.max()) >= k or int(marg.min()) < 0:
            raise ValueError("cluster ids or counts out of range")
        if int(rep.min()) < 0 or int(rep.max()) >= v or not torch.isfinite(cent).all():
            raise ValueError("representatives out of range or centroids not finite")
        if not torch.equal(assign.gather(1, rep), torch.arange(k).expand(m, k)):
            raise ValueError("a representative is not a member of its cluster")
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError, InputError) as exc:
        raise InputError(f"{p}: damaged derived rate-point file ({exc})") from exc
    return DerivedCodebooks(assign=assign, centroids=cent, rep=rep), marg


def load_derived(path: str | Path, resolve_base: Callable[[str], LoadedModel],
                 name: str | None = None) -> LoadedModel:
    """Load a derived rate point; ``resolve_base(name)`` returns its base model.

    Raises :class:`ModelMismatchError` if the base's model id is not the one the file was
    derived from (the base was retrained): the file must then be regenerated.
    """
    p = Path(path)
    payload = _read(p)
    head = _header(payload, p)
    try:
        base = resolve_base(head.base)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{p.name} was derived from base model {head.base!r}, which "
                                 f"is not available here ({exc})") from exc
    if base.model_id != head.base_model_id:
        raise ModelMismatchError(
            f"{p.name} was derived from {head.base!r} model {head.base_model_id.hex()}, but "
            f"{head.base!r} is now model {base.model_id_hex} (retrained?); regenerate it with "
            f"`resilient-tx derive-rate --base {head.base} --k {head.k}` or `{REGENERATE}`")
    books, marg = _validated(payload, base, head.k, p)
    meta = payload.get("meta", {})
    return build_model(base, books, marg, name or p.stem, dict(meta) if isinstance(meta, dict)
                       else {})


# ----------------------------------------------------------------------------- CLI
def _cmd_derive_rate(args: argparse.Namespace) -> int:
    from resilient_tx.runtime import resolve_device, set_threads
    from resilient_tx.zoo.registry import derived_dir, get_model

    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.output and len(args.k) != 1:
        raise InputError("-o/--output names one file: give a single --k, or use --out-dir")
    if not (args.output or args.out_dir or (derived_dir().parent / f"{args.base}.pt").is_file()):
        # The shipped folder holds points of shipped bases only: the zoo finds bases by name.
        raise InputError(f"base {args.base!r} is not a shipped rate: give -o FILE or --out-dir")
    base = get_model(args.base)
    if isinstance(base.net, DerivedPQMIM):
        raise InputError(f"{args.base!r} is itself a derived rate point; derive from its base")
    for k in args.k:  # before the slow part
        check_k(k, base.cfg.codebook_size)
    data = Path(args.data)
    if not data.is_dir():
        raise InputError(f"training images not found at {data}; pass --data DIR")
    files = training_files(data, args.limit)
    points = derive_rate_points(base, args.k, files, args.seed, device)
    for pt in points:
        path = Path(args.output) if args.output else Path(args.out_dir or derived_dir()) / (
            f"{pt.name}.pt")
        mid = save_derived(path, pt)
        print(f"{pt.name}: model {mid.hex()} -> {path} ({path.stat().st_size / 1024:.1f} KiB); "
              f"{pt.meta['marginal_bits']:.3f} bits/sub-index with its own marginals, "
              f"{pt.meta['cluster_sum_bits']:.3f} with cluster-summed base marginals")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``derive-rate`` on the CLI's subparsers."""
    p = sub.add_parser(
        "derive-rate", help="derive smaller-codebook rate points from a model with k-means",
        description="Cluster each sub-codebook of a trained model into k entries with "
        "usage-weighted k-means (VQGAN extreme-compression paper, Sec. 2.2) and write a small "
        "rate-point file referencing the base model; its marginals are counted on the "
        "training images. No retraining. Shipped points live in resilient_tx/models/derived/.")
    p.add_argument("--base", default="low", help="base rate name or model file "
                   "(default: %(default)s)")
    p.add_argument("--k", type=int, nargs="+", required=True,
                   help="codebook size(s) to derive, each in [2, V)")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="training images for the marginals, never Kodak (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    p.add_argument("-o", "--output", help="output file (one --k only)")
    p.add_argument("--out-dir", help="output folder for BASE-kK.pt files "
                   "(default: the shipped resilient_tx/models/derived/)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.set_defaults(func=_cmd_derive_rate)
