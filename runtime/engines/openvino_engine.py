"""OpenVINO engine (the ``[openvino]`` extra) for Intel and AMD x86 CPUs.

Runs a bundle's ONNX graph with OpenVINO's CPU plugin at the precision its table row asks:
``fp32`` (f32 inference precision), ``bf16`` (the float32 graph run with bf16 inference precision:
needs a CPU with AVX512-BF16 or AMX) and ``int8`` (the bundle's QDQ graph: OpenVINO fuses its
Quantize/Dequantize pairs into int8 kernels, VNNI/AMX where present; the rest runs in f32). The
precision actually used is read back from the compiled model (its inference precision and the
runtime precision of its convolutions), logged, and reported in :attr:`OpenVinoEngine.info`.
Compiled models are cached by OpenVINO under ``<bundle>/engines/cache/openvino``.

``openvino`` is imported only when this engine is asked for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import DeviceUnavailableError
from .base import float32 as _float32
from .tensorrt_engine import engine_cache_dir

_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_status() -> tuple[bool, str]:
    """(usable, reason): whether OpenVINO and its CPU plugin load here. Never raises."""
    try:
        import openvino as ov
    except ImportError:
        return False, "OpenVINO is not installed (pip install 'patchcore-rt[openvino]')"
    except Exception as e:  # noqa: BLE001 - a broken install raises anything
        return False, f"OpenVINO is installed but does not load: {type(e).__name__}: {e}"
    try:
        devices = ov.Core().available_devices
    except Exception as e:  # noqa: BLE001
        return False, f"OpenVINO does not start: {type(e).__name__}: {e}"
    if "CPU" not in devices:
        return False, f"OpenVINO has no CPU plugin here (devices: {', '.join(devices) or 'none'})"
    return True, f"OpenVINO {ov.get_version().split('-')[0]}"


def available() -> tuple[bool, str]:
    """(usable here, why not), for the engines table (:meth:`runtime.plugins.Plugin.available`)."""
    return openvino_status()


def cpu_capabilities() -> list[str]:
    """OpenVINO's CPU optimization capabilities (``FP32``, ``BF16``, ``INT8``, ...); [] without OpenVINO."""
    ok, _ = openvino_status()
    if not ok:
        return []
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def runtime_precisions(compiled) -> Counter:
    """How many convolutions/matmuls of the compiled model run in each precision (``i8``, ``bf16``, ``f32``)."""
    count: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = _text(info["layerType"]) if "layerType" in info else ""
        if layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution") and "runtimePrecision" in info:
            count[_text(info["runtimePrecision"]).lower()] += 1
    return count


def openvino_cache_dir(bundle_root) -> Path:
    """OpenVINO's compiled-model cache: beside the TensorRT engines, ``<bundle>/engines/cache/openvino``."""
    return engine_cache_dir(bundle_root) / "openvino"


def open_variant(bundle, variant, device: str = "openvino", threads: int | None = None,
                 log: Callable[[str], None] = lambda s: None) -> "OpenVinoEngine":
    """The engines table's loader: ``variant``'s graph of ``bundle`` in OpenVINO on the CPU, at the
    variant's precision, compiled models cached beside the bundle."""
    return OpenVinoEngine(bundle.path(bundle.graph_info(variant.graph)["file"]), precision=variant.precision,
                          cache_dir=openvino_cache_dir(bundle.root), threads=threads, log=log)


class OpenVinoEngine:
    def __init__(self, graph: str | Path, precision: str = "fp32", cache_dir: str | Path | None = None,
                 threads: int | None = None, log: Callable[[str], None] = lambda s: None):
        ok, reason = openvino_status()
        if not ok:
            raise DeviceUnavailableError(reason)
        if precision not in _HINTS:
            raise ValueError(f"OpenVINO runs fp32, bf16 or int8 graphs, not {precision!r}")
        import openvino as ov

        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in caps:
            raise DeviceUnavailableError(f"this CPU has no bf16 arithmetic (OpenVINO CPU capabilities: {', '.join(caps)})")
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        model = core.read_model(str(graph))
        self.metadata = _onnx_metadata(model)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.input_shape = [d.get_length() if d.is_static else "batch" for d in model.inputs[0].get_partial_shape()]
        self.output_shape = [d.get_length() if d.is_static else None for d in model.outputs[0].get_partial_shape()]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32, bf16
        used = runtime_precisions(self.compiled)
        self.precision = "int8" if used.get("i8", 0) or used.get("u8", 0) else ("bf16" if "bf16" in hint else "fp32")
        if precision == "int8" and self.precision != "int8":
            raise DeviceUnavailableError(f"OpenVINO ran none of {Path(graph).name}'s layers in int8 "
                                         f"(runtime precisions: {dict(used)}): this CPU has no int8 kernels for it")
        self.name = f"openvino:CPU:{self.precision}"
        self.info = {"engine": "openvino", "version": ov.get_version().split("-")[0], "precision": self.precision,
                     "inference_precision": hint, "layer_precisions": dict(used),
                     "cache_dir": str(cache_dir) if cache_dir else None}
        log(f"OpenVINO {self.info['version']} CPU: ran {precision} as {self.precision} "
            f"(inference precision {hint}; layers {dict(used)})")

    def run_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(images, dtype=np.float32)
        res = self.request.infer({0: x})
        return {n: _float32(np.asarray(res[o])) for n, o in zip(self.output_names, self.compiled.outputs)}

    def run(self, images: np.ndarray) -> np.ndarray:
        first = "embeddings" if "embeddings" in self.output_names else self.output_names[0]
        return self.run_outputs(images)[first].astype(np.float32, copy=False)


def _onnx_metadata(model) -> dict[str, str]:
    """The ONNX ``metadata_props`` OpenVINO's ONNX frontend keeps in the model's rt_info (JSON strings)."""
    out: dict[str, str] = {}
    try:
        info = model.get_rt_info()
        meta = info["framework"] if "framework" in info else None
    except Exception:  # noqa: BLE001 - rt_info layout differs between OpenVINO versions
        return out
    if meta is None:
        return out
    try:
        return {str(k): _text(v) for k, v in dict(meta).items()}
    except Exception:  # noqa: BLE001
        return out


def _text(value) -> str:
    """An rt_info value (OpenVINO's OVAny) as text."""
    return value.astype(str) if hasattr(value, "astype") else str(value)
