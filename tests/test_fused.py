"""``--aggregation fused`` (issue 41, item 2): the feature module gives both parts' columns; scores
combine as documented (normalised, averaged, maps alike); a fused bundle is self-describing, exports,
reloads and runs in the runtime with the parity tolerances of ``export.parity``; it searches exactly;
bad combinations are one line and exit 2, an edited bundle exit 3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_export import export_bundle
from export.parity import FP16, FP32, run_parity
from patchcore.config import PatchCoreConfig, preset_config
from patchcore.data import load_class
from patchcore.features import FusedAggregator, LocalMeanAggregator, PatchAggregator
from patchcore.model import PatchCore
from patchcore.synthetic import make_synthetic_class
from runtime.bundle import BundleError, read_bundle
from runtime.fused import FusedPart, FusedScorer, check_features, combine, combine_maps, split_columns
from runtime.images import read_image
from runtime.postprocess import anomaly_maps
from runtime.predictor import Predictor
from runtime.search.scorer import Scores

REPO = Path(__file__).resolve().parents[1]
PARTS = [FusedPart("paper", 6, 0.0, 2.0, 0.0, 4.0), FusedPart("local-mean", 3, 1.0, 0.5, 0.5, 0.25)]


# ------------------------------------------------------------------------------ scoring, no fit
def test_combine_normalises_each_part_and_averages():
    a = Scores(np.array([[2.0, 8.0]], np.float32), np.array([4.0]), np.zeros((1, 2), np.int64))
    b = Scores(np.array([[0.75, 0.5]], np.float32), np.array([1.5]), np.zeros((1, 2), np.int64))
    s = combine(PARTS, [a, b])
    # patch: (2/4 + (0.75-0.5)/0.25) / 2 = 0.75 and (8/4 + 0) / 2 = 1.0; image: (4/2 + (1.5-1)/0.5) / 2 = 1.5
    np.testing.assert_allclose(s.patch_scores, [[0.75, 1.0]], rtol=1e-7)
    np.testing.assert_allclose(s.image_scores, [1.5], rtol=1e-12)


def test_fused_maps_are_the_mean_of_the_parts_normalised_maps():
    """The maps' upsampling and blur are linear and keep constants: mapping the combined patch scores
    gives what combining the parts' maps gives (what calibration on out-of-fold maps relies on)."""
    rng = np.random.default_rng(0)
    patches = [rng.gamma(2.0, 3.0, (2, 7, 5)).astype(np.float32), rng.gamma(2.0, 0.5, (2, 7, 5)).astype(np.float32)]
    maps = [anomaly_maps(p, (56, 40), 4.0) for p in patches]
    fused = combine(PARTS, [Scores(p.reshape(2, -1), np.zeros(2), np.zeros((2, 35), np.int64)) for p in patches])
    direct = anomaly_maps(fused.patch_scores.reshape(2, 7, 5), (56, 40), 4.0)
    np.testing.assert_allclose(direct, combine_maps(PARTS, maps), rtol=1e-5, atol=1e-5)


def test_split_columns_and_scorer_checks():
    rows = np.arange(18, dtype=np.float32).reshape(2, 9)
    a, b = split_columns(rows, [6, 3])
    assert a.shape == (2, 6) and b.shape == (2, 3) and b[0, 0] == 6
    with pytest.raises(ValueError, match="9 columns"):
        split_columns(rows[:, :8], [6, 3])
    with pytest.raises(ValueError, match="positive"):
        FusedPart("paper", 6, 0.0, 0.0, 0.0, 1.0)


def test_manifest_parts_are_checked():
    good = {"aggregation": "fused", "target_dim": 9, "parts": [p.to_dict() for p in PARTS]}
    assert check_features(good) is None
    assert check_features({"aggregation": "paper", "target_dim": 9}) is None  # an old bundle: nothing to check
    assert "add up" in check_features({**good, "target_dim": 10})
    assert "parts" in check_features({"aggregation": "fused", "target_dim": 9})
    assert "fused" in check_features({**good, "aggregation": "paper"})
    broken = json.loads(json.dumps(good))
    broken["parts"][1]["pixel_scale"] = -1
    assert "positive" in check_features(broken)


