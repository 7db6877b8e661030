"""Patch features: the paper's locally aware patch embeddings as one traceable module.

The official recipe per layer: unfold 3x3 neighbourhoods (stride 1, zero padding 1), bilinearly
resize deeper grids to the first layer's grid, adaptive-average-pool each patch vector
(channels x 3 x 3, channel-major) to ``pretrain_dim``, stack the layers and pool the
concatenation again to ``target_dim``. Every step is linear, and the pooling acts on channels
while the resize acts on space, so the whole chain equals, per layer, one fixed-weight 3x3
convolution (both poolings folded into its weights) followed by the resize, summed over layers.
That form exports to ONNX cleanly (``adaptive_avg_pool1d`` with a non-dividing size does not)
and computes far less than unfold + pooling (BENCHMARKS.md). Its weights are sparse: where they
are block-diagonal the convolution is grouped (wide_resnet50_2, resnet), and where they are not,
each output still reads only a few taps of its 3x3 neighbourhood, so the layer is unfolded (a
one-hot depthwise convolution, which copies) and each output sums its few weighted taps
(effnet-lite0: 2 and 3 taps per output instead of 360 and 1,008), so the feature graph does a small
share of the unfolded form's work (benchmarks/aggregation.py measures it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def adaptive_pool_matrix(length: int, size: int) -> np.ndarray:
    """The (size, length) matrix of ``adaptive_avg_pool1d(x, size)`` on a length-``length`` x."""
    m = np.zeros((size, length), np.float64)
    for j in range(size):
        start = (j * length) // size
        end = -((-(j + 1) * length) // size)  # ceil
        m[j, start:end] = 1.0 / (end - start)
    return m


def aggregation_weights(channels: Sequence[int], pretrain_dim: int, target_dim: int, patch: int = 3) -> list[np.ndarray]:
    """Per layer, the (target_dim, C, patch, patch) weight of the folded aggregation."""
    k2 = patch * patch
    stacked = adaptive_pool_matrix(len(channels) * pretrain_dim, target_dim)
    out = []
    for i, c in enumerate(channels):
        first = adaptive_pool_matrix(c * k2, pretrain_dim)  # (pretrain_dim, C*9)
        w = stacked[:, i * pretrain_dim : (i + 1) * pretrain_dim] @ first  # (target_dim, C*9)
        out.append(w.reshape(target_dim, c, patch, patch))
    return out


def _taps(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same linear map as a few weighted taps per output: (n, n_out) tap indices and weights into
    the layer's unfolded 3x3 neighbourhoods (channel-major, as the weight's C x 3 x 3), n the most taps
    any output reads; an output reading fewer repeats its first tap with weight 0.

    Where the map has no block structure (:func:`_grouped`), each output still reads only a few taps:
    with the paper's dims and a layer of fewer taps than ``pretrain_dim`` (effnet-lite0: 40 x 9 = 360
    and 112 x 9 = 1,008 taps against 1,024) both poolings average 1-2 neighbours, so an output reads 2
    or 3 taps where the dense convolution multiplies all of them (BENCHMARKS.md)."""
    flat = w.reshape(len(w), -1)
    nonzero = flat != 0
    n = max(1, int(nonzero.sum(1).max()))
    index = np.zeros((n, len(w)), np.int64)
    weight = np.zeros((n, len(w)), np.float32)
    for j in range(len(w)):
        t = np.flatnonzero(nonzero[j])
        if len(t) == 0:
            continue
        index[:, j] = t[0]
        index[: len(t), j] = t
        weight[: len(t), j] = flat[j, t]
    return index, weight


def _taps_cheaper(w: np.ndarray, groups: int) -> bool:
    """Whether the taps form computes less than half the convolution: it copies each of the C x 9 taps
    once (a one-hot depthwise convolution) and multiplies-adds n per output, against C x 9 / groups per
    output (the margin: its copies and gathers move memory where the convolution multiplies)."""
    n_out, c = w.shape[:2]
    k2 = w.shape[2] * w.shape[3]
    n = int((w.reshape(n_out, -1) != 0).sum(1).max())
    return c * k2 + n * n_out < n_out * c * k2 // groups // 2


