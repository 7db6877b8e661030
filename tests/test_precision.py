"""Reduced precision: the engines x precisions table, the calibrated int8 QDQ export, the OpenVINO
engine (fp32, bf16, int8), the bf16 candidate search with exact float32 rescoring, and parity that
judges int8/bf16 variants (exit 0 for the real ones, exit 6 for a deliberately broken one).

Small: the runtime tests' effnet-lite0 bundle (128 px, synthetic class) reloaded and exported
again with ``features_int8``; OpenVINO tests skip with the reason where the extra is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime.engines import DeviceUnavailableError, OnnxEngine
from runtime.engines.openvino_engine import openvino_status
from runtime.engines.table import ENGINES, VARIANTS, reduced_variants, resolve, variants

REPO = Path(__file__).resolve().parents[1]
OV_OK, OV_REASON = openvino_status()
needs_openvino = pytest.mark.skipif(not OV_OK, reason=OV_REASON)


def _has_bf16() -> bool:
    from runtime.engines.openvino_engine import cpu_capabilities

    return "BF16" in cpu_capabilities()


@pytest.fixture(scope="module")
def int8_bundle(rt_bundle, tmp_path_factory) -> Path:
    """The runtime tests' bundle exported again with a calibrated int8 graph (8 images)."""
    from export.onnx_export import export_bundle
    from export.quantize import Int8Settings, calibration_inputs
    from patchcore.data import load_class
    from patchcore.model import PatchCore

    model = PatchCore.load(rt_bundle, device="cpu")
    data = next((rt_bundle.parent / "data").iterdir())
    cal = calibration_inputs(model, load_class(data, image_level_only=True).train, 8)
    root = tmp_path_factory.mktemp("int8") / "bundle"
    export_bundle(model, root, fp16=False, int8_calibration=cal, int8_settings=Int8Settings(images=8))
    return root


def g_convs(bundle: Path) -> list:
    """The float32 graph's convolutions, in graph order (the names the quantizer keeps)."""
    return [n for n in onnx.load(str(bundle / "features_fp32.onnx")).graph.node if n.op_type == "Conv"]


# ------------------------------------------------------------------------------------------ table
def test_table_has_one_row_per_engine_and_precision_and_resolves_with_reasons():
    rows = [(v.engine, v.key) for v in VARIANTS]
    assert len(rows) == len(set(rows))
    assert resolve("openvino", "features_bf16").graph == "features_fp32"  # bf16 is an engine setting
    assert resolve("onnxruntime", "features_int8").precision == "int8"
    with pytest.raises(ValueError, match="cannot run graph 'features_bf16'.*features_fp32"):
        resolve("onnxruntime", "features_bf16")
    with pytest.raises(ValueError, match="re-export with --int8"):
        resolve("openvino", "features_int8", {"features_fp32"})
    got = {(v.engine, v.precision) for v in reduced_variants({"features_fp32", "features_int8"})}
    assert got == {("onnxruntime", "int8"), ("openvino", "bf16"), ("openvino", "int8"), ("tensorrt", "int8")}
    assert [v.key for v in variants("tensorrt", {"features_fp32"})] == ["features_fp32"]



def test_engines_table_names_a_loader_per_engine_and_the_variants_follow_its_precisions():
    """Each engine row's module and factory open a bundle graph (what the predictor calls instead of an
    if-chain on the engine), imported without the engine's own package; VARIANTS is the rows' precisions."""
    assert ENGINES.keys() == ("onnxruntime", "openvino", "tensorrt")
    for row in ENGINES:
        assert callable(row.load()) and row.factory == "open_variant"
        assert [v.precision for v in VARIANTS if v.engine == row.key and v.kind == "features"] == list(row.features)
        assert [v.precision for v in VARIANTS if v.engine == row.key and v.kind == "scores"] == list(row.scores)
    assert [v.key for v in VARIANTS if v.engine == "onnxruntime"] == [
        "features_fp32", "features_fp16", "features_int8", "scores_fp32", "scores_fp16"]
    with pytest.raises(ValueError, match="did you mean openvino"):
        ENGINES.get("openvin")


