"""``patchcore-rt`` predict / bench / info and the error paths: JSON lines on stdout, one readable
line on stderr and a distinct exit code for each kind of failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.cli.app import app
from runtime.errors import UsageError
from runtime.preprocess import PreprocessError
from runtime.line.records import Item, score_items
from runtime.cli.bundle_choice import BUNDLE_ENV, MODELS_ENV, resolve_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt_test_images(rt_bundle) -> Path:
    return rt_bundle.parent / "data" / "brick" / "test"


def _run(*args: str):
    r = CliRunner().invoke(app, list(args))
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r, records


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess (real exit codes, real streams)."""
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=180)


# ============================================================================ predict
def test_predict_folder_gives_one_record_per_image_equal_to_the_predictor(rt_bundle, rt_test_images):
    from runtime.images import read_image
    from runtime.predictor import Predictor

    r, records = _run("predict", str(rt_bundle), str(rt_test_images), "--recursive", "--batch-size", "4", "--device", "cpu")
    assert r.exit_code == 0, r.output
    files = sorted(rt_test_images.rglob("*.png"))
    assert sorted(rec["file"] for rec in records) == sorted(map(str, files))
    ref = Predictor(rt_bundle, device="cpu").predict([read_image(f) for f in files])
    by_file = {rec["file"]: rec for rec in records}
    for i, f in enumerate(files):
        rec = by_file[str(f)]
        assert rec["score"] == pytest.approx(float(ref.image_scores[i]), rel=1e-5)
        assert rec["normalised"] == pytest.approx(float(ref.normalised[i]), rel=1e-5, abs=1e-9)
        assert rec["verdict"] == ("ng" if ref.verdicts[i] else "ok")
        assert rec["latency_ms"] > 0 and rec["bundle"].startswith("bundle@") and rec["time"].endswith("Z")
    # the synthetic defects are obvious: the verdicts follow the labels
    labels = {str(f): f.parent.name != "good" for f in files}
    agree = sum((rec["verdict"] == "ng") == labels[rec["file"]] for rec in records)
    assert agree >= len(records) - 1
    assert "bundle bundle@" in r.stderr  # engine and search are reported on stderr
    # without --recursive the class folder itself holds no images
    r, _ = _run("predict", str(rt_bundle), str(rt_test_images), "--device", "cpu")
    assert r.exit_code == 2 and "--recursive" in r.stderr


def test_corrupt_files_give_error_records_and_the_rest_is_scored(tmp_path, rt_bundle, rt_test_images):
    good = sorted((rt_test_images / "good").glob("*.png"))[:3]
    for g in good:
        shutil.copy(g, tmp_path / g.name)
    (tmp_path / "broken.png").write_bytes(good[0].read_bytes()[:500])
    (tmp_path / "notes.txt").write_text("hello")
    args = ["predict", str(rt_bundle), str(tmp_path), str(tmp_path / "notes.txt"), "--batch-size", "8", "--device", "cpu"]
    r, records = _run(*args)
    assert r.exit_code == 0, r.output
    assert len(records) == 5
    errors = {Path(rec["file"]).name: rec for rec in records if rec["verdict"] == "error"}
    assert set(errors) == {"broken.png", "notes.txt"}
    assert "broken.png" in errors["broken.png"]["error"] and errors["broken.png"]["score"] is None
    assert all(rec["score"] > 0 for rec in records if rec["verdict"] != "error")
    r, records = _run(*args, "--strict")
    assert r.exit_code == 8 and len(records) == 5
    assert "2 of 5 inputs could not be scored" in r.stderr


