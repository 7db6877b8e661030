"""patchcore.coreset: the approximate greedy (k-center) sampler against a plain float64 numpy
re-implementation of the official one, its covering quality, determinism and memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from patchcore.coreset import greedy_coreset, random_projection

REPO = Path(__file__).resolve().parents[1]


def projection_matrix(d: int, dim: int, seed: int) -> np.ndarray:
    """The (dim, d) matrix random_projection applies, read off by projecting the identity."""
    return random_projection(torch.eye(d), dim, seed).double().numpy().T


def official_sampler(x: np.ndarray, n_select: int, seed: int, dim: int = 128, n_starts: int = 10) -> np.ndarray:
    """ApproximateGreedyCoresetSampler, in float64 numpy: project, mean distance to the random
    starting points, then repeatedly the farthest point, updating distances to the set."""
    x = x.astype(np.float64)
    if x.shape[1] > dim:
        x = x @ projection_matrix(x.shape[1], dim, seed).T
    starts = np.random.default_rng(seed).choice(len(x), size=min(n_starts, len(x)), replace=False)
    min_dist = np.mean([np.linalg.norm(x - x[s], axis=1) for s in starts], axis=0)
    selected = []
    for _ in range(n_select):
        i = int(np.argmax(min_dist))
        selected.append(i)
        min_dist = np.minimum(min_dist, np.linalg.norm(x - x[i], axis=1))
    return np.array(selected)


def covering_radius(x: np.ndarray, idx: np.ndarray) -> float:
    """max over points of the distance to the nearest selected point, in the original space."""
    x = x.astype(np.float64)
    c = x[idx]
    d2 = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
    return float(np.sqrt(np.maximum(d2, 0).min(1)).max())


def clustered(n: int, d: int, seed: int = 0, k: int = 20) -> np.ndarray:
    """Features that, like real patch features, concentrate around a few modes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 5
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def feats():
    return clustered(1500, 200, seed=1)


def test_projection_is_a_fixed_linear_map_like_nn_linear(feats):
    w = projection_matrix(200, 128, seed=5)
    assert w.shape == (128, 200)
    bound = 1 / np.sqrt(200)
    assert np.abs(w).max() <= bound + 1e-7
    assert abs(w.mean()) < 0.05 * bound and abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    x = torch.from_numpy(feats)
    p = random_projection(x, 128, seed=5, chunk=333)  # chunking must not matter
    np.testing.assert_allclose(p.numpy(), feats.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)
    assert not np.allclose(projection_matrix(200, 128, seed=6), w)
    # no projection when the features are already small
    np.testing.assert_array_equal(random_projection(x[:, :100], 128, 0).numpy(), feats[:, :100])


@pytest.mark.parametrize("d", [200, 64])  # projected, and used as is (d <= 128)
def test_selection_equals_official_sampler(d):
    x = clustered(1500, d, seed=2)
    ours = greedy_coreset(x, 0.05, seed=3, device="cpu")
    ref = official_sampler(x, len(ours), seed=3)
    assert len(ours) == 75
    np.testing.assert_array_equal(ours[:50], ref[:50])


def test_deterministic_under_seed_and_seed_matters(feats):
    a = greedy_coreset(feats, 0.02, seed=0, device="cpu")
    b = greedy_coreset(torch.from_numpy(feats), 0.02, seed=0, device="cpu")  # tensor input too
    c = greedy_coreset(feats, 0.02, seed=1, device="cpu")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_selection_is_valid_indices(feats):
    idx = greedy_coreset(feats, 0.1, seed=0, device="cpu")
    assert idx.dtype == np.int64 and len(idx) == 150
    assert len(np.unique(idx)) == len(idx)
    assert idx.min() >= 0 and idx.max() < len(feats)
    assert len(greedy_coreset(feats[:10], 0.01, device="cpu")) == 1  # at least one


def test_covering_radius_beats_random_subsets(feats):
    idx = greedy_coreset(feats, 0.02, seed=0, device="cpu")
    ours = covering_radius(feats, idx)
    rng = np.random.default_rng(0)
    randoms = [covering_radius(feats, rng.choice(len(feats), len(idx), replace=False)) for _ in range(5)]
    assert ours < min(randoms), (ours, randoms)
    assert ours < 0.5 * np.median(randoms)  # measured ~0.25x on this data


def test_ratio_one_returns_all(feats):
    np.testing.assert_array_equal(greedy_coreset(feats, 1.0), np.arange(len(feats)))


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan")])
def test_bad_ratio_refused(feats, ratio):
    with pytest.raises(ValueError, match="ratio"):
        greedy_coreset(feats, ratio)


def test_progress_reports_until_done(feats):
    calls = []
    idx = greedy_coreset(feats, 0.05, device="cpu", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(idx), len(idx))
    assert all(t == len(idx) for _, t in calls)
    assert [c for c, _ in calls] == sorted(c for c, _ in calls)


