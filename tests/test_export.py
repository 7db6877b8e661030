"""ONNX export: graphs, float16, external data, the in-graph search, the ``python -m export`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export.cli import app
from runtime.errors import WEIGHTS
from export.onnx_export import OPSET, export_bundle, read_metadata
from export.search_graph import append_search
from patchcore.data import load_class
from patchcore.presets import DEFAULT_POLICY
from patchcore.config import PatchCoreConfig
from patchcore.model import PatchCore
from patchcore.synthetic import make_synthetic_class
from runtime.bundle import BundleError, read_bundle
from runtime.images import read_image
from runtime.operating_point import parse_policy
from runtime.predictor import Predictor
from runtime.preprocess import preprocess_batch

SMALL = ["--resize", "112", "--crop", "112"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_class(tmp_path_factory.mktemp("data"), "gravel", n_train=12, n_test_good=3,
                                n_test_defect=1, size=128, defects=("hole", "stain"))


@pytest.fixture(scope="module")
def model(data) -> PatchCore:
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=112, crop=112, device="cpu")
    return PatchCore(cfg).fit(load_class(data).train)


@pytest.fixture(scope="module")
def images(data) -> list[np.ndarray]:
    return [read_image(s.path) for s in load_class(data).test]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model) -> Path:
    root = tmp_path_factory.mktemp("b") / "lite0"
    export_bundle(model, root, fp16=True)
    return root


def test_feature_graphs_check_and_run_with_any_batch(bundle, model, images):
    import onnx
    import onnxruntime as ort

    b = read_bundle(bundle)
    x = preprocess_batch(images, model.preprocess)
    ref = model.embed_tensor(x)
    for key in ("features_fp32", "features_fp16"):
        path = b.graph(key)
        onnx.checker.check_model(str(path))
        proto = onnx.load(str(path))
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].type == "tensor(float)"  # float16 graphs cast inside
        for n in (1, 3):  # dynamic batch axis
            out = sess.run(None, {"images": x[:n]})[0]
            assert out.shape == ref[:n].shape and out.dtype == np.float32
            err = np.abs(out - ref[:n]).max() / np.abs(ref).max()
            assert err < (1e-5 if key.endswith("fp32") else 2e-2), (key, err)


def test_fp16_graph_stores_half_precision_weights(bundle):
    import onnx
    from onnx import TensorProto

    b = read_bundle(bundle)
    proto = onnx.load(str(b.graph("features_fp16")))
    # the float weights (the aggregation's tap indices are int64 and stay so)
    big = [t for t in proto.graph.initializer if np.prod(t.dims) >= 64 and t.data_type != TensorProto.INT64]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    sizes = {k: b.manifest["files"][v["file"]]["bytes"] for k, v in b.manifest["graphs"].items()}
    assert sizes["features_fp16"] < 0.6 * sizes["features_fp32"]
    assert b.manifest["graphs"]["features_fp16"]["dtype"] == "float16"


def test_graphs_carry_the_bundle_metadata(bundle):
    b = read_bundle(bundle)
    meta = read_metadata(b.graph("features_fp32"))
    assert meta["patchcore_rt.preprocess"] == b.manifest["preprocess"]
    assert meta["patchcore_rt.graph"] == "features_fp32"
    assert meta["patchcore_rt.backbone"] == "effnet-lite0"


def test_external_data_beside_large_graphs(model, images, tmp_path):
    root = tmp_path / "ext"
    b = export_bundle(model, root, fp16=False, external_threshold=1024)  # force it: real graphs are < 2 GB
    entry = b.manifest["graphs"]["features_fp32"]
    assert entry["external_data"] == ["features_fp32.onnx.data"]
    assert "features_fp32.onnx.data" in b.manifest["files"]
    assert (root / "features_fp32.onnx").stat().st_size < 100_000  # the weights live in the .data file
    ref = model.predict(images).image_scores
    got = Predictor(root, device="cpu").predict(images).image_scores
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    data = root / "features_fp32.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(BundleError, match="features_fp32.onnx.data"):
        read_bundle(root)


def test_scoring_graph_is_chunked_and_finds_the_nearest_patch(model, images):
    import onnx
    import onnxruntime as ort

    from runtime.search.distances import exact_distances
    from runtime.search.exact import NumpyIndex

    from export.onnx_export import trace_feature_graph

    chunk = 64
    n_patches = model.grid[0] * model.grid[1]
    proto = append_search(trace_feature_graph(model), model.bank, n_patches, chunk=chunk)
    onnx.checker.check_model(proto)
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == -(-len(model.bank) // chunk) > 1
    # no node holds more than a (queries, chunk) block: the bank chunks are the Gemm's B inputs
    inits = {t.name: t for t in proto.graph.initializer}
    assert all(inits[n.input[1].replace("_c", "")].dims[0] <= chunk for n in gemms)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = preprocess_batch(images, model.preprocess)
    emb, dist, idx = sess.run(None, {"images": x})
    assert dist.shape == idx.shape == (len(images), n_patches) and idx.dtype == np.int64
    flat = emb.reshape(-1, emb.shape[-1])
    exact_idx = NumpyIndex(model.bank).search(flat, 1)[:, 0]
    exact = exact_distances(flat, model.bank, exact_idx[:, None])[:, 0]
    got = exact_distances(flat, model.bank, idx.reshape(-1, 1))[:, 0]
    # the in-graph neighbour is the nearest one, up to float32 near-ties
    assert np.mean(idx.ravel() == exact_idx) > 0.99
    assert np.max(np.abs(got - exact) / exact.max()) < 1e-5
    assert np.max(np.abs(dist.ravel() - exact) / exact.max()) < 1e-4


def test_float16_bank(model, images, tmp_path):
    import copy

    m = copy.deepcopy(model)
    b = export_bundle(m, tmp_path / "h", fp16=False, scoring=True, bank_dtype="float16")
    bank = b.memory_bank()
    assert bank.dtype == np.float16 and b.manifest["memory_bank"]["dtype"] == "float16"
    assert b.manifest["files"]["memory_bank.npy"]["bytes"] < 0.55 * bank.size * 4
    ref = PatchCore.load(tmp_path / "h", device="cpu").predict(images).image_scores
    for graph in ("features_fp32", "scores_fp32"):
        got = Predictor(tmp_path / "h", device="cpu", graph=graph).predict(images).image_scores
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_reexport_replaces_old_graphs(model, tmp_path):
    root = tmp_path / "r"
    export_bundle(model, root, fp16=True)
    b = export_bundle(model, root, fp16=False)
    assert sorted(b.manifest["graphs"]) == ["features_fp32"]
    assert not (root / "features_fp16.onnx").exists()
    read_bundle(root)


# ------------------------------------------------------------------------------------ CLI
def _bundle(runner, *args):
    res = runner.invoke(app, ["export", *args])
    return res, (json.loads(res.stdout.strip().splitlines()[-1]) if res.exit_code == 0 else None)


def test_cli_bundle_then_reuse(data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    common = ["--backbone", "effnet-lite0", "--data", str(data), "--out", str(out), "--coreset", "0.05", *SMALL]
    res, first = _bundle(runner, *common, "--no-fp16")
    assert res.exit_code == 0, res.output
    assert first["reused"] is False and first["graphs"] == ["features_fp32"]
    # the operating point in words (stderr) and in the summary
    default = str(parse_policy(DEFAULT_POLICY))
    assert f"operating point: {default}" in res.stderr and "expected false calls" in res.stderr
    assert first["operating_point"]["policy"] == default and 0 <= first["operating_point"]["false_calls"] <= 1
    bank = (out / "memory_bank.npy").read_bytes()
    res, second = _bundle(runner, *common, "--reuse", "--fp16")
    assert res.exit_code == 0, res.output
    assert second["reused"] is True and second["graphs"] == ["features_fp16", "features_fp32"]
    assert (out / "memory_bank.npy").read_bytes() == bank
    assert second["threshold"] == first["threshold"]
    m = read_bundle(out).manifest
    # carried over from the first fit (the default policy's operating point, since issue 39)
    assert m["threshold"]["method"] == "operating-point"
    assert m["threshold"]["operating_point"]["value"] == m["threshold"]["value"] == first["threshold"]
    res, third = _bundle(runner, *[a if a != "0.05" else "0.1" for a in common], "--reuse", "--no-fp16")
    assert res.exit_code == 0 and third["reused"] is False
    assert "coreset_ratio" in res.stderr


def test_cli_calibrate_on_labelled_folder(data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "c"
    res, summary = _bundle(runner, "--data", str(data), "--out", str(out), "--coreset", "0.05", "--no-fp16",
                           "--calibrate", str(data), *SMALL)
    assert res.exit_code == 0, res.output
    t = read_bundle(out).manifest["threshold"]
    assert t["method"] == "f1-max" and t["folder"] == str(data.resolve()) and t["f1"] > 0
    assert "optimistic" in res.stderr  # calibrating on the evaluation images is flagged


def test_cli_missing_weights_exit_code_and_remedy(data, tmp_path):
    res = CliRunner().invoke(app, ["export", "--backbone", "resnet18", "--data", str(data), "--weights",
                                   str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x")])
    assert res.exit_code == WEIGHTS
    assert "missing.pth" in res.stderr and "Traceback" not in res.output


def test_cli_default_data_is_the_synthetic_class(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res, summary = _bundle(CliRunner(), "--out", "models/s", "--coreset", "0.01", "--no-fp16", "--resize", "128",
                           "--crop", "112")
    assert res.exit_code == 0, res.output
    assert Path(summary["data"]) == Path("datasets/synthetic/brick")
    assert (tmp_path / "datasets/synthetic/brick/train/good").is_dir()
    assert read_bundle(tmp_path / "models/s").manifest["backbone"]["name"] == "effnet-lite0"


def test_cli_engine_without_tensorrt_is_a_clear_error(bundle):
    from runtime.engines import tensorrt_status

    ok, reason = tensorrt_status()
    if ok:
        pytest.skip("TensorRT is available here")
    res = CliRunner().invoke(app, ["engine", str(bundle)])
    assert res.exit_code == 4 and reason in res.stderr and "Traceback" not in res.output


@pytest.mark.tensorrt
def test_tensorrt_engine_built_into_the_bundle(bundle, model, images, tmp_path):
    import shutil

    from export.tensorrt_build import build_bundle_engine
    from runtime.engines import TensorRTEngine, tensorrt_status

    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(reason)
    root = Path(shutil.copytree(bundle, tmp_path / "trt"))
    b = build_bundle_engine(root, graph="features_fp32", fp16=False, batch=(1, 4, 8))
    (entry,) = b.manifest["engines"].values()
    assert entry["graph"] == "features_fp32" and entry["precision"] == "fp32"
    assert entry["gpu"] and entry["tensorrt"] and "tensorrt_cuda" in entry and entry["profile"]["max"] == 8
    assert entry["file"] in read_bundle(root).manifest["files"]
    messages: list[str] = []
    from runtime.engines import TrtBuildOptions

    engine = TensorRTEngine.from_bundle(root, "features_fp32", TrtBuildOptions(False, 1, 4, 8), log=messages.append)
    assert any("shipped in the bundle" in m for m in messages)
    x = preprocess_batch(images, model.preprocess)
    ref = model.embed_tensor(x)
    got = engine.run(np.concatenate([x] * 3))  # more than the profile's max batch: split
    assert got.shape == (3 * len(x), *ref.shape[1:])
    assert np.abs(got[: len(x)] - ref).max() / np.abs(ref).max() < 1e-4


def test_cli_target_dim_sets_the_embedding_width(data, tmp_path):
    out = tmp_path / "d64"
    res, summary = _bundle(CliRunner(), "--data", str(data), "--out", str(out), "--coreset", "0.05", "--no-fp16",
                           "--target-dim", "64", *SMALL)
    assert res.exit_code == 0, res.output
    b = read_bundle(out)
    assert b.manifest["features"]["target_dim"] == 64
    assert np.load(out / "memory_bank.npy").shape[1] == 64
    ds = load_class(data)
    r = Predictor(out, device="cpu").predict([read_image(ds.test[0].path)])
    assert r.maps.shape == (1, 112, 112) and np.isfinite(r.image_scores).all()
    # a different width is a different fit: --reuse must not take this bundle
    res, again = _bundle(CliRunner(), "--data", str(data), "--out", str(out), "--coreset", "0.05", "--no-fp16",
                         "--target-dim", "32", "--reuse", *SMALL)
    assert res.exit_code == 0 and again["reused"] is False and "target_dim" in res.stderr
    assert np.load(out / "memory_bank.npy").shape[1] == 32


def test_cli_target_dim_must_be_positive(data, tmp_path):
    res = CliRunner().invoke(app, ["export", "--data", str(data), "--out", str(tmp_path / "x"), "--target-dim", "0"])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()


def test_onnx_engine_does_not_spin_unless_asked(bundle, model, images):
    """The runtime's sessions leave the cores to the search between runs (allow_spinning=0);
    spinning is an explicit choice, and both give the same embeddings."""
    from runtime.engines import OnnxEngine

    path = read_bundle(bundle).graph("features_fp32")
    x = preprocess_batch(images[:1], model.preprocess)
    quiet, spinning = OnnxEngine(path, device="cpu"), OnnxEngine(path, device="cpu", spin=True)
    entry = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(entry) == "0"
    assert spinning.session.get_session_options().get_session_config_entry(entry) == "1"
    np.testing.assert_array_equal(quiet.run(x), spinning.run(x))
