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
    from patchcore.fit_options import preset_config
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
