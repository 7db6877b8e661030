"""``--search auto``: the index to search with here, and the facts of the choice.

faiss on a GPU where this faiss build sees one (and the device allows it); else, where the caller
needs the exact search's whole maps (fitting, evaluation, calibration), numpy; else on a CPU the
int8 candidate step where its bank product runs at least :data:`MIN_SPEEDUP` times faster than the
exact float32 one, measured at load by :mod:`runtime.measure`'s rule (the rule ``--graph auto``
times by), or the exact search in onnxruntime, whose threads do not spin after a call. Either way
image scores and the maps at and above the map level are the exact search's; the measurement only
decides which is faster on this CPU (VNNI, AMX or neither).

Unlike ``--graph auto``'s, this measurement is not kept in the bundle's engine cache: it is short
(two small bank products), and every load with the default search would otherwise write into the
bundle's folder, which a plain load leaves untouched."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..measure import RUNS, median_ms
from .base import DEFAULT_CANDIDATES, NeighbourIndex
from .exact import NumpyIndex, OnnxExactIndex
from .faiss_index import FaissIndex, faiss_gpus
from .reduced import Int8Index

# the int8 step is taken where its bank product is at least this many times faster than the exact
# float32 one: the rest of the int8 path (rescoring its candidates, settling the worst patches) costs
# about as much again (BENCHMARKS.md times the steps)
MIN_SPEEDUP = 2.0
_QUERIES = 256  # bank rows timed as queries


def choose(bank: np.ndarray, device: str = "auto", exact: bool = False, candidates: int = DEFAULT_CANDIDATES,
           components: int | None = None, threads: int | None = None) -> tuple[NeighbourIndex, dict[str, Any]]:
    """The index and the facts of the choice ({} where nothing was measured). ``exact``: never a
    reduced candidate step."""
    if device != "cpu" and faiss_gpus() > 0:
        return FaissIndex(bank, device=device), {}
    if exact:
        return NumpyIndex(bank), {}
    fast = Int8Index(bank, candidates, threads=threads, components=components)
    slow = OnnxExactIndex(bank, threads=threads)
    rows = np.linspace(0, len(bank) - 1, min(_QUERIES, len(bank))).astype(int)
    queries = np.asarray(bank, np.float32)[rows]
    int8_ms, exact_ms = median_ms([lambda: fast.search(queries, fast.candidates), lambda: slow.search(queries, 2)])
    speedup = exact_ms / max(int8_ms, 1e-6)
    facts = {"int8_ms": int8_ms, "exact_ms": exact_ms, "queries": len(rows), "runs": RUNS,
             "speedup": round(speedup, 2), "min_speedup": MIN_SPEEDUP,
             "chose": "int8" if speedup >= MIN_SPEEDUP else "exact"}
    return (fast if facts["chose"] == "int8" else slow), facts
