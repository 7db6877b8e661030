"""scripts/gpu_checks.py on a machine without a GPU, its runner, and the throughput measurement.

Without a GPU every check is skipped with its reason and the run exits 0 in seconds; the runner
skips what would overrun the time budget, records crashes as failures, rewrites the report after
every check and resumes an earlier one. The throughput code runs here on onnxruntime's CPU
provider with a small bundle, so its figures are real (if slow) and its report table renders.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
gpu_checks = importlib.import_module("gpu_checks")
gpu_suite = importlib.import_module("gpu_suite")
gpu_throughput = importlib.import_module("gpu_throughput")
gpu_report_md = importlib.import_module("gpu_report_md")


def _has_gpu() -> bool:
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers()


def test_without_a_gpu_every_check_is_skipped_with_its_reason(tmp_path, capsys):
    if _has_gpu():
        pytest.skip("this machine has a GPU: the checks would run")
    t0 = time.perf_counter()
    assert gpu_checks.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 0
    assert time.perf_counter() - t0 < 60
    report = json.loads((tmp_path / "out" / "gpu_report.json").read_text())
    assert set(report["checks"]) == {c.name for c in gpu_suite.CHECKS}
    for name, res in report["checks"].items():
        assert res["status"] == "skip" and res["reason"], name
    assert "torch sees no CUDA device" in report["checks"]["torch-features"]["reason"]
    assert "no CUDAExecutionProvider" in report["checks"]["parity-wrn50"]["reason"]
    assert "no faiss build for CUDA 13" in report["checks"]["faiss-gpu"]["reason"] or \
        "CPU build" in report["checks"]["faiss-gpu"]["reason"]
    assert not (tmp_path / "work" / "data").exists()  # nothing fitted for checks that did not run
    md = (tmp_path / "out" / "gpu_report.md").read_text()
    assert "| tensorrt | skip |" in md and len(md) < 20_000
    assert "| throughput-wrn50 | skip |" in capsys.readouterr().out
    assert gpu_checks.main(["--out", str(tmp_path / "o2"), "--strict", "--only", "tensorrt"]) == 1


def test_dry_run_lists_every_check_with_its_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert gpu_checks.main(["--dry-run", "--phase", "ort"]) == 0
    out = capsys.readouterr().out
    ort_checks = [c.name for c in gpu_suite.CHECKS if c.phase == "ort"]
    assert all(name in out for name in ort_checks) and "torch-features" not in out
    assert "throughput-wrn50" in out and ("run" in out or "skip:" in out)
    assert not list(tmp_path.iterdir())


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_checks.main(["--only", "thruput-wrn50"])
    assert e.value.code == 2 and "unknown check(s) thruput-wrn50" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_checks.main(["--resume"])
    assert "--resume needs --work" in capsys.readouterr().err


def _check(name, fn, estimate=1.0):
    return gpu_suite.Check(name, "torch", (), (), estimate, fn)


def test_runner_budget_crash_rewrite_and_resume(tmp_path, monkeypatch):
    calls = {"a": 0}
    out = tmp_path / "out"

    def a(ctx):
        """first"""
        calls["a"] += 1
        return {"status": "ok", "value": 1.5}

    def b(ctx):
        """reads the report written after a"""
        seen = json.loads((out / "gpu_report.json").read_text())["checks"]
        assert seen["a"]["status"] == "ok"
        raise ZeroDivisionError("boom")

    def c(ctx):
        raise gpu_suite.Skip("not here")

    checks = (_check("a", a), _check("b", b), _check("c", c), _check("too-long", a, estimate=10_000))
    monkeypatch.setattr(gpu_checks, "CHECKS", checks)
    args = ["--out", str(out), "--work", str(tmp_path / "w"), "--budget-s", "600"]
    assert gpu_checks.main(args) == 1
    rep = json.loads((out / "gpu_report.json").read_text())["checks"]
    assert rep["a"]["status"] == "ok" and rep["a"]["proves"] == "first"
    assert rep["b"]["status"] == "fail" and rep["b"]["error"] == "ZeroDivisionError: boom"
    assert "ZeroDivisionError" in rep["b"]["traceback"]
    assert rep["c"] == {"phase": "torch", "proves": "c", "status": "skip", "reason": "not here", "seconds": 0.0}
    assert rep["too-long"]["status"] == "skip" and rep["too-long"]["reason"].startswith("time budget: needs about 10000 s")
    assert calls["a"] == 1
    assert gpu_checks.main(args + ["--resume"]) == 1  # b failed before and is not run again
    again = json.loads((out / "gpu_report.json").read_text())
    assert calls["a"] == 1 and len(again["runs"]) == 2


@pytest.fixture(scope="module")
def scoring_bundle(tmp_path_factory) -> Path:
    """A small effnet-lite0 bundle with the in-graph search graphs."""
    from export.onnx_export import export_bundle
    from patchcore.data import load_class
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore
    from patchcore.synthetic import make_synthetic_class

    root = tmp_path_factory.mktemp("tp")
    data = make_synthetic_class(root / "data", n_train=8, n_test_good=2, n_test_defect=1, size=96)
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.05, resize=64, crop=64, target_dim=64,
                          device="cpu", holdout=0)
    return export_bundle(PatchCore(cfg).fit(load_class(data).train), root / "bundle", scoring=True).root


def test_throughput_on_the_cpu_provider(scoring_bundle):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 120, 3), dtype=np.uint8) for _ in range(3)]
    res = gpu_throughput.measure(scoring_bundle, frames, device="cpu", batches=(1, 4), log=lambda s: None)
    assert res["complete"] and res["engine"] == "onnxruntime:CPUExecutionProvider"
    assert [(r["precision"], r["batch"]) for r in res["runs"]] == [("fp32", 1), ("fp32", 4), ("fp16", 1), ("fp16", 4)]
    for r in res["runs"]:
        e, g = r["end_to_end"], r["graph_alone"]
        assert e["images_per_s"] > 0 and e["runs"] >= 5 and e["latency_ms_p90"] >= e["latency_ms_median"] > 0
        assert set(e["ms_per_image"]) == {"preprocess", "features", "search", "postprocess", "other"}
        assert g["scores_images_per_s"] > 0 and g["features_images_per_s"] > 0
        assert r["copies_ms_per_image"]["host_to_device_input"] >= 0
    assert res["best_end_to_end"]["bound"].count("ms per image") == 1
    assert set(res["preprocess_images_per_s"]) == {"1 thread", f"{res['cpu_count']} threads"}
    table = gpu_report_md.throughput_table("throughput-x", {"status": "ok", **res})
    assert sum(line.startswith("| fp") for line in table) == 4


def test_throughput_stops_at_the_deadline(scoring_bundle):
    frames = [np.zeros((80, 80, 3), np.uint8)]
    res = gpu_throughput.measure(scoring_bundle, frames, device="cpu", deadline=time.perf_counter() - 1,
                                 log=lambda s: None)
    assert res["stopped"] == "time budget" and not res["complete"] and res["runs"] == []


def test_covering_radius_is_the_farthest_point_from_the_selection():
    import torch

    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [6.0, 9.0]])
    assert gpu_suite.covering_radius(x, np.array([0]), chunk=3) == pytest.approx(np.hypot(6, 9))
    assert gpu_suite.covering_radius(x, np.array([0, 2])) == pytest.approx(5.0)


def test_report_summary_lines_for_skips_and_crashes():
    assert gpu_report_md.summary("tensorrt", {"status": "skip", "reason": "TensorRT is not installed"}) == \
        "TensorRT is not installed"
    assert gpu_report_md.summary("coreset", {"status": "fail", "error": "RuntimeError: CUDA error"}) == \
        "RuntimeError: CUDA error"
    md = gpu_report_md.render({"order": ["a"], "checks": {"a": {"status": "fail", "error": "X: y|z\nw"}}})
    assert "| a | fail | - | X: y/z w |" in md
