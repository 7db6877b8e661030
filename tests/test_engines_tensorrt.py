"""The TensorRT code path against a fake ``tensorrt`` + ``cuda-python`` (no GPU needed).

TensorRT cannot be installed on the machines this suite runs on, so these tests stand in the
two modules with fakes that follow the TensorRT 10/11 and cuda-bindings Python APIs the engine
code calls (``Builder``, ``OnnxParser``, ``IBuilderConfig.set_timing_cache -> bool``,
``IExecutionContext.set_input_shape -> bool``, ``execute_async_v3(stream_handle)``, cudart's
``(err, value)`` tuples). "Device memory" is host memory, so engines really run. What they
prove: the status probe never raises, the engine's identity and match key, one metadata record
and one cache folder for export and runtime, TensorRT 11's missing weakly typed FP16, the
checked timing cache and input shapes, the native stream handle, and empty batches.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from runtime import bundle as bundle_io
from runtime import engines
from runtime.engines import (
    DeviceUnavailableError,
    TensorRTEngine,
    TrtBuildOptions,
    engine_cache_dir,
    engine_requirements,
    tensorrt_status,
)
from runtime.preprocess import PreprocessSpec

C, H, W, P, D = 3, 4, 4, 2, 3  # fake graph: (B, 3, 4, 4) -> embeddings (B, 2, 3) float16, nn_index (B, 2)


# ---------------------------------------------------------------------------------- fake cudart
class FakeStream:
    handle = 0xC0FFEE

    def __int__(self):  # int() on cuda-python objects is deprecated: the engine must not call it
        raise AssertionError("int(stream) called; use cuda.bindings.utils.get_cuda_native_handle")


class FakeCudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = "H2D"
        cudaMemcpyDeviceToHost = "D2H"

    def __init__(self, devices: int = 1):
        self.devices = devices
        self.memory: dict[int, np.ndarray] = {}
        self.freed: list[int] = []

    def cudaGetDeviceCount(self):
        return 0, self.devices

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"NVIDIA H200\x00", major=9, minor=0)

    def cudaDriverGetVersion(self):
        return 0, 13000

    def cudaStreamCreate(self):
        return 0, FakeStream()

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaMalloc(self, nbytes):
        buf = np.zeros(max(nbytes, 1), np.uint8)
        self.memory[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaFree(self, ptr):
        self.freed.append(ptr)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)


# ------------------------------------------------------------------------------- fake tensorrt
def fake_tensorrt(version: str = "10.13.0", weak_fp16: bool = True, cache_ok=(True, True)):
    """A module with the parts of the TensorRT Python API the engine code uses. ``cache_ok``:
    what ``set_timing_cache`` returns for a loaded cache and for a fresh one."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = {"set_flag": [], "clear_flag": [], "network_flags": None, "timing_cache": [], "stream": []}
    flags = {"TF32": "TF32", **({"FP16": "FP16", "INT8": "INT8"} if weak_fp16 else {})}  # both gone in TRT 11
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: dtype

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (lo, opt, hi)

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"timing-cache"

    class Config:
        def __init__(self):
            self.profile = None

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            trt.calls["set_flag"].append(flag)

        def clear_flag(self, flag):
            trt.calls["clear_flag"].append(flag)

        def add_optimization_profile(self, profile):
            self.profile = profile

        def create_timing_cache(self, blob):
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            trt.calls["timing_cache"].append(cache.blob)
            return cache_ok[0] if cache.blob else cache_ok[1]

        def get_timing_cache(self):
            return TimingCache(b"")

    class Network:
        def get_input(self, i):
            return types.SimpleNamespace(name="images", shape=(-1, C, H, W))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            lo, opt, hi = (s[0] for s in config.profile.shapes)
            return json.dumps({"min": lo, "opt": opt, "max": hi}).encode()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return Path(path).is_file()

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.batch = None
            self.addresses = {}

        def set_input_shape(self, name, shape):
            if tuple(shape[1:]) != (C, H, W) or not self.engine.lo <= shape[0] <= self.engine.hi:
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name):
            return {"images": (self.batch, C, H, W), "embeddings": (self.batch, P, D), "nn_index": (self.batch, P)}[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_handle):
            trt.calls["stream"].append(stream_handle)
            b = self.batch
            x = np.ctypeslib.as_array((ctypes.c_float * (b * C * H * W)).from_address(self.addresses["images"]))
            x = x.reshape(b, C, H, W)
            emb = np.ctypeslib.as_array((ctypes.c_uint16 * (b * P * D)).from_address(self.addresses["embeddings"]))
            emb.view(np.float16)[:] = x[:, 0, :P, :D].astype(np.float16).ravel()
            idx = np.ctypeslib.as_array((ctypes.c_int64 * (b * P)).from_address(self.addresses["nn_index"]))
            idx[:] = np.repeat(x[:, 1, 0, 0].astype(np.int64), P)
            return True

    class Engine:
        num_io_tensors = 3

        def __init__(self, plan):
            spec = json.loads(plan)
            self.lo, self.hi = spec["min"], spec["max"]

        def get_tensor_name(self, i):
            return ["images", "embeddings", "nn_index"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "images" else "out"

        def get_tensor_profile_shape(self, name, profile):
            return (self.lo, C, H, W), (self.lo, C, H, W), (self.hi, C, H, W)

        def get_tensor_dtype(self, name):
            return {"images": np.float32, "embeddings": np.float16, "nn_index": np.int64}[name]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(plan)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def install(monkeypatch, trt=None, cudart=None, native_handle: bool = True, dists=("tensorrt-cu13", "tensorrt_cu13_libs")):
    """Put the fakes where ``import tensorrt`` / ``from cuda.bindings import runtime`` find them."""
    trt = trt or fake_tensorrt()
    cudart = cudart or FakeCudart()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    if native_handle:
        utils = types.ModuleType("cuda.bindings.utils")
        utils.get_cuda_native_handle = lambda obj: obj.handle
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # import raises ImportError
    fake_dists = [types.SimpleNamespace(metadata={"Name": n}) for n in dists]
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(fake_dists))
    return trt, cudart


