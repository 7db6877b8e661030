"""runtime.geometry and the geometry fields of PreprocessSpec: the paper recipe is reproduced
bit for bit (against the preprocessing code bundles were made with before modes existed), plans
follow each mode, maps go back onto the original exactly where the canvas came from, memory stays
bounded for extreme aspect ratios, tiles stitch onto one grid, and the options refuse what cannot be."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from patchcore import input_geometry as ig
from patchcore.metrics import pixel_auroc, pro_score
from runtime import geometry
from runtime.bundle import BundleError, validate_manifest
from runtime.geometry import TileLayout, map_to_original, peak_on_original, tile_origins
from runtime.images import read_image
from runtime.preprocess import (
    PreprocessError,
    PreprocessSpec,
    prepare,
    preprocess,
    preprocess_batch,
    preprocess_mask,
    resize_and_crop,
)

# ------------------------------------------------------------------------ the paper recipe, as before
# The geometry of runtime/preprocess.py as every bundle before geometry modes used it (commit
# c818495), kept verbatim as the reference the crop mode must reproduce bit for bit.
_INTERP = {"nearest": cv2.INTER_NEAREST_EXACT, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
           "area": cv2.INTER_AREA}


def _legacy_resized_size(height, width, shorter):
    if not shorter:
        return height, width
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


def legacy_resize_and_crop(image, resize, crop, interp_name, antialias):
    h, w = image.shape[:2]
    nh, nw = _legacy_resized_size(h, w, resize)
    if (nh, nw) != (h, w):
        flag = _INTERP[interp_name]
        if antialias and interp_name != "nearest" and (nh < h or nw < w):
            flag = cv2.INTER_AREA
        image = cv2.resize(image, (nw, nh), interpolation=flag)
    if crop:
        if crop > nh or crop > nw:
            raise PreprocessError(f"cannot crop {crop}x{crop} from a {nh}x{nw} image")
        top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
        image = image[top : top + crop, left : left + crop]
    return image


def legacy_preprocess(image, spec: PreprocessSpec):
    image = legacy_resize_and_crop(image, spec.resize, spec.crop, spec.interpolation, spec.antialias)
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.channel_order == "BGR":
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


LEGACY_KEYS = {"resize", "crop", "interpolation", "antialias", "mean", "std", "channel_order"}


@pytest.mark.parametrize("hw", [(900, 900), (1024, 1024), (512, 512), (300, 500), (500, 300), (333, 257),
                                (64, 90), (3, 40), (768, 1024), (240, 2400)])
@pytest.mark.parametrize("interp,antialias", [("bilinear", True), ("bicubic", True), ("bilinear", False),
                                              ("nearest", True)])
def test_crop_mode_equals_the_recipe_bundles_were_made_with(hw, interp, antialias):
    """Bit for bit, including the crop-first paths (no resampling, aligned integer downscales)."""
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    mask = rng.random(hw) > 0.5
    for resize, crop in [(256, 224), (128, 128), (96, 64), (0, 32)]:
        spec = PreprocessSpec(resize=resize, crop=crop, interpolation=interp, antialias=antialias)
        try:
            ref = legacy_preprocess(img, spec)
        except Exception:  # noqa: BLE001 - the old code failed for images too small to crop
            with pytest.raises(PreprocessError):
                preprocess(img, spec)
            continue
        np.testing.assert_array_equal(preprocess(img, spec), ref)
        ref_mask = legacy_resize_and_crop(mask.astype(np.uint8), resize, crop, "nearest", antialias).astype(bool)
        np.testing.assert_array_equal(preprocess_mask(mask, spec), ref_mask)


def test_bottle_paper_inputs_are_bit_identical(shared_datasets):
    root = shared_datasets / "mvtec_ad" / "bottle"
    paths = sorted((root / "test" / "broken_large").glob("*.png"))[:3] + sorted((root / "train" / "good").glob("*.png"))[:2]
    if not paths:
        pytest.skip(f"no bottle images under {root}")
    images = [read_image(p) for p in paths]
    spec = PreprocessSpec()  # what effnet-lite0's paper preset uses
    np.testing.assert_array_equal(preprocess_batch(images, spec), np.stack([legacy_preprocess(im, spec) for im in images]))


def test_paper_manifest_keeps_its_old_form_and_new_modes_are_refused_by_old_readers():
    paper = PreprocessSpec()
    assert set(paper.to_dict()) == LEGACY_KEYS and paper.to_dict()["resize"] == 256 and paper.to_dict()["crop"] == 224
    legacy_dict = {"resize": 256, "crop": 224, "interpolation": "bilinear", "antialias": True,
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "RGB"}
    assert PreprocessSpec.from_dict(legacy_dict) == paper
    for spec in (PreprocessSpec(mode="resize", size=(352, 144)), PreprocessSpec(resize=(256, 640), size=(224, 560)),
                 PreprocessSpec(mode="pad", size=(224, 224)),
                 PreprocessSpec(mode="resize", size=(512, 512), tile=(256, 256))):
        d = json.loads(json.dumps(spec.to_dict()))
        assert set(d) - LEGACY_KEYS, "an older runtime must see an unknown field and refuse"
        assert PreprocessSpec.from_dict(d) == spec


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="resize"), "needs size"),
    (dict(mode="zoom", size=(8, 8)), "mode"),
    (dict(resize=(256, 256), size=(224, 560)), "larger than resize"),
    (dict(mode="resize", size=(64, 64), tile=(128, 64)), "larger than the canvas"),
    (dict(mode="resize", size=(64, 64), tile=(32, 32), tile_stride=(48, 32)), "larger than the tile"),
    (dict(resize=0, crop=0, tile=(32, 32)), "fixed canvas"),
    (dict(mode="resize", size=(64, 0)), "size"),
    (dict(mode="resize", size=(64, 64), tile_stride=(8, 8)), "needs tile"),
])
def test_spec_refuses_impossible_geometry(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreprocessSpec(**kwargs)


# ------------------------------------------------------------------------------------------- plans
def test_plans_of_each_mode():
    crop = PreprocessSpec(resize=(256, 640), size=(224, 560)).plan(400, 1000)  # wide 2.5:1
    assert crop.resized_hw == (256, 640) and crop.canvas_hw == (224, 560) and crop.content_hw == (224, 560)
    assert crop.crop_box == (16, 40, 240, 600) and not crop.covers_whole_image()
    resize = PreprocessSpec(mode="resize", size=(352, 144)).plan(500, 200)
    assert resize.read_box == (0, 0, 500, 200) and resize.resized_hw == (352, 144) and resize.covers_whole_image()
    pad = PreprocessSpec(mode="pad", size=(224, 224)).plan(500, 200)
    assert pad.resized_hw == (224, 90) and pad.paste_yx == (0, 67) and pad.covers_whole_image()
    assert preprocess(np.full((500, 200, 3), 255, np.uint8), PreprocessSpec(mode="pad", size=(224, 224)))[:, :, :67].max() == 0
    tiled = PreprocessSpec(mode="resize", size=(1000, 600), tile=(256, 256), tile_stride=(192, 192)).plan(1000, 600)
    assert sorted({y for y, _ in tiled.tiles}) == [0, 192, 384, 576, 744] and sorted({x for _, x in tiled.tiles}) == [0, 192, 344]
    assert tile_origins(256, 256, 256) == [0] and tile_origins(300, 256, 256) == [0, 44]


def test_tiles_are_cut_from_the_canvas_in_order():
    spec = PreprocessSpec(mode="resize", size=(96, 128), tile=(64, 64), tile_stride=(32, 64))
    img = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    p = prepare(img, spec)
    canvas = preprocess(img, spec)
    assert p.inputs.shape == (len(p.plan.tiles), 3, 64, 64) == (4, 3, 64, 64)
    for t, (y, x) in zip(p.inputs, p.plan.tiles):
        np.testing.assert_array_equal(t, canvas[:, y : y + 64, x : x + 64])
    assert preprocess_batch([img, img], spec).shape == (8, 3, 64, 64)


# ------------------------------------------------------------------------------ back to the original
def _ramp(h: int, w: int) -> np.ndarray:
    """A smooth image whose value says where a pixel came from: 0.3 * x + 0.2 * y."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return 0.3 * (x + 0.5) + 0.2 * (y + 0.5)


