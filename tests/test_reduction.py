"""patchcore.reduction: the bank-dimension study's reductions are deterministic, shaped as asked,
refuse impossible sizes, and the pooling one is the paper aggregation's --target-dim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchcore.features import PatchAggregator
from patchcore.reduction import REDUCTIONS, check_dim, pca_matrix, pool_matrix, reduce_rows, reduction_matrix


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    g = np.random.default_rng(3)
    # a few strong directions and noise: what PCA should find first
    basis = np.linalg.qr(g.standard_normal((64, 64)))[0][:, :4]
    return (g.standard_normal((3000, 4)) * [9.0, 6.0, 4.0, 3.0] @ basis.T
            + 0.1 * g.standard_normal((3000, 64))).astype(np.float32)


@pytest.mark.parametrize("kind", REDUCTIONS)
def test_fit_is_deterministic_and_shaped(rows, kind):
    a, b = reduction_matrix(kind, rows, 16), reduction_matrix(kind, rows.copy(), 16)
    assert a.shape == (64, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert reduce_rows(rows, a, chunk=700).shape == (3000, 16)
    np.testing.assert_allclose(reduce_rows(rows, a, chunk=700), rows @ a, rtol=1e-5, atol=1e-5)


def test_pca_keeps_the_leading_directions_and_nested_sizes(rows):
    axes = pca_matrix(rows, 8)
    np.testing.assert_allclose(axes.T @ axes, np.eye(8), atol=1e-5)  # orthonormal
    centred = rows - rows.mean(0)
    kept = np.linalg.norm(centred @ axes[:, :4]) ** 2 / np.linalg.norm(centred) ** 2
    assert kept > 0.99  # the 4 planted directions carry all but the noise
    np.testing.assert_array_equal(pca_matrix(rows, 4), axes[:, :4])  # a smaller size keeps the leading columns
    # a subsample for large sets: every k-th row, so the same rows on every run
    np.testing.assert_allclose(np.abs(pca_matrix(rows, 4, max_rows=1000)), np.abs(axes[:, :4]), atol=0.05)


def test_random_projection_keeps_distances_roughly(rows):
    m = reduction_matrix("random", rows, 48, seed=1)
    assert not np.array_equal(m, reduction_matrix("random", rows, 48, seed=2))
    d_full = np.linalg.norm(rows[:200] - rows[200:400], axis=1)
    d_red = np.linalg.norm(rows[:200] @ m - rows[200:400] @ m, axis=1)
    assert 0.7 < np.median(d_red / d_full) < 1.3


def test_pooling_1024_dims_equals_the_aggregation_at_target_dim():
    """What lets the study derive every --target-dim from one embedding at 1024 dims."""
    channels, g = [5, 7], torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 5, 6, 6, generator=g), torch.randn(1, 7, 3, 3, generator=g)]
    with torch.no_grad():
        full = PatchAggregator(channels, 1024, 1024)(feats).numpy()[0]
        for d in (512, 128, 64):
            direct = PatchAggregator(channels, 1024, d)(feats).numpy()[0]
            np.testing.assert_allclose(full @ pool_matrix(1024, d), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [0, -3, 65, 2.5, "8", True])
def test_impossible_sizes_are_one_clear_error(rows, dim):
    with pytest.raises(ValueError, match="--target-dim must be an integer from 1 to 64"):
        reduction_matrix("pca", rows, dim)
    assert check_dim(64, 64) == 64


def test_unknown_reduction_is_named(rows):
    with pytest.raises(ValueError, match="reduction must be one of pool, pca, random"):
        reduction_matrix("svd", rows, 8)
