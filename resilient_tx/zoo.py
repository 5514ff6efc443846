"""The shipped models (package data) and lookup by rate name, path or model id."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from .checkpoint import LoadedModel, LoadedPrior, load_model, load_prior
from .errors import ModelMismatchError, ModelNotFoundError

DEFAULT_RATE = "low"


def _models_dir() -> Path:
    return Path(str(resources.files("resilient_tx") / "models"))


def available_rates() -> list[str]:
    """Names of the shipped rate points, lowest rate first (by bits per token)."""
    names = [p.stem for p in _models_dir().glob("*.pt")]
    return sorted(names, key=lambda n: (get_model(n).cfg.raw_bits_per_token /
                                        get_model(n).cfg.downsample ** 2, n))


@lru_cache(maxsize=8)
def get_model(name_or_path: str = DEFAULT_RATE) -> LoadedModel:
    """A shipped rate point by name (``low``, ``high``), or a model file by path."""
    p = _models_dir() / f"{name_or_path}.pt"
    if p.is_file():
        return load_model(p, name=name_or_path)
    if name_or_path.endswith(".pt") or "/" in name_or_path:
        return load_model(Path(name_or_path))
    names = ", ".join(p.stem for p in sorted(_models_dir().glob("*.pt"))) or "none shipped"
    raise ModelNotFoundError(f"unknown rate {name_or_path!r} (available: {names})")


def find_by_id(model_id: bytes) -> LoadedModel:
    """The shipped model whose id matches a bitstream's header."""
    for p in sorted(_models_dir().glob("*.pt")):
        m = get_model(p.stem)
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
