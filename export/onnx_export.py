"""Export a fitted PatchCore's feature graph to ONNX and write it into the model's bundle."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from runtime import bundle as bundle_io

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def export_feature_graph(model, path: str | Path, opset: int = OPSET) -> Path:
    """``model.feature_model`` -> ONNX at ``path``: (batch, 3, H, W) float32 -> (batch, P, D),
    dynamic batch. Checked with the ONNX checker. Returns the path written."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = model.input_size
    example = torch.zeros(2, 3, h, w, device=model.device)
    fm = model.feature_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fm, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def export_bundle(model, root: str | Path, name: str | None = None) -> bundle_io.Bundle:
    """Write ``model`` (fitted) as a complete bundle: manifest, memory bank, fp32 feature graph."""
    import onnx
    import onnxruntime

    root = Path(root)
    model.save(root, name=name)
    graph = export_feature_graph(model, root / "features_fp32.onnx")
    manifest = bundle_io.read_bundle(root).manifest
    manifest["graphs"] = {
        "features_fp32": {"file": graph.name, "opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME, "dtype": "float32"}
    }
    manifest["versions"].update({"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__})
    files = [bundle_io.BANK_FILE, graph.name]
    return bundle_io.finalize_manifest(root, manifest, files)