# ------------------------------------------------------------------------------------------ int8 export
def test_int8_graph_is_calibrated_per_channel_qdq_with_first_and_depthwise_convs_in_float(int8_bundle):
    m = json.loads((int8_bundle / "manifest.json").read_text())
    entry = m["graphs"]["features_int8"]
    q = entry["quantization"]
    assert entry["dtype"] == "int8" and q["format"] == "QDQ"
    assert q["calibration"] == {"method": "minmax", "images": 8, "source": "good training images, bundle preprocessing"}
    assert q["keep_float"] == "first+depthwise" and q["float_nodes"][0] == [n.name for n in g_convs(int8_bundle)][0]
    depthwise = [n.name for n in g_convs(int8_bundle) if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    # (in any order: the aggregation's unfolds are depthwise too, on parallel branches)
    assert depthwise and sorted(q["float_nodes"][1:]) == sorted(depthwise)
    g = onnx.load(str(int8_bundle / "features_int8.onnx")).graph
    inits = {t.name: t for t in g.initializer}
    produced_by = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    # the convs kept in float read float tensors, every other one a dequantized int8 tensor
    kept = set(q["float_nodes"])
    for c in convs:
        src = produced_by.get(c.input[1])  # the weight: an initializer, or a DequantizeLinear of int8
        assert (src is not None and src.op_type == "DequantizeLinear") == (c.name not in kept), c.name
    # per-channel weights: a weight's DequantizeLinear has one scale per output channel
    w_dq = produced_by[next(c for c in convs if c.name not in kept).input[1]]
    assert w_dq.op_type == "DequantizeLinear" and len(onnx.numpy_helper.to_array(inits[w_dq.input[1]])) > 1
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(int8_bundle / "features_int8.onnx")).metadata_props
            if p.key.startswith("patchcore_rt.")}
    assert meta["patchcore_rt.graph"] == "features_int8"


def test_int8_graph_runs_on_onnxruntime_close_to_float32(int8_bundle):
    from export.quantize import relative_error

    x = np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype(np.float32)
    ref = OnnxEngine(int8_bundle / "features_fp32.onnx", "cpu").run(x)
    eng = OnnxEngine(int8_bundle / "features_int8.onnx", "cpu")
    err = relative_error(ref, eng.run(x))
    print(f"onnxruntime int8 feature error {err:.3f}")
    assert eng.precision == "int8" and 0 < err < 0.35


def test_export_records_the_measured_parity_of_each_reduced_variant(int8_bundle, rt_bundle):
    from export.reduced_check import check_images, measure_reduced, record_reduced
    from patchcore.data import load_class
    from runtime.bundle import read_bundle

    data = next((rt_bundle.parent / "data").iterdir())
    paths, source = check_images(data, load_class(data, image_level_only=True).train, 8, n=6)
    assert len(paths) == 6 and source.startswith("6 of 25 test images")
    record_reduced(int8_bundle, measure_reduced(int8_bundle, paths, source))
    facts = read_bundle(int8_bundle).manifest["reduced_precision"]  # re-sealed: checksums verify
    ort8 = facts["onnxruntime:features_int8"]
    assert ort8["measured"] and ort8["precision_run"] == "int8" and ort8["images"] == 6
    assert 0 < ort8["feature_rel_error"] < 0.35 and 0 <= ort8["image_unweighted_max_rel_error"] < 0.5
    variants = {k for k in facts if not k.endswith("_search")}
    assert variants == ({"onnxruntime:features_int8", "openvino:features_bf16", "openvino:features_int8"}
                        if OV_OK else {"onnxruntime:features_int8"})
    if OV_OK and _has_bf16():
        from runtime.predictor import Predictor

        study = facts["bf16_search"]
        assert study["recall"][str(study["candidates"])] >= study["recall_target"] == 0.85
        assert Predictor(int8_bundle, device="cpu", search="bf16").scorer.margin == study["candidates"]
    study = facts["int8_search"]  # the int8 candidate step runs in the base install: always measured
    gh, gw = read_bundle(int8_bundle).manifest["features"]["grid"]
    assert study["recall"][str(study["candidates"])] >= 0.85 and study["patches"] == 6 * gh * gw
    assert study["image_scores_exact"] is True
    from rich.console import Console

    from runtime.line.info import bundle_info, render

    console = Console(record=True, width=400)
    console.print(render(bundle_info(int8_bundle)))
    shown = console.export_text()
    on = f" on {study['components']} of {study['dims']} principal components" if study["components"] else ""
    assert f"--search int8: {study['candidates']} candidates{on} (recall " in shown
    assert "not measured (None)" not in shown
    # the study tried the fewest components first and kept the first that reach the recall within 8
    tried = list(study["recall_by_components"])
    assert tried[0] == str(study["dims"] // 8) and tried[-1] == str(study["components"] or study["dims"])
    assert all(min(float(v) for v in r.values()) >= 0 for r in study["recall_by_components"].values())
    if study["components"]:
        assert study["candidates"] <= 8
    from runtime.predictor import Predictor

    scorer = Predictor(int8_bundle, device="cpu", search="int8").scorer
    assert scorer.margin == study["candidates"] and scorer.index.components == study["components"]


# ------------------------------------------------------------------------------------------ OpenVINO
@needs_openvino
def test_openvino_engine_runs_each_precision_and_says_which(int8_bundle):
    from export.quantize import relative_error
    from runtime.predictor import Predictor

    x = np.random.default_rng(1).normal(size=(2, 3, 128, 128)).astype(np.float32)
    ref = OnnxEngine(int8_bundle / "features_fp32.onnx", "cpu").run(x)
    logs: list[str] = []
    f32 = Predictor(int8_bundle, device="openvino", graph="features_fp32", log=logs.append)
    assert f32.engine.precision == "fp32" and relative_error(ref, f32.engine.run(x)) < 1e-4
    i8 = Predictor(int8_bundle, device="openvino", graph="features_int8", log=logs.append)
    n_float = len(json.loads((int8_bundle / "manifest.json").read_text())["graphs"]["features_int8"]["quantization"]["float_nodes"])
    assert i8.engine.precision == "int8" and i8.engine.info["layer_precisions"].get("f32", 0) >= n_float
    assert relative_error(ref, i8.engine.run(x)) < 0.35
    if _has_bf16():
        bf = Predictor(int8_bundle, device="openvino", graph="features_bf16", log=logs.append)
        err = relative_error(ref, bf.engine.run(x))
        print(f"openvino bf16 feature error {err:.4f}")
        assert bf.precision == "openvino bf16" and 0 < err < 0.05
    else:
        with pytest.raises(DeviceUnavailableError, match="no bf16"):
            Predictor(int8_bundle, device="openvino", graph="features_bf16")
    assert any("ran int8 as int8" in s for s in logs)
    cache = int8_bundle / "engines" / "cache" / "openvino"
    assert cache.is_dir() and any(cache.iterdir())  # compiled models kept beside the engine caches
    m = json.loads((int8_bundle / "manifest.json").read_text())
    assert not any(f.startswith("engines/cache") for f in m["files"])  # not part of the sealed bundle


@needs_openvino
def test_records_name_the_engine_and_precision_that_ran(int8_bundle, tmp_path):
    from typer.testing import CliRunner

    from runtime.cli.app import app

    src = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(src), np.full((128, 128, 3), 120, np.uint8))
    r = CliRunner().invoke(app, ["predict", str(int8_bundle), str(src), "--device", "openvino",
                                 "--graph", "features_int8"])
    assert r.exit_code == 0, r.output
    rec = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][0])
    assert rec["precision"] == "openvino int8" and rec["score"] > 0
    bad = CliRunner().invoke(app, ["predict", str(int8_bundle), str(src), "--graph", "features_bf16"])
    assert bad.exit_code == 3 and "cannot run graph 'features_bf16'" in bad.output


