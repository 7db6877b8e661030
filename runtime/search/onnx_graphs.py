"""The search's ONNX graphs, files of the package (``graphs/``, written by
``scripts/make_candidate_graph.py``: the runtime has no ``onnx`` package), and the onnxruntime
session that runs them."""

from __future__ import annotations

from pathlib import Path

GRAPHS = Path(__file__).resolve().parent / "graphs"
GRAPH_INT8 = GRAPHS / "bank_candidates_int8.onnx"
GRAPH_INT8_PROJECTED = GRAPHS / "bank_candidates_int8_projected.onnx"
GRAPH_EXACT = GRAPHS / "bank_nearest_fp32.onnx"
GRAPH_BOUND = GRAPHS / "bank_bound_fp32.onnx"


def session(graph: Path, threads: int | None):
    """An onnxruntime CPU session whose threads sleep after a run: these searches run between two
    feature runs (onnxruntime or OpenVINO), and spinning threads would take the cores from them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
