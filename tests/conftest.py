"""Shared, generic fixtures. Plain helper functions live in ``tests/helpers.py``."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import settings

from resilient_tx.config import ModelConfig
from resilient_tx.zoo.checkpoint import LoadedModel

SEED = 1234

# CI (HYPOTHESIS_PROFILE=ci, set in .ci/run) runs every property test on the same examples,
# so whether a change lands never depends on a draw; local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
def one_thread() -> None:
    """One torch thread for the test (the autouse fixture above restores the count)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def low_model() -> LoadedModel:
    """The shipped ``low`` rate point."""
    from resilient_tx.zoo.registry import get_model

    return get_model("low")


@pytest.fixture(scope="session")
def sample_crop() -> np.ndarray:
    """A 128 x 160 crop of the bundled sample: an 8 x 10 token grid at f = 16."""
    from resilient_tx.app.demo import sample_path
    from resilient_tx.images import load_rgb

    return load_rgb(sample_path())[:128, :160]


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the fast tests first and the ones marked ``slow`` after them (stable order);
    skip tests marked ``gpu`` where CUDA is not available."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(no_gpu)
