"""The nearest-neighbour search as ONNX nodes, appended to a feature graph.

With it one ONNX (or TensorRT) engine maps images to patch embeddings, each patch's distance to
its nearest memory-bank patch and that patch's index. The bank is an initializer, cut into
chunks of ``chunk`` rows; each chunk computes its (N, chunk) block of squared distances as one
Gemm, ``-2 q.m + |m|^2`` (``|q|^2`` is added once at the end), reduces it to a per-patch minimum
and argmin, and the chunks' minima are then reduced again. The largest intermediate is one
(batch * patches, chunk) block, never the whole distance matrix.

Precision: queries and bank are centred on the bank mean first (distances do not change, the
norms in the expansion shrink), but the expansion still cancels digits in float32: the in-graph
distances differ from exact ones in their last digits (more behind the float16 feature graph and on
larger banks), and a near-tie may pick a neighbour whose exact distance is larger by that much. The runtime therefore uses the graph's index as a candidate and recomputes the
distance exactly from ``q - m`` (see ``runtime.predictor``), so its scores keep the float32
parity tolerance; ``nn_distance`` is for consumers that run the graph alone. The parity report
measures both.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEFAULT_CHUNK = 4096
PREFIX = "nn/"
OUTPUTS = ("embeddings", "nn_distance", "nn_index")


def search_outputs() -> list[str]:
    return list(OUTPUTS)


def append_search(features, bank: np.ndarray, n_patches: int, bank_dtype: str = "float32",
                   chunk: int = DEFAULT_CHUNK, embeddings: str = "embeddings"):
    """A copy of the feature graph ``features`` (ModelProto whose output ``embeddings`` is
    (batch, n_patches, D) float32) with the nearest-neighbour search against ``bank`` (M, D)
    appended.

    Outputs: ``embeddings`` (batch, P, D) float32, ``nn_distance`` (batch, P) float32 and
    ``nn_index`` (batch, P) int64. ``bank_dtype`` float16 stores the bank in half precision
    (exactly the values of a float16 ``memory_bank.npy``) and computes in float32.
    """
    if bank.ndim != 2 or len(bank) == 0:
        raise ValueError(f"memory bank must be a non-empty (M, D) array, got {bank.shape}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    out_info = {o.name: o for o in features.graph.output}
    if embeddings not in out_info:
        raise ValueError(f"feature graph has no output {embeddings!r} (outputs: {sorted(out_info)})")
    dims = out_info[embeddings].type.tensor_type.shape.dim
    m_rows, dim = bank.shape
    if len(dims) != 3 or any(d.dim_value not in (0, want) for d, want in zip(dims[1:], (n_patches, dim))):
        raise ValueError(f"feature graph output {embeddings!r} must be (batch, {n_patches}, {dim})")

    model = onnx.ModelProto()
    model.CopyFrom(features)
    g = model.graph
    p = PREFIX
    store = np.float16 if bank_dtype == "float16" else np.float32
    bank32 = bank.astype(store).astype(np.float32)
    mean = bank32.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :]

    def const(name: str, array: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(array, p + name))
        return p + name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        g.node.append(helper.make_node(op, inputs, [p + output], name=p + output, **attrs))
        return p + output

    q = node("Reshape", [embeddings, const("flat_shape", np.array([-1, dim], np.int64))], "q")
    qc = node("Sub", [q, const("mean", mean)], "qc")
    q2 = node("ReduceSumSquare", [qc], "q2", axes=[1], keepdims=1)
    mins, args = [], []
    for i, start in enumerate(range(0, m_rows, chunk)):
        rows = bank[start : start + chunk].astype(store)
        m = const(f"bank{i}", np.ascontiguousarray(rows))
        if store is np.float16:
            m = node("Cast", [m], f"bank{i}_f32", to=TensorProto.FLOAT)
        mc = node("Sub", [m, p + "mean"], f"bank{i}_c")
        m2 = node("ReduceSumSquare", [mc], f"bank{i}_sq", axes=[1], keepdims=0)
        s = node("Gemm", [qc, mc, m2], f"partial{i}", alpha=-2.0, beta=1.0, transB=1)
        mins.append(node("ReduceMin", [s], f"min{i}", axes=[1], keepdims=1))
        arg = node("ArgMin", [s], f"argmin{i}", axis=1, keepdims=1)
        if start:
            arg = node("Add", [arg, const(f"offset{i}", np.array(start, np.int64))], f"index{i}")
        args.append(arg)
    if len(mins) == 1:
        dmin, idx = mins[0], args[0]
    else:
        all_min = node("Concat", mins, "mins", axis=1)
        all_arg = node("Concat", args, "args", axis=1)
        best = node("ArgMin", [all_min], "best_chunk", axis=1, keepdims=1)
        idx = node("GatherElements", [all_arg, best], "index", axis=1)
        dmin = node("ReduceMin", [all_min], "min", axes=[1], keepdims=1)
    d2 = node("Add", [dmin, q2], "d2")
    dist = node("Sqrt", [node("Relu", [d2], "d2_clamped")], "dist")
    out_shape = const("out_shape", np.array([-1, n_patches], np.int64))
    g.node.append(helper.make_node("Reshape", [dist, out_shape], ["nn_distance"], name=p + "nn_distance"))
    g.node.append(helper.make_node("Reshape", [idx, out_shape], ["nn_index"], name=p + "nn_index"))
    g.output.append(helper.make_tensor_value_info("nn_distance", TensorProto.FLOAT, ["batch", n_patches]))
    g.output.append(helper.make_tensor_value_info("nn_index", TensorProto.INT64, ["batch", n_patches]))
    return model
