"""Bounded memory while fitting: patch embeddings go to disk as they come, only their random
projection stays in memory, and the rows the coreset chooses are read back at the end.

:class:`EmbeddingStore` appends (rows, D) float32 batches to an anonymous file in a work folder
(``tempfile.TemporaryFile``: the file has no name on disk, so the system frees its space when it
is closed, also when the process dies of an error, Ctrl-C or a kill). :class:`StreamingProjection`
projects the stored rows in the same 65,536-row chunks, aligned the same way, as
:func:`patchcore.coreset.random_projection` does for an in-memory array, so the projected
features, and with them the selected indices, are bit for bit those of the in-memory path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .coreset import random_projection

PROJECTION_CHUNK = 65536  # rows per projection matmul: random_projection's default chunk
GATHER_CHUNK = 8192  # rows gathered per memory map


class EmbeddingStore:
    """Append-only (rows, D) float32 rows on disk; read back by range or by index."""

    dtype = np.dtype(np.float32)

    def __init__(self, work_dir: str | Path | None = None):
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(prefix="patchcore-embeddings-", dir=work_dir)
        self.dim: int | None = None
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2:
            raise ValueError(f"embedding rows must be 2-D (rows, dim), got shape {rows.shape}")
        if self.dim is None:
            self.dim = int(rows.shape[1])
        elif rows.shape[1] != self.dim:
            raise ValueError(f"embedding rows of dim {rows.shape[1]} after rows of dim {self.dim}")
        self._file.seek(0, 2)
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array (read into it directly: no mapped pages)."""
        out = np.empty((max(0, stop - start), self.dim or 0), self.dtype)
        self._file.flush()
        self._file.seek(start * out.shape[1] * self.dtype.itemsize)
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OSError(f"embedding work file: short read of rows {start}:{stop}")
        return out

    def gather(self, indices: np.ndarray, chunk: int = GATHER_CHUNK) -> np.ndarray:
        """The rows at ``indices``, in that order, as an in-memory array. Read in file order,
        through a short-lived memory map per ``chunk`` rows, so mapped pages never add up."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), self.dim or 0), self.dtype)
        if len(indices) == 0:
            return out
        self._file.flush()
        order = np.argsort(indices, kind="stable")
        for s in range(0, len(order), chunk):
            part = order[s : s + chunk]
            view = np.memmap(self._file, dtype=self.dtype, mode="r", shape=(self.rows, self.dim))
            out[part] = view[indices[part]]
            del view
        return out

    @property
    def nbytes(self) -> int:
        return self.rows * (self.dim or 0) * self.dtype.itemsize

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamingProjection:
    """The coreset's random projection of a growing :class:`EmbeddingStore`, chunk by chunk.

    Call :meth:`update` after each append (it projects every complete chunk) and :meth:`result`
    at the end (it projects the last, partial chunk). Only the projected rows are kept."""

    def __init__(self, store: EmbeddingStore, dim: int, seed: int, device: torch.device | str = "cpu"):
        self.store, self.dim, self.seed, self.device = store, dim, seed, torch.device(device)
        self.done = 0
        self._parts: list[torch.Tensor] = []

    def _project(self, stop: int) -> None:
        chunk = torch.from_numpy(self.store.read(self.done, stop))
        with torch.no_grad():
            self._parts.append(random_projection(chunk.to(self.device), self.dim, self.seed, chunk=PROJECTION_CHUNK))
        self.done = stop

    def update(self) -> None:
        while self.store.rows - self.done >= PROJECTION_CHUNK:
            self._project(self.done + PROJECTION_CHUNK)

    def result(self) -> torch.Tensor:
        """(rows, projection dim) float32 on the device, for every row stored so far."""
        self.update()
        if self.store.rows > self.done:
            self._project(self.store.rows)
        if len(self._parts) > 1:
            self._parts = [torch.cat(self._parts)]
        return self._parts[0]
