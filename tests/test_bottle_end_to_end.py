"""The accuracy claim and the runtime's parity with ``patchcore eval``, end to end on real data.

effnet-lite0 (real ImageNet weights) on MVTec AD bottle with the default preset (auto: the whole
image at 320 x 320, the paper's patch features at 1024 dims, a 1% bank, eq. 7 with 9 neighbours)
must reach the paper's recipe level (image AUROC >= 0.995, pixel AUROC >= 0.980, PRO >= 0.93;
measured in the test's output); the exported bundle run by
``patchcore-rt predict`` must give the scores that ``patchcore eval --bundle`` gives, to 1e-4
relative, with identical verdicts. About 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, shared_class

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from export.onnx_export import export_bundle
    from patchcore.data import load_class
    from patchcore.evaluation import score_dataset
    from patchcore.metrics import evaluate
    from patchcore.config import preset_config
    from patchcore.model import PatchCore

    data = shared_class("bottle")
    ds = load_class(data)
    model = PatchCore(preset_config("default", backbone="effnet-lite0", device="cpu")).fit(ds.train)
    pred, labels, masks = score_dataset(model, ds)
    metrics = evaluate(labels, pred.image_scores, masks, pred.maps)
    bundle = export_bundle(model, tmp_path_factory.mktemp("bundle") / "bottle-effnet-lite0").root
    return data, ds, pred, metrics, bundle


def test_effnet_lite0_bottle_reaches_the_reference_accuracy(fitted):
    _, _, _, m, _ = fitted
    from runtime.bundle import read_bundle

    geometry = read_bundle(fitted[4]).manifest["preprocess"]
    print(f"bottle effnet-lite0 default preset, geometry {geometry.get('mode', 'crop')} {geometry.get('size')}: "
          f"image {m.image_auroc:.4f} pixel {m.pixel_auroc:.4f} PRO {m.pro:.4f}")
    assert m.image_auroc >= 0.995
    assert m.pixel_auroc >= 0.980
    assert m.pro >= 0.93


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_runtime_predict_equals_patchcore_eval_on_the_bundle(fitted, tmp_path):
    data, ds, fit_pred, _, bundle = fitted
    r = _cli("-m", "runtime", "predict", str(bundle), str(data / "test"), "--recursive", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    runtime = {Path(rec["file"]).resolve(): rec for rec in map(json.loads, r.stdout.splitlines())}
    r = _cli("-m", "patchcore", "eval", "--data", str(data), "--bundle", str(bundle), "--out", str(tmp_path),
             "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "bottle" / "effnet-lite0" / "scores.jsonl").read_text().splitlines()
    torch_side = {Path(rec["file"]).resolve(): rec for rec in map(json.loads, lines)}
    assert set(runtime) == set(torch_side) and len(runtime) == len(ds.test) == 83
    a = np.array([runtime[f]["score"] for f in sorted(runtime)])
    b = np.array([torch_side[f]["score"] for f in sorted(runtime)])
    rel = np.abs(a - b).max() / np.abs(b).max()
    print(f"runtime vs patchcore eval: max relative image-score error {rel:.2e}")
    assert rel <= 1e-4
    assert [runtime[f]["verdict"] for f in sorted(runtime)] == [torch_side[f]["verdict"] for f in sorted(runtime)]
    # and the saved bundle reloads to the scores of the model that was fitted
    by_path = {s.path.resolve(): i for i, s in enumerate(ds.test)}
    fitted_scores = np.array([fit_pred.image_scores[by_path[f]] for f in sorted(runtime)])
    assert np.abs(b - fitted_scores).max() / np.abs(fitted_scores).max() <= 1e-6


def test_fast_default_search_equals_the_exact_search_where_it_shows(fitted):
    """The int8 search (what ``--search auto`` picks on a CPU that runs it fast) against today's exact
    numpy search on bottle's test images: image scores to 1e-9 relative, identical verdicts and
    normalised scores, and every map pixel at or above the map level equal, bit for bit, with the
    peak of every map that reaches it; below it a pixel may keep an over-estimate, but stays below
    the level. The level: where overlays are drawn, the overlay floor (the lower of threshold -
    scale and the pixel threshold's floor); for records alone, the pixel threshold (regions are cut
    there, so they are the exact search's too). On all dimensions (the bundle as exported here) and
    on 128 of 1024 principal components with 2 candidates (an ``export --int8`` bundle of bottle)."""
    from runtime.images import read_image
    from runtime.predictor import Predictor
    from runtime.regions import Judge
    from runtime.search.build import build_index
    from runtime.search.scorer import PatchScorer

    data, _, _, _, bundle = fitted
    paths = sorted((data / "test").rglob("*.png"))[::5]
    images = [read_image(p) for p in paths]
    ref = Predictor(bundle, device="cpu", search="numpy")
    auto = Predictor(bundle, device="cpu")  # records only: the pixel threshold
    choice = auto.info()["search_choice"]
    assert choice["chose"] in ("int8", "exact") and choice["int8_ms"] > 0 and choice["exact_ms"] > 0
    on_all = Predictor(bundle, device="cpu", search="int8", overlays=True)
    projected = Predictor(bundle, device="cpu", search="int8", overlays=True)
    index, _ = build_index(ref.scorer.bank, "int8", candidates=2, components=128)
    projected.scorer = PatchScorer(ref.scorer.bank, index, ref.scorer.n_reweight)
    records = Predictor(bundle, device="cpu", search="int8")
    records.scorer = projected.scorer
    assert projected.scorer.index.bounds and not on_all.scorer.index.bounds
    pixel = ref.bundle.manifest["threshold"]["pixel_value"]  # overlays are centred on the pixel threshold
    floors = [ref.threshold - ref.scale, pixel - max(ref.scale, 0.05 * abs(pixel))]
    assert on_all.map_level == min(floors) and records.map_level == auto.map_level == pixel
    judge = Judge.for_manifest(ref.bundle.manifest)
    for fast in (on_all, projected, records, auto):
        level = fast.map_level
        reached = below = 0
        for s in range(0, len(images), 4):
            batch = images[s : s + 4]
            a, b = ref.predict(batch), fast.predict(batch)
            np.testing.assert_allclose(b.image_scores, a.image_scores, rtol=1e-9, atol=0)
            np.testing.assert_array_equal(b.verdicts, a.verdicts)
            np.testing.assert_array_equal(b.normalised, a.normalised)
            for i in range(len(batch)):
                shown = a.maps[i] >= level
                np.testing.assert_array_equal(b.maps[i] >= level, shown)
                np.testing.assert_array_equal(b.maps[i][shown], a.maps[i][shown])
                assert np.all(b.maps[i] >= a.maps[i] - 1e-3)  # an upper bound below the level
                if shown.any():
                    reached += 1
                    assert np.argmax(b.maps[i]) == np.argmax(a.maps[i])
                    # the regions a record shows, on the original image
                    assert judge.regions(b.maps[i], a.plans[i])[:2] == judge.regions(a.maps[i], a.plans[i])[:2]
                below += int((~shown).sum())
        assert reached >= 5 and below > 0  # the defects reach the level; the rest of the maps does not
