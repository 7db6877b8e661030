"""Approximate greedy (k-center) coreset selection, as the paper and the official sampler do it.

Features are projected to ``projection_dim`` by a random linear map; the minimum-distance vector
starts as the mean distance to ``n_starts`` random points; then the farthest point is taken
repeatedly and every point's distance to the selected set is updated. Memory stays linear in N:
no N x N matrix is ever built. Each iteration is one matrix-vector product over the projected
features plus O(N) in-place vector work: the official selection exactly, without the official
loop's concatenation and re-reduction of distance columns.

Two ways to bound the cost, both used by :meth:`patchcore.model.PatchCore.fit`: a bank budget
(:func:`coreset_size` with ``bank_size``: a fixed number of rows, so the cost is linear in the
number of patches instead of quadratic at a fixed ratio), and a sharded, composable coreset
(:func:`merge_shards`): each shard of the training set is selected on its own, then one greedy
round over the union of the shards' selections picks the bank. This is the composable coreset
for k-center of Malkomes, Kusner, Chen, Weinberger and Moseley, "Fast distributed k-center
clustering with outliers on massive data" (NeurIPS 2015, section 3: greedy per partition, then
greedy over the union; a 4-approximation), with each shard selecting more than its share of the
bank, as Ceccarello, Pietracaprina and Pucci, "Solving k-center clustering (with outliers) in
MapReduce and streaming, almost as accurately as sequentially" (VLDB 2019) do to approach the
sequential result.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from .device import torch_device


def projection_matrix(d: int, dim: int, seed: int) -> torch.Tensor:
    """The (dim, d) float32 map of :func:`random_projection`: ``nn.Linear(d, dim)``'s
    initialisation under ``seed``; the (d, d) identity when d <= dim. Bundles store it (the
    runtime extends a bank in the same projection space without torch)."""
    if d <= dim:
        return torch.eye(d)
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d)  # nn.Linear's kaiming-uniform(a=sqrt(5)) bound
    return (torch.rand(dim, d, generator=g) * 2 - 1) * bound


def random_projection(features: torch.Tensor, dim: int, seed: int, chunk: int = 65536) -> torch.Tensor:
    """Project (N, D) to (N, dim) with a linear map initialised like ``nn.Linear(D, dim)`` under
    ``seed``; identity when D <= dim."""
    n, d = features.shape
    if d <= dim:
        return features.float().contiguous()
    w = projection_matrix(d, dim, seed).to(features.device)
    out = torch.empty(n, dim, device=features.device)
    for s in range(0, n, chunk):
        out[s : s + chunk] = features[s : s + chunk].float() @ w.T
    return out


def _distances_to(x: torch.Tensor, x_sq: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """sqrt(clamp(|x|^2 - 2 x.c + |c|^2, 0)): the official sampler's formula, (N,) for one centre."""
    d = x @ centre
    d.mul_(-2.0).add_(x_sq).add_(centre @ centre)
    return d.clamp_(min=0).sqrt_()


def coreset_size(n: int, ratio: float, bank_size: int | None = None) -> int:
    """Rows the bank keeps out of ``n`` patches: ``bank_size`` when given (at most ``n``), else
    ``int(n * ratio)``; at least 1."""
    if bank_size is not None:
        if bank_size < 1:
            raise ValueError(f"bank size must be >= 1, got {bank_size}")
        return min(n, bank_size)
    if not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return max(1, int(n * ratio))


def greedy_coreset(
    features: torch.Tensor | np.ndarray,
    ratio: float,
    projection_dim: int = 128,
    n_starts: int = 10,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    bank_size: int | None = None,
) -> np.ndarray:
    """Indices of the coreset of ``features`` (N, D), in selection order.

    ``ratio`` in (0, 1]: fraction kept (``int(N * ratio)``, at least 1); ``bank_size`` instead
    keeps that many rows. ``progress(done, total)`` is called every few hundred selections.
    """
    feats = torch.as_tensor(features)
    n = feats.shape[0]
    n_select = coreset_size(n, ratio, bank_size)
    if n_select == n:
        return np.arange(n)
    dev = torch_device(device)
    with torch.no_grad():
        x = random_projection(feats.to(dev), projection_dim, seed)
    return greedy_select(x, n_select, n_starts, seed, device, progress)