def test_overlays_get_unique_names(tmp_path, rt_bundle, rt_test_images):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    src = sorted((rt_test_images / "scratch").glob("*.png"))[0]
    shutil.copy(src, a / "x.png")
    shutil.copy(src, b / "x.png")
    ov = tmp_path / "ov"
    r, records = _run("predict", str(rt_bundle), str(a), str(b), "--overlays", str(ov), "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [Path(rec["overlay"]).name for rec in records] == ["x.png", "x-1.png"]
    img = cv2.imread(records[0]["overlay"])
    assert img.shape == (128, 128, 3)
    assert img[..., 2].mean() > img[..., 0].mean() * 0.5  # a heat map, not a blank image


def test_overlays_of_a_folder_tree_keep_the_inputs_relative_paths(tmp_path, rt_bundle, rt_test_images):
    """good/000.png, hole/000.png, scratch/000.png -> the same tree under --overlays; a number only
    where two inputs really land on one name (000.png and 000.jpg in one folder)."""
    tree = tmp_path / "test"
    src = sorted((rt_test_images / "scratch").glob("*.png"))[0]
    for sub in ("good", "hole", "scratch"):
        (tree / sub).mkdir(parents=True)
        shutil.copy(src, tree / sub / "000.png")
    cv2.imwrite(str(tree / "hole" / "000.jpg"), cv2.imread(str(src)))
    single = tmp_path / "single.png"
    shutil.copy(src, single)
    ov = tmp_path / "ov"
    r, records = _run("predict", str(rt_bundle), str(tree), str(single), "--recursive", "--overlays", str(ov),
                      "--device", "cpu")
    assert r.exit_code == 0, r.output
    got = {Path(rec["file"]).relative_to(tmp_path).as_posix(): Path(rec["overlay"]).relative_to(ov).as_posix()
           for rec in records}
    assert got == {"test/good/000.png": "good/000.png", "test/hole/000.jpg": "hole/000.png",
                   "test/hole/000.png": "hole/000-1.png", "test/scratch/000.png": "scratch/000.png",
                   "single.png": "single.png"}
    assert sorted(p.relative_to(ov).as_posix() for p in ov.rglob("*.png")) == sorted(got.values())


def test_an_image_preprocessing_refuses_gets_its_record_and_the_others_one_model_call():
    class FakePredictor:
        calls = []

        def prepare(self, image):
            if image.shape[0] < 10:
                raise PreprocessError("cannot crop 10x10 from a 4x4 image")
            return image

        def predict_prepared(self, prepared):
            self.calls.append(len(prepared))
            from types import SimpleNamespace

            n = len(prepared)
            return SimpleNamespace(image_scores=np.arange(n) + 1.0, normalised=None, verdicts=None,
                                   maps=np.zeros((n, 2, 2)), plans=None)

    items = [Item("a", image=np.zeros((20, 20, 3), np.uint8)), Item("tiny", image=np.zeros((4, 4, 3), np.uint8)),
             Item("c", image=np.zeros((20, 20, 3), np.uint8)), Item("bad", data=b"junk")]
    p = FakePredictor()
    out = score_items(p, items)
    assert p.calls == [2]  # the two usable images in one model call; the others never reach it
    assert [o.verdict for o in out] == [None, "error", None, "error"]
    assert "tiny: cannot crop" in out[1].error and "bad: cannot decode" in out[3].error
    assert out[0].score == 1.0 and out[2].score == 2.0


# ============================================================================ error exit codes
def test_missing_paths_and_empty_folders_are_usage_errors(tmp_path, rt_bundle):
    r, _ = _run("predict", str(rt_bundle), str(tmp_path / "nope"))
    assert r.exit_code == 2 and "no such file or folder" in r.stderr and "nope" in r.stderr
    r, _ = _run("predict", str(rt_bundle), str(tmp_path))
    assert r.exit_code == 2 and "no image files found" in r.stderr
    r, _ = _run("watch", str(tmp_path / "nope"), "--bundle", str(rt_bundle))
    assert r.exit_code == 2 and "watch folder not found" in r.stderr
    r, _ = _run("predict", str(rt_bundle), str(tmp_path), "--device", "gpu")
    assert r.exit_code == 2  # not a choice


def test_newer_bundle_version_is_exit_3_with_a_message(tmp_path, rt_bundle, rt_test_images):
    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    r = _cli("predict", str(b), str(rt_test_images / "good"))
    assert r.returncode == 3, r.stderr
    assert "schema version 99 is newer" in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1  # one readable line, no traceback


def test_edited_bundle_file_is_exit_3(tmp_path, rt_bundle, rt_test_images):
    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    bank = np.load(b / "memory_bank.npy")
    bank[0, 0] += 1.0
    with open(b / "memory_bank.npy", "r+b") as f:  # same size, other content
        np.save(f, bank)
    r, _ = _run("info", str(b))
    assert r.exit_code == 3 and "memory_bank.npy" in r.stderr and "MISMATCH" in r.stdout
    r, _ = _run("predict", str(b), str(rt_test_images / "good"))
    assert r.exit_code == 3 and "sha256" in r.stderr
    r, _ = _run("predict", str(tmp_path / "no-bundle"), str(rt_test_images / "good"))
    assert r.exit_code == 3 and "bundle folder not found" in r.stderr


def test_cuda_on_a_machine_without_it_is_exit_4(rt_bundle, rt_test_images):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    r = _cli("predict", str(rt_bundle), str(rt_test_images / "good"), "--device", "cuda")
    assert r.returncode == 4, r.stderr
    assert "CUDAExecutionProvider" in r.stderr and "Traceback" not in r.stderr


def test_watch_without_bundle_lists_the_choices(tmp_path, rt_bundle):
    for name in ("line-a", "line-b"):
        shutil.copytree(rt_bundle, tmp_path / "models" / name, ignore=shutil.ignore_patterns("*.onnx"))
    (tmp_path / "incoming").mkdir()
    env = {k: v for k, v in _env().items() if k not in (BUNDLE_ENV, MODELS_ENV)}
    r = _cli("watch", "incoming", cwd=tmp_path, env=env)
    assert r.returncode == 2
    assert "2 bundles under models/" in r.stderr
    assert "--bundle models/line-a" in r.stderr and "--bundle models/line-b" in r.stderr


def test_bundle_resolution(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "only").mkdir(parents=True)
    (models / "only" / "manifest.json").write_text("{}")
    (models / "notes").mkdir()  # no manifest: not a bundle
    env = {MODELS_ENV: str(models)}
    assert resolve_bundle(None, env) == models / "only"
    assert resolve_bundle("only", env) == models / "only"  # a name under the models folder
    assert resolve_bundle(None, {**env, BUNDLE_ENV: "/x/y"}) == Path("/x/y")
    assert resolve_bundle("/a/b", {**env, BUNDLE_ENV: "/x/y"}) == Path("/a/b")  # --bundle wins
    (models / "second").mkdir()
    (models / "second" / "manifest.json").write_text("{}")
    with pytest.raises(UsageError, match="2 bundles"):
        resolve_bundle(None, env)
    with pytest.raises(UsageError, match="none found"):
        resolve_bundle(None, {MODELS_ENV: str(tmp_path / "empty")})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="2 bundles under models/"):  # ./models by default
        resolve_bundle(None, {})


