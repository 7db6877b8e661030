"""Feature engines: run the bundle's feature graph (images -> patch embeddings).

onnxruntime with execution providers in priority order; the provider that actually runs is
checked and reported, and a GPU provider that was asked for but cannot load is an error, never a
silent fall-back to the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class DeviceUnavailableError(RuntimeError):
    """The requested device or provider cannot be used on this machine."""


class FeatureEngine(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"

    def run(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised images -> (B, P, D) float32 embeddings."""


_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def ort_providers(device: str) -> list[str]:
    """Providers to request for ``device`` (auto, cpu, cuda, tensorrt), in priority order."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailableError(
                "device cuda requested but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            raise DeviceUnavailableError(
                f"device tensorrt requested but onnxruntime has no TensorrtExecutionProvider (available: {', '.join(available)})"
            )
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or tensorrt")
    return [p for p in _GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class OnnxEngine:
    def __init__(self, graph: str | Path, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = ort_providers(device)
        self.session = ort.InferenceSession(str(graph), sess_options=opts, providers=requested)
        used = self.session.get_providers()
        if device in ("cuda", "tensorrt") and used[0] != requested[0]:
            raise DeviceUnavailableError(
                f"{requested[0]} was requested but onnxruntime could only load {used}: "
                "check the CUDA/cuDNN/TensorRT libraries"
            )
        self.provider = used[0]
        self.name = f"onnxruntime:{self.provider}"
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type  # tensor(float) or tensor(float16)

    def run(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float16 if "float16" in self.input_type else np.float32, copy=False)
        out = self.session.run(None, {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)