def test_runtime_runs_without_openvino_unless_asked(int8_bundle, tmp_path):
    """OpenVINO blocked: the CPU path never imports it; --device openvino is exit 4 in one line."""
    import cv2

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((128, 128, 3), 90, np.uint8))
    code = f"""
        import importlib.abc, sys, runpy, json
        class _Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("openvino", "torch"):
                    raise ImportError(name + " is blocked")
        sys.meta_path.insert(0, _Refuse())
        def cli(*args):
            sys.argv = ["patchcore-rt", *args]
            try:
                runpy.run_module("runtime", run_name="__main__", alter_sys=False)
            except SystemExit as e:
                return e.code or 0
            return 0
        a = cli("predict", {str(int8_bundle)!r}, {str(img)!r}, "--device", "cpu", "--graph", "features_int8")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("openvino", "torch"))
        b = cli("predict", {str(int8_bundle)!r}, {str(img)!r}, "--device", "openvino")
        print(json.dumps({{"a": a, "b": b, "leaked": leaked}}))
    """
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"a": 0, "b": 4, "leaked": []}, r.stderr
    assert "OpenVINO is not installed" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ search
@needs_openvino
def test_bf16_candidate_search_with_exact_rescoring_gives_the_exact_scores():
    from runtime.search.build import build_index
    from runtime.search.distances import bound_slack
    from runtime.search.scorer import PatchScorer

    if not _has_bf16():
        pytest.skip("this CPU has no bf16")
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(3000, 256)).astype(np.float32) + 4.0  # an offset: centring matters
    emb = (bank[rng.integers(0, 3000, size=(3, 200))] + rng.normal(scale=0.3, size=(3, 200, 256))).astype(np.float32)
    exact = PatchScorer(bank, build_index(bank, "numpy")[0], 3).score(emb)
    fast = PatchScorer(bank, build_index(bank, "bf16", candidates=8)[0], 3)
    assert fast.backend.startswith("bf16") and fast.margin == 8
    raw = fast.index.search(emb.reshape(-1, 256), 8)
    recall = np.mean((raw == exact.nearest.reshape(-1, 1)).any(axis=1))
    got = fast.score(emb)
    assert recall == 1.0
    # the true neighbour is among the candidates: distances recomputed from q - m, not bf16 ones (a
    # float32 bound of the exact distance, within bound_slack; the settled patches the exact values)
    np.testing.assert_array_equal(got.nearest, exact.nearest)
    np.testing.assert_array_equal(got.patch_scores[got.exact], exact.patch_scores[got.exact])
    assert (got.patch_scores >= exact.patch_scores).all()
    assert (got.patch_scores <= exact.patch_scores * (1 + bound_slack(256))).all()
    np.testing.assert_allclose(got.image_scores, exact.image_scores, rtol=1e-12)
    # one candidate: bf16 alone misorders near ties (the reason for rescoring several)
    one = build_index(bank, "bf16", candidates=1)[0].search(emb.reshape(-1, 256), 1)[:, 0]
    assert 0.5 < np.mean(one == exact.nearest.reshape(-1)) <= 1.0


