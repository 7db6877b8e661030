"""Fitting and evaluating on Ray (``patchcore fit/eval --ray``); imported only with ``--ray``.

Two levels, never nested: several classes x backbones run as one Ray task each (a GPU per task
when the cluster has GPUs, else a CPU; the fit inside a task runs as in-process fitting does);
one class x backbone runs in the driver with :class:`RayFit` as its executor, whose actors
(each holding the feature model) embed the training images, or select the shards of a sharded
coreset. Every path must be readable, and every output folder writable, at the same path on
every node (a shared file system), as on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from runtime.images import read_image
from runtime.line.ray_cluster import task_resources, worker_count

from .config import PatchCoreConfig
from .model import PatchCore, ShardSelection
from .progress import progress_bar


class _FitWorker:
    """A Ray actor holding the feature model (built once, used for many batches or shards)."""

    def __init__(self, config: PatchCoreConfig):
        self.model = PatchCore(config)

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
        return self.model.embed_rows([read_image(p) for p in paths])

    def select(self, paths: Sequence[Path], total_images: int) -> ShardSelection:
        return self.model.select_shard(self.model.embedded_batches(paths), len(paths), total_images)


class RayFit:
    """The :class:`~patchcore.model.FitExecutor` on Ray: ``workers`` actors (default: as many
    as the cluster runs at once)."""

    def __init__(self, ray, config: PatchCoreConfig, workers: int | None = None):
        from ray.util import ActorPool

        self.config = config
        resources = task_resources(ray, config.device)
        actor = ray.remote(**resources)(_FitWorker)
        self.pool = ActorPool([actor.remote(config) for _ in range(worker_count(ray, resources, workers))])

    def embedded_batches(self, paths: Sequence[Path]) -> Iterator[np.ndarray]:
        bs = self.config.batch_size
        chunks = [list(paths[s : s + bs]) for s in range(0, len(paths), bs)]
        with progress_bar("features", total=len(paths)) as advance:
            for chunk, rows in zip(chunks, self.pool.map(lambda a, c: a.embed.remote(c), chunks)):
                yield rows
                advance(len(chunk))

    def select_shards(self, groups: Sequence[Sequence[Path]], total_images: int) -> list[ShardSelection]:
        out = []
        with progress_bar("shards", total=len(groups)) as advance:
            for sel in self.pool.map(lambda a, g: a.select.remote(list(g), total_images), groups):
                out.append(sel)
                advance(1)
        return out


def run_tasks(ray, fn: Callable[..., Any], jobs: Sequence[tuple], device: str) -> Iterator[Any]:
    """``fn(*job)`` for every job as a Ray task; results in job order, each as soon as it and
    the jobs before it are done."""
    remote = ray.remote(**task_resources(ray, device))(fn)
    refs = [remote.remote(*job) for job in jobs]
    for ref in refs:
        yield ray.get(ref)
