"""Export a fitted PatchCore to ONNX graphs inside its bundle.

Graphs (keys of the manifest's ``graphs`` section):

- ``features_fp32``: normalised images (batch, 3, H, W) float32 -> patch embeddings (batch, P, D)
  float32, dynamic batch, opset 17. The graph the runtime uses by default.
- ``features_fp16``: the same graph with weights and activations in float16 and float32 at its
  input and output (casts inside), so every engine feeds it the same arrays.
- ``scores_fp32`` / ``scores_fp16`` (optional): a feature graph followed by the nearest-neighbour
  search against the memory bank (see :mod:`export.search_graph`): one engine does everything.

Every graph carries the bundle's identity in its ONNX ``metadata_props`` (JSON values), is checked
with the ONNX checker and is loaded back in onnxruntime before the manifest lists it. Graphs whose
weights would pass protobuf's 2 GB limit are written with ONNX external data beside them.
"""

from __future__ import annotations

import heapq
import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import onnx
import onnxruntime

from patchcore.onnx_graph import INPUT_NAME, OPSET, OUTPUT_NAME, trace_feature_graph
from runtime import bundle as bundle_io

from .errors import ExportError
from .search_graph import DEFAULT_CHUNK, append_search, search_outputs

# protobuf refuses to serialise a message of 2 GiB or more; keep a margin for the graph itself
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


# ---------------------------------------------------------------------------------------- files
def initializer_bytes(model) -> int:
    """Bytes of all initializers of an ONNX ModelProto (their raw or typed data)."""
    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += sum(len(getattr(t, f)) * 4 for f in ("float_data", "int32_data")) + sum(
                len(getattr(t, f)) * 8 for f in ("int64_data", "double_data")
            )
    return total


