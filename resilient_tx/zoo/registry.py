"""The shipped models (package data) and lookup by rate name, path or model id.

Two kinds of shipped rate points: trained models (``models/*.pt``) and k-means rate points
derived from them (``models/derived/*.pt``, small files referencing their base; see
:mod:`resilient_tx.zoo.derived`). Both are looked up the same way.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

from resilient_tx.config import DEFAULT_RATE
from resilient_tx.errors import ModelMismatchError, ModelNotFoundError
from resilient_tx.zoo.checkpoint import LoadedModel, LoadedPrior, load_model, load_prior
from resilient_tx.zoo.derived import REGENERATE, is_derived_file, load_derived, read_header


def _models_dir() -> Path:
    return Path(str(resources.files("resilient_tx") / "models"))


def derived_dir() -> Path:
    """Where the shipped k-means rate points live (a subfolder: never mistaken for a base)."""
    return _models_dir() / "derived"


def _base_names() -> list[str]:
    return sorted(p.stem for p in _models_dir().glob("*.pt"))


def _derived_names() -> list[str]:
    """Shipped derived points whose base is shipped with the id they were derived from.

    A stale one (its base retrained since) is skipped with a warning, so it cannot break
    the other rate points; ``get_model`` on it raises :class:`ModelMismatchError`.
    """
    bases = set(_base_names())
    out = []
    for p in sorted(derived_dir().glob("*.pt")):
        head = read_header(p)
        if head.base in bases and get_model(head.base).model_id == head.base_model_id:
            out.append(p.stem)
        else:
            warnings.warn(f"skipping derived rate point {p.stem}: its base {head.base!r} is "
                          f"missing or was retrained; regenerate with `{REGENERATE}`",
                          stacklevel=3)
    return out


def available_rates() -> list[str]:
    """Names of the shipped rate points, lowest rate first (by raw bits per pixel)."""
    names = _base_names() + _derived_names()
    return sorted(names, key=lambda n: (get_model(n).cfg.raw_bits_per_token /
                                        get_model(n).cfg.downsample ** 2, n))


def _shipped_base(name: str) -> LoadedModel:
    if name not in _base_names():
        raise ModelNotFoundError(f"base model {name!r} of a derived rate point is not shipped")
    return get_model(name)


@lru_cache(maxsize=32)
def get_model(name_or_path: str = DEFAULT_RATE) -> LoadedModel:
    """A shipped rate point by name (``low``, ``low-k64``, ...), or a model file by path."""
    p = _models_dir() / f"{name_or_path}.pt"
    if p.is_file():
        return load_model(p, name=name_or_path)
    d = derived_dir() / f"{name_or_path}.pt"
    if "/" not in name_or_path and d.is_file():
        return load_derived(d, _shipped_base, name=name_or_path)
    if name_or_path.endswith(".pt") or "/" in name_or_path:
        if is_derived_file(name_or_path):
            return load_derived(name_or_path, _shipped_base)
        return load_model(Path(name_or_path))
    shipped = _base_names() + sorted(q.stem for q in derived_dir().glob("*.pt"))
    names = ", ".join(shipped) or "none shipped"
    raise ModelNotFoundError(f"unknown rate {name_or_path!r} (available: {names})")


def find_by_id(model_id: bytes) -> LoadedModel:
    """The shipped model (trained or derived) whose id matches a bitstream's header."""
    for name in _base_names() + _derived_names():
        m = get_model(name)
        if m.model_id == model_id:
            return m
    raise ModelMismatchError(
        f"stream was made by model {model_id.hex()}, which is not among the models shipped "
        "here; pass the matching model file with --model"
    )


def prior_path(model: LoadedModel) -> Path:
    """Where the shipped AR inpainting prior of a shipped rate point lives."""
    return _models_dir() / "priors" / f"{model.name}.pt"


def get_prior(model: LoadedModel, path: str | Path | None = None) -> LoadedPrior:
    """The AR prior for ``model``: ``path`` if given, else the one shipped beside it."""
    p = Path(path) if path is not None else prior_path(model)
    if path is None and not p.is_file():
        raise ModelNotFoundError(
            f"no AR prior is shipped for rate {model.name!r}; train one with "
            f"`resilient-tx train --only ar --init {model.name} --data DIR`")
    return load_prior(p, model)
