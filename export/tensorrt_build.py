"""Build TensorRT engines into a bundle at export time (on a machine with the target GPU).

The builder itself lives in :mod:`runtime.engines` (``build_tensorrt_engine``: TensorRT 10/11
API, ONNX parser errors logged, min/opt/max batch profile, timing cache, strongly typed float16),
so that the runtime can build the same engine on the target from the bundle's ONNX. This module
adds the engine to the bundle: ``engines/<key>.plan``, listed with its checksum, and an entry in
the manifest's ``engines`` section (:func:`runtime.engines.engine_metadata`, the same record the
runtime's engine cache keeps) naming the GPU, TensorRT build and options it was built for (an
engine only runs there; elsewhere the runtime rebuilds from the ONNX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from runtime import bundle as bundle_io
from runtime.engines import (
    DeviceUnavailableError,
    TrtBuildOptions,
    build_tensorrt_engine,
    engine_cache_dir,
    engine_key,
    engine_metadata,
    gpu_identity,
    tensorrt_has_weak_fp16,
    tensorrt_status,
    timing_cache_path,
)
from runtime.fileio import sha256_file


class TensorRTUnavailableError(DeviceUnavailableError):
    """TensorRT, cuda-python or a CUDA GPU is missing here; the message says which."""


def default_graph(bundle: bundle_io.Bundle, fp16: bool) -> str:
    """``features_fp16`` for half precision when the bundle has it, else ``features_fp32``."""
    graphs = bundle.manifest.get("graphs", {})
    return "features_fp16" if fp16 and "features_fp16" in graphs else "features_fp32"


def _precision_plan(bundle: bundle_io.Bundle, graph: str, fp16: bool, log: Callable[[str], None]) -> bool:
    """Whether ``graph`` is a float16 graph; refuses half precision from a float32 graph where
    TensorRT has no weakly typed FP16 (TensorRT 11) and says which way the engine is built."""
    fp16_graph = bundle.graph_info(graph).get("dtype") == "float16"
    if fp16_graph:
        log(f"building {graph}: a float16 graph, built as a strongly typed network")
    elif fp16:
        if not tensorrt_has_weak_fp16():
            has_fp16 = "features_fp16" in bundle.manifest.get("graphs", {})
            raise TensorRTUnavailableError(
                f"TensorRT engine not built: this TensorRT builds half precision only from a float16 graph "
                f"(weakly typed FP16 was removed in TensorRT 11), and {graph} is float32; "
                + ("build features_fp16 instead" if has_fp16 else
                   "the bundle has no features_fp16: re-export it with float16 graphs, or build float32 (--fp32)"))
        log(f"building {graph} in half precision with TensorRT 10's weakly typed FP16 flag "
            "(deprecated since 10.12, gone in 11: prefer the bundle's features_fp16)")
    return fp16_graph


def build_bundle_engine(root: str | Path, graph: str | None = None, fp16: bool = True,
                        batch: tuple[int, int, int] = (1, 8, 32), workspace_mib: int = 4096,
                        log: Callable[[str], None] = print) -> bundle_io.Bundle:
    """Build a TensorRT engine for ``graph`` of the bundle at ``root`` and add it to the bundle.

    ``graph`` defaults to the float16 graph when ``fp16`` (built strongly typed, the only half
    precision TensorRT 11 has), else float32. ``batch`` is the optimization profile (min, opt,
    max) of the batch axis. Raises TensorRTUnavailableError (with the reason) where TensorRT or a
    GPU is missing, or where half precision would need the weakly typed flag TensorRT 11 lacks.
    Returns the re-sealed bundle.
    """
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailableError(f"TensorRT engine not built: {reason}")
    root = Path(root)
    b = bundle_io.read_bundle(root)
    graph = graph or default_graph(b, fp16)
    info = b.graph_info(graph)
    int8_graph = info.get("dtype") == "int8"
    fp16_graph = False if int8_graph else _precision_plan(b, graph, fp16, log)
    options = TrtBuildOptions(fp16=(fp16 or fp16_graph) and not int8_graph, int8=int8_graph, min_batch=batch[0], opt_batch=batch[1], max_batch=batch[2],
                              workspace_mib=workspace_mib)
    ident = gpu_identity()
    key = engine_key(graph, options, ident)
    timing = timing_cache_path(engine_cache_dir(root), ident)
    plan = build_tensorrt_engine(b.path(info["file"]), options, timing_cache=timing, fp16_graph=fp16_graph, log=log)
    rel = f"{bundle_io.ENGINE_DIR}/{key}.plan"
    bundle_io.write_file(root, rel, plan)
    manifest = dict(b.manifest)
    engines = dict(manifest.get("engines", {}))
    engines[key] = engine_metadata(ident, graph, b.manifest["files"][info["file"]]["sha256"], options, rel,
                                   sha256_file(root / rel))
    manifest["engines"] = engines
    log(f"TensorRT engine {rel} ({len(plan) / 2**20:.1f} MiB) for {ident['gpu']}, TensorRT {ident['tensorrt']} "
        f"({ident['tensorrt_cuda'] or 'CUDA build unknown'})")
    return bundle_io.finalize_manifest(root, manifest, b.files + [rel])
