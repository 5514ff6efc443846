"""Shared, generic fixtures. Keep this small: module-specific helpers live in their test files."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from resilient_tx.config import ModelConfig

SEED = 1234


@pytest.fixture(autouse=True)
def _seed_everything() -> Iterator[None]:
    """Seed Python, NumPy and torch before every test; restore torch's thread count after."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded NumPy generator (independent of the global state)."""
    return np.random.default_rng(SEED)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """The smallest sensible model: builds and runs in milliseconds on a CPU."""
    return ModelConfig(
        widths=(8, 8, 8),
        latent_dim=16,
        num_subvectors=2,
        codebook_size=16,
        latent_blocks=1,
        latent_heads=2,
        mim_dim=16,
        mim_depth=1,
        mim_heads=2,
    )


def load_simulation(name: str) -> ModuleType:
    """Import ``simulations/<name>.py`` (not a package) as module ``name``."""
    path = Path(__file__).resolve().parents[1] / "simulations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses in the script look their module up by name
    spec.loader.exec_module(mod)
    return mod
