"""runtime.preprocess against torchvision's reference transforms (the official recipe's input).

Tolerance found on the real bottle images (512x512 -> Resize(256) -> CenterCrop(224)): OpenCV's
INTER_AREA (a 2x2 box at this exact 2x scale) and PIL's antialiased bilinear (a triangle of
support 2 source pixels) give a mean absolute difference of 0.013-0.015 in normalised units
(max ~0.75 on sharp edges), per-channel means within 3e-4. Geometry is exact: same output sizes,
same crop offsets, and the best alignment of the two outputs is at zero shift.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from runtime.images import read_image
from runtime.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessError,
    PreprocessSpec,
    preprocess,
    preprocess_batch,
    preprocess_mask,
    resize_and_crop,
)

MEAN_ABS_TOL = 0.02  # normalised units, INTER_AREA vs PIL antialias (measured 0.007-0.015)


@pytest.fixture
def bottle_images(shared_datasets):
    root = shared_datasets / "mvtec_ad" / "bottle"
    if not root.is_dir():
        pytest.skip(f"bottle class not found at {root}")
    paths = [root / "train" / "good" / "000.png", root / "test" / "broken_large" / "000.png"]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        pytest.skip(f"no bottle images found under {root}")
    return [read_image(p) for p in paths]


def torchvision_reference(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The official mvtec.py image transform, on a PIL image."""
    steps = []
    if spec.resize:
        steps.append(T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    if spec.crop:
        steps.append(T.CenterCrop(spec.crop))
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)(Image.fromarray(img)).numpy()


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Low-frequency RGB content: interpolation kernels agree closely on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        fy, fx = rng.uniform(8, 30, 2)
        ph = rng.uniform(0, 6.28)
        chans.append(127 + 50 * np.sin(x / fx + ph) * np.cos(y / fy) + 40 * (x / w - y / h))
    return np.clip(np.stack(chans, -1), 0, 255).round().astype(np.uint8)


def best_shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """The integer (dy, dx) in [-1, 1]^2 that best aligns b to a (interior compared)."""
    errs = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            bs = np.roll(b, (dy, dx), axis=(1, 2))
            errs[(dy, dx)] = np.abs(a[:, 2:-2, 2:-2] - bs[:, 2:-2, 2:-2]).mean()
    return min(errs, key=errs.get)


# ---------------------------------------------------------------- against torchvision


def test_bottle_matches_torchvision_within_tolerance(bottle_images):
    spec = PreprocessSpec()  # 256 / 224 bilinear antialias, ImageNet stats
    for img in bottle_images:
        ours = preprocess(img, spec)
        ref = torchvision_reference(img, spec)
        assert ours.shape == ref.shape == (3, 224, 224)
        assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
        diff = np.abs(ours - ref)
        assert diff.mean() < MEAN_ABS_TOL
        assert np.abs(ours.mean((1, 2)) - ref.mean((1, 2))).max() < 1e-3
        assert best_shift(ours, ref) == (0, 0)


def test_bottle_non_square_crops_match_torchvision(bottle_images):
    img = bottle_images[0]
    for sl, (resize, crop) in [
        ((slice(0, 400), slice(None)), (256, 224)),  # wide
        ((slice(None), slice(30, 481)), (256, 224)),  # tall, odd width
        ((slice(50, 350), slice(None)), (96, 64)),  # strongly wide, non-integer scale
        ((slice(None), slice(None)), (200, 180)),  # non-integer scale
    ]:
        sub = np.ascontiguousarray(img[sl])
        spec = PreprocessSpec(resize=resize, crop=crop)
        ours, ref = preprocess(sub, spec), torchvision_reference(sub, spec)
        assert ours.shape == ref.shape == (3, crop, crop)
        assert np.abs(ours - ref).mean() < MEAN_ABS_TOL, (sub.shape, resize, crop)
        assert best_shift(ours, ref) == (0, 0)


