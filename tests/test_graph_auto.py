"""Parity-approved reduced features chosen automatically: the export's verdict per reduced variant
(with the criterion that judged it, on labelled test images and on good images only) and
``--graph auto``, which runs the fastest here of float32 and the approved variants, never a refused
one, and is ``features_fp32`` bit for bit where nothing was approved.

Small: the runtime tests' effnet-lite0 bundle (128 px, synthetic class) exported again with
``features_int8``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime import bundle as bundle_io
from runtime import graph_choice
from runtime.engines.openvino_engine import openvino_status
from runtime.images import read_image
from runtime.cli.app import app
from runtime.manifest import DIGEST_FIELD, manifest_digest
from runtime.predictor import Predictor

OV_OK, _ = openvino_status()
runner = CliRunner()


@pytest.fixture(scope="module")
def judged(rt_bundle, tmp_path_factory) -> dict:
    """The int8 bundle judged on the labelled test images, and facts judged on good images only."""
    from export.onnx_export import export_bundle
    from export.quantize import Int8Settings, calibration_inputs
    from export.reduced_check import check_images, measure_reduced, record_reduced
    from patchcore.data import load_class
    from patchcore.model import PatchCore

    model = PatchCore.load(rt_bundle, device="cpu")
    data = next((rt_bundle.parent / "data").iterdir())
    train = load_class(data, image_level_only=True).train
    root = tmp_path_factory.mktemp("auto") / "bundle"
    export_bundle(model, root, fp16=False, int8_calibration=calibration_inputs(model, train, 8),
                  int8_settings=Int8Settings(images=8))
    paths, source = check_images(data, train, 8, n=12)  # 12 of the 25 test images, spread evenly
    record_reduced(root, measure_reduced(root, paths, source))
    no_test = tmp_path_factory.mktemp("good-only")  # a class folder without test images
    good_paths, good_source = check_images(no_test, train, 8, n=6)
    good = measure_reduced(root, good_paths, good_source)
    return {"root": root, "data": data, "paths": paths, "good": good, "good_paths": good_paths}


def _variants(facts: dict) -> dict:
    return {k: f for k, f in facts.items() if ":" in k}


def _reseal(src: Path, dst: Path, edit) -> Path:
    """A copy of the bundle at ``src`` whose manifest ``edit`` changed, sealed again."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("engines"))
    b = bundle_io.read_bundle(dst)
    manifest = json.loads(json.dumps(b.manifest))
    edit(manifest)
    bundle_io.finalize_manifest(dst, manifest, b.files)
    return dst


def _set_all(approved: bool):
    def edit(m):
        for f in _variants(m["reduced_precision"]).values():
            f["approved"] = approved
    return edit


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("img") / "a.png"
    cv2.imwrite(str(src), np.random.default_rng(3).integers(0, 255, (128, 128, 3), np.uint8))
    return src


def _records(bundle: Path, image: Path, *args: str) -> list[dict]:
    r = runner.invoke(app, ["predict", str(bundle), str(image), "--device", "cpu", "--search", "numpy", *args])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------------------------------ export verdicts
