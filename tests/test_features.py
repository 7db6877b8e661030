"""patchcore.features: the folded PatchAggregator against a literal re-implementation of the
official recipe (PatchMaker.patchify + _embed's resize + MeanMapper + Aggregator), in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patchcore.features import PatchAggregator, PatchFeatureModel, adaptive_pool_matrix, aggregation_weights


def official_embed(feats: list[torch.Tensor], pretrain_dim: int, target_dim: int, patch: int = 3) -> torch.Tensor:
    """The official recipe step by step. feats: per layer (B, C, h, w), shallow first."""
    b = feats[0].shape[0]
    unfolded, grids = [], []
    for f in feats:
        _, c, h, w = f.shape
        u = torch.nn.Unfold(kernel_size=patch, stride=1, padding=(patch - 1) // 2, dilation=1)(f)  # (B, C*9, L)
        u = u.reshape(b, c, patch, patch, -1).permute(0, 4, 1, 2, 3)  # (B, L, C, 3, 3)
        unfolded.append(u)
        grids.append((h, w))
    ref_h, ref_w = grids[0]
    for i in range(1, len(unfolded)):
        h, w = grids[i]
        u = unfolded[i].reshape(b, h, w, *unfolded[i].shape[2:])  # (B, h, w, C, 3, 3)
        u = u.permute(0, 3, 4, 5, 1, 2)  # (B, C, 3, 3, h, w)
        base = u.shape
        u = u.reshape(-1, h, w).unsqueeze(1)
        u = F.interpolate(u, size=(ref_h, ref_w), mode="bilinear", align_corners=False).squeeze(1)
        u = u.reshape(*base[:-2], ref_h, ref_w).permute(0, 4, 5, 1, 2, 3)  # (B, H, W, C, 3, 3)
        unfolded[i] = u.reshape(b, ref_h * ref_w, *u.shape[-3:])
    flat = [u.reshape(-1, *u.shape[-3:]) for u in unfolded]  # (N, C, 3, 3)
    pooled = [F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), pretrain_dim).squeeze(1) for x in flat]
    stacked = torch.stack(pooled, dim=1)  # (N, n_layers, pretrain_dim)
    out = F.adaptive_avg_pool1d(stacked.reshape(len(stacked), 1, -1), target_dim).reshape(len(stacked), -1)
    return out.reshape(b, ref_h * ref_w, target_dim)


CASES = [
    # channels, grids (shallow first), target_dim
    ([40, 112], [(12, 12), (6, 6)], 1024),  # effnet-lite0: C*9 = 360, 1008 < 1024 (upsampling pool)
    ([512, 1024], [(8, 8), (4, 4)], 1024),  # wrn50: 4608, 9216 (grouped conv: 1 and 2 channels per output)
    ([128, 256], [(8, 8), (4, 4)], 1024),  # resnet18: grouped conv, 4 and 2 outputs per channel
    ([24, 100], [(9, 11), (5, 6)], 384),  # 216, 900: not divisible, odd grids
    ([48, 120], [(10, 10), (5, 5)], 1024),  # effnet-lite2: 432, 1080 (not divisible by 1024)
    ([16, 40, 80], [(16, 16), (8, 8), (4, 4)], 1024),  # three layers: overlapping output rows
    ([16, 40, 80], [(15, 13), (8, 7), (4, 4)], 384),
    ([64, 128], [(8, 8), (4, 4)], 1000),
    ([7], [(5, 5)], 100),  # one layer
]


@pytest.mark.parametrize("channels,grids,target_dim", CASES)
def test_aggregator_equals_official_recipe(channels, grids, target_dim):
    g = torch.Generator().manual_seed(sum(channels) + target_dim)
    feats = [torch.randn(2, c, h, w, generator=g, dtype=torch.float64) * 3 + 1 for c, (h, w) in zip(channels, grids)]
    agg = PatchAggregator(channels, pretrain_dim=1024, target_dim=target_dim)
    with torch.no_grad():
        ours = agg([f.float() for f in feats]).double()
        ref = official_embed(feats, 1024, target_dim)
    h, w = grids[0]
    assert ours.shape == ref.shape == (2, h * w, target_dim)
    scale = ref.abs().max()
    assert ((ours - ref).abs().max() / scale).item() < 1e-5
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale.item())


@pytest.mark.parametrize("channels,pretrain_dim,target_dim", [
    ([40, 112], 500, 256),
    ([8, 16], 100, 384),  # target > layers * pretrain: the second pooling upsamples too
    ([8, 16, 32], 50, 7),  # output rows shared between layers
])
def test_aggregator_other_dims(channels, pretrain_dim, target_dim):
    grids = [(8 // 2**i, 8 // 2**i) for i in range(len(channels))]
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(1, c, h, w, generator=g, dtype=torch.float64) for c, (h, w) in zip(channels, grids)]
    agg = PatchAggregator(channels, pretrain_dim=pretrain_dim, target_dim=target_dim)
    with torch.no_grad():
        ours = agg([f.float() for f in feats]).double()
    ref = official_embed(feats, pretrain_dim, target_dim)
    assert ours.shape == (1, 64, target_dim)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_aggregator_row_major_grid_order():
    """Output row p is grid position (p // w, p % w): a spike at one spatial position of the
    shallow layer only reaches that position's 3x3 neighbourhood."""
    channels = [8, 16]
    feats = [torch.zeros(1, 8, 6, 7), torch.zeros(1, 16, 3, 4)]
    feats[0][0, :, 2, 5] = 1.0
    out = PatchAggregator(channels, 1024, 64)(feats)[0]  # (42, 64)
    touched = set(np.flatnonzero(out.abs().sum(1).numpy() > 0))
    expect = {y * 7 + x for y in (1, 2, 3) for x in (4, 5, 6)}
    assert touched == expect


@pytest.mark.parametrize("length,size", [(360, 1024), (4608, 1024), (900, 1024), (1008, 1024), (2048, 1024),
                                         (10, 3), (3, 10), (1000, 384), (7, 7), (1, 5)])
def test_adaptive_pool_matrix_equals_torch(length, size):
    m = adaptive_pool_matrix(length, size)
    assert m.shape == (size, length)
    ref = np.empty((size, length))
    for s in range(0, length, 1024):  # identity rows in chunks: (rows, 1, L) basis vectors
        rows = torch.arange(s, min(s + 1024, length))
        eye = torch.zeros(len(rows), 1, length, dtype=torch.float64)
        eye[torch.arange(len(rows)), 0, rows] = 1.0
        ref[:, s : s + 1024] = F.adaptive_avg_pool1d(eye, size).squeeze(1).T.numpy()
    np.testing.assert_allclose(m, ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.sum(1), 1.0)  # every output is an average


def test_aggregation_weights_shapes():
    ws = aggregation_weights([40, 112], 1024, 1024)
    assert [w.shape for w in ws] == [(1024, 40, 3, 3), (1024, 112, 3, 3)]
    # with two layers and equal dims, each layer owns one half of the output
    assert np.all(ws[0][512:] == 0) and np.all(ws[1][:512] == 0)


def test_patch_feature_model_shapes():
    class Trunk(torch.nn.Module):
        def forward(self, x):
            return [F.avg_pool2d(x.repeat(1, 4, 1, 1), 8), F.avg_pool2d(x.repeat(1, 8, 1, 1), 16)]

    model = PatchFeatureModel(Trunk(), PatchAggregator([12, 24], 1024, 384)).eval()
    out = model(torch.randn(3, 3, 64, 96))
    assert out.shape == (3, 8 * 12, 384) and out.dtype == torch.float32


def test_taps_form_where_weights_are_sparse_but_not_grouped(monkeypatch):
    """effnet-lite0's layers (fewer taps than pretrain_dim) read 2 and 3 taps per output and take the
    taps form; wide_resnet50_2's block-diagonal weights keep the grouped convolution. The taps form
    gives the dense convolution's sums, in another order."""
    from patchcore import features

    lite = PatchAggregator([40, 112], 1024, 1024)
    assert lite.taps == [2, 3] and lite.groups == [1, 1]
    wrn = PatchAggregator([512, 1024], 1024, 1024)
    assert wrn.taps == [0, 0] and wrn.groups == [512, 512]
    monkeypatch.setattr(features, "_taps_cheaper", lambda w, groups: False)
    dense = PatchAggregator([40, 112], 1024, 1024)
    assert dense.taps == [0, 0]
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 40, 10, 12, generator=g) * 4, torch.randn(2, 112, 5, 6, generator=g) * 4]
    with torch.no_grad():
        a, b = lite(feats), dense(feats)
    assert a.shape == b.shape == (2, 120, 1024)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-6