@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (333, 257), (227, 229), (64, 90), (90, 64)])
def test_shorter_side_resize_size_equals_torchvision(hw):
    h, w = hw
    img = smooth_image(h, w)
    spec = PreprocessSpec(resize=48, crop=0)
    out = preprocess(img, spec)
    tw, th = T.Resize(48)(Image.fromarray(img)).size
    assert out.shape == (3, th, tw)
    assert spec.output_size(h, w) == (th, tw)
    assert min(out.shape[1:]) == 48


@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (333, 257), (101, 100), (64, 90), (96, 96)])
@pytest.mark.parametrize("crop", [64, 63])
def test_center_crop_offsets_exactly_torchvision(hw, crop):
    """Crop only (no resampling): must be pixel-identical, including odd margins."""
    img = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    spec = PreprocessSpec(resize=0, crop=crop)
    ours = preprocess(img, spec)
    ref = torchvision_reference(img, spec)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (333, 257), (150, 212)])
def test_non_square_pipeline_matches_torchvision(hw):
    img = smooth_image(*hw, seed=hw[0])
    spec = PreprocessSpec(resize=96, crop=80)
    ours, ref = preprocess(img, spec), torchvision_reference(img, spec)
    assert ours.shape == ref.shape == (3, 80, 80)
    assert np.abs(ours - ref).mean() < 5e-3  # smooth content: kernels nearly agree
    assert best_shift(ours, ref) == (0, 0)


def test_upscale_matches_torchvision_bilinear():
    img = smooth_image(100, 120, seed=3)
    spec = PreprocessSpec(resize=160, crop=150)
    ours, ref = preprocess(img, spec), torchvision_reference(img, spec)
    assert np.abs(ours - ref).max() < 0.05  # ~1 grey level (uint8 rounding of both)


# ---------------------------------------------------------------- spec


def test_spec_round_trip_through_json():
    spec = PreprocessSpec(resize=320, crop=288, interpolation="bicubic", antialias=False,
                          mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), channel_order="BGR")
    d = json.loads(json.dumps(spec.to_dict()))
    assert isinstance(d["mean"], list)
    back = PreprocessSpec.from_dict(d)
    assert back == spec
    assert back.to_dict() == spec.to_dict()
    assert PreprocessSpec.from_dict(PreprocessSpec().to_dict()) == PreprocessSpec()


def test_spec_unknown_field_named():
    d = PreprocessSpec().to_dict()
    d["colour_space"] = "RGB"
    with pytest.raises(ValueError, match="colour_space"):
        PreprocessSpec.from_dict(d)


@pytest.mark.parametrize("kwargs", [
    dict(interpolation="lanczos"), dict(channel_order="RGBA"), dict(resize=-1),
    dict(resize=200, crop=224), dict(std=(0.2, 0.0, 0.2)), dict(mean=(0.5, 0.5)),
])
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PreprocessSpec(**kwargs)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [
    np.zeros((32, 32, 3), np.float32),  # wrong dtype
    np.zeros((32, 32, 3), np.uint16),
    np.zeros((32, 32), np.uint8),  # 2D
    np.zeros((32, 32, 4), np.uint8),  # RGBA
    np.zeros((1, 32, 32, 3), np.uint8),  # batched
    [[1, 2, 3]],  # not an array
])
def test_bad_input_raises_preprocess_error(bad):
    with pytest.raises(PreprocessError):
        preprocess(bad, PreprocessSpec(resize=32, crop=32))


def test_error_messages_name_the_problem():
    with pytest.raises(PreprocessError, match="float32"):
        preprocess(np.zeros((8, 8, 3), np.float32), PreprocessSpec(resize=8, crop=8))
    with pytest.raises(PreprocessError, match=r"\(8, 8, 4\)"):
        preprocess(np.zeros((8, 8, 4), np.uint8), PreprocessSpec(resize=8, crop=8))


def test_crop_larger_than_image_without_resize_raises():
    with pytest.raises(PreprocessError, match="crop"):
        preprocess(np.zeros((50, 80, 3), np.uint8), PreprocessSpec(resize=0, crop=64))


def test_batch_stacks_and_refuses_mixed_sizes():
    spec = PreprocessSpec(resize=40, crop=32)
    a, b = smooth_image(50, 70), smooth_image(90, 60, seed=2)
    batch = preprocess_batch([a, b], spec)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess(b, spec))
    with pytest.raises(PreprocessError, match="different input sizes"):
        preprocess_batch([a, b], PreprocessSpec(resize=40, crop=0))
    with pytest.raises(PreprocessError):
        preprocess_batch([], spec)