def test_labelled_check_images_judge_by_auroc_and_verdicts(judged):
    from patchcore.metrics import image_auroc

    facts = bundle_io.read_bundle(judged["root"]).manifest["reduced_precision"]
    expected = {"onnxruntime:features_int8"} | ({"openvino:features_bf16", "openvino:features_int8"} if OV_OK else set())
    assert expected <= set(_variants(facts))
    n = len(judged["paths"])
    defective = sum(p.parent.name != "good" for p in judged["paths"])
    assert n == 12 and 0 < defective < n
    from export.reduced_check import check_images
    from tests.conftest import shared_class

    every, source = check_images(judged["data"], [], 8)  # by default every test image up to 64
    assert len(every) == 25 and source == f"25 of 25 test images of {judged['data'].name}, spread evenly"
    bottle, _ = check_images(shared_class("bottle"), [], 8)  # 83 test images: 64 of them, both kinds
    assert len(bottle) == 64 and {p.parent.name for p in bottle} == {"good", "broken_large", "broken_small",
                                                                     "contamination"}
    ref_p = Predictor(judged["root"], device="cpu", graph="features_fp32", search="numpy")
    ref_scores = ref_p.predict([read_image(p) for p in judged["paths"]]).image_scores
    labels = np.array([p.parent.name != "good" for p in judged["paths"]], int)
    for name, f in _variants(facts).items():
        if not f.get("measured"):
            continue
        assert f["criterion"] == "auroc+verdicts" and f["labels"] == {"good": n - defective, "defective": defective}
        assert f["image_auroc"]["fp32"] == pytest.approx(image_auroc(labels, ref_scores), abs=1e-6)
        v = f["verdicts"]
        assert v["checked"] + v["inside_band"] == n and v["band_rel"] == pytest.approx(0.1)
        ok = f["image_auroc"]["diff"] <= 0.005 and v["disagree_outside"] == 0
        assert f["approved"] is ok and (f["reasons"] == []) is ok, (name, f)


def test_good_images_only_judge_by_image_error_and_verdicts(judged):
    for name, f in _variants(judged["good"]).items():
        if not f.get("measured"):
            continue
        assert f["criterion"] == "image-error+verdicts" and f["labels"] == {"good": 6, "defective": 0}
        assert "image_auroc" not in f and f["tolerance"]["image_unweighted"] == 0.05
        assert f["source"] == "6 good training images not used to calibrate int8"
        ok = f["image_unweighted_max_rel_error"] <= 0.05 and f["verdicts"]["disagree_outside"] == 0
        assert f["approved"] is ok, (name, f)


def test_a_verdict_flip_outside_the_band_refuses_the_variant():
    from export.reduced_verdict import judge_reduced

    labels = np.array([0, 0, 0, 1, 1, 1])
    ref = np.array([1.0, 1.1, 1.2, 3.0, 3.2, 3.4])
    flip = ref.copy()
    flip[2] = 2.5  # 1.2 -> 2.5 crosses the threshold 2.0 from outside the +-10% band: a flip
    same_rank = judge_reduced(labels, ref, flip, 0.0, threshold=2.0)
    assert same_rank["image_auroc"]["diff"] == 0 and same_rank["verdicts"]["disagree_outside"] == 1
    assert same_rank["approved"] is False and "1 verdict(s) flip outside the band" in same_rank["reasons"][0]
    near = ref.copy()
    near[2] = 1.95  # inside the band (1.8 .. 2.2 around 2.0): a flip there would be allowed
    assert judge_reduced(labels, ref, near, 0.0, threshold=2.0)["approved"] is True
    worse = np.array([1.0, 1.1, 3.5, 3.0, 3.2, 3.4])  # one good image outranks the defects: AUROC drops
    refused = judge_reduced(labels, ref, worse, 0.0, threshold=None)
    assert refused["approved"] is False and refused["verdicts"]["checked"] is None
    assert refused["reasons"] == ["image AUROC 0.6667 differs from float32's 1.0000 by 33.33 points > 0.5"]
    good = judge_reduced(np.zeros(3), ref[:3], ref[:3] * 1.06, 0.06, threshold=2.0)
    assert good["criterion"] == "image-error+verdicts" and good["approved"] is False