@pytest.mark.parametrize("spec,hw", [
    (PreprocessSpec(resize=(256, 640), size=(224, 560), antialias=False), (400, 1000)),
    (PreprocessSpec(antialias=False), (300, 500)),
    (PreprocessSpec(mode="resize", size=(352, 144), antialias=False), (500, 200)),
    (PreprocessSpec(mode="pad", size=(224, 224), antialias=False), (500, 200)),
    (PreprocessSpec(mode="resize", size=(512, 384), tile=(128, 128), antialias=False), (1024, 768)),
])
def test_maps_go_back_to_where_the_canvas_came_from(spec, hw):
    """A map made by the forward geometry from a ramp comes back as the ramp (inside the part the
    network saw; a pixel of slack at the content's border, where the letterbox starts)."""
    ramp = _ramp(*hw)
    plan = spec.plan(*hw)
    canvas = resize_and_crop(ramp, spec)  # float32 content, bilinear
    back = map_to_original(canvas, plan, fill=-1.0)
    x0, y0, x1, y1 = plan.roi()
    inner = np.zeros(hw, bool)
    inner[int(np.ceil(y0)) + 2 : int(y1) - 2, int(np.ceil(x0)) + 2 : int(x1) - 2] = True
    err = np.abs(back[inner] - ramp[inner])
    assert err.max() < 0.35, err.max()  # under one original pixel of 0.3/px ramp
    assert (back == -1.0).any() != plan.covers_whole_image()  # filled exactly where the canvas does not reach
    # the peak of a canvas map lands on the original pixel it came from
    spot = np.zeros(plan.canvas_hw, np.float32)
    cy, cx = plan.canvas_hw[0] // 3, plan.canvas_hw[1] // 2
    spot[cy, cx] = 1.0
    px, py = peak_on_original(spot, plan)
    ramp_at = resize_and_crop(ramp, spec)[cy, cx]
    assert abs(0.3 * px + 0.2 * py - ramp_at) < 0.35