def make_bundle(root: Path, fp16_graph: bool = True) -> Path:
    """A minimal valid bundle: a bank and placeholder ONNX files (the fake parser only checks they exist)."""
    root.mkdir(parents=True)
    bundle_io.write_array(root, bundle_io.BANK_FILE, np.zeros((4, D), np.float32))
    graphs = {"features_fp32": {"file": "features_fp32.onnx", "dtype": "float32", "kind": "features"}}
    if fp16_graph:
        graphs["features_fp16"] = {"file": "features_fp16.onnx", "dtype": "float16", "kind": "features"}
    for g in graphs.values():
        (root / g["file"]).write_bytes(b"onnx " + g["dtype"].encode())
    manifest = {
        "name": "fake", "backbone": {"name": "fake", "weights_tag": "none", "layers": []},
        "preprocess": PreprocessSpec(resize=8, crop=4).to_dict(),
        "features": {"target_dim": D, "grid": [1, P], "input_size": [H, W]},
        "memory_bank": {"file": bundle_io.BANK_FILE, "rows": 4, "dim": D, "dtype": "float32"},
        "scoring": {"k": 1, "n_reweight": 0, "blur_sigma": 4.0}, "threshold": {"value": None, "scale": None},
        "versions": {}, "graphs": graphs,
    }
    bundle_io.finalize_manifest(root, manifest, [bundle_io.BANK_FILE] + [g["file"] for g in graphs.values()])
    return root


# ------------------------------------------------------------------------------------- status
def test_status_reports_a_wheel_that_does_not_load_instead_of_raising(monkeypatch, tmp_path):
    pkg = tmp_path / "site" / "tensorrt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise OSError("libcuda.so.1: cannot open shared object file")\n')
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(pkg.parent))
    ok, reason = tensorrt_status()
    assert not ok and "does not load" in reason and "libcuda" in reason


def test_status_reports_a_driver_error_from_cuda_python(monkeypatch):
    cudart = FakeCudart()
    cudart.cudaGetDeviceCount = lambda: (_ for _ in ()).throw(RuntimeError("Failed to dlopen libcuda.so.1"))
    install(monkeypatch, cudart=cudart)
    ok, reason = tensorrt_status()
    assert not ok and "no usable CUDA device" in reason and "libcuda" in reason


def test_status_ok_with_fakes(monkeypatch):
    install(monkeypatch)
    assert tensorrt_status() == (True, "TensorRT 10.13.0, 1 GPU(s)")


# ----------------------------------------------------------------------------------- identity
def test_identity_records_the_tensorrt_wheels_cuda_major_not_cuda_pythons_runtime(monkeypatch):
    install(monkeypatch)
    ident = engines.gpu_identity()
    assert ident == {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.13.0",
                     "tensorrt_cuda": "cu13", "cuda_driver": "13.0"}
    assert "cuda_runtime" not in ident


@pytest.mark.parametrize("dists, want", [(("tensorrt-cu12", "tensorrt_cu12_bindings"), "cu12"),
                                         (("tensorrt-cu12-libs", "tensorrt-cu13-libs"), "cu12+cu13"),
                                         (("tensorrt",), None), ((), None)])
def test_tensorrt_cuda_major_from_package_names(monkeypatch, dists, want):
    install(monkeypatch, dists=dists)
    assert engines.tensorrt_cuda_major() == want