class Selection(NamedTuple):
    """A greedy selection: the chosen rows, in selection order, and its radius: the largest
    min-distance left among all rows when the loop stopped (in the projected space it ran in; 0
    when every row was kept). A bank update stops where new patches are covered this well."""

    indices: np.ndarray
    radius: float


def greedy_select(projected: torch.Tensor, n_select: int, *args, **kwargs) -> np.ndarray:
    """The indices of :func:`greedy_selection` (same arguments)."""
    return greedy_selection(projected, n_select, *args, **kwargs).indices


def greedy_selection(
    projected: torch.Tensor,
    n_select: int,
    n_starts: int = 10,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Selection:
    """The greedy selection over already projected features (N, projection_dim): ``n_select``
    rows in selection order (all rows, in order, when ``n_select >= N``), and its radius."""
    n = projected.shape[0]
    if n_select >= n:
        return Selection(np.arange(n), 0.0)
    dev = torch_device(device)
    with torch.no_grad():
        x = projected.to(dev)
        x_sq = (x * x).sum(1)
        rng = np.random.default_rng(seed)
        starts = rng.choice(n, size=min(n_starts, n), replace=False)
        min_dist = torch.zeros(n, device=dev)
        for s in starts:
            min_dist += _distances_to(x, x_sq, x[s])
        min_dist /= len(starts)
        if dev.type == "cpu":
            # the loop is memory-bound with tiny per-iteration kernels: one thread is as fast on an
            # idle machine and much faster when other processes share the cores
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return _select(x, x_sq, min_dist, n_select, progress)
            finally:
                torch.set_num_threads(threads)
        return _select(x, x_sq, min_dist, n_select, progress)


def _select(x, x_sq, min_dist, n_select, progress) -> Selection:
    """The greedy loop: take the farthest point, fold its distances into ``min_dist`` in place.

    One matrix-vector product per iteration."""
    selected = np.empty(n_select, np.int64)
    report = max(1, n_select // 200)
    for i in range(n_select):
        idx = int(torch.argmax(min_dist))
        selected[i] = idx
        torch.minimum(min_dist, _distances_to(x, x_sq, x[idx]), out=min_dist)
        if progress and (i % report == 0 or i == n_select - 1):
            progress(i + 1, n_select)
    return Selection(selected, float(min_dist.max()))


# ------------------------------------------------------------------ sharded (composable) coreset
SHARD_OVERSAMPLE = 2.0  # each shard keeps this many times its share of the bank (see the module docstring)


def shard_members(n_items: int, shards: int) -> list[np.ndarray]:
    """Which training images go to which shard: round robin over the sorted images, so every
    shard sees the whole spread of the set (images sorted by name often come in runs, by time
    or by line) and the shards differ in size by at most one image."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if shards > n_items:
        raise ValueError(f"{shards} shards for {n_items} training images: use at most one shard per image")
    return [np.arange(j, n_items, shards) for j in range(shards)]


def shard_budget(n_shard_patches: int, shard_images: int, total_images: int, ratio: float,
                 bank_size: int | None, shards: int) -> int:
    """Rows one shard selects: its share of the final bank (by patches for a ratio, by images
    for a budget, which is known before any image is embedded), times :data:`SHARD_OVERSAMPLE`;
    the whole bank size when there is one shard."""
    if shards == 1:
        return coreset_size(n_shard_patches, ratio, bank_size)
    if bank_size is not None:
        share = bank_size * shard_images / total_images
    else:
        share = n_shard_patches * ratio
    return min(n_shard_patches, max(1, math.ceil(SHARD_OVERSAMPLE * share)))


def merge_shards(projected: list[torch.Tensor], n_select: int, n_starts: int = 10, seed: int = 0,
                 device: str = "auto", progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The final greedy round over the union of the shards' selections (their projected rows,
    concatenated in shard order): indices into that union, in selection order."""
    return merge_selection(projected, n_select, n_starts, seed, device, progress).indices


def merge_selection(projected: list[torch.Tensor], n_select: int, n_starts: int = 10, seed: int = 0,
                    device: str = "auto", progress: Callable[[int, int], None] | None = None) -> Selection:
    """:func:`merge_shards` with the final round's radius (over the shards' selections)."""
    union = torch.cat([p.float() for p in projected])
    return greedy_selection(union, n_select, n_starts, seed, device, progress)
