"""The one way to a ready bank index: :func:`build_index`, for whoever builds a
:class:`runtime.search.scorer.PatchScorer` (the predictor, fitting and evaluation, export parity,
the bank update, the benchmarks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import auto
from .base import DEFAULT_CANDIDATES, NeighbourIndex, check_bank
from .table import AUTO, INDEXES


def build_index(bank: np.ndarray, kind: str = AUTO, *, device: str = "auto", candidates: int | None = None,
                components: int | None = None, exact: bool = False, threads: int | None = None
                ) -> tuple[NeighbourIndex, dict[str, Any]]:
    """The index ``kind`` names (a row of :data:`~runtime.search.table.INDEXES`, or ``auto``: see
    :mod:`runtime.search.auto`) on ``bank``, and the facts of an ``auto`` choice ({} otherwise).

    ``candidates``: a reduced candidate step's candidates per query (the bundle's measured count;
    :data:`~runtime.search.base.DEFAULT_CANDIDATES` when None); ``components``: int8's principal
    components; ``device``: ``cuda`` asks faiss for a GPU; ``exact``: ``auto`` never picks a reduced
    step (fitting, evaluation and calibration read whole maps, pixel metrics included, which must be
    the exact search's)."""
    check_bank(bank)
    candidates = candidates or DEFAULT_CANDIDATES
    if kind == AUTO:
        return auto.choose(bank, device=device, exact=exact, candidates=candidates, components=components,
                           threads=threads)
    if kind not in INDEXES:
        raise ValueError(f"unknown search backend {kind!r}; choose {AUTO}, {', '.join(INDEXES.keys())}")
    row = INDEXES.get(kind)
    options = {"device": device, "candidates": candidates, "components": components, "threads": threads}
    return row.make(bank, **{k: options[k] for k in row.takes if options.get(k) is not None}), {}