def test_engine_match_ignores_driver_but_not_the_tensorrt_cuda_build(monkeypatch):
    install(monkeypatch)
    ident = engines.gpu_identity()
    want = engine_requirements(ident, "features_fp16", "abc", TrtBuildOptions(fp16=True))
    assert "cuda_driver" not in want and want["tensorrt_cuda"] == "cu13"
    record = engines.engine_metadata(ident, "features_fp16", "abc", TrtBuildOptions(fp16=True), "engines/x.plan", "d")
    assert engines.engine_matches({**record, "cuda_driver": "13.1", "cuda_runtime": "12.9"}, want)
    assert not engines.engine_matches({**record, "tensorrt_cuda": "cu12"}, want)


# ---------------------------------------------------------------------------------- building
def test_tensorrt11_without_fp16_graph_is_a_clear_refusal(monkeypatch, tmp_path):
    from export.tensorrt_build import TensorRTUnavailableError, build_bundle_engine

    install(monkeypatch, trt=fake_tensorrt("11.4.0", weak_fp16=False))
    root = make_bundle(tmp_path / "b", fp16_graph=False)
    with pytest.raises(TensorRTUnavailableError, match="no features_fp16: re-export"):
        build_bundle_engine(root, fp16=True, log=lambda s: None)


def test_tensorrt11_builds_the_fp16_graph_strongly_typed_and_says_so(monkeypatch, tmp_path):
    from export.tensorrt_build import build_bundle_engine

    trt, _ = install(monkeypatch, trt=fake_tensorrt("11.4.0", weak_fp16=False))
    root = make_bundle(tmp_path / "b")
    logs: list[str] = []
    b = build_bundle_engine(root, fp16=True, batch=(1, 2, 4), log=logs.append)
    (key, entry), = b.manifest["engines"].items()
    assert entry["graph"] == "features_fp16" and entry["precision"] == "fp16"
    assert trt.calls["network_flags"] == 1 << 1 and "FP16" not in trt.calls["set_flag"]
    assert any("strongly typed" in m for m in logs)
    assert entry["tensorrt_cuda"] == "cu13" and "cuda_runtime" not in entry
    assert bundle_io.read_bundle(root).manifest["engines"][key]["file"] == f"engines/{key}.plan"


def test_tensorrt10_weak_fp16_from_a_float32_graph_warns(monkeypatch, tmp_path):
    from export.tensorrt_build import build_bundle_engine

    trt, _ = install(monkeypatch)
    root = make_bundle(tmp_path / "b", fp16_graph=False)
    logs: list[str] = []
    build_bundle_engine(root, fp16=True, batch=(1, 2, 4), log=logs.append)
    assert "FP16" in trt.calls["set_flag"] and trt.calls["network_flags"] == 0
    assert any("weakly typed FP16" in m and "deprecated" in m for m in logs)


@pytest.mark.parametrize("version, weak", [("10.13.0", True), ("11.4.0", False)])
def test_int8_qdq_graph_is_built_by_explicit_quantization(monkeypatch, tmp_path, version, weak):
    """No calibrator: the scales come from the graph's Q/DQ nodes. TensorRT 10 builds it weakly
    typed with the INT8 flag, TensorRT 11 (no such flag) strongly typed."""
    onnx = tmp_path / "features_int8.onnx"
    onnx.write_bytes(b"x")
    trt, _ = install(monkeypatch, trt=fake_tensorrt(version, weak_fp16=weak))
    logs: list[str] = []
    options = TrtBuildOptions(int8=True, opt_batch=2, max_batch=4)
    engines.build_tensorrt_engine(onnx, options, log=logs.append)
    assert options.precision == "int8"
    if weak:
        assert trt.calls["set_flag"] == ["INT8"] and trt.calls["network_flags"] == 0
    else:
        assert trt.calls["set_flag"] == [] and trt.calls["network_flags"] == 1 << 1
    assert any("int8 QDQ graph, explicit quantization" in m for m in logs)
    with pytest.raises(ValueError, match="not both"):
        TrtBuildOptions(fp16=True, int8=True)


def test_float32_build_turns_tf32_off(monkeypatch, tmp_path):
    from export.tensorrt_build import build_bundle_engine

    trt, _ = install(monkeypatch)
    build_bundle_engine(make_bundle(tmp_path / "b"), fp16=False, batch=(1, 2, 4), log=lambda s: None)
    assert trt.calls["clear_flag"] == ["TF32"] and trt.calls["set_flag"] == []


