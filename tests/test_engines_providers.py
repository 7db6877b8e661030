"""onnxruntime provider selection against a fake onnxruntime (no GPU build needed).

onnxruntime's Python session retries a provider list that fails to load as ``[CUDA, CPU]`` with
``provider_options=None`` (its ``enable_fallback``), which drops ``use_tf32=0``: float32 graphs
would then run with TF32 on the GPU. The engine must turn that off, retry with its own options,
and still refuse a GPU device that cannot load.
"""

from __future__ import annotations

import sys
import types

import pytest

from runtime.engines import DeviceUnavailableError, OnnxEngine, provider_attempts

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def fake_ort(available, fails=(), loads_as=None):
    """An onnxruntime stand-in: sessions whose first provider is in ``fails`` raise like a
    provider library that cannot load; ``loads_as`` overrides the providers a session reports."""
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.31.1"
    ort.created = []
    ort.get_available_providers = lambda: list(available)
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    class SessionOptions:
        intra_op_num_threads = 0
        graph_optimization_level = None

        def add_session_config_entry(self, key, value):
            pass

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=None, **kwargs):
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            ort.created.append({"providers": providers, "kwargs": kwargs})
            if names[0] in fails:
                raise RuntimeError(f"{names[0]}: libnvinfer.so.10: cannot open shared object file")
            self.names = loads_as or names
            self.fallback = True

        def disable_fallback(self):
            self.fallback = False

        def get_providers(self):
            return list(self.names)

        def get_inputs(self):
            return [types.SimpleNamespace(name="images", type="tensor(float)")]

        def get_outputs(self):
            return [types.SimpleNamespace(name="embeddings")]

    ort.SessionOptions, ort.InferenceSession = SessionOptions, InferenceSession
    return ort


@pytest.fixture
def use(monkeypatch):
    def _use(ort):
        monkeypatch.setitem(sys.modules, "onnxruntime", ort)
        return ort
    return _use


def test_auto_retries_without_tensorrt_and_keeps_the_cuda_options(use):
    ort = use(fake_ort([TRT, CUDA, CPU], fails={TRT}))
    eng = OnnxEngine("features_fp32.onnx", device="auto")
    assert eng.provider == CUDA and eng.name == f"onnxruntime:{CUDA}"
    first, second = ort.created
    assert [p if isinstance(p, str) else p[0] for p in first["providers"]] == [TRT, CUDA, CPU]
    assert second["providers"] == [(CUDA, {"use_tf32": "0"}), CPU]  # onnxruntime's fall-back would pass None
    assert all(c["kwargs"].get("enable_fallback") == 0 for c in ort.created)
    assert eng.session.fallback is False  # the run-time fall-back is off too
    assert len(eng.provider_failures) == 1 and "libnvinfer" in eng.provider_failures[0]


def test_auto_ends_on_the_cpu_when_no_gpu_provider_loads(use):
    ort = use(fake_ort([TRT, CUDA, CPU], fails={TRT, CUDA}))
    eng = OnnxEngine("features_fp32.onnx", device="auto")
    assert eng.provider == CPU and len(ort.created) == 3 and len(eng.provider_failures) == 2


def test_auto_raises_the_graphs_own_error_when_even_the_cpu_fails(use):
    use(fake_ort([CPU], fails={CPU}))
    with pytest.raises(RuntimeError, match="CPUExecutionProvider") as info:
        OnnxEngine("features_fp32.onnx", device="auto")
    assert not isinstance(info.value, DeviceUnavailableError)


def test_float16_graphs_get_no_tf32_switch(use):
    ort = use(fake_ort([CUDA, CPU]))
    OnnxEngine("features_fp16.onnx", device="cuda")
    assert ort.created[0]["providers"] == [CUDA, CPU]


def test_explicit_cuda_that_cannot_load_is_device_unavailable(use):
    ort = use(fake_ort([CUDA, CPU], fails={CUDA}))
    with pytest.raises(DeviceUnavailableError, match="CUDAExecutionProvider could not load features_fp32.onnx"):
        OnnxEngine("features_fp32.onnx", device="cuda")
    assert len(ort.created) == 1  # no retry on another provider


def test_explicit_cuda_that_silently_ran_on_the_cpu_is_refused(use):
    use(fake_ort([CUDA, CPU], loads_as=[CPU]))
    with pytest.raises(DeviceUnavailableError, match="could only load"):
        OnnxEngine("features_fp32.onnx", device="cuda")


def test_provider_attempts():
    assert provider_attempts("auto", [TRT, CUDA, CPU]) == [[TRT, CUDA, CPU], [CUDA, CPU], [CPU]]
    assert provider_attempts("cuda", [CUDA, CPU]) == [[CUDA, CPU]]