def _grouped(w: np.ndarray) -> tuple[np.ndarray, int]:
    """The same linear map as a grouped convolution when its zeros allow it.

    With the paper's dims the map is block-sparse: for wrn50's layer2 (512 ch) each output reads
    one channel's 3x3 window, for layer3 (1024 ch) each reads two channels. A grouped conv then
    computes only the non-zero taps (C x 9 per position instead of D x C x 9), which is 500x
    less work for wrn50 and gives the same sums.
    """
    n_out, c = w.shape[:2]
    used = np.abs(w).reshape(n_out, c, -1).sum(2) > 0  # (n_out, C): which channels each output reads
    if c % n_out == 0:  # each output reads its own block of g channels
        g = c // n_out
        block = np.repeat(np.eye(n_out, dtype=bool), g, axis=1)
        if not (used & ~block).any():
            return np.stack([w[i, i * g : (i + 1) * g] for i in range(n_out)]), n_out
    if n_out % c == 0:  # each channel feeds its own block of m outputs
        m = n_out // c
        block = np.repeat(np.eye(c, dtype=bool), m, axis=0)
        if not (used & ~block).any():
            return np.stack([w[i, i // m][None] for i in range(n_out)]), c
    return w, 1


class PatchAggregator(nn.Module):
    """Feature maps (one per layer, shallow first) -> (B, h*w, target_dim) patch embeddings on
    the first layer's grid."""

    def __init__(self, channels: Sequence[int], pretrain_dim: int = 1024, target_dim: int = 1024, patch: int = 3):
        super().__init__()
        self.channels = list(channels)
        self.pretrain_dim, self.target_dim, self.patch = pretrain_dim, target_dim, patch
        weights = aggregation_weights(channels, pretrain_dim, target_dim, patch)
        # Output rows a layer touches; with the default dims the layers own disjoint halves,
        # so each conv computes only its own rows and the results are concatenated.
        self.row_ranges: list[tuple[int, int]] = []
        self.groups: list[int] = []
        self.taps: list[int] = []  # per layer: taps read per output (the taps form), 0 (a convolution)
        for i, w in enumerate(weights):
            rows = np.flatnonzero(np.abs(w).reshape(target_dim, -1).sum(1))
            lo, hi = int(rows.min()), int(rows.max()) + 1
            self.row_ranges.append((lo, hi))
            dense = w[lo:hi]
            w, groups = _grouped(dense)
            self.groups.append(groups)
            if _taps_cheaper(dense, groups):
                index, weight = _taps(dense)
                self.taps.append(len(index))
                c, k = dense.shape[1], dense.shape[2]
                tap = np.arange(c * k * k) % (k * k)  # output channel c * k * k + tap copies that tap of channel c
                unfold = np.zeros((c * k * k, 1, k, k), np.float32)
                unfold[np.arange(c * k * k), 0, tap // k, tap % k] = 1.0
                self.register_buffer(f"unfold{i}", torch.from_numpy(unfold))
                for t in range(len(index)):
                    self.register_buffer(f"tap{i}_{t}", torch.from_numpy(index[t]))
                    self.register_buffer(f"tap_weight{i}_{t}", torch.from_numpy(weight[t])[None, :, None, None])
            else:
                self.taps.append(0)
                self.register_buffer(f"weight{i}", torch.from_numpy(w.astype(np.float32)))
        spans = sorted(self.row_ranges)
        self.concat = spans[0][0] == 0 and spans[-1][1] == target_dim and all(
            a[1] == b[0] for a, b in zip(spans, spans[1:])
        ) and spans == self.row_ranges

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        ref = feats[0].shape[-2:]
        parts = []
        for i, f in enumerate(feats):
            y = self._layer(i, f)
            if y.shape[-2:] != ref:
                y = F.interpolate(y, size=ref, mode="bilinear", align_corners=False)
            parts.append(y)
        if self.concat:
            out = torch.cat(parts, dim=1)
        else:
            out = None
            for (lo, hi), y in zip(self.row_ranges, parts):
                y = F.pad(y, (0, 0, 0, 0, lo, self.target_dim - hi))
                out = y if out is None else out + y
        return out.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major over the grid

    def _layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s rows of the folded aggregation, on its own grid."""
        pad = self.patch // 2
        if not self.taps[i]:
            return F.conv2d(f, getattr(self, f"weight{i}"), padding=pad, groups=self.groups[i])
        unfolded = F.conv2d(f, getattr(self, f"unfold{i}"), padding=pad, groups=f.shape[1])  # (B, C*9, h, w)
        y = None
        for t in range(self.taps[i]):
            part = unfolded.index_select(1, getattr(self, f"tap{i}_{t}")) * getattr(self, f"tap_weight{i}_{t}")
            y = part if y is None else y + part
        return y


AGGREGATIONS = ("paper", "local-mean", "fused")
FUSED_PARTS = ("paper", "local-mean")  # the fused aggregation's parts, in the order of its output's columns


class LocalMeanAggregator(nn.Module):
    """Feature maps (one per layer, shallow first) -> (B, h*w, D) patch embeddings on the first
    layer's grid, each layer's channels averaged over a 3x3 neighbourhood (stride 1, zero padding
    1, zeros counted, as ``AvgPool2d(3, 1, 1)``), deeper maps bilinearly resized to the first
    grid, the layers concatenated: D = the layers' channels summed (152 for effnet-lite0), the
    patch features of anomalib's PatchCore. ``target_dim`` below that projects the concatenation
    with the same fixed adaptive average pooling over channels that the paper's recipe uses (a
    1x1 convolution); None keeps the native dimension.
    """

    def __init__(self, channels: Sequence[int], target_dim: int | None = None, patch: int = 3):
        super().__init__()
        self.channels = list(channels)
        self.native_dim = sum(self.channels)
        self.patch = patch
        if target_dim is not None and target_dim > self.native_dim:
            raise ValueError(f"--target-dim {target_dim} is larger than local-mean's native {self.native_dim} "
                             "dims (the layers' channels); leave it unset or give fewer")
        self.target_dim = self.native_dim if target_dim is None else int(target_dim)
        self.project = self.target_dim != self.native_dim
        if self.project:
            w = adaptive_pool_matrix(self.native_dim, self.target_dim).astype(np.float32)
            self.register_buffer("projection", torch.from_numpy(w)[:, :, None, None])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        ref = feats[0].shape[-2:]
        parts = []
        for f in feats:
            y = F.avg_pool2d(f, self.patch, stride=1, padding=self.patch // 2)
            if y.shape[-2:] != ref:
                y = F.interpolate(y, size=ref, mode="bilinear", align_corners=False)
            parts.append(y)
        out = torch.cat(parts, dim=1)
        if self.project:
            out = F.conv2d(out, self.projection)
        return out.flatten(2).transpose(1, 2)


class FusedAggregator(nn.Module):
    """Both aggregations of the same trunk maps, side by side: (B, h*w, D_paper + D_local) with the
    paper's ``target_dim`` columns first and local-mean's native columns after (``part_dims``). One
    output keeps the feature graph's interface (one ``embeddings`` tensor, every graph variant as
    it was); the manifest's ``features.parts`` says where to split it (:mod:`runtime.fused`)."""

    def __init__(self, channels: Sequence[int], pretrain_dim: int = 1024, target_dim: int | None = None):
        super().__init__()
        paper_dim = 1024 if target_dim is None else int(target_dim)
        if paper_dim > len(channels) * pretrain_dim:
            raise ValueError(f"--aggregation fused: --target-dim {paper_dim} (its paper part) is above the "
                             f"{len(channels) * pretrain_dim} dims its layers are pooled from; give at most that")
        self.parts = nn.ModuleList([PatchAggregator(channels, pretrain_dim, paper_dim), LocalMeanAggregator(channels)])
        self.channels = list(channels)
        self.part_dims = [int(p.target_dim) for p in self.parts]
        self.target_dim = sum(self.part_dims)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([part(feats) for part in self.parts], dim=2)


def make_aggregator(aggregation: str, channels: Sequence[int], pretrain_dim: int = 1024,
                    target_dim: int | None = None) -> nn.Module:
    """The patch-feature module of ``aggregation`` (``paper``: target_dim None means 1024;
    ``local-mean``: None means native; ``fused``: target_dim is its paper part's)."""
    if aggregation == "paper":
        return PatchAggregator(channels, pretrain_dim, 1024 if target_dim is None else target_dim)
    if aggregation == "local-mean":
        return LocalMeanAggregator(channels, target_dim)
    if aggregation == "fused":
        return FusedAggregator(channels, pretrain_dim, target_dim)
    raise ValueError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


class PatchFeatureModel(nn.Module):
    """Normalised image batch (B, 3, H, W) -> patch embeddings (B, h*w, D). This is the graph
    that is exported to ONNX."""

    def __init__(self, trunk: nn.Module, aggregator: PatchAggregator):
        super().__init__()
        self.trunk = trunk
        self.aggregator = aggregator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.trunk(images))
