"""The feature graph as ONNX: what ``export`` writes into a bundle and what selection times.

Lives here (not in :mod:`export`) because recipe selection, part of fitting, times each
candidate's graph as the runtime runs it, and :mod:`export` builds on :mod:`patchcore`, not the
other way round.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def trace_feature_graph(model, opset: int = OPSET):
    """``model.feature_model`` -> an ONNX ModelProto (float32, dynamic batch)."""
    h, w = model.input_size
    example = torch.zeros(2, 3, h, w, device=model.device)
    fm = model.feature_model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fm, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())