def save_graph(model, path: str | Path, external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """Write ``model`` to ``path``; with external data (``<name>.data`` beside it) when its
    initializers pass ``external_threshold`` bytes. Returns every file written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if initializer_bytes(model) > external_threshold:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def check_graph(path: str | Path) -> list[str]:
    """The ONNX checker (by path, so external data is followed) and an onnxruntime CPU session
    (which also runs ONNX shape inference). Returns the graph's output names."""
    try:
        onnx.checker.check_model(str(path), full_check=False)
        opts = onnxruntime.SessionOptions()  # load and type-check only: optimising is the engine's job
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # checker errors and ORT's Fail/InvalidGraph are distinct classes
        raise ExportError(f"{path}: exported graph failed its check: {e}") from e
    return [o.name for o in sess.get_outputs()]


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Store ``meta`` in ``model.metadata_props`` as JSON strings (never ``str()``/``eval``)."""
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value, sort_keys=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored by :func:`set_metadata` in an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


# ---------------------------------------------------------------------------------------- graphs
def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (the ONNX checker
    requires it; the float16 converter appends its input casts at the end). Stable: nodes that are
    already in order keep it."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = [{producer[x] for x in n.input if x in producer} - {i} for i, n in enumerate(nodes)]
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, k in enumerate(pending) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ExportError("graph has a cycle: cannot order its nodes")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def to_fp16(model):
    """A float16 copy of a float32 ONNX model, float32 kept at its inputs and outputs.

    Uses onnxconverter-common's converter when installed, else the copy of it that ships inside
    onnxruntime (``onnxruntime.transformers.float16``): both keep the inputs that ONNX requires
    in float32 (Resize scales) and clamp weights to the float16 range.
    """
    try:  # optional package; onnxruntime ships a copy of the same converter
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    src = onnx.ModelProto()
    src.CopyFrom(model)  # the converter may work in place; the float32 graph must survive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to float16 range" for tiny weights
        half = convert_float_to_float16(src, keep_io_types=True)
    topological_sort(half.graph)
    return half


def export_feature_graph(model, path: str | Path, opset: int = OPSET, fp16: bool = False,
                         metadata: dict[str, Any] | None = None,
                         external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path:
    """``model.feature_model`` -> ONNX at ``path``: (batch, 3, H, W) float32 -> (batch, P, D)
    float32, dynamic batch; ``fp16`` computes in float16 inside. Checked with the ONNX checker
    and onnxruntime. Returns the path written (external data, if any, lies beside it)."""
    proto = trace_feature_graph(model, opset)
    if fp16:
        proto = to_fp16(proto)
    if metadata:
        set_metadata(proto, metadata)
    path = Path(path)
    save_graph(proto, path, external_threshold)
    check_graph(path)
    return path


# ---------------------------------------------------------------------------------------- bundle
def _graph_entry(files: list[Path], kind: str, dtype: str, outputs: Iterable[str], model, **extra) -> dict:
    h, w = model.input_size
    return {
        "file": files[0].name,
        "external_data": [f.name for f in files[1:]],
        "kind": kind,
        "dtype": dtype,
        "opset": OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "inputs": {INPUT_NAME: ["batch", 3, h, w]},
        "outputs": list(outputs),
        **extra,
    }


def export_bundle(model, root: str | Path, name: str | None = None, *, fp16: bool = True,
                  scoring: bool = False, bank_dtype: str = "float32", bank_chunk: int | None = None,
                  extra: dict[str, Any] | None = None,
                  external_threshold: int = EXTERNAL_DATA_THRESHOLD,
                  int8_calibration: np.ndarray | None = None, int8_settings=None) -> bundle_io.Bundle:
    """Write ``model`` (fitted) as a complete bundle: manifest, memory bank and graphs.

    ``fp16`` adds ``features_fp16``; ``scoring`` adds ``scores_fp32`` (and ``scores_fp16``)
    with the memory bank inside; ``bank_dtype`` ``float16`` halves ``memory_bank.npy``; the
    model's bank is then replaced by the rounded one, so that the model in memory, the saved
    bundle and a reloaded model all score identically. ``extra`` adds top-level manifest
    sections (e.g. the export command's settings). Returns the finished bundle.
    """
    if bank_dtype not in bundle_io.BANK_DTYPES:
        raise ValueError(f"bank_dtype must be one of {bundle_io.BANK_DTYPES}, got {bank_dtype!r}")
    if model.bank is None:
        raise RuntimeError("model is not fitted")
    if scoring and model.config.aggregation == "fused":
        raise ValueError("--scoring-graph searches one bank in-graph; a fused bundle has two (its parts search "
                         "exactly in the runtime): leave --scoring-graph out")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = name or root.name
    if bank_dtype == "float16":
        model.set_bank(model.bank.astype(np.float16).astype(np.float32))
    for stale in root.glob("*.onnx*"):  # graphs of an earlier export that this one may not rewrite
        stale.unlink()

    identity = model.manifest(name)  # what each graph's metadata must agree with
    graphs: dict[str, dict] = {}
    files: list[str] = []
    base = trace_feature_graph(model)
    chunk = bank_chunk or DEFAULT_CHUNK
    variants = [("fp32", "float32", base)]
    if fp16:
        variants.append(("fp16", "float16", to_fp16(base)))
    for suffix, dtype, proto in variants:
        key = f"features_{suffix}"
        set_metadata(proto, bundle_io.graph_metadata(identity, key))
        written = save_graph(proto, root / f"{key}.onnx", external_threshold)
        check_graph(written[0])
        graphs[key] = _graph_entry(written, "features", dtype, [OUTPUT_NAME], model)
        files += [p.name for p in written]
        if scoring:
            key = f"scores_{suffix}"
            full = append_search(proto, model.bank, model.grid[0] * model.grid[1], bank_dtype=bank_dtype, chunk=chunk)
            set_metadata(full, bundle_io.graph_metadata(identity, key))
            written = save_graph(full, root / f"{key}.onnx", external_threshold)
            check_graph(written[0])
            graphs[key] = _graph_entry(written, "scores", dtype, search_outputs(), model, bank_chunk=chunk,
                                       nearest="in-graph argmin of |q|^2 - 2 q.m + |m|^2 (float32)")
            files += [p.name for p in written]
    if int8_calibration is not None:
        from .quantize import Int8Settings, quantize_graph

        settings = int8_settings or Int8Settings()
        path = root / "features_int8.onnx"
        facts = quantize_graph(root / "features_fp32.onnx", path, int8_calibration, settings)
        proto = onnx.load(str(path))
        set_metadata(proto, bundle_io.graph_metadata(identity, "features_int8"))
        written = save_graph(proto, path, external_threshold)
        check_graph(written[0])
        graphs["features_int8"] = _graph_entry(written, "features", "int8", [OUTPUT_NAME], model, **facts)
        files += [p.name for p in written]
    # the preprocessing's resizes are OpenCV's: recorded, since kernels may change between versions
    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}
    model.save(root, name, bank_dtype=bank_dtype, graphs=graphs, files=files,
               extra={**(extra or {}), "versions": versions})
    return bundle_io.read_bundle(root, verify=False)
