"""runtime.postprocess against the references the official segmentor uses: scipy's
gaussian_filter (sigma 4) and torch's bilinear interpolate (align_corners=False)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from runtime.postprocess import DEFAULT_BLUR_SIGMA, anomaly_maps, gaussian_blur, normalise_scores, upsample


def _scipy_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    flat = maps.reshape(-1, *maps.shape[-2:]).astype(np.float64)
    return np.stack([gaussian_filter(m, sigma) for m in flat]).reshape(maps.shape)


def _torch_upsample(maps: np.ndarray, size) -> np.ndarray:
    x = torch.from_numpy(maps.astype(np.float64)).unsqueeze(1)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).squeeze(1).numpy()


@pytest.mark.parametrize("shape", [(2, 224, 224), (1, 28, 28), (3, 10, 12), (1, 5, 40), (1, 3, 3), (1, 1, 1)])
@pytest.mark.parametrize("sigma", [4.0, 1.5, 0.7])
def test_gaussian_blur_equals_scipy_including_borders(shape, sigma):
    rng = np.random.default_rng(0)
    maps = rng.random(shape).astype(np.float32) * 3
    # a spike in a corner makes the border handling visible
    maps[..., 0, 0] += 10
    out = gaussian_blur(maps, sigma)
    assert out.shape == maps.shape and out.dtype == np.float32
    ref = _scipy_blur(maps, sigma)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()))
    # borders specifically (the outer 4*sigma band)
    r = int(4 * sigma + 0.5)
    edge = np.ones(shape[-2:], bool)
    edge[r:-r or None, r:-r or None] = False
    assert np.abs(out[..., edge] - ref[..., edge]).max() < 1e-5 * max(1.0, np.abs(ref).max())


def test_gaussian_blur_large_scores_relative_precision():
    maps = (np.random.default_rng(1).random((2, 28, 28)) * 1e3 + 5e3).astype(np.float32)
    out = gaussian_blur(maps, 4.0)
    ref = _scipy_blur(maps, 4.0)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_gaussian_blur_keeps_extra_leading_axes_and_sigma_zero_is_copy():
    maps = np.random.default_rng(2).random((2, 3, 9, 11)).astype(np.float32)
    out = gaussian_blur(maps, 2.0)
    assert out.shape == maps.shape
    np.testing.assert_allclose(out[1, 2], _scipy_blur(maps[1, 2], 2.0), atol=1e-6)
    same = gaussian_blur(maps, 0)
    np.testing.assert_array_equal(same, maps)
    assert same is not maps


def test_blur_preserves_a_constant_map():
    const = np.full((1, 28, 28), 7.5, np.float32)
    np.testing.assert_allclose(gaussian_blur(const, 4.0), const, rtol=1e-6)


@pytest.mark.parametrize("src,dst", [((28, 28), (224, 224)), ((7, 9), (64, 50)), ((28, 28), (28, 28)),
                                     ((14, 10), (20, 33)), ((30, 30), (16, 16)), ((1, 1), (5, 5))])
def test_upsample_equals_torch_bilinear(src, dst):
    maps = np.random.default_rng(3).random((3, *src)).astype(np.float32) * 5
    out = upsample(maps, dst)
    assert out.shape == (3, *dst) and out.dtype == np.float32
    np.testing.assert_allclose(out, _torch_upsample(maps, dst), rtol=0, atol=1e-5)


def test_upsample_keeps_leading_axes():
    maps = np.random.default_rng(4).random((2, 3, 6, 8)).astype(np.float32)
    out = upsample(maps, (12, 16))
    assert out.shape == (2, 3, 12, 16)
    np.testing.assert_allclose(out[1, 2], _torch_upsample(maps[1, 2][None], (12, 16))[0], atol=1e-5)


def test_anomaly_maps_is_upsample_then_blur():
    patch = np.random.default_rng(5).random((2, 28, 28)).astype(np.float32)
    out = anomaly_maps(patch, (224, 224))
    assert out.shape == (2, 224, 224) and out.dtype == np.float32
    ref = _scipy_blur(_torch_upsample(patch, (224, 224)), DEFAULT_BLUR_SIGMA)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        anomaly_maps(patch[0], (224, 224))


def test_normalise_scores_threshold_at_half_and_clipped():
    t, s = 10.0, 2.0
    scores = np.array([t, t + s, t - s, t + 100, t - 100, t + 0.5 * s])
    out = normalise_scores(scores, t, s)
    np.testing.assert_allclose(out, [0.5, 1.0, 0.0, 1.0, 0.0, 0.75])
    assert out.min() >= 0 and out.max() <= 1
    # monotone in the score
    ramp = np.linspace(t - 3 * s, t + 3 * s, 50)
    assert np.all(np.diff(normalise_scores(ramp, t, s)) >= 0)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="scale"):
            normalise_scores(scores, t, bad)
