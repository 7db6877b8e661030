"""Build TensorRT engines into a bundle at export time (on a machine with the target GPU).

The builder itself lives in :mod:`runtime.engines` (``build_tensorrt_engine``: TensorRT 10 API,
ONNX parser errors logged, min/opt/max batch profile, timing cache, strongly typed float16), so
that the runtime can build the same engine on the target from the bundle's ONNX. This module
adds the engine to the bundle: ``engines/<key>.plan``, listed with its checksum, and an entry in
the manifest's ``engines`` section recording the TensorRT, CUDA and GPU it was built for (an
engine only runs there; elsewhere the runtime rebuilds from the ONNX).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from runtime import bundle as bundle_io
from runtime.engines import (
    DeviceUnavailableError,
    TrtBuildOptions,
    build_tensorrt_engine,
    engine_key,
    gpu_identity,
    tensorrt_status,
    timing_cache_path,
)


class TensorRTUnavailableError(DeviceUnavailableError):
    """TensorRT, cuda-python or a CUDA GPU is missing here; the message says which."""


def default_graph(bundle: bundle_io.Bundle, fp16: bool) -> str:
    """``features_fp16`` for half precision when the bundle has it, else ``features_fp32``."""
    graphs = bundle.manifest.get("graphs", {})
    return "features_fp16" if fp16 and "features_fp16" in graphs else "features_fp32"


def build_bundle_engine(root: str | Path, graph: str | None = None, fp16: bool = True,
                        batch: tuple[int, int, int] = (1, 8, 32), workspace_mib: int = 4096,
                        log: Callable[[str], None] = print) -> bundle_io.Bundle:
    """Build a TensorRT engine for ``graph`` of the bundle at ``root`` and add it to the bundle.

    ``graph`` defaults to the float16 graph when ``fp16`` (else float32). ``batch`` is the
    optimization profile (min, opt, max) of the batch axis. Raises TensorRTUnavailableError
    (with the reason) where TensorRT or a GPU is missing. Returns the re-sealed bundle.
    """
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailableError(f"TensorRT engine not built: {reason}")
    root = Path(root)
    b = bundle_io.read_bundle(root)
    graph = graph or default_graph(b, fp16)
    info = b.graph_info(graph)
    fp16_graph = info.get("dtype") == "float16"
    options = TrtBuildOptions(fp16=fp16 or fp16_graph, min_batch=batch[0], opt_batch=batch[1], max_batch=batch[2],
                              workspace_mib=workspace_mib)
    ident = gpu_identity()
    key = engine_key(graph, options, ident)
    timing = timing_cache_path(root / bundle_io.ENGINE_DIR / "cache", ident)
    plan = build_tensorrt_engine(b.path(info["file"]), options, timing_cache=timing, fp16_graph=fp16_graph, log=log)
    rel = f"{bundle_io.ENGINE_DIR}/{key}.plan"
    bundle_io.write_file(root, rel, plan)
    manifest = dict(b.manifest)
    engines = dict(manifest.get("engines", {}))
    engines[key] = {
        **ident,
        "file": rel,
        "graph": graph,
        "onnx_sha256": b.manifest["files"][info["file"]]["sha256"],
        "options": asdict(options),
        "precision": options.precision,
        "profile": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["engines"] = engines
    log(f"TensorRT engine {rel} ({len(plan) / 2**20:.1f} MiB) for {ident['gpu']}, TensorRT {ident['tensorrt']}, "
        f"CUDA {ident['cuda_runtime']}")
    return bundle_io.finalize_manifest(root, manifest, b.files + [rel])
