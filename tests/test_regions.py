"""Defect regions, the --min-area rule and overlays that explain an NG (runtime.regions,
runtime.line.records, runtime.line.outputs), on the runtime tests' real bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.bundle import finalize_manifest, read_bundle
from runtime.calibration import PixelLevel
from runtime.geometry import TileLayout
from runtime.images import read_image
from runtime.cli.app import app
from runtime.line.outputs import outcome_overlay
from runtime.line.records import Item, bundle_judge, score_items
from runtime.postprocess import finish
from runtime.predictor import Predictor
from runtime.preprocess import PreprocessSpec
from runtime.regions import Judge, MinArea, find_regions, parse_min_area
from runtime.search.scorer import Scores
from runtime.errors import UsageError

SMALL, LARGE = 10, 44  # sides of the pasted defects, original pixels of 128 x 128 images


@pytest.fixture(scope="module")
def predictor(rt_bundle) -> Predictor:
    return Predictor(rt_bundle, device="cpu")


@pytest.fixture(scope="module")
def defects(rt_bundle, tmp_path_factory) -> dict[str, list[Path]]:
    """Good test images with a solid square pasted in: small and large ones."""
    goods = sorted((rt_bundle.parent / "data" / "brick" / "test" / "good").glob("*.png"))[:3]
    out = tmp_path_factory.mktemp("defects")
    rng = np.random.default_rng(3)
    made: dict[str, list[Path]] = {"small": [], "large": []}
    for kind, side in (("small", SMALL), ("large", LARGE)):
        for i, g in enumerate(goods):
            im = cv2.imread(str(g))
            y, x = (int(v) for v in rng.integers(8, 128 - side - 8, 2))
            im[y:y + side, x:x + side] = (20, 20, 230) if i % 2 else (230, 230, 20)
            path = out / f"{kind}-{i}.png"
            cv2.imwrite(str(path), im)
            made[kind].append(path)
    return made


def _run(*args: str):
    r = CliRunner().invoke(app, list(args))
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("box", [(40, 60, 80, 60), (120, 30, 96, 96), (60, 150, 140, 70)])
def test_region_area_of_a_known_defect_within_15_percent(box):
    """A rectangular defect of known area on a 256 x 320 original: patch scores on the 16 x 16
    grid of a 128-px canvas (the share of each patch the defect covers), then the runtime's maps
    (upsample, blur, back through the crop/resize plan) and regions: the half-peak area is the
    defect's area within 15%."""
    spec = PreprocessSpec.from_dict({"resize": 128, "crop": 128, "mean": [0.485, 0.456, 0.406],
                                     "std": [0.229, 0.224, 0.225], "interpolation": "bilinear", "channel_order": "RGB"})
    plan = spec.plan(256, 320)
    layout = TileLayout.for_spec(spec, (16, 16))
    x, y, w, h = box
    mask = np.zeros((256, 320), np.float32)
    mask[y:y + h, x:x + w] = 1
    x0, y0, x1, y1 = (int(round(v)) for v in plan.roi())
    on_canvas = cv2.resize(mask[y0:y1, x0:x1], (128, 128), interpolation=cv2.INTER_AREA)
    cover = on_canvas.reshape(16, 8, 16, 8).mean(axis=(1, 3))
    rng = np.random.default_rng(0)
    patch = (10.0 + rng.normal(0, 0.3, (16, 16)) + 8.0 * cover).astype(np.float32).reshape(1, -1)
    pred = finish(Scores(patch, patch.max(1).astype(np.float64), np.zeros(patch.shape, np.int64)), layout, 4.0,
                  None, None, [plan])
    judge = Judge(PixelLevel(11.5, "test", base=10.0))
    regions, total, why = judge.regions(pred.maps[0], plan)
    assert x0 <= x and x + w <= x1  # the defect lies where the network looks (a center crop)
    assert total == 1 and why is None
    assert regions[0]["area_px"] == pytest.approx(w * h, rel=0.15)
    bx, by, bw, bh = regions[0]["box"]
    assert abs(bx - x) <= 0.15 * w and abs(by - y) <= 0.15 * h and bw == pytest.approx(w, rel=0.2)
    assert regions[0]["extent_px"] >= regions[0]["area_px"]  # the blur spreads past the edge


