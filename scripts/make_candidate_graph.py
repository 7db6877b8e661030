"""Writes the graphs of the reduced-precision search into runtime/search/graphs/:

- ``bank_candidates_int8.onnx``: ``--search int8``'s candidate step, and
  ``bank_candidates_int8_projected.onnx`` the same on the bank's leading principal components;
- ``bank_nearest_fp32.onnx``: the exact float32 bank product that settles each image's worst patches
  beside a reduced candidate step (onnxruntime's threads, which do not spin after a call, where
  BLAS's would take the cores from the next feature run);
- ``bank_bound_fp32.onnx``: which bank rows may lie within a distance of each query, from a lower
  bound of the distance on the bank's principal components (the exact settling of the projected
  int8 search).

The runtime runs them without the ``onnx`` package (which only fitting installs), so the graphs are
kept in the repository as files; tests/test_search_int8.py checks they equal what this script builds.
Banks, scales and k are graph inputs, not initializers: one file serves every bundle.

    python scripts/make_candidate_graph.py
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

GRAPHS = Path(__file__).resolve().parents[1] / "runtime" / "search" / "graphs"
_OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _model(nodes, name, inputs, outputs, initializers, opsets=_OPSETS) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="patchcore-rt")
    model.ir_version = 8  # readable by every onnxruntime the runtime supports (>= 1.17)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_int8(projected: bool = False) -> onnx.ModelProto:
    """queries (Q, D) float32 [centred], [projected: components8 (D, r) int8 and components_scale (r,)
    float32, the components quantized per column,] bank8 (D or r, M) int8, bank_scale (M,), neg_half_sq (M,) float32,
    k (1,), block (1,) int64 -> candidates (Q, k) int64, nearest first by ``q . m - |m|^2 / 2``.

    ``DynamicQuantizeMatMul`` quantizes the queries to u8 per call, multiplies them with the s8 bank
    (VNNI) and applies the per-row scales and ``-|m|^2/2`` in the same kernel. The top k of each row is
    then found in blocks of ``block`` bank rows (M a multiple of it; padding rows carry -3e38): the
    k blocks with the largest maxima hold the k largest values (a block holding one of them has
    its maximum among them too), so one TopK over M/block block maxima and one over k*block kept
    values replace a TopK over all M, the larger part of the step's time when it ran over all rows.

    ``projected``: the queries are first projected on the bank's r leading principal components (a
    MatMul) and the bank is stored in them, so the integer product is r/D of the full one."""
    n = helper.make_node
    # the projection in int8 too (per-column scales): a float32 MatMul of the queries on r components
    # cost as much as the int8 product on them; its rounding only moves candidates, never a score
    nodes = [n("DynamicQuantizeMatMul", ["queries", "components8", "components_scale"], ["projected"],
               domain="com.microsoft")] if projected else []
    nodes += [
        n("DynamicQuantizeMatMul", ["projected" if projected else "queries", "bank8", "bank_scale", "", "neg_half_sq"],
          ["closeness"], domain="com.microsoft"),
        n("Concat", ["keep_rows", "block"], ["block_shape"], axis=0),
        n("Reshape", ["closeness", "block_shape"], ["blocks"]),  # (Q, M / block, block)
        n("ReduceMax", ["blocks"], ["block_best"], axes=[2], keepdims=0),
        n("TopK", ["block_best", "k"], ["_block_values", "top_blocks"], axis=1, largest=1, sorted=0),
        n("Unsqueeze", ["top_blocks", "two"], ["top_blocks3"]),
        n("Shape", ["top_blocks3"], ["top_blocks3_shape"]),
        n("Slice", ["top_blocks3_shape", "zero", "two"], ["q_k"]),
        n("Concat", ["q_k", "block"], ["kept_shape"], axis=0),
        n("Expand", ["top_blocks3", "kept_shape"], ["kept_index"]),
        n("GatherElements", ["blocks", "kept_index"], ["kept"], axis=1),  # (Q, k, block)
        n("Reshape", ["kept", "keep_rows"], ["kept_flat"]),
        n("TopK", ["kept_flat", "k"], ["_values", "position"], axis=1, largest=1, sorted=1),
        n("Div", ["position", "block"], ["which_block"]),
        n("Mod", ["position", "block"], ["offset"]),
        n("GatherElements", ["top_blocks", "which_block"], ["block_index"], axis=1),
        n("Mul", ["block_index", "block"], ["block_start"]),
        n("Add", ["block_start", "offset"], ["candidates"]),
    ]
    inputs = [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["queries", "dim"])]
    if projected:
        inputs += [helper.make_tensor_value_info("components8", TensorProto.INT8, ["dim", "kept"]),
                   helper.make_tensor_value_info("components_scale", TensorProto.FLOAT, ["kept"])]
    inputs += [helper.make_tensor_value_info("bank8", TensorProto.INT8, ["kept" if projected else "dim", "rows"]),
               helper.make_tensor_value_info("bank_scale", TensorProto.FLOAT, ["rows"]),
               helper.make_tensor_value_info("neg_half_sq", TensorProto.FLOAT, ["rows"]),
               helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
               helper.make_tensor_value_info("block", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("candidates", TensorProto.INT64, ["queries", "k"])]
    consts = [_ints("keep_rows", [0, -1]), _ints("two", [2]), _ints("zero", [0])]
    name = "bank_candidates_int8_projected" if projected else "bank_candidates_int8"
    return _model(nodes, name, inputs, outputs, consts)


def build_exact() -> onnx.ModelProto:
    """queries (Q, D) float32 [centred], bank (M, D) float32 [centred], neg_half_sq (M,), k (1,) ->
    candidates (Q, k) int64, nearest first by ``q . m - |m|^2 / 2`` in float32 (then rescored exactly
    from ``q - m`` like every search)."""
    n = helper.make_node
    nodes = [
        n("Gemm", ["queries", "bank", "neg_half_sq"], ["closeness"], transB=1),
        n("TopK", ["closeness", "k"], ["_values", "candidates"], axis=1, largest=1, sorted=1),
    ]
    inputs = [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["queries", "dim"]),
              helper.make_tensor_value_info("bank", TensorProto.FLOAT, ["rows", "dim"]),
              helper.make_tensor_value_info("neg_half_sq", TensorProto.FLOAT, ["rows"]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("candidates", TensorProto.INT64, ["queries", "k"])]
    return _model(nodes, "bank_nearest_fp32", inputs, outputs, [], [helper.make_opsetid("", 17)])


def build_bound() -> onnx.ModelProto:
    """queries (Q, D) float32 [centred], components (D, r) orthonormal columns, bank_aug (M, r + 1) each
    row in them and, last, the norm of its rest ``|m - P m|``, bank_sq (M,) ``|m|^2``, upper (Q, 1)
    squared distances -> inside (Q, M) bool: rows whose lower bound of the squared distance,
    ``|P q - P m|^2 + (|q - P q| - |m - P m|)^2`` (Pythagoras, then the reverse triangle inequality
    on the part the components leave out), is below ``upper``. The bound is
    ``|q|^2 + |m|^2 - 2 [P q, |q - P q|] . [P m, |m - P m|]``: one Gemm and one comparison."""
    n = helper.make_node
    nodes = [
        n("MatMul", ["queries", "components"], ["q_r"]),
        n("ReduceSumSquare", ["queries"], ["q_sq"], axes=[1], keepdims=1),
        n("ReduceSumSquare", ["q_r"], ["q_r_sq"], axes=[1], keepdims=1),
        n("Sub", ["q_sq", "q_r_sq"], ["q_perp_sq"]),
        n("Relu", ["q_perp_sq"], ["q_perp_sq_pos"]),
        n("Sqrt", ["q_perp_sq_pos"], ["q_perp"]),
        n("Concat", ["q_r", "q_perp"], ["q_aug"], axis=1),
        n("Gemm", ["q_aug", "bank_aug", "bank_sq"], ["lower_less_q"], alpha=-2.0, transB=1),
        n("Sub", ["upper", "q_sq"], ["room"]),
        n("Less", ["lower_less_q", "room"], ["inside"]),
    ]
    inputs = [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["queries", "dim"]),
              helper.make_tensor_value_info("components", TensorProto.FLOAT, ["dim", "kept"]),
              helper.make_tensor_value_info("bank_aug", TensorProto.FLOAT, ["rows", "kept_1"]),
              helper.make_tensor_value_info("bank_sq", TensorProto.FLOAT, ["rows"]),
              helper.make_tensor_value_info("upper", TensorProto.FLOAT, ["queries", 1])]
    outputs = [helper.make_tensor_value_info("inside", TensorProto.BOOL, ["queries", "rows"])]
    return _model(nodes, "bank_bound_fp32", inputs, outputs, [], [helper.make_opsetid("", 17)])


BUILDERS = {"bank_candidates_int8.onnx": build_int8,
            "bank_candidates_int8_projected.onnx": lambda: build_int8(projected=True),
            "bank_nearest_fp32.onnx": build_exact,
            "bank_bound_fp32.onnx": build_bound}


if __name__ == "__main__":
    GRAPHS.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        path = GRAPHS / name
        onnx.save(build(), path)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