def test_stale_timing_cache_is_replaced_and_a_refused_fresh_one_raises(monkeypatch, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another TensorRT")
    onnx = tmp_path / "features_fp32.onnx"
    onnx.write_bytes(b"x")
    trt, _ = install(monkeypatch, trt=fake_tensorrt(cache_ok=(False, True)))
    logs: list[str] = []
    engines.build_tensorrt_engine(onnx, TrtBuildOptions(opt_batch=2, max_batch=4), timing_cache=cache, log=logs.append)
    assert trt.calls["timing_cache"] == [b"from another TensorRT", b""]
    assert any("does not fit this TensorRT/GPU" in m for m in logs)
    assert cache.read_bytes() == b"timing-cache"  # written back after the build
    install(monkeypatch, trt=fake_tensorrt(cache_ok=(False, False)))
    with pytest.raises(RuntimeError, match="set_timing_cache returned False"):
        engines.build_tensorrt_engine(onnx, TrtBuildOptions(opt_batch=2, max_batch=4), timing_cache=cache, log=lambda s: None)


# ------------------------------------------------------------------ one record, one cache path
def test_export_and_runtime_write_the_same_record_under_one_cache_folder(monkeypatch, tmp_path):
    from export.tensorrt_build import build_bundle_engine

    install(monkeypatch)
    root = make_bundle(tmp_path / "b")
    shipped = build_bundle_engine(root, fp16=True, batch=(1, 8, 32), log=lambda s: None).manifest["engines"]
    logs: list[str] = []
    eng = TensorRTEngine.from_bundle(root, "features_fp32", TrtBuildOptions(opt_batch=2, max_batch=4), log=logs.append)
    cached = json.loads(next(engine_cache_dir(root).glob("*.json")).read_text())
    (entry,) = shipped.values()
    assert set(cached) == set(entry)  # one writer: the same fields in the manifest and the cache
    assert cached["file"].startswith("engines/cache/") and (root / cached["file"]).is_file()
    timing = list(engine_cache_dir(root).glob("timing-*.cache"))
    assert len(timing) == 1 and timing[0].name.endswith("-cu13.cache")  # export and runtime share it
    eng.close()
    again = TensorRTEngine.from_bundle(root, "features_fp32", TrtBuildOptions(opt_batch=2, max_batch=4), log=logs.append)
    assert any("using cached TensorRT engine" in m for m in logs)
    TensorRTEngine.from_bundle(root, "features_fp16", TrtBuildOptions(fp16=True, max_batch=32), log=logs.append)
    assert logs[-1].startswith("using TensorRT engine engines/") and "shipped in the bundle" in logs[-1]
    again.close()


# ---------------------------------------------------------------------------------- running
def _engine(monkeypatch, native_handle=True, max_batch=4):
    _, cudart = install(monkeypatch, native_handle=native_handle)
    plan = json.dumps({"min": 1, "opt": 2, "max": max_batch}).encode()
    return TensorRTEngine(plan, name="fake"), cudart


def test_run_splits_batches_converts_float16_and_uses_the_native_stream_handle(monkeypatch):
    eng, cudart = _engine(monkeypatch)
    x = np.random.default_rng(0).normal(size=(10, C, H, W)).astype(np.float32)
    x[:, 1, 0, 0] = np.arange(10)
    out = eng.run_outputs(x)
    assert out["embeddings"].dtype == np.float32 and out["embeddings"].shape == (10, P, D)
    np.testing.assert_allclose(out["embeddings"], x[:, 0, :P, :D], rtol=1e-3)
    np.testing.assert_array_equal(out["nn_index"][:, 0], np.arange(10))
    calls = sys.modules["tensorrt"].calls["stream"]
    assert calls == [FakeStream.handle] * 3  # chunks of 4 + 4 + 2
    eng.close()
    assert len(cudart.freed) == 3


def test_empty_batch_gives_empty_outputs(monkeypatch):
    eng, _ = _engine(monkeypatch)
    out = eng.run_outputs(np.zeros((0, C, H, W), np.float32))
    assert out["embeddings"].shape == (0, P, D) and out["embeddings"].dtype == np.float32
    assert out["nn_index"].shape == (0, P) and out["nn_index"].dtype == np.int64
    assert eng.run(np.zeros((0, C, H, W), np.float32)).shape == (0, P, D)


def test_refused_input_shape_is_a_clear_error(monkeypatch):
    eng, _ = _engine(monkeypatch)
    with pytest.raises(ValueError, match=r"refused input shape \(2, 3, 5, 5\).*batch 1\.\.4"):
        eng.run_outputs(np.zeros((2, C, 5, 5), np.float32))


def test_int_handle_only_where_cuda_bindings_has_no_utils(monkeypatch):
    monkeypatch.setattr(FakeStream, "__int__", lambda self: 7)
    eng, _ = _engine(monkeypatch, native_handle=False)
    eng.run_outputs(np.zeros((1, C, H, W), np.float32))
    assert sys.modules["tensorrt"].calls["stream"] == [7]


def test_without_tensorrt_the_engine_is_device_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DeviceUnavailableError, match="TensorRT is not installed"):
        TensorRTEngine(b"{}")