# ------------------------------------------------------------------------------------------ parity
@needs_openvino
def test_parity_passes_reduced_variants_and_exits_6_for_a_broken_one(int8_bundle, rt_bundle, tmp_path):
    from typer.testing import CliRunner

    from export.cli import app
    from export.quantize import Int8Settings, quantize_graph
    from runtime import bundle as bundle_io
    from runtime.errors import PARITY

    data = next((rt_bundle.parent / "data").iterdir())
    runner = CliRunner()
    graphs = "features_int8,features_bf16" if _has_bf16() else "features_int8"
    ok = runner.invoke(app, ["parity", str(int8_bundle), str(data), "--engines", "ort-cpu,openvino",
                             "--graphs", graphs, "--report", str(tmp_path / "ok.json")])
    rep = json.loads((tmp_path / "ok.json").read_text())
    for r in rep["results"]:
        print(r["name"], r["errors"], r["auroc"])
    assert ok.exit_code == 0, ok.output
    assert {r["precision"] for r in rep["results"]} >= {"int8"}
    # broken: calibrated on inputs 100x too small, every activation saturates its int8 range
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(int8_bundle, broken, ignore=shutil.ignore_patterns("engines"))
    x = np.random.default_rng(0).normal(scale=0.01, size=(4, 3, 128, 128)).astype(np.float32)
    quantize_graph(broken / "features_fp32.onnx", broken / "features_int8.onnx", x, Int8Settings(images=4))
    from export.onnx_export import set_metadata

    proto = onnx.load(str(broken / "features_int8.onnx"))
    set_metadata(proto, {p.key: json.loads(p.value) for p in onnx.load(str(broken / "features_fp32.onnx")).metadata_props
                         if p.key.startswith("patchcore_rt.")}
                 | {"patchcore_rt.graph": "features_int8"})
    onnx.save_model(proto, str(broken / "features_int8.onnx"))
    b = bundle_io.read_bundle(broken, verify=False)
    bundle_io.finalize_manifest(broken, dict(b.manifest), b.files)
    bad = runner.invoke(app, ["parity", str(broken), str(data), "--engines", "ort-cpu", "--graphs", "features_int8"])
    assert bad.exit_code == PARITY, bad.output


@pytest.mark.parametrize("value", ["abc", -4, 2.5])
def test_a_corrupt_search_fact_is_a_bundle_error_not_a_traceback(int8_bundle, tmp_path, value):
    """reduced_precision.int8_search.components from the manifest goes to the int8 index (``--search
    int8``, and ``auto``, which may choose it): a value that is not a positive integer is the bundle's
    error (exit 3, one line naming the field)."""
    import shutil

    import cv2
    from typer.testing import CliRunner

    from runtime import bundle as bundle_io
    from runtime.cli.app import app

    broken = tmp_path / "broken"
    shutil.copytree(int8_bundle, broken, ignore=shutil.ignore_patterns("engines"))
    b = bundle_io.read_bundle(broken)
    manifest = json.loads(json.dumps(b.manifest))
    manifest.setdefault("reduced_precision", {}).setdefault("int8_search", {})["components"] = value
    bundle_io.finalize_manifest(broken, manifest, b.files)
    src = tmp_path / "a.png"
    cv2.imwrite(str(src), np.full((128, 128, 3), 120, np.uint8))
    r = CliRunner().invoke(app, ["predict", str(broken), str(src), "--search", "int8"])
    assert r.exit_code == 3, r.output
    assert "reduced_precision.int8_search.components must be a positive integer" in r.output
    assert "Traceback" not in r.output
    auto = CliRunner().invoke(app, ["predict", str(broken), str(src)])  # --search auto may take the int8 step
    assert auto.exit_code == 3 and "int8_search.components" in auto.output, auto.output
    ok = CliRunner().invoke(app, ["predict", str(broken), str(src), "--search", "numpy"])  # the exact search does not read it
    assert ok.exit_code == 0, ok.output