def test_find_regions_sizes_peaks_and_mm2():
    amap = np.zeros((60, 80), np.float32)
    amap[10:20, 5:25] = 2.0  # 200 px
    amap[40:44, 60:63] = 3.0  # 12 px, the higher peak
    amap[41, 61] = 5.0
    regions, total = find_regions(amap, 1.0, mm_per_px=0.5)
    assert total == 2 and [r["area_px"] for r in regions] == [200, 12]  # largest first
    assert regions[0]["box"] == [5, 10, 20, 10] and regions[0]["area_mm2"] == pytest.approx(50.0)
    assert regions[1]["peak"] == [61, 41] and regions[1]["peak_score"] == 5.0
    assert find_regions(amap, 10.0) == ([], 0)


def test_every_ng_record_has_regions_and_says_which_rule_decided(predictor, defects):
    outcomes = score_items(predictor, [Item(p.name, path=p) for p in defects["small"] + defects["large"]])
    ng = [o for o in outcomes if o.verdict == "ng"]
    assert len(ng) >= 4, [(o.item.name, o.score, predictor.threshold) for o in outcomes]
    for o in ng:
        assert o.regions is not None and (o.regions or o.regions_note)
        assert o.rule == "image-score" and o.decided_by == "image-score"
    large = [o for o in outcomes if o.item.name.startswith("large")]
    small = [o for o in outcomes if o.item.name.startswith("small")]
    assert all(o.regions for o in large)
    # bigger defects, bigger regions: what --min-area separates
    assert min(o.regions[0]["area_px"] for o in large) > 1.5 * max((o.regions or [{"area_px": 0}])[0]["area_px"]
                                                                    for o in small)


def test_min_area_turns_small_region_ng_parts_ok_and_keeps_large_ones(predictor, defects):
    outcomes = score_items(predictor, [Item(p.name, path=p) for p in defects["small"] + defects["large"]])
    small = max((o.regions or [{"area_px": 0}])[0]["area_px"] for o in outcomes if o.item.name.startswith("small"))
    large = min(o.regions[0]["area_px"] for o in outcomes if o.item.name.startswith("large"))
    cut = (small + large) // 2
    paths = [str(p) for p in defects["small"] + defects["large"]]
    r0, plain = _run("predict", str(predictor.bundle.root), *paths, "--device", "cpu")
    r1, ruled = _run("predict", str(predictor.bundle.root), *paths, "--device", "cpu", "--min-area", f"{cut}px")
    assert r0.exit_code == 0 and r1.exit_code == 0, r1.output
    assert [r["verdict"] for r in plain] == ["ng"] * len(paths)
    assert [r["verdict"] for r in ruled] == ["ok"] * 3 + ["ng"] * 3
    assert all(r["rule"] == f"image-score and min-area {cut:g} px" and r["decided_by"] == "min-area" for r in ruled)
    # the same in mm²: 0.1 mm per pixel -> cut px is cut / 100 mm²
    r2, mm = _run("predict", str(predictor.bundle.root), *paths, "--device", "cpu", "--mm-per-px", "0.1",
                  "--min-area", f"{cut / 100}mm2")
    assert [r["verdict"] for r in mm] == ["ok"] * 3 + ["ng"] * 3, r2.output
    assert mm[-1]["regions"][0]["area_mm2"] == pytest.approx(mm[-1]["regions"][0]["area_px"] / 100, rel=1e-3)


@pytest.mark.parametrize("args,says", [(["--min-area", "-5"], "--min-area must be a number >= 0"),
                                       (["--min-area", "ten"], "--min-area must be a number >= 0"),
                                       (["--min-area", "2mm2"], "needs a scale"),
                                       (["--mm-per-px", "0", "--min-area", "2mm2"], "--mm-per-px must be")])