def test_large_n_runs_fast_without_n_by_n_memory():
    """60000 x 64 (an N x N float32 matrix would be 14.4 GB): run in a fresh process so its
    peak RSS measures this call alone. One torch thread: on a loaded 2-core machine, OpenMP
    barriers in this loop of small matrix-vector products made 2 threads ~5-40x slower."""
    code = textwrap.dedent("""
        import json, resource, time
        import numpy as np
        import torch
        torch.set_num_threads(1)
        from patchcore.coreset import greedy_coreset
        x = np.random.default_rng(0).normal(size=(60000, 64)).astype(np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        idx = greedy_coreset(x, 0.01, device="cpu")
        dt = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"seconds": dt, "n": len(idx), "unique": len(set(idx.tolist())),
                          "peak_growth_mb": (after - before) / 1024}))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n"] == out["unique"] == 600
    assert out["seconds"] < 20
    assert out["peak_growth_mb"] < 500  # linear in N: a few (N,) and (N, 64) buffers


def test_cuda_refused_without_gpu(feats):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="cuda"):
        greedy_coreset(feats, 0.1, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_selection_equals_cpu(feats):
    cpu = greedy_coreset(feats, 0.05, seed=0, device="cpu")
    gpu = greedy_coreset(feats, 0.05, seed=0, device="cuda")
    np.testing.assert_array_equal(gpu[:30], cpu[:30])


# ------------------------------------------------------------------ bank budget and shards
from patchcore.coreset import (  # noqa: E402
    SHARD_OVERSAMPLE, coreset_size, greedy_select, merge_shards, shard_budget, shard_members,
)


def test_bank_size_is_a_row_count_and_equals_the_ratio_at_the_same_size(feats):
    assert coreset_size(1500, 0.1) == 150 and coreset_size(1500, 0.1, bank_size=40) == 40
    assert coreset_size(30, 0.1, bank_size=100) == 30  # never more rows than there are
    with pytest.raises(ValueError, match="bank size"):
        coreset_size(10, 0.1, bank_size=0)
    by_size = greedy_coreset(feats, 0.5, seed=0, device="cpu", bank_size=150)
    np.testing.assert_array_equal(by_size, greedy_coreset(feats, 0.1, seed=0, device="cpu"))


def test_shards_are_round_robin_and_cover_every_image_once():
    members = shard_members(10, 3)
    assert [m.tolist() for m in members] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert shard_members(4, 1)[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at most one shard per image"):
        shard_members(3, 4)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_members(3, 0)


def test_shard_budget_is_the_shards_share_oversampled():
    assert shard_budget(1000, 5, 5, 0.1, None, 1) == 100  # one shard: the bank itself
    assert shard_budget(1000, 5, 20, 0.1, None, 4) == int(SHARD_OVERSAMPLE * 100)
    assert shard_budget(1000, 5, 20, 0.1, 80, 4) == int(SHARD_OVERSAMPLE * 80 * 5 / 20)
    assert shard_budget(10, 5, 20, 0.9, None, 4) == 10  # never more than the shard has


def test_sharded_selection_covers_almost_as_well_as_the_exact_one():
    """The composable coreset: shards selected on their own, then merged. Its covering radius
    (what k-center minimises, in the projected space the selection works in) is within a few
    percent of the exact selection's and far below random subsets'."""
    x = clustered(6000, 64, seed=3, k=60)
    k, shards = 120, 4
    exact = greedy_coreset(x, 1.0, seed=0, device="cpu", bank_size=k)
    parts = np.array_split(np.arange(len(x)), shards)
    picked, projected = [], []
    for p in parts:
        idx = greedy_select(torch.from_numpy(x[p]), shard_budget(len(p), 1, shards, 0, k, shards), seed=0, device="cpu")
        picked.append(p[idx])
        projected.append(torch.from_numpy(x[p[idx]]))
    union = np.concatenate(picked)
    merged = union[merge_shards(projected, k, seed=0, device="cpu")]
    assert len(merged) == len(set(merged.tolist())) == k
    r_exact, r_sharded = covering_radius(x, exact), covering_radius(x, merged)
    rng = np.random.default_rng(0)
    r_random = min(covering_radius(x, rng.choice(len(x), k, replace=False)) for _ in range(3))
    assert r_sharded <= 1.1 * r_exact, (r_sharded, r_exact)
    assert r_sharded < 0.7 * r_random, (r_sharded, r_random)


def test_greedy_selection_reports_the_largest_distance_left_as_its_radius():
    """The radius a bank update stops at: every point within it of the selection, and the
    official sampler's float64 loop leaves exactly that largest min-distance (its starting
    distances, the mean to the random starts, lie far above it by then)."""
    from patchcore.coreset import greedy_selection, merge_selection

    x = clustered(3000, 64, seed=2, k=30)
    xt = torch.from_numpy(x)
    sel = greedy_selection(xt, 150, seed=0, device="cpu")
    np.testing.assert_array_equal(sel.indices, greedy_select(xt, 150, seed=0, device="cpu"))
    np.testing.assert_array_equal(sel.indices, official_sampler(x, 150, seed=0, dim=64))
    assert sel.radius == pytest.approx(covering_radius(x, sel.indices), rel=1e-4)
    # more rows, a smaller radius; every row kept: radius 0
    assert greedy_selection(xt, 600, seed=0, device="cpu").radius < 0.9 * sel.radius
    assert greedy_selection(xt, 3000, seed=0, device="cpu").radius == 0.0
    # the final round over shards' selections: its radius covers the union it selected from
    parts = [xt[:1500], xt[1500:]]
    merged = merge_selection(parts, 100, seed=0, device="cpu")
    np.testing.assert_array_equal(merged.indices, merge_shards(parts, 100, seed=0, device="cpu"))
    assert merged.radius == pytest.approx(covering_radius(x, merged.indices), rel=1e-4)
