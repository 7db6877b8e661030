"""Writes runtime/graphs/bank_candidates_int8.onnx, the graph of ``--search int8``'s candidate step.

The runtime runs it without the ``onnx`` package (which only fitting installs), so the graph is kept
in the repository as a file; tests/test_search_int8.py checks it equals what :func:`build` makes.
Bank, scales and k are graph inputs, not initializers: one file serves every bundle.

    python scripts/make_candidate_graph.py
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parents[1] / "runtime" / "graphs" / "bank_candidates_int8.onnx"


def build() -> onnx.ModelProto:
    """queries (Q, D) float32 [centred], bank8 (D, M) int8, bank_scale (M,), half_sq (M,) float32, k (1,)
    int64 -> candidates (Q, k) int64, nearest first by ``q . m - |m|^2 / 2`` from an integer product."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["queries"], ["q8", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q8", "bank8", "q_zero", "bank_zero"], ["dot32"]),
        helper.make_node("Mul", ["bank_scale", "q_scale"], ["unit"]),  # per bank row, before the big product's size
        helper.make_node("Cast", ["dot32"], ["dot"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["dot", "unit"], ["qm"]),
        helper.make_node("Sub", ["qm", "half_sq"], ["closeness"]),
        helper.make_node("TopK", ["closeness", "k"], ["closest", "candidates"], axis=1, largest=1, sorted=1),
    ]
    inputs = [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["queries", "dim"]),
              helper.make_tensor_value_info("bank8", TensorProto.INT8, ["dim", "rows"]),
              helper.make_tensor_value_info("bank_scale", TensorProto.FLOAT, ["rows"]),
              helper.make_tensor_value_info("half_sq", TensorProto.FLOAT, ["rows"]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
    zero = helper.make_tensor("bank_zero", TensorProto.INT8, [], [0])
    outputs = [helper.make_tensor_value_info("candidates", TensorProto.INT64, ["queries", "k"])]
    graph = helper.make_graph(nodes, "bank_candidates_int8", inputs, outputs, [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="patchcore-rt")
    model.ir_version = 8  # readable by every onnxruntime the runtime supports (>= 1.17)
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
