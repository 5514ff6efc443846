"""K-means clustering and marginal counting of rate points (VQGAN extreme-compression paper,
Sec. 2.2), and the ``derive-rate`` command that drives them.

The derived networks, files and zoo lookup are tested in ``test_derived.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resilient_tx.codec.image_codec import Codec
from resilient_tx.errors import InputError
from resilient_tx.images import save_rgb
from resilient_tx.training.kmeans import cluster_codebooks, count_tokens, spherical_kmeans
from tests.helpers import derive_cluster_summed

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- k-means
def test_kmeans_deterministic_nonempty_nearest(rng) -> None:
    x = rng.normal(size=(64, 8))
    w = rng.integers(0, 50, size=64).astype(float)
    w[:5] = 0.0  # unused entries must still land in some cluster
    a = spherical_kmeans(x, w, 10, seed=3)
    b = spherical_kmeans(x, w, 10, seed=3)
    assert np.array_equal(a.assign, b.assign) and np.array_equal(a.centroids, b.centroids)
    assert np.array_equal(a.rep, b.rep)
    assert sorted(set(a.assign.tolist())) == list(range(10))  # no empty cluster
    np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-12)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    # Membership is nearest centroid by cosine, as the quantizer assigns.
    assert np.array_equal(a.assign, np.argmax(xn @ a.centroids.T, axis=1))
    for j, r in enumerate(a.rep):
        assert a.assign[r] == j and w[r] > 0
    assert 0.0 < a.distortion < 1.0


def test_kmeans_usage_weights_pull_centroids(rng) -> None:
    """Three tight groups, two clusters: the two heavily used groups get a cluster each,
    and its centroid sits on the heavy group even if a light group shares the cluster."""
    axes = np.eye(3)
    x = np.concatenate([axes[g] + 0.05 * rng.normal(size=(10, 3)) for g in range(3)])
    group = np.repeat(np.arange(3), 10)
    for heavy in ((0, 1), (1, 2), (0, 2)):
        w = np.where(np.isin(group, heavy), 1000.0, 1.0)
        fit = spherical_kmeans(x, w, 2, seed=0)
        clusters = [set(fit.assign[group == g].tolist()) for g in heavy]
        assert all(len(c) == 1 for c in clusters) and clusters[0] != clusters[1]
        for g, c in zip(heavy, clusters, strict=True):
            assert fit.centroids[c.pop()] @ axes[g] > 0.99  # unweighted it would be ~0.7


@pytest.mark.parametrize("k", [1, 0, 256, 300, 2.5, True])
def test_bad_k_is_input_error(low_model, k) -> None:
    with pytest.raises(InputError, match="k must be"):
        cluster_codebooks(low_model, k)


# ----------------------------------------------------------------------------- marginals
def test_count_tokens_matches_the_codec(tmp_path, low_model, sample_crop) -> None:
    derived = derive_cluster_summed(low_model, 16)
    png = tmp_path / "crop.png"
    save_rgb(sample_crop, png)
    plain, = count_tokens(low_model, [derived.net], [png], mirror=False, progress=False)
    tokens = Codec(derived).image_to_tokens(sample_crop)
    for m in range(tokens.shape[0]):
        assert torch.equal(plain[m], torch.bincount(tokens[m].reshape(-1), minlength=16))
    mirrored, = count_tokens(low_model, [derived.net], [png], progress=False)
    assert int(mirrored.sum()) == 2 * int(plain.sum())
