"""Choices measured at load (``--graph auto``, ``--search auto``): one timing rule for both, and the
cache that keeps ``--graph auto``'s measurement.

The rule (:func:`median_ms`): one warm-up run of each candidate, then :data:`RUNS` rounds that run
every candidate in turn; each candidate's median. The warm-up takes the first run's one-off costs
(allocations, kernel selection, caches) out of the figures; running the candidates in turn makes a
load that comes and goes on the machine weigh on all of them alike; and the median ignores the odd
run a scheduler delay spoils, where a minimum would reward the one lucky run.

The cache (:class:`MeasureCache`): a measurement that is slow to repeat (opening and timing each
feature graph) is kept in a JSON file (the bundle's engine cache,
not part of the sealed bundle) under a key of everything it holds for (the bundle, the settings, this
CPU and the engines' versions: :func:`machine_facts`), so a later load on the same machine skips it.
Any change of the key measures again; a damaged or read-only cache is measured again, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .fileio import atomic_write
from .machine import cpu_model, package_version

RUNS = 5  # timed rounds per candidate, after one warm-up


def median_ms(calls: Sequence[Callable[[], object]], runs: int = RUNS) -> list[float]:
    """Median wall time of each call, in ms (to the microsecond), by the module's rule."""
    times: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()
    for _ in range(runs):
        for call, t in zip(calls, times):
            t0 = time.perf_counter()
            call()
            t.append(time.perf_counter() - t0)
    return [round(statistics.median(t) * 1e3, 3) for t in times]


def machine_facts() -> dict[str, Any]:
    """This machine, as a cached measurement's key holds it: the CPU (model, count) and the versions of
    the engines that run the candidates."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "onnxruntime": package_version("onnxruntime"),
            "openvino": package_version("openvino")}


@dataclass(frozen=True)
class MeasureCache:
    """One measurement kept in ``path`` under ``key`` (a JSON-able dict); other keys share the file."""

    path: Path
    key: dict[str, Any]

    @property
    def _digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]

    def read(self) -> dict[str, Any]:
        """The kept record for this key ({} when none, or when the file is damaged)."""
        try:
            cache = json.loads(self.path.read_text())
            entry = cache.get(self._digest) if isinstance(cache, dict) else None
        except (OSError, ValueError):
            entry = None
        record = entry.get("choice") if isinstance(entry, dict) and entry.get("key") == self.key else None
        return record if isinstance(record, dict) else {}

    def keep(self, record: dict[str, Any]) -> None:
        """Keep ``record`` for the next load (best effort: a read-only bundle measures each time)."""
        try:
            cache = json.loads(self.path.read_text()) if self.path.is_file() else {}
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        cache[self._digest] = {"key": self.key, "choice": record}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, (json.dumps(cache, indent=1, sort_keys=True) + "\n").encode())
        except OSError:
            pass
