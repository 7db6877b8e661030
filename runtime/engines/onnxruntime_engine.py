"""onnxruntime engine: execution providers in priority order; the provider that actually runs
is checked and reported, and a GPU provider that was asked for but cannot load is an error, never
a silent fall-back to the CPU. onnxruntime's own fall-back (which retries a failed provider list
as CUDA + CPU *without* provider options, dropping ``use_tf32=0``) is turned off; ``--device
auto`` retries provider by provider itself, with the options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from .base import DeviceUnavailableError


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


def provider_attempts(device: str, requested: list[str]) -> list[list[str]]:
    """The provider lists to try in turn. ``auto`` drops the first provider after each failure
    (TensorRT listed but its libraries missing: CUDA next, then the CPU); an explicit device is
    tried once, since a fall-back there would run something else than was asked for."""
    if device != "auto":
        return [requested]
    return [requested[i:] for i in range(len(requested))]


def _provider_options(providers: list[str], fp32_exact: bool) -> list:
    """CUDA's TF32 matmuls/convs keep only 10 mantissa bits: turned off for float32 graphs, whose
    parity tolerance (1e-4) they would break. (``use_tf32`` exists since onnxruntime 1.18.)
    The TensorRT provider has no such switch: float32 graphs through it may run with TF32
    (TensorRT's default), so use ``--device cuda`` (or a TensorRTEngine, built with TF32 off) where
    float32 parity matters."""
    import onnxruntime as ort

    version = tuple(int(v) for v in re.findall(r"\d+", ort.__version__)[:2])
    out: list = []
    for p in providers:
        if p == "CUDAExecutionProvider" and fp32_exact and version >= (1, 18):
            out.append((p, {"use_tf32": "0"}))
        else:
            out.append(p)
    return out


def create_session(graph: str | Path, opts, device: str, fp32_exact: bool):
    """``(session, failures)``: an onnxruntime session on the first provider list of
    :func:`provider_attempts` that loads, and the reasons the lists before it failed.

    onnxruntime's fall-back is disabled (``enable_fallback=0``; ``disable_fallback()`` also stops
    the one at run time), so provider options are never dropped on the way."""
    import onnxruntime as ort

    requested = ort_providers(device)
    failures: list[str] = []
    attempts = provider_attempts(device, requested)
    for i, providers in enumerate(attempts):
        try:
            session = ort.InferenceSession(str(graph), sess_options=opts,
                                           providers=_provider_options(providers, fp32_exact), enable_fallback=0)
        except Exception as e:  # onnxruntime raises RuntimeError, Fail, EPFail, ... by provider and version
            if i == len(attempts) - 1:
                if device in ("cuda", "tensorrt"):
                    raise DeviceUnavailableError(f"{providers[0]} could not load {Path(graph).name}: {e}") from e
                raise
            failures.append(f"{providers[0]}: {e}")
            continue
        if hasattr(session, "disable_fallback"):
            session.disable_fallback()
        return session, failures
    raise AssertionError("unreachable: provider_attempts returns at least one list")


def open_variant(bundle, variant, device: str = "auto", threads: int | None = None,
                 log: Callable[[str], None] = lambda s: None) -> "OnnxEngine":
    """The engines table's loader: ``variant``'s graph of ``bundle`` in onnxruntime on ``device``."""
    return OnnxEngine(bundle.path(bundle.graph_info(variant.graph)["file"]), device=device, threads=threads)


class OnnxEngine:
    def __init__(self, graph: str | Path, device: str = "auto", threads: int | None = None, spin: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # By default no busy-waiting after a run: the search that follows needs the same cores for
        # its BLAS threads. Spinning may lower the median a little but lengthens the tail, where the
        # threads fight over few cores (BENCHMARKS.md times both settings side by side); a line's
        # deadline is set by the tail.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        fp32 = "fp16" not in Path(graph).name
        self.session, self.provider_failures = create_session(graph, opts, device, fp32)
        requested = ort_providers(device)
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
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.precision = "int8" if "int8" in Path(graph).name else "fp16" if "float16" in self.input_type else "fp32"
        self.info = {"engine": "onnxruntime", "version": ort.__version__, "provider": self.provider,
                     "precision": self.precision}

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def input_shape(self) -> list:
        return list(self.session.get_inputs()[0].shape)

    @property
    def output_shape(self) -> list:
        return list(self.session.get_outputs()[0].shape)

    def _feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = images.astype(np.float16 if "float16" in self.input_type else np.float32, copy=False)
        return {self.input_name: x}

    def run(self, images: np.ndarray) -> np.ndarray:
        first = "embeddings" if "embeddings" in self.output_names else self.output_names[0]
        out = self.session.run([first], self._feed(images))[0]
        return out.astype(np.float32, copy=False)

    def run_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name (float outputs as float32)."""
        outs = self.session.run(None, self._feed(images))
        return {n: (o.astype(np.float32, copy=False) if o.dtype == np.float16 else o)
                for n, o in zip(self.output_names, outs)}