# ============================================================================ info, bench, help
def test_info_says_what_the_bundle_is_and_where_it_can_run(rt_bundle):
    import onnxruntime as ort

    r, records = _run("info", str(rt_bundle), "--json")
    assert r.exit_code == 0, r.output
    (d,) = records
    m = json.loads((rt_bundle / "manifest.json").read_text())
    assert d["backbone"]["name"] == "effnet-lite0" and d["input_size"] == [128, 128]
    assert d["memory_bank"]["rows"] == m["memory_bank"]["rows"]
    assert d["versions"]["torch"] == m["versions"]["torch"]  # what it was built with
    assert d["checksums_ok"] and set(d["checksums"]) == set(m["files"])
    assert d["devices"]["providers"] == ort.get_available_providers()
    assert "cpu" in d["devices"]["usable_devices"]
    r, _ = _run("info", str(rt_bundle))
    assert r.exit_code == 0 and "checksums" in r.stdout and "all ok" in r.stdout


def test_bench_reports_every_stage_per_batch_size(tmp_path, rt_bundle, rt_test_images):
    jf = tmp_path / "bench.json"
    r, records = _run("bench", str(rt_bundle), "--images", str(rt_test_images), "--batch-sizes", "1,3", "--repeat", "2",
                      "--warmup", "1", "--report", str(jf), "--device", "cpu")
    assert r.exit_code == 0, r.output
    (rep,) = records
    assert rep == json.loads(jf.read_text())
    assert [x["batch"] for x in rep["results"]] == [1, 3]
    for x in rep["results"]:
        per = x["median_ms_per_batch"]
        assert set(per) == {"decode", "preprocess", "features", "search", "postprocess", "total"}
        assert all(per[k] > 0 for k in per)
        assert per["total"] >= per["features"] + per["search"]
        assert x["images_per_s"] == pytest.approx(x["batch"] / per["total"] * 1000, rel=1e-2)
    assert rep["environment"]["engine"] == "onnxruntime:CPUExecutionProvider"
    assert "img/s" in r.stderr  # the table
    r, _ = _run("bench", str(rt_bundle), "--batch-sizes", "1,x")
    assert r.exit_code == 2


def test_help_documents_the_exit_codes():
    r = _cli("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # help is wrapped to the terminal width
    for part in ("2 usage or bad input", "3 bad bundle", "4 device unavailable", "8 --strict", "predict", "watch",
                 "camera", "bench", "info"):
        assert part in text
    r, _ = _run("watch", "--help")
    assert r.exit_code == 0 and "3 bad bundle" in " ".join(r.stdout.split()) and "--settle" in r.stdout
