"""Feature engines: run one of the bundle's graphs (images -> patch embeddings, and for the
``scores_*`` graphs also each patch's nearest memory-bank distance and index).

One module per engine, all behind the :class:`FeatureEngine` protocol, each a row of the engines
table in :mod:`.table` (its ``open_variant`` opens a bundle's graph), with the engines x precisions
derived from it:

- :mod:`.onnxruntime_engine` (:class:`OnnxEngine`): onnxruntime, CPU/CUDA/TensorRT providers.
- :mod:`.openvino_engine` (:class:`OpenVinoEngine`): OpenVINO on x86 CPUs, fp32/bf16/int8; the
  ``openvino`` package is imported only when this engine is asked for.
- :mod:`.tensorrt_engine` (:class:`TensorRTEngine`): TensorRT engines built on the target GPU.

Nothing here imports torch.
"""

from __future__ import annotations

from .base import DeviceUnavailableError, FeatureEngine
from .onnxruntime_engine import OnnxEngine, create_session, ort_providers, provider_attempts
from .table import DEVICE_ENGINE, ENGINES, PRECISIONS, VARIANTS, Variant, engine_for_device, resolve
from .tensorrt_engine import (
    ENGINE_MATCH_FIELDS,
    TensorRTEngine,
    TrtBuildOptions,
    build_tensorrt_engine,
    engine_cache_dir,
    engine_key,
    engine_matches,
    engine_metadata,
    engine_requirements,
    gpu_identity,
    native_handle,
    tensorrt_cuda_major,
    tensorrt_has_weak_fp16,
    tensorrt_status,
    timing_cache_path,
)


def __getattr__(name: str):
    """The OpenVINO engine's names, imported on first use (the module itself imports openvino lazily too)."""
    if name in ("OpenVinoEngine", "openvino_cache_dir", "openvino_status", "cpu_capabilities"):
        from . import openvino_engine

        return getattr(openvino_engine, name)
    raise AttributeError(name)


__all__ = [
    "DEVICE_ENGINE", "ENGINES", "ENGINE_MATCH_FIELDS", "PRECISIONS", "VARIANTS", "DeviceUnavailableError",
    "FeatureEngine", "OnnxEngine", "TensorRTEngine", "TrtBuildOptions", "Variant", "build_tensorrt_engine",
    "create_session", "engine_cache_dir", "engine_for_device", "engine_key", "engine_matches", "engine_metadata",
    "engine_requirements", "gpu_identity", "native_handle", "openvino_cache_dir", "ort_providers",
    "provider_attempts", "resolve", "tensorrt_cuda_major", "tensorrt_has_weak_fp16", "tensorrt_status",
    "timing_cache_path",
]
