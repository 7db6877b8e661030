"""``patchcore-rt score --ray``: Ray Data scores the inputs with the runtime's
:class:`~runtime.predictor.Predictor` in actors (``map_batches`` with a callable class), and the
driver writes the records as they stream back, so resuming works as without Ray.

Ray is passed in by the caller (:func:`runtime.line.ray_cluster.ray_session`); this module does
not import it, so it loads without Ray like every runtime module.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..predictor import Predictor
from .ray_cluster import task_resources, worker_count
from .score import Input, dumps_records, score_records

BATCHES_PER_BLOCK = 4
MAX_BLOCKS = 10_000


class ScoreActor:
    """A Ray Data actor: one predictor, loaded once, scores batch after batch."""

    def __init__(self, bundle: str, device: str, search: str, threads: int, graph: str):
        self.predictor = Predictor(Path(bundle), device=device, graph=graph, search=search, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = [Input(str(p), str(n), int(s), int(m))
                  for p, n, s, m in zip(batch["path"], batch["name"], batch["size"], batch["mtime_ns"])]
        return {"record": np.array(dumps_records(score_records(self.predictor, inputs)), dtype=object)}


def score_with_ray(ray, bundle: Path, todo: Sequence[Input], batch_size: int, device: str, search: str,
                   threads: int | None, graph: str, workers: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Batches of records for ``todo``, scored by ``workers`` actors (default: as many as the
    cluster runs at once; each with ``threads`` CPU threads, default 1, and a GPU when the
    cluster has one and ``device`` allows it)."""
    import ray.data  # noqa: F401 - the caller's ``ray`` is the module; its data library loads here

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the command draws its own
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    threads = threads or 1
    resources = task_resources(ray, device)
    resources["num_cpus"] = threads
    n_actors = worker_count(ray, resources, workers)
    # blocks of a few batches: each comes back (and is written) as soon as it is scored
    blocks = min(MAX_BLOCKS, max(1, math.ceil(len(todo) / (BATCHES_PER_BLOCK * batch_size))))
    ds = ray.data.from_items([asdict(i) for i in todo], override_num_blocks=blocks)
    scored = ds.map_batches(ScoreActor, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_actors),
                            fn_constructor_kwargs={"bundle": str(Path(bundle).resolve()), "device": device,
                                                   "search": search, "threads": threads, "graph": graph},
                            **resources)
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        yield [json.loads(s) for s in batch["record"]]
