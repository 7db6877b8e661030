"""Calibrated int8 graphs: static post-training quantization of ``features_fp32`` in QDQ form.

onnxruntime.quantization's ``quantize_static`` with per-channel symmetric int8 weights and
symmetric int8 activations (QuantizeLinear/DequantizeLinear pairs around each quantized op). One
such graph runs on onnxruntime (CPU with VNNI, CUDA), OpenVINO (which fuses the pairs into its
int8 kernels) and TensorRT (explicit quantization: the scales come from the graph, no calibrator;
TensorRT takes only symmetric int8, hence symmetric activations). Activation ranges are calibrated
on good training images through the bundle's own preprocessing; the method, the image count and
which layers were kept in float are recorded in the manifest's graph entry.

``keep_float``: node groups left unquantized. ``first`` is the first convolution (it sees raw
normalised pixels, whose range int8 covers badly); ``last`` is the aggregation after the last
backbone convolution (pooling, resize, projection: the ops that make the embedding itself);
``depthwise`` are the grouped (depthwise) convolutions of EfficientNet-style trunks, whose
per-channel activation ranges one per-tensor int8 scale covers badly (keeping them in float cuts
the feature error well below first-only's: BENCHMARKS.md, "int8: which layers stay in float").
Backbones without them (ResNets) quantize every convolution but the first either way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from .errors import ExportError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT = ("none", "first", "last", "first+last", "first+depthwise")
DEFAULT_METHOD = "minmax"
DEFAULT_KEEP_FLOAT = "first+depthwise"  # chosen by measurement: BENCHMARKS.md "Precision and engines"
DEFAULT_CALIBRATION_IMAGES = 16
_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Settings:
    method: str = DEFAULT_METHOD
    images: int = DEFAULT_CALIBRATION_IMAGES
    keep_float: str = DEFAULT_KEEP_FLOAT

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"int8 calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        if self.keep_float not in KEEP_FLOAT:
            raise ValueError(f"--int8-keep-float must be one of {', '.join(KEEP_FLOAT)}, got {self.keep_float!r}")
        if self.images < 1:
            raise ValueError("int8 calibration needs at least one image")


class _Batches:
    """onnxruntime's CalibrationDataReader over (N, 3, H, W) float32 inputs, one image per call."""

    def __init__(self, input_name: str, inputs: np.ndarray):
        self.input_name = input_name
        self.items = iter(inputs[i : i + 1] for i in range(len(inputs)))

    def get_next(self):
        x = next(self.items, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:  # pragma: no cover - only some onnxruntime versions call it
        pass


def float_nodes(model: onnx.ModelProto, keep_float: str) -> list[str]:
    """Names of the nodes ``keep_float`` leaves in float32 (see the module docstring)."""
    nodes = list(model.graph.node)
    out: list[str] = []
    convs = [n for n in nodes if n.op_type == "Conv"]
    if "first" in keep_float and convs:
        out.append(convs[0].name)
    if "last" in keep_float and convs:
        last = max(i for i, n in enumerate(nodes) if n.op_type == "Conv")
        out += [n.name for n in nodes[last:] if n.op_type in _QUANTIZED_OPS or n.op_type in ("AveragePool", "Resize")]
    if "depthwise" in keep_float:
        out += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return [n for n in out if n]


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a name (exclusion lists name nodes; torch's exporter usually names them)."""
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    return model


def quantize_graph(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                   settings: Int8Settings = Int8Settings()) -> dict:
    """Write the int8 QDQ graph of ``fp32_path`` to ``out_path``, calibrated on ``calibration``
    ((N, 3, H, W) float32 network inputs). Returns the facts the manifest records."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - shape inference is an optimisation; quantize the graph as it is
            pre = fp32_path
        model = _named(onnx.load(str(pre)))
        excluded = float_nodes(model, settings.keep_float)
        named = Path(tmp) / "named.onnx"
        onnx.save_model(model, str(named))
        input_name = model.graph.input[0].name
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[settings.method]
        try:
            quantize_static(str(named), str(out_path), _Batches(input_name, calibration[: settings.images]),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=list(_QUANTIZED_OPS),
                            nodes_to_exclude=excluded, calibrate_method=method,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "CalibTensorRangeSymmetric": True})
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several classes
            raise ExportError(f"{out_path}: int8 quantization failed: {e}") from e
    q = onnx.load(str(out_path))
    n_q = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    return {"quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                             "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor symmetric",
                             "calibration": {"method": settings.method, "images": int(min(len(calibration), settings.images)),
                                             "source": "good training images, bundle preprocessing"},
                             "keep_float": settings.keep_float, "float_nodes": excluded,
                             "quantize_nodes": n_q}}


def calibration_inputs(model, paths: Sequence[Path], count: int) -> np.ndarray:
    """Network inputs of ``count`` good training images spread evenly over ``paths``, through the
    model's own preprocessing (the one the runtime applies)."""
    from runtime.images import read_image
    from runtime.preprocess import prepare, stack_inputs

    if not paths:
        raise ValueError("int8 calibration needs good training images")
    return stack_inputs([prepare(read_image(paths[i]), model.preprocess) for i in calibration_indices(len(paths), count)])


def calibration_indices(n: int, count: int) -> list[int]:
    """Which of ``n`` training images calibrate: ``count`` spread evenly."""
    return sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))


def relative_error(ref: np.ndarray, other: np.ndarray) -> float:
    """|a - b| / |a| over all features (Frobenius norms): the feature error parity reports."""
    ref, other = np.asarray(ref, np.float64), np.asarray(other, np.float64)
    return float(np.linalg.norm(ref - other) / max(np.linalg.norm(ref), 1e-12))