def test_normaliser_is_fitted_on_the_out_of_fold_good_scores():
    from patchcore.fused import normaliser
    from patchcore.out_of_fold import OutOfFold

    rng = np.random.default_rng(1)
    oof = OutOfFold(rng.gamma(3.0, 2.0, 40), rng.gamma(2.0, 1.0, (40, 16, 16)).astype(np.float32),
                    [np.arange(i, 40, 5) for i in range(5)], [10] * 5)
    q = normaliser("paper", 6, oof)
    assert (q.image_center, q.pixel_center) == (0.0, 0.0)
    assert q.image_scale == pytest.approx(np.quantile(oof.image_scores, 0.99), rel=1e-12)
    assert q.pixel_scale == pytest.approx(np.quantile(oof.maps.astype(np.float64).ravel(), 0.999), rel=1e-6)
    z = normaliser("paper", 6, oof, "z")
    med = np.median(oof.image_scores)
    assert z.image_center == pytest.approx(med) and z.image_scale == pytest.approx(
        1.4826 * np.median(np.abs(oof.image_scores - med)))
    with pytest.raises(ValueError, match="normaliser"):
        normaliser("paper", 6, oof, "mean")


def test_fused_aggregator_is_both_parts_side_by_side():
    torch.manual_seed(0)
    feats = [torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    fused = FusedAggregator([40, 112], 1024, 256)
    assert fused.part_dims == [256, 152] and fused.target_dim == 408
    out = fused(feats)
    torch.testing.assert_close(out[..., :256], PatchAggregator([40, 112], 1024, 256)(feats), rtol=0, atol=0)
    torch.testing.assert_close(out[..., 256:], LocalMeanAggregator([40, 112])(feats), rtol=0, atol=0)
    with pytest.raises(ValueError, match="--target-dim 4096"):
        FusedAggregator([40, 112], 1024, 4096)


def test_fused_needs_out_of_fold_calibration():
    with pytest.raises(ValueError, match="--calibration oof"):
        preset_config("paper", backbone="effnet-lite0", aggregation="fused")
    with pytest.raises(ValueError, match="--shards"):
        PatchCoreConfig(backbone="effnet-lite0", aggregation="fused", shards=2)
    assert preset_config("default", backbone="effnet-lite0", aggregation="fused").target_dim is None  # paper part: 1024


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHCORE_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "patchcore", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_bad_fused_combinations_are_one_line_exit_2(tmp_path, data):
    for extra in (["--target-dim", "5000"], ["--preset", "paper"]):
        r = _cli("fit", "--data", str(data), "--backbone", "effnet-lite0", "--aggregation", "fused", "--out",
                 str(tmp_path / "b"), *extra)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and "fused" in errors[0], r.stderr


# ------------------------------------------------------------------------------ a fused bundle
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_class(tmp_path_factory.mktemp("data"), "brick", n_train=12, n_test_good=4,
                                n_test_defect=2, size=128, defects=("scratch", "stain"))


@pytest.fixture(scope="module")
def fitted(data) -> PatchCore:
    cfg = PatchCoreConfig(backbone="effnet-lite0", aggregation="fused", target_dim=None, coreset_ratio=0.1,
                          resize=112, crop=112, device="cpu", batch_size=12)
    return PatchCore(cfg).fit(load_class(data).train)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fitted) -> Path:
    root = tmp_path_factory.mktemp("fused") / "bundle"
    export_bundle(fitted, root, fp16=True)
    return root


def test_fused_bundle_describes_both_parts(bundle, fitted):
    m = read_bundle(bundle).manifest
    f = m["features"]
    assert f["aggregation"] == "fused" and f["search"] == "exact"
    assert [p["aggregation"] for p in f["parts"]] == ["paper", "local-mean"]
    assert [p["dim"] for p in f["parts"]] == [1024, 152] and f["target_dim"] == m["memory_bank"]["dim"] == 1176
    assert all(p["image_scale"] > 0 and p["pixel_scale"] > 0 for p in f["parts"])
    assert m["memory_bank"]["file"] in m["files"]  # its checksum, as every bank's
    assert m["threshold"]["method"] == "operating-point"  # the operating point, on the fused score
    # each part's bank is its own selection: the same rows count, different rows
    paper, local = split_columns(fitted.bank, [1024, 152])
    assert len(paper) == len(local) and not np.allclose(paper, 0) and not np.allclose(local, 0)


def test_fused_normalisers_are_out_of_fold_quantiles(fitted, data):
    """The fused score is the mean of each part's raw score over its normaliser (image: the 0.99 quantile
    of its out-of-fold good image scores): good training images then score near 1 or below."""
    paths = sorted(load_class(data).train)
    emb = fitted.embed_images([read_image(p) for p in paths[:4]])
    raw = fitted.scorer.part_scores(emb)
    fused = fitted.scorer.score(emb)
    want = np.mean([r.image_scores / p.image_scale for r, p in zip(raw, fitted.fused_parts)], axis=0)
    np.testing.assert_allclose(fused.image_scores, want, rtol=1e-12)
    assert fitted.fused_parts[0].image_center == 0 and fitted.fused_parts[1].pixel_center == 0
    assert 0.3 < float(np.median(fused.image_scores)) < 1.2  # in-bank images score below their out-of-fold scale


