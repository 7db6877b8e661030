"""The indexes ``--search`` names: one :class:`runtime.plugins.PluginTable` whose rows carry each
index's capabilities as data. ``auto`` is not a row: it is :mod:`runtime.search.auto`'s choice
among them. The classes declare the same capabilities as attributes (the scorer reads those of the
index it is given); a test keeps the two in step."""

from __future__ import annotations

from dataclasses import dataclass

from ..plugins import Plugin, PluginTable

AUTO = "auto"


@dataclass(frozen=True)
class IndexKind(Plugin):
    approximate: bool = False  # a reduced candidate step: upper bounds, settled by an exact search beside it
    bounds: bool = False  # may prune the exact search (int8 on principal components)
    device: str = "cpu"  # where it searches: cpu, or "cpu, gpu"
    takes: tuple[str, ...] = ()  # the options its factory takes: device, candidates, components, threads


INDEXES: PluginTable[IndexKind] = PluginTable("--search", [
    IndexKind("faiss", "runtime.search.faiss_index", "FaissIndex", needs="faiss-cpu or faiss-gpu",
              what="exact float32 search in faiss's flat index, on all GPUs its build sees", device="cpu, gpu",
              takes=("device", "threads")),
    IndexKind("numpy", "runtime.search.exact", "NumpyIndex",
              what="exact float32 search, one BLAS product per chunk of queries"),
    IndexKind("bf16", "runtime.search.reduced", "Bf16Index", needs="the [openvino] extra and a CPU with bf16",
              what="bf16 candidate step in OpenVINO, candidates settled exactly", approximate=True,
              takes=("candidates", "threads")),
    IndexKind("int8", "runtime.search.reduced", "Int8Index",
              what="int8 candidate step in onnxruntime (on principal components where the export measured "
                   "them), candidates settled exactly", approximate=True, bounds=True,
              takes=("candidates", "components", "threads")),
])