def test_center_crop_roi_and_fill_outside():
    spec = PreprocessSpec()  # 256 / 224 on a tall image: the ends are not seen
    plan = spec.plan(640, 256)
    x0, y0, x1, y1 = plan.roi()
    assert (x0, x1) == pytest.approx((16, 240)) and (y0, y1) == pytest.approx((208, 432))
    back = map_to_original(np.ones(plan.canvas_hw, np.float32), plan, fill=0.0)
    assert back[:200].max() == 0 and back[440:].max() == 0 and back[220:420, 20:236].min() == 1


# ----------------------------------------------------------------------------------- bounded memory
def test_extreme_aspect_is_cropped_in_original_coordinates(monkeypatch):
    """A 1 x 20000 line would be resized to 256 x 5,120,000 before the crop; the plan reads only
    the crop's footprint, and the result stays close to resizing the whole image."""
    spec = PreprocessSpec()
    plan = spec.plan(1, 20000)
    assert plan.resized_hw[0] * plan.resized_hw[1] <= geometry.MAX_INTERMEDIATE_PIXELS
    assert plan.read_box[3] - plan.read_box[1] < 20
    assert preprocess(np.zeros((1, 20000, 3), np.uint8), spec).shape == (3, 224, 224)
    # against the full resize on a size where that is affordable, with a small cap to force the path
    monkeypatch.setattr(geometry, "MAX_INTERMEDIATE_PIXELS", 1000)
    small = PreprocessSpec(resize=64, crop=56)
    img = (np.clip(_ramp(30, 1200) * 0.6, 0, 255)[..., None].repeat(3, 2)).astype(np.uint8)
    bounded = small.plan(30, 1200)
    assert bounded.read_box != (0, 0, 30, 1200)
    ours = resize_and_crop(img, small).astype(np.float32)
    ref = legacy_resize_and_crop(img, 64, 56, "bilinear", True).astype(np.float32)
    assert ours.shape == ref.shape and np.abs(ours - ref).mean() < 1.0  # grey levels