def test_fused_parity_runtime_equals_pytorch(bundle, fitted, data):
    rep = run_parity(bundle, data, engines=("ort-cpu",), reference=fitted)
    by = {r.graph: r for r in rep.results}
    r = by["features_fp32"]
    print(f"\nfused fp32: image {r.errors['image']:.2e} patch {r.errors['patch']:.2e} maps {r.errors['maps']:.2e}")
    assert r.errors["image"] <= FP32.image and r.errors["patch"] <= FP32.patch and r.errors["maps"] <= FP32.maps
    assert r.auroc["image_diff"] <= FP32.auroc and r.verdicts["disagree_outside"] == 0
    assert by["features_fp16"].errors["image"] <= FP16.image
    assert rep.ok, [x.failures for x in rep.results]


def test_fused_runtime_searches_exactly_and_thresholds_the_fused_score(bundle, fitted, data):
    paths = [s.path for s in load_class(data).test]
    images = [read_image(p) for p in paths]
    auto = Predictor(bundle, device="cpu", search="auto")
    assert isinstance(auto.scorer, FusedScorer) and not auto.scorer.approximate
    assert not any(s.approximate for s in auto.scorer.scorers)
    assert "fused" in auto.info()["search"] and "exact" in auto.info()["search"]
    got = auto.predict(images)
    ref = Predictor(bundle, device="cpu", search="numpy").predict(images)
    np.testing.assert_allclose(got.image_scores, ref.image_scores, rtol=1e-6)
    np.testing.assert_allclose(got.maps, ref.maps, rtol=1e-5, atol=1e-6)
    m = read_bundle(bundle).manifest
    np.testing.assert_array_equal(got.verdicts, got.image_scores >= m["threshold"]["value"])
    for reduced in ("int8", "bf16"):
        with pytest.raises(ValueError, match="searches exactly"):
            Predictor(bundle, device="cpu", search=reduced)
    loaded = PatchCore.load(bundle, device="cpu")
    np.testing.assert_allclose(loaded.predict(images).image_scores, fitted.predict(images).image_scores, rtol=1e-9)


def test_fused_refuses_the_in_graph_search(fitted, tmp_path):
    with pytest.raises(ValueError, match="--scoring-graph"):
        export_bundle(fitted, tmp_path / "b", fp16=False, scoring=True)


def test_edited_fused_bundle_is_a_bad_bundle(bundle, tmp_path):
    root = tmp_path / "edited"
    shutil.copytree(bundle, root)
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    m["features"]["parts"][1]["dim"] = 150
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="features.parts"):
        read_bundle(root, verify=False)


def test_fused_bundle_refuses_a_bank_update(bundle):
    from runtime.errors import USAGE, UsageError
    from runtime.update import requirements

    with pytest.raises(UsageError, match="fused bundle cannot be updated") as e:
        requirements(read_bundle(bundle))
    assert e.value.exit_code == USAGE


def test_fused_int8_graph_runs_with_the_exact_search(fitted, data, tmp_path, bundle):
    """The int8 feature graph of a fused model (one output, both parts' columns) quantizes and runs;
    its parts still search exactly, and its image scores stay near the float graph's."""
    from export.quantize import Int8Settings, calibration_inputs

    train = sorted(load_class(data).train)
    root = tmp_path / "int8"
    export_bundle(fitted, root, fp16=False, int8_calibration=calibration_inputs(fitted, train, 8),
                  int8_settings=Int8Settings(images=8))
    images = [read_image(s.path) for s in load_class(data).test]
    p = Predictor(root, device="cpu", graph="features_int8", search="auto")
    assert isinstance(p.scorer, FusedScorer) and p.precision.endswith("int8")
    got = p.predict(images).image_scores
    ref = Predictor(bundle, device="cpu", search="numpy").predict(images).image_scores
    rel = float(np.max(np.abs(got - ref) / np.abs(ref)))
    print(f"\nfused int8 graph: image scores within {rel:.2%} of fp32")
    assert rel < 0.2  # int8's own parity judge (export.reduced_check) decides its use; here: it runs and is sane


def test_reduced_search_on_a_fused_bundle_is_one_line_exit_2(bundle, data):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "runtime", "predict", str(bundle), str(data / "test" / "good"),
                        "--search", "int8"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "searches exactly" in errors[0], r.stderr
