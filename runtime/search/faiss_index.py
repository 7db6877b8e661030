"""``--search faiss``: faiss's flat L2 index, on all GPUs where this faiss build has GPU support.
faiss (``faiss-cpu`` or ``faiss-gpu``) is optional: it is imported only when this index is used."""

from __future__ import annotations

import numpy as np

from .base import centre_bank


def faiss_gpus() -> int:
    """The GPUs this faiss build sees (0 without faiss, or with a CPU-only build)."""
    try:
        import faiss  # optional: faiss-cpu or faiss-gpu, or neither
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def available() -> tuple[bool, str]:
    """(usable here, why not): for the search table's ``info`` rows."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False, "faiss is not installed: pip install faiss-cpu (or faiss-gpu)"
    return True, ""


class FaissIndex:
    """faiss IndexFlatL2, moved to all GPUs when this faiss build has GPU support."""

    approximate = False
    bounds = False

    def __init__(self, bank: np.ndarray, device: str = "auto", threads: int | None = None):
        try:
            import faiss  # imported here so numpy-only installs still import this module
        except ImportError:
            raise RuntimeError("faiss is not installed: pip install faiss-cpu (or faiss-gpu)") from None

        if threads:
            faiss.omp_set_num_threads(threads)
        # centred: faiss's float32 |q|^2 - 2 q.m + |m|^2 loses the ranking otherwise
        self.mean, bank = centre_bank(bank)
        index = faiss.IndexFlatL2(bank.shape[1])
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if device == "cuda" and ngpu == 0:
            raise RuntimeError("faiss GPU search requested but this faiss build sees no GPU (install faiss-gpu)")
        if device in ("auto", "cuda") and ngpu > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            self.name = "faiss-gpu"
        else:
            self.name = "faiss-cpu"
        index.add(bank)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        _, idx = self.index.search(q, k)
        return idx.astype(np.int64)
