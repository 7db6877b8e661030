"""What every bank index is: the :class:`NeighbourIndex` protocol with its capabilities, and the
centring every index searches."""

from __future__ import annotations

from typing import Protocol

import numpy as np

DEFAULT_CANDIDATES = 8  # a reduced candidate step's candidates per query when the bundle names none


class NeighbourIndex(Protocol):
    """A memory bank that answers k-nearest-neighbour queries (squared L2, approximate order).

    Its capabilities are declared as class attributes, read by the scorer (never probed):
    ``approximate``: a reduced-precision candidate step (its candidates' distances are upper bounds,
    settled by an exact search beside it), which then also says ``candidates``, the rows it returns
    per query; ``bounds``: it can prune the exact search
    (:meth:`runtime.search.reduced.Int8Index.within`)."""

    name: str
    approximate: bool
    bounds: bool

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(Q, D) float32 -> (Q, k) int64 indices into the bank, nearest first."""


def centre_bank(bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bank's mean (float32) and the bank minus it: distances do not change, but the norms in
    ``|q|^2 - 2 q.m + |m|^2`` shrink, and with them float32 cancellation. Every index searches this."""
    bank = np.asarray(bank, dtype=np.float32)
    mean = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
    return mean, np.ascontiguousarray(bank - mean)


def check_bank(bank: np.ndarray) -> None:
    """ValueError unless ``bank`` is a non-empty (M, D) array."""
    if np.ndim(bank) != 2 or len(bank) == 0:
        raise ValueError(f"memory bank must be a non-empty (M, D) array, got {np.shape(bank)}")
