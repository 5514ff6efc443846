"""The k-means rate-point file format: small files that reference their base model.

A derived rate point (VQGAN extreme-compression paper, Sec. 2.2; networks in
:mod:`resilient_tx.model.derived`, clustering in :mod:`resilient_tx.training.kmeans`) is
stored without any weights of its own:

* **File** (:data:`DERIVED_FORMAT`): a small ``torch.save`` dict (``weights_only``-loadable)
  with the base's name and model id, k, ``assign`` (M, V), ``centroids`` (M, k, D), ``rep``
  (M, k), the stage-1 ``marginals`` (M, k) and free-form ``meta``. Loading looks the base
  up by name and raises :class:`ModelMismatchError` if its id changed: then regenerate with
  ``resilient-tx derive-rate`` (or ``simulations/make_rate_points.py``).
* **Model id**: the first 8 bytes of SHA-256 over the format, the base model id, k, assign,
  centroids, rep and marginals -- different from the base and from every other k.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resilient_tx.errors import InputError, ModelMismatchError, ModelNotFoundError
from resilient_tx.model.derived import DerivedCodebooks, DerivedPQMIM, check_k
from resilient_tx.zoo.checkpoint import LoadedModel, read_payload

DERIVED_FORMAT = "resilient-tx-derived/1"
#: How to rebuild every shipped point after a base model is retrained.
REGENERATE = "python simulations/make_rate_points.py"


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


@dataclass(frozen=True)
class DerivedHeader:
    """What a derived file says about its base, readable without building the model."""

    base: str
    base_model_id: bytes
    k: int


def derived_model_id(base_model_id: bytes, books: DerivedCodebooks,
                     marginals: torch.Tensor) -> bytes:
    """The content-derived id of a rate point (see the module docstring)."""
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


def _check_tensors(assign: torch.Tensor, rep: torch.Tensor, cent: torch.Tensor,
                   marg: torch.Tensor, base: LoadedModel, k: int) -> None:
    """Raise ValueError unless the tensors are a clustering of ``base``'s codebooks into k."""
    cfg = base.cfg
    m, v = cfg.num_subvectors, cfg.codebook_size
    shapes = (tuple(assign.shape), tuple(rep.shape), tuple(cent.shape), tuple(marg.shape))
    if shapes != ((m, v), (m, k), (m, k, cfg.lookup_dim), (m, k)):
        raise ValueError(f"tensor shapes {shapes} do not fit base {base.name!r} with k={k}")
    if int(assign.min()) < 0 or int(assign.max()) >= k or int(marg.min()) < 0:
        raise ValueError("cluster ids or counts out of range")
    if int(rep.min()) < 0 or int(rep.max()) >= v or not torch.isfinite(cent).all():
        raise ValueError("representatives out of range or centroids not finite")
    if not torch.equal(assign.gather(1, rep), torch.arange(k).expand(m, k)):
        raise ValueError("a representative is not a member of its cluster")


def _validated(payload: dict[str, Any], base: LoadedModel, k: int,
               p: Path) -> tuple[DerivedCodebooks, torch.Tensor]:
    try:
        check_k(k, base.cfg.codebook_size)
        assign = payload["assign"].to(torch.int64)
        rep = payload["rep"].to(torch.int64)
        cent = payload["centroids"].float()
        marg = payload["marginals"].to(torch.int64)
        _check_tensors(assign, rep, cent, marg, base, k)
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError, InputError) as exc:
        raise InputError(f"{p}: damaged derived rate-point file ({exc})") from exc
    return DerivedCodebooks(assign=assign, centroids=cent, rep=rep), marg


def _resolved_base(head: DerivedHeader, resolve_base: Callable[[str], LoadedModel],
                   p: Path) -> LoadedModel:
    """The base named in ``head``, refused unless it is the very model it was derived from."""
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
    return base


def load_derived(path: str | Path, resolve_base: Callable[[str], LoadedModel],
                 name: str | None = None) -> LoadedModel:
    """Load a derived rate point; ``resolve_base(name)`` returns its base model.

    Raises :class:`ModelMismatchError` if the base's model id is not the one the file was
    derived from (the base was retrained): the file must then be regenerated.
    """
    p = Path(path)
    payload = _read(p)
    head = _header(payload, p)
    base = _resolved_base(head, resolve_base, p)
    books, marg = _validated(payload, base, head.k, p)
    meta = payload.get("meta", {})
    return build_model(base, books, marg, name or p.stem,
                       dict(meta) if isinstance(meta, dict) else {})
