"""The bundle format: complete manifest, checksums, schema version, no pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.onnx_export import export_bundle
from patchcore.data import load_class
from patchcore.config import PatchCoreConfig
from patchcore.model import PatchCore
from patchcore.synthetic import make_synthetic_class
from runtime import bundle as bio
from runtime.bundle import BundleError, BundleVersionError, read_bundle
from runtime.predictor import Predictor


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    data = make_synthetic_class(tmp_path_factory.mktemp("data"), "grass", n_train=12, n_test_good=1,
                                n_test_defect=1, size=128, defects=("scratch",))
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.05, resize=112, crop=112, device="cpu")
    model = PatchCore(cfg).fit(load_class(data).train)
    root = tmp_path_factory.mktemp("b") / "lite0"
    export_bundle(model, root, fp16=False)
    return root


@pytest.fixture
def bundle(original, tmp_path) -> Path:
    """A fresh copy per test, free to damage."""
    return Path(shutil.copytree(original, tmp_path / "copy"))


def _manifest(root: Path) -> dict:
    return json.loads((root / bio.MANIFEST).read_text())


def _write_manifest(root: Path, m: dict) -> None:
    (root / bio.MANIFEST).write_text(json.dumps(m, indent=2))


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def test_manifest_describes_everything(bundle):
    b = read_bundle(bundle)
    m = b.manifest
    assert m["schema_version"] == bio.SCHEMA_VERSION and m["format"] == bio.FORMAT
    assert m["backbone"]["name"] == "effnet-lite0" and m["backbone"]["weights_tag"]
    assert [l["name"] for l in m["backbone"]["layers"]] == ["block4", "block10"]
    assert m["preprocess"]["crop"] == 112 and len(m["preprocess"]["mean"]) == 3
    assert m["features"]["target_dim"] == m["memory_bank"]["dim"] == 1024
    assert m["memory_bank"]["rows"] == len(b.memory_bank()) and m["memory_bank"]["dtype"] == "float32"
    assert m["scoring"]["k"] == 1 and m["scoring"]["n_reweight"] == 3 and m["scoring"]["blur_sigma"] == 4.0
    assert m["threshold"]["value"] is not None and m["threshold"]["scale"] > 0
    assert {"torch", "numpy", "onnx", "onnxruntime", "opencv", "patchcore_rt"} <= set(m["versions"])
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {bio.MANIFEST}
    assert set(m["files"]) == on_disk  # every file has its checksum
    assert all(len(v["sha256"]) == 64 for v in m["files"].values())
    assert m[bio.DIGEST_FIELD] == bio.manifest_digest(m)


@pytest.mark.parametrize("victim", ["memory_bank.npy", "features_fp32.onnx"])
def test_truncated_file_is_refused_by_name(bundle, victim):
    p = bundle / victim
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(BundleError, match=rf"{victim}.*truncated"):
        read_bundle(bundle)


@pytest.mark.parametrize("victim", ["memory_bank.npy", "features_fp32.onnx"])
def test_edited_file_is_refused_by_name(bundle, victim):
    p = bundle / victim
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01  # same size, one bit changed
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{victim}.*sha256"):
        read_bundle(bundle)
    read_bundle(bundle, verify=False)  # the size check alone cannot see it


def test_edited_manifest_is_refused(bundle):
    m = _manifest(bundle)
    m["threshold"]["value"] *= 2  # someone "tunes" the threshold by hand
    _write_manifest(bundle, m)
    with pytest.raises(BundleError, match="manifest.json: edited"):
        read_bundle(bundle)


def test_newer_schema_is_refused_clearly(bundle):
    m = _manifest(bundle)
    m["schema_version"] = bio.SCHEMA_VERSION + 1
    m["something_new"] = {"x": 1}
    del m["scoring"]  # a future layout: the version message must come first
    _write_manifest(bundle, m)
    with pytest.raises(BundleVersionError, match=rf"schema version {bio.SCHEMA_VERSION + 1} is newer.*upgrade"):
        read_bundle(bundle)


@pytest.mark.parametrize("field", ["scoring.n_reweight", "backbone.weights_tag", "memory_bank.dtype",
                                   "threshold.value", "versions", "preprocess"])
def test_missing_field_is_named(bundle, field):
    m = _manifest(bundle)
    *path, last = field.split(".")
    del (_get(m, ".".join(path)) if path else m)[last]
    _write_manifest(bundle, m)
    with pytest.raises(BundleError, match=f"'{field}' is missing"):
        read_bundle(bundle)


def test_wrong_values_are_named(bundle):
    m = _manifest(bundle)
    m["memory_bank"]["dtype"] = "float64"
    _write_manifest(bundle, m)
    with pytest.raises(BundleError, match="memory_bank.dtype"):
        read_bundle(bundle)
    m = _manifest(bundle)
    m["memory_bank"]["dtype"] = "float32"
    m["graphs"]["features_fp32"]["file"] = "other.onnx"
    _write_manifest(bundle, m)
    with pytest.raises(BundleError, match="graphs.features_fp32.*other.onnx.*not listed"):
        read_bundle(bundle)


def test_manifest_without_digest_is_refused(bundle):
    """Deleting the digest must not switch the check off: any edit would then pass."""
    m = _manifest(bundle)
    del m[bio.DIGEST_FIELD]
    m["threshold"]["value"] = 1e9
    _write_manifest(bundle, m)
    with pytest.raises(BundleError, match=f"'{bio.DIGEST_FIELD}' is missing"):
        read_bundle(bundle)


def test_no_pickle_anywhere(bundle):
    for p in bundle.iterdir():
        assert not p.read_bytes()[:2] == b"\x80\x04", p  # pickle protocol header
    header = (bundle / "memory_bank.npy").read_bytes()[:128]
    assert b"'descr': '<f4'" in header


def test_pickled_object_array_is_refused(bundle):
    """A bank holding Python objects (which only pickle can load) is refused even when the
    manifest's checksums were recomputed to match it."""
    m = read_bundle(bundle).manifest
    evil = np.empty((m["memory_bank"]["rows"], m["memory_bank"]["dim"]), dtype=object)
    np.save(bundle / "memory_bank.npy", evil, allow_pickle=True)
    b = bio.finalize_manifest(bundle, m, list(m["files"]))
    with pytest.raises(BundleError, match="memory_bank.npy: not a plain numpy array"):
        b.memory_bank()
    with pytest.raises(BundleError, match="memory_bank.npy"):
        Predictor(bundle, device="cpu")
    with pytest.raises(BundleError, match="object arrays"):
        bio.write_array(bundle, "x.npy", evil)


def test_missing_graph_names_the_graphs_present(bundle):
    """Asking for a graph the bundle lacks names what this engine can run from it, and what to do."""
    with pytest.raises(BundleError, match=r"graph 'features_fp16' needs the bundle's features_fp16, which it lacks "
                                          r"\(with onnxruntime: features_fp32\); re-export it"):
        Predictor(bundle, device="cpu", graph="features_fp16")