# ---------------------------------------------------------------- normalisation, channel order


def test_normalisation_values_exact():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 128, 255
    out = preprocess(img, PreprocessSpec(resize=0, crop=0))
    expect = (np.array([0, 128, 255]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 0, 0], expect, rtol=1e-6)


def test_bgr_flips_channels():
    img = smooth_image(70, 90, seed=5)
    rgb = preprocess(img, PreprocessSpec(resize=48, crop=40))
    bgr = preprocess(img, PreprocessSpec(resize=48, crop=40, channel_order="BGR"))
    np.testing.assert_array_equal(bgr, rgb[::-1])
    assert bgr.flags["C_CONTIGUOUS"]


# ---------------------------------------------------------------- masks


def _blob_mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2 + w // 13, h // 2 - h // 11), (w // 5, h // 7), 20, 0, 360, 1, -1)
    return m.astype(bool)


@pytest.mark.parametrize("hw", [(512, 512), (900, 900), (300, 500), (333, 257)])
def test_mask_stays_binary_with_image_geometry(hw):
    mask = _blob_mask(*hw)
    spec = PreprocessSpec(resize=256, crop=224)
    out = preprocess_mask(mask, spec)
    assert out.dtype == bool and out.shape == (224, 224)
    assert out.shape == preprocess(np.zeros((*hw, 3), np.uint8), spec).shape[1:]
    # uint8 0/255 masks give the same result as bool masks
    np.testing.assert_array_equal(preprocess_mask(mask.astype(np.uint8) * 255, spec), out)
    assert 0 < out.mean() < 1


def _centroid(a: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(a.shape)
    return np.array([(a * ys).sum(), (a * xs).sum()]) / a.sum()


@pytest.mark.parametrize("side", [900, 1024, 700])
def test_mask_aligned_with_image_pixels(side):
    """A mask and an image of the same shape must land on the same output pixels.

    The image path resamples with pixel centres (INTER_AREA); a nearest-neighbour mask must
    sample at pixel centres too, as PIL's NEAREST (the official mvtec.py) does. MVTec's
    900x900 and 1024x1024 images are exactly these non-2x downscales.
    """
    mask = _blob_mask(side, side)
    spec = PreprocessSpec()
    m = preprocess_mask(mask, spec).astype(np.float64)
    img = resize_and_crop(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, 2), spec)[..., 0] / 255.0
    shift = _centroid(m) - _centroid(img)
    assert np.abs(shift).max() < 0.2, f"mask is offset by {shift} output pixels from the image"


@pytest.mark.parametrize("hw", [(900, 900), (300, 500), (333, 257)])
def test_mask_equals_pil_nearest(hw):
    """The official recipe resizes PIL masks with nearest neighbour; same pixels expected."""
    mask = np.random.default_rng(0).random(hw) > 0.5
    spec = PreprocessSpec()
    ref = T.CenterCrop(224)(T.Resize(256, interpolation=T.InterpolationMode.NEAREST)(
        Image.fromarray(mask.astype(np.uint8) * 255)))
    np.testing.assert_array_equal(preprocess_mask(mask, spec), np.array(ref) > 0)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("hw", [(320, 320), (77, 131)])
def test_normalisation_keeps_the_bits_of_the_broadcast_expression(order, hw):
    """The in-place normalisation gives, bit for bit, ``(x / 255 - mean) / std`` broadcast over HxWx3 and
    then moved to 3xHxW (what fitted banks were computed with): a bundle's exact path stays bit for bit."""
    from runtime.preprocess import PreprocessSpec, _normalise

    spec = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order=order)
    image = np.random.default_rng(hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    ref = np.ascontiguousarray((x[:, :, ::-1] if order == "BGR" else x).transpose(2, 0, 1))
    got = _normalise(image, spec)
    assert got.dtype == np.float32 and got.shape == (3, *hw) and got.flags.c_contiguous
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