# ------------------------------------------------------------------------------------------ stitching
def test_tiles_stitch_by_maximum_on_one_grid():
    spec = PreprocessSpec(mode="resize", size=(32, 48), tile=(16, 16), tile_stride=(8, 16))
    layout = TileLayout.for_spec(spec, (2, 2))  # 8 px per cell
    assert layout.n_tiles == 9 and layout.cell == (8, 8) and layout.map_grid == (4, 6)
    rng = np.random.default_rng(0)
    patch = rng.random((2, layout.n_tiles * 4)).astype(np.float32)
    out = layout.stitch(patch)
    ref = np.full((2, 4, 6), -np.inf, np.float32)
    for t, (y, x) in enumerate(layout.origins):
        block = patch[:, t * 4 : (t + 1) * 4].reshape(2, 2, 2)
        ref[:, y // 8 : y // 8 + 2, x // 8 : x // 8 + 2] = np.maximum(ref[:, y // 8 : y // 8 + 2, x // 8 : x // 8 + 2], block)
    np.testing.assert_array_equal(out, ref)
    assert np.isfinite(out).all() and np.allclose(out.max(axis=(1, 2)), patch.max(axis=1))
    with pytest.raises(ValueError, match="multiples"):
        TileLayout.for_spec(PreprocessSpec(mode="resize", size=(36, 48), tile=(16, 16)), (2, 2))


def test_bundle_refuses_a_manifest_whose_input_does_not_match_its_preprocessing():
    manifest = _manifest(PreprocessSpec(mode="resize", size=(352, 144)), [352, 144], [44, 18])
    validate_manifest(manifest, digest=False)
    with pytest.raises(BundleError, match="input_size"):
        validate_manifest(_manifest(PreprocessSpec(mode="resize", size=(352, 144)), [224, 224], [28, 28]), digest=False)
    with pytest.raises(BundleError, match="patch grid"):
        validate_manifest(_manifest(PreprocessSpec(mode="resize", size=(96, 96), tile=(64, 64), tile_stride=(20, 20)),
                                    [64, 64], [8, 8]), digest=False)


def _manifest(spec, input_size, grid):
    return {"schema_version": 1, "format": "patchcore-rt-bundle", "name": "x",
            "backbone": {"name": "b", "weights_tag": "t", "layers": []}, "preprocess": spec.to_dict(),
            "features": {"target_dim": 8, "grid": grid, "input_size": input_size},
            "memory_bank": {"file": "memory_bank.npy", "rows": 1, "dim": 8, "dtype": "float32"},
            "scoring": {"k": 1, "n_reweight": 3, "blur_sigma": 4.0}, "threshold": {"value": None, "scale": None},
            "versions": {}, "files": {"memory_bank.npy": {"sha256": "0" * 64, "bytes": 1}}}


# ------------------------------------------------------------------------------ options -> spec
def test_auto_picks_the_training_aspect_under_the_budget():
    assert ig.auto_size([(500, 200)] * 3 + [(900, 900)], 224 * 224, 16) == (352, 144)
    assert ig.auto_size([(900, 900)], 224 * 224, 16) == (224, 224)
    h, w = ig.auto_size([(1000, 4000)], 224 * 224, 32)
    assert h % 32 == 0 and w % 32 == 0 and abs(h * w - 224 * 224) / (224 * 224) < 0.15


def test_resolve_paper_crop_and_tiles():
    base = PreprocessSpec()
    assert ig.resolve(base, (8, 16), geometry="paper") == base
    assert ig.resolve(base, (8, 16), resize=128, crop=128) == PreprocessSpec(resize=128, crop=128)
    crop = ig.resolve(base, (8, 16), geometry="crop", input_size=(224, 560))
    assert crop.mode == "crop" and crop.size == (224, 560) and crop.resize == (256, 640)
    tiled = ig.resolve(base, (8, 16), tile=(256, 256), tile_overlap=64, sizes=[(1024, 1000)])
    assert tiled.mode == "resize" and tiled.size == (1024, 1000) and tiled.tile_stride == (192, 192)
    half = ig.resolve(base, (8, 16), tile=(128, 128), tile_scale=0.5, sizes=[(1024, 1000)])
    assert half.size == (512, 496)


@pytest.mark.parametrize("kwargs,match", [
    (dict(geometry="paper", input_size=(224, 560)), "picks its own"),
    (dict(geometry="auto", input_size=(224, 560)), "picks its own"),
    (dict(geometry="resize"), "needs --input-size"),
    (dict(tile_scale=0.5), "needs --tile"),
    (dict(tile_overlap=8), "needs --tile"),
    (dict(geometry="auto", tile=(256, 256)), "cannot tile"),
    (dict(tile=(256, 256), input_size=(1024, 1024), tile_scale=0.5), "not both"),
    (dict(tile=(256, 256), tile_overlap=256), "smaller than the tile"),
    (dict(geometry="pad", input_size=(224, 224), crop=224), "paper recipe"),
    (dict(geometry="zoom"), "--geometry must be"),
])
def test_impossible_option_combinations(kwargs, match):
    opts = dict(geometry=None, input_size=None, tile=None, tile_overlap=0, tile_scale=None, resize=None, crop=None)
    with pytest.raises(ValueError, match=match):
        ig.check_options(**{**opts, **kwargs})


@pytest.mark.parametrize("text,expect", [("224x560", (224, 560)), ("256", (256, 256)), (" 64 X 32", (64, 32))])
def test_parse_size(text, expect):
    assert ig.parse_size(text) == expect


@pytest.mark.parametrize("text", ["224x", "0x5", "axb", "1x2x3"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        ig.parse_size(text)


# -------------------------------------------------------------------- metrics on per-image sizes
def test_pixel_metrics_take_images_of_different_sizes():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:8, 3:9] = masks[2, 10:18, 20:27] = True
    maps = (rng.random(masks.shape) + 0.6 * masks).astype(np.float32)
    as_lists = [m for m in masks], [a for a in maps]
    assert pixel_auroc(*as_lists) == pixel_auroc(masks, maps)
    assert pro_score(*as_lists) == pro_score(masks, maps)
    ragged_masks = [masks[0], masks[1][:10], masks[2][:, 5:]]
    ragged_maps = [maps[0], maps[1][:10], maps[2][:, 5:]]
    flat_m = np.concatenate([m.ravel() for m in ragged_masks])
    flat_a = np.concatenate([a.ravel() for a in ragged_maps])
    assert pixel_auroc(ragged_masks, ragged_maps) == pytest.approx(pixel_auroc(flat_m[None], flat_a[None]))
