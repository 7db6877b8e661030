"""A line with only good images (``DIR/train/good``, no labelled test set): ``export`` and ``fit``
make a working bundle whose threshold rests on out-of-fold scores of the good images, ``eval`` says
there is nothing to measure (exit 2, one line), ``parity`` compares on the training images and
records its result beside the manifest, and ``info`` shows what was measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from export.cli import app as patchcore_app
from patchcore.synthetic import make_synthetic_class
from runtime.bundle import read_bundle
from runtime.cli.app import app as runtime_app

SMALL = ["--coreset", "0.05", "--no-fp16", "--resize", "112", "--crop", "112", "--device", "cpu"]


@pytest.fixture(scope="module")
def good_only(tmp_path_factory) -> Path:
    root = make_synthetic_class(tmp_path_factory.mktemp("line"), "gravel", n_train=12, n_test_good=1,
                                n_test_defect=1, size=128, defects=("hole",))
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "ground_truth")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, good_only) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("models") / "line-v1"
    res = CliRunner().invoke(patchcore_app, ["export", "--data", str(good_only), "--out", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_export_from_train_good_alone_writes_a_working_bundle(bundle, good_only):
    out, summary, stderr = bundle
    thr = read_bundle(out).manifest["threshold"]
    assert thr["method"] == "operating-point" and thr["n_images"] == 12 and summary["threshold"] == thr["value"] > 0
    assert thr["operating_point"]["evidence"]["defects"]["source"].startswith("synthetic")  # no test/ to read
    # the threshold's trust, in words, where the user reads the export's result
    assert summary["threshold_trust"] == thr["trust"] and thr["trust"]["level"] == "low"
    assert f"trust low: {thr['trust']['why']}" in stderr
    image = sorted((good_only / "train" / "good").glob("*.png"))[0]
    res = CliRunner().invoke(runtime_app, ["predict", str(out), str(image), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert record["verdict"] in ("ok", "ng") and record["score"] >= 0


def test_fit_from_train_good_alone(good_only, tmp_path):
    res = CliRunner().invoke(patchcore_app, ["fit", "--data", str(good_only), "--out", str(tmp_path / "f"),
                                             "--coreset", "0.05", "--resize", "112", "--crop", "112", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert read_bundle(tmp_path / "f").manifest["threshold"]["n_images"] == 12


def test_eval_without_test_images_is_nothing_to_measure_exit_2(good_only, tmp_path):
    res = CliRunner().invoke(patchcore_app, ["eval", "--data", str(good_only), "--out", str(tmp_path / "r"), *SMALL[:2]])
    assert res.exit_code == 2, res.output
    (line,) = _lines(res.stderr)
    assert "no test images" in line and "nothing to measure" in line and "patchcore export" in line
    assert "Traceback" not in res.output and not list((tmp_path / "r").rglob("metrics.json"))


def test_a_plain_folder_of_images_says_where_they_belong(good_only, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(good_only / "train" / "good", plain)
    res = CliRunner().invoke(patchcore_app, ["export", "--data", str(plain), "--out", str(tmp_path / "b"), *SMALL])
    assert res.exit_code == 2, res.output
    (line,) = _lines(res.stderr)
    assert f"belong in {plain / 'train' / 'good'}" in line


def test_parity_on_training_images_is_recorded_and_info_shows_it(bundle, good_only):
    out = bundle[0]
    res = CliRunner().invoke(patchcore_app, ["parity", str(out), str(good_only), "--engines", "ort-cpu"])
    assert res.exit_code == 0, res.output
    assert "no test images: comparing on its training images" in res.stderr
    assert "on 12 training images" in res.stderr and "verdicts N/M: of the M images" in res.stderr  # the legend
    r = CliRunner().invoke(runtime_app, ["info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    p = d["parity"]
    assert p["current"] and p["ok"] and p["images"] == "training" and p["n_images"] == 12
    assert p["targets"]["ort-cpu:features_fp32"]["image"] <= 1e-4
    # only what the bundle can run: no float16 graph was exported; bf16 is the float32 graph at bf16
    assert all(v["file_graph"] in d["graphs"] for v in d["variants"])
    assert {v["graph"] for v in d["variants"]} <= {"features_fp32", "features_bf16"}
    text = CliRunner().invoke(runtime_app, ["info", str(out)]).stdout
    assert "passed" in text and "ort-cpu:features_fp32 ok" in text and "(features_bf16)" not in text
    assert "none measured" not in text


def test_a_parity_record_of_another_bundle_content_is_stale(bundle, tmp_path):
    from runtime.parity_record import parity_line, read_parity_record, write_parity_record

    out = bundle[0]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    write_parity_record(copy, {"bundle_id": "line-v1@000000000000", "created": "2026-01-01T00:00:00Z", "ok": True})
    record = read_parity_record(copy, read_bundle(copy).bundle_id)
    assert record["current"] is False and "run patchcore parity again" in parity_line(record)
    assert read_parity_record(tmp_path, "x") is None and "not measured" in parity_line(None)


def test_calibrate_on_a_folder_without_test_images_says_what_to_do(good_only, tmp_path):
    res = CliRunner().invoke(patchcore_app, ["export", "--data", str(good_only), "--out", str(tmp_path / "b"),
                                             "--calibrate", str(good_only), *SMALL])
    assert res.exit_code == 2, res.output
    line = _lines(res.stderr)[-1]
    assert "Traceback" not in res.output
    assert line.startswith("error: --calibrate") and "no test images" in line and "out-of-fold" in line