# ------------------------------------------------------------------------------------------ --graph auto
def test_auto_never_times_or_chooses_a_refused_variant(judged, tmp_path, monkeypatch):
    def edit(m):  # onnxruntime int8 refused, everything else approved
        for name, f in _variants(m["reduced_precision"]).items():
            f["approved"] = name != "onnxruntime:features_int8"
    b = _reseal(judged["root"], tmp_path / "b", edit)
    monkeypatch.setattr(graph_choice, "MIN_SPEEDUP", 0.0)  # the fastest wins whatever the margin
    cpu = Predictor(b, device="cpu", graph="auto", search="numpy")  # cpu: onnxruntime's variants only
    assert cpu.graph == "features_fp32" and cpu.precision == "onnxruntime fp32" and "graph_choice" not in cpu.info()
    if OV_OK:  # auto: OpenVINO's approved variants too; never the refused one
        c = Predictor(b, device="auto", graph="auto", search="numpy").info()["graph_choice"]
        assert c["refused"] == ["onnxruntime:features_int8"] and "onnxruntime:features_int8" not in c["ms"]
        assert set(c["ms"]) | set(c.get("skipped", {})) == {"onnxruntime:features_fp32", "openvino:features_bf16",
                                                           "openvino:features_int8"}
        assert c["chose"] == min(c["ms"], key=c["ms"].get)


def test_auto_picks_the_fastest_approved_and_says_so_in_info_log_and_records(judged, image, tmp_path, monkeypatch):
    b = _reseal(judged["root"], tmp_path / "b", _set_all(True))
    monkeypatch.setattr(graph_choice, "MIN_SPEEDUP", 0.0)
    logs: list[str] = []
    p = Predictor(b, device="cpu", graph="auto", search="numpy", log=logs.append)
    c = p.info()["graph_choice"]
    assert set(c["ms"]) == {"onnxruntime:features_fp32", "onnxruntime:features_int8"} and c["runs"] == 5
    assert all(v > 0 for v in c["ms"].values()) and c["chose"] == min(c["ms"], key=c["ms"].get)
    assert f"onnxruntime:{p.graph}" == c["chose"]
    assert p.precision == ("onnxruntime int8" if p.graph == "features_int8" else "onnxruntime fp32")
    assert any(s.startswith("graph auto: onnxruntime:features_fp32 ") and s.endswith(c["chose"]) for s in logs)
    recs = _records(b, image)
    assert recs[0]["precision"] in ("onnxruntime int8", "onnxruntime fp32")
    r = runner.invoke(app, ["bench", str(b), "--device", "cpu", "--search", "numpy", "--batch-sizes", "1",
                            "--repeat", "1", "--warmup", "0"])
    assert r.exit_code == 0, r.output
    env = json.loads(r.stdout.splitlines()[-1])["environment"]
    chose = env["graph_choice"]  # timed again at this load: it may choose otherwise than the one above
    assert set(chose["ms"]) == set(c["ms"]) and chose["chose"] == f"onnxruntime:{env['graph']}"
    assert env["precision"] == ("onnxruntime int8" if env["graph"] == "features_int8" else "onnxruntime fp32")
    assert "by auto: onnxruntime:features_fp32 " in " ".join(r.stderr.split())
    monkeypatch.setattr(graph_choice, "MIN_SPEEDUP", 1e9)  # no reduced variant is ever that much faster
    slow = Predictor(b, device="cpu", graph="auto", search="numpy")
    assert slow.graph == "features_fp32" and slow.info()["graph_choice"]["chose"] == "onnxruntime:features_fp32"


def test_auto_with_nothing_approved_is_features_fp32_bit_for_bit(judged, rt_bundle, image, tmp_path):
    refused = _reseal(judged["root"], tmp_path / "refused", _set_all(False))
    for b in (rt_bundle, refused):  # no reduced variant exported; every one refused
        p = Predictor(b, device="cpu", graph="auto", search="numpy")
        assert p.graph == "features_fp32" and "graph_choice" not in p.info()  # nothing timed
        auto, exact = _records(b, image), _records(b, image, "--graph", "features_fp32")
        strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "timings", "latency_ms")}  # noqa: E731
        assert [strip(r) for r in auto] == [strip(r) for r in exact]
        assert auto[0]["precision"] == "onnxruntime fp32"