def test_bad_rule_values_exit_2_with_one_line(rt_bundle, args, says):
    img = sorted((rt_bundle.parent / "data" / "brick" / "test" / "good").glob("*.png"))[0]
    r = CliRunner().invoke(app, ["predict", str(rt_bundle), str(img), "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and says in errors[0]


def test_parse_min_area_units():
    assert parse_min_area("50") == MinArea(50.0, "px") and parse_min_area("1.5 mm2") == MinArea(1.5, "mm2")
    assert parse_min_area("2mm²").in_px(0.1) == pytest.approx(200.0)
    with pytest.raises(UsageError):
        parse_min_area("-1")


def test_overlay_of_a_borderline_ng_marks_where(predictor, rt_bundle):
    """A good image made a borderline NG (the threshold just under its score, the pixel threshold
    above its whole map): no region, so the overlay must mark the peak, and the label the rule."""
    img_path = sorted((rt_bundle.parent / "data" / "brick" / "test" / "good").glob("*.png"))[1]
    image = read_image(img_path)
    score = float(predictor.predict([image]).image_scores[0])
    saved = predictor.threshold
    judge = Judge(PixelLevel(1e9, "above every map value"))
    try:
        predictor.threshold = score * 0.999
        (o,) = score_items(predictor, [Item(img_path.name, image=image)], judge=judge)
        assert o.verdict == "ng" and o.regions == [] and "pixel threshold" in o.regions_note
        bgr = outcome_overlay(image, o, predictor, judge)
    finally:
        predictor.threshold = saved
    px, py = (int(round(v)) for v in o.plan.to_original(*np.unravel_index(int(np.argmax(o.map)), o.map.shape))[::-1])
    near = bgr[max(0, py - 12):py + 13, max(0, px - 12):px + 13].astype(int)
    magenta = (near[..., 0] > 200) & (near[..., 1] < 80) & (near[..., 2] > 200)
    assert magenta.sum() >= 10  # the peak's ring and cross
    src = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)[max(0, py - 12):py + 13, max(0, px - 12):px + 13].astype(int)
    assert (np.abs(near - src).max(axis=-1) > 60).sum() >= 10


def test_a_bundle_without_a_pixel_threshold_still_loads_and_says_why(rt_bundle, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(rt_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    for k in ("pixel_value", "pixel_quantile", "pixel_base"):
        m["threshold"].pop(k)
    finalize_manifest(old, m, [f for f in m["files"]])
    p = Predictor(read_bundle(old), device="cpu")
    judge = bundle_judge(p)
    assert judge.level.value == m["threshold"]["value"] and "re-export" in judge.level.source
    r, recs = _run("info", str(old))
    assert r.exit_code == 0 and "no pixel threshold" in r.stdout.replace("\n", " ").replace("  ", " ")


def test_torch_and_runtime_give_the_same_regions(rt_bundle, defects):
    """The PyTorch model and the runtime (onnxruntime) on the same images: the same regions."""
    from patchcore.model import PatchCore

    model = PatchCore.load(rt_bundle, device="cpu")
    p = Predictor(rt_bundle, device="cpu")
    judge = Judge.for_manifest(p.bundle.manifest)
    images = [read_image(x) for x in defects["small"] + defects["large"]]
    ref, out = model.predict(images), p.predict(images)
    for i in range(len(images)):
        a, _, _ = judge.regions(ref.maps[i], ref.plans[i])
        b, _, _ = judge.regions(out.maps[i], out.plans[i])
        assert len(a) == len(b) and a
        for ra, rb in zip(a, b):
            assert ra["area_px"] == pytest.approx(rb["area_px"], rel=0.01, abs=2)
            assert np.abs(np.subtract(ra["box"], rb["box"])).max() <= 1
