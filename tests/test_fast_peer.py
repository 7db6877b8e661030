"""benchmarks/fast_peer.py: the peer table's ratios and AUROC cells follow the measured numbers (no anomalib needed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fast_peer import render  # noqa: E402

STAGES = {"preprocess": 2.0, "features": 8.0, "search": 5.0, "postprocess": 1.0}


def _result(after_total: float, onnx10_total: float, fixed_batch=None) -> tuple[dict, dict]:
    times = {"before": {**STAGES, "total": 60.0}, "after": {**STAGES, "total": after_total}}
    models, acc = {}, {}
    for pct, rows in ((10, 16385), (1, 1638)):
        for kind, total in (("onnx", onnx10_total if pct == 10 else 20.0), ("openvino", 30.0)):
            name = f"{kind}-{pct}"
            times[name] = {"total": total, **({"at_fixed": total / 1.5} if fixed_batch else {})}
            models[name] = {"anomalib": "2.7.0", "bank": [rows, 152], "fixed_batch": fixed_batch}
            acc[name] = {"image_auroc": 0.99 + pct / 10000, "pixel_auroc": 0.97, "pro": 0.9}
    ours = {side: {"image_auroc": 1.0, "pixel_auroc": 0.985, "pro": 0.96, "bank": "1%: 3,008 x 1024"}
            for side in ("before", "after")}
    return {"times": times, "models": models, "accuracy": acc, "n_images": 21, "rounds": 9}, ours


def _row(lines: list[str], start: str) -> list[str]:
    return [c.strip() for c in next(ln for ln in lines if ln.startswith(f"| {start}")).strip("|").split("|")]


def test_ratio_is_anomalib_default_onnx_over_each_side():
    res, ours = _result(after_total=15.0, onnx10_total=60.0)
    lines = render(res, ours)
    after = _row(lines, "ours after")
    assert after[6] == "15.00" and after[7] == "**4.00x**"
    assert _row(lines, "ours before")[7] == "1.00x"
    assert _row(lines, "anomalib ONNX (onnxruntime) 10%")[7] == "1.00x"
    assert _row(lines, "anomalib OpenVINO fp32 1%")[7] == "2.00x"
    assert _row(lines, "anomalib ONNX (onnxruntime) 1%")[1] == "1%: 1,638 x 152"


def test_each_side_shows_its_own_auroc_and_fixed_batches_are_said():
    res, ours = _result(after_total=30.0, onnx10_total=45.0, fixed_batch=2)
    lines = render(res, ours)
    assert _row(lines, "anomalib ONNX (onnxruntime) 10%")[8:10] == ["30.00", "0.9910"]
    assert _row(lines, "anomalib OpenVINO fp32 1%")[9] == "0.9901"
    assert _row(lines, "ours after")[8:11] == ["-", "1.0000", "0.9850"]
    assert any("onnx-10: 2" in ln for ln in lines)
    assert any("**1.50x** at batch 1, **1.00x** against its per-image" in ln for ln in lines)
    res, ours = _result(after_total=30.0, onnx10_total=45.0)
    assert not any("traced at a fixed batch" in ln for ln in render(res, ours))


def test_our_sides_can_be_named_for_the_section_that_renders_them():
    res, ours = _result(after_total=20.0, onnx10_total=60.0)
    lines = render(res, ours, labels={"after": "ours, default (no options)"})
    assert _row(lines, "ours, default (no options)")[6:8] == ["20.00", "**3.00x**"]
    assert _row(lines, "ours before")[6] == "60.00"  # a side without a label keeps fast_default's name