def test_graph_features_fp32_keeps_the_exact_path_on_an_approved_bundle(judged, rt_bundle, image, tmp_path):
    b = _reseal(judged["root"], tmp_path / "b", _set_all(True))
    p = Predictor(b, device="cpu", graph="features_fp32", search="numpy")
    ref = Predictor(rt_bundle, device="cpu", graph="features_fp32", search="numpy")  # the same fp32 graph and bank
    assert "graph_choice" not in p.info() and p.precision == "onnxruntime fp32"
    x = cv2.imread(str(image))[:, :, ::-1]
    a, r = p.predict([x]), ref.predict([x])
    assert np.array_equal(a.image_scores, r.image_scores) and np.array_equal(a.maps, r.maps)


def test_info_shows_each_variant_approved_or_refused_and_why(judged, tmp_path):
    from runtime.line.info import bundle_info

    def edit(m):
        f = m["reduced_precision"]["onnxruntime:features_int8"]
        f["approved"], f["reasons"] = False, ["2 verdict(s) flip outside the band +-10% x threshold"]
    b = _reseal(judged["root"], tmp_path / "b", edit)
    r = runner.invoke(app, ["info", str(b)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "onnxruntime:features_int8: features" in text
    assert "refused: 2 verdict(s) flip outside the band +-10% x threshold (auroc+verdicts: image AUROC" in text
    facts = bundle_info(b)["reduced_precision"]["onnxruntime:features_int8"]
    assert facts["approved"] is False and facts["criterion"] == "auroc+verdicts"


@pytest.mark.parametrize("field, value, says", [("approved", "yes", "approved' is true or false"),
                                                ("criterion", "speed", "criterion' is one of")])
def test_a_bad_verdict_in_the_manifest_is_a_bundle_error(judged, image, tmp_path, field, value, says):
    b = tmp_path / "b"
    shutil.copytree(judged["root"], b, ignore=shutil.ignore_patterns("engines"))
    m = json.loads((b / "manifest.json").read_text())
    m["reduced_precision"]["onnxruntime:features_int8"][field] = value
    m[DIGEST_FIELD] = manifest_digest(m)  # sealed as an export would: only the value is wrong
    (b / "manifest.json").write_text(json.dumps(m))
    r = runner.invoke(app, ["predict", str(b), str(image)])
    assert r.exit_code == 3, r.output
    lines = [s for s in r.output.splitlines() if s.strip()]
    assert len(lines) == 1 and "field 'reduced_precision' must be" in lines[0] and says in lines[0]
    assert "Traceback" not in r.output


def test_the_measurement_is_kept_for_the_next_load_on_the_same_machine(judged, tmp_path, monkeypatch):
    b = _reseal(judged["root"], tmp_path / "b", _set_all(True))
    monkeypatch.setattr(graph_choice, "MIN_SPEEDUP", 0.0)
    first = Predictor(b, device="cpu", graph="auto", search="numpy").info()["graph_choice"]
    cache = b / "engines" / "cache" / "graph_choice.json"
    assert first["cached"] is False and cache.is_file()
    assert not any(k.startswith("engines") for k in json.loads((b / "manifest.json").read_text())["files"])
    logs: list[str] = []
    again = Predictor(b, device="cpu", graph="auto", search="numpy", log=logs.append)
    c = again.info()["graph_choice"]
    assert c["cached"] is True and c["chose"] == first["chose"] and c["ms"] == first["ms"]
    assert c["measured_at"] == first["measured_at"] and again.graph == first["chose"].split(":")[1]
    assert any(f"(measured {first['measured_at']}, cached)" in s for s in logs)
    other = Predictor(b, device="cpu", graph="auto", search="numpy", threads=1).info()["graph_choice"]
    assert other["cached"] is False  # another setting: measured again
    cache.write_text("not json")  # a damaged cache is measured again, never an error
    assert Predictor(b, device="cpu", graph="auto", search="numpy").info()["graph_choice"]["cached"] is False
