"""Helpers shared by several test modules (fixtures live in ``conftest.py``).

Test modules import from here, never from one another.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from resilient_tx.codec.image_codec import Codec
from resilient_tx.config import ModelConfig
from resilient_tx.model import PQMIM
from resilient_tx.training.kmeans import cluster_codebooks, cluster_sum_marginals
from resilient_tx.zoo.checkpoint import LoadedModel, load_model, save_model
from resilient_tx.zoo.derived import build_model

REPO = Path(__file__).resolve().parents[1]


def make_codec(tmp_path: Path, cfg: ModelConfig, seed: int = 0) -> Codec:
    """A codec on a randomly initialised tiny model saved under ``tmp_path``."""
    torch.manual_seed(seed)
    marg = torch.randint(1, 50, (cfg.num_subvectors, cfg.codebook_size))
    save_model(tmp_path / "tiny.pt", PQMIM(cfg), marg, {})
    return Codec(load_model(tmp_path / "tiny.pt"))


def load_simulation(name: str) -> ModuleType:
    """Import ``simulations/<name>.py`` (not a package) as module ``name``."""
    path = REPO / "simulations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses in the script look their module up by name
    spec.loader.exec_module(mod)
    return mod


def derive_cluster_summed(base: LoadedModel, k: int, name: str = "") -> LoadedModel:
    """A k-means rate point of ``base`` with cluster-summed marginals: unlike the shipped
    points it needs no pass over training images, so tests can build one cheaply."""
    books, _ = cluster_codebooks(base, k)
    return build_model(base, books, cluster_sum_marginals(base, books),
                       name or f"{base.name}-k{k}", {})
