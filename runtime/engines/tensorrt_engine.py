"""TensorRT engine: a TensorRT 10/11 engine built on the target machine from the bundle's ONNX
(an engine only runs on the GPU model and TensorRT build it was made with) and cached under
:func:`engine_cache_dir`, keyed by graph, precision, batch profile, GPU name, compute capability,
TensorRT version and the CUDA major of the TensorRT wheels. Needs ``tensorrt`` and
``cuda-python``; where either or a GPU is missing, :func:`tensorrt_status` says which and
:class:`TensorRTEngine` raises :class:`DeviceUnavailableError` with that message.

An int8 QDQ graph (``features_int8``) is built with TensorRT's explicit quantization: the scales
come from its QuantizeLinear/DequantizeLinear nodes, so no calibrator is set (TensorRT 10 docs,
"Explicit Quantization"); the ``INT8`` builder flag is only needed by TensorRT 10's weakly typed
networks and is gone in 11, where a QDQ graph is built strongly typed.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import ENGINE_DIR
from ..fileio import sha256_file
from .base import DeviceUnavailableError
from .base import float32 as _float32


def _cudart():
    """cuda-python's runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def _check(result, what: str):
    """cuda-python returns (error, *values); raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeviceUnavailableError(f"CUDA call {what} failed: {err}")
    return values[0] if len(values) == 1 else values


def native_handle(obj) -> int:
    """The address behind a cuda-python object (a stream): ``int(obj)`` is deprecated since
    cuda-bindings 12.9.1 in favour of ``cuda.bindings.utils.get_cuda_native_handle``."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): whether TensorRT, cuda-python and a CUDA GPU are all present here.

    Never raises: a TensorRT wheel on a host without a driver fails inside its import or in
    cuda-python, and that is a reason too."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "TensorRT is not installed (pip install '.[gpu-cu13]' or '.[gpu-cu12]'; needs an NVIDIA GPU and driver)"
    except Exception as e:  # OSError (libnvinfer/libcuda missing), RuntimeError, ...
        return False, f"TensorRT is installed but does not load: {type(e).__name__}: {e}"
    try:
        version = str(trt.__version__)
    except Exception as e:
        return False, f"TensorRT is installed but does not load: {type(e).__name__}: {e}"
    if not re.match(r"\d+\.", version):
        return False, f"TensorRT reports an unreadable version {version!r}"
    if int(version.split(".")[0]) < 10:
        return False, f"TensorRT {version} is too old: the engine code targets the TensorRT 10/11 API"
    try:
        cudart = _cudart()
    except ImportError:
        return False, "cuda-python is not installed (pip install cuda-python): TensorRT buffers need it"
    except Exception as e:
        return False, f"cuda-python is installed but does not load: {type(e).__name__}: {e}"
    try:
        count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except Exception as e:
        return False, f"no usable CUDA device ({e})"
    if count < 1:
        return False, "no CUDA GPU visible (check the driver and CUDA_VISIBLE_DEVICES)"
    return True, f"TensorRT {version}, {count} GPU(s)"


def available() -> tuple[bool, str]:
    """(usable here, why not), for the engines table (:meth:`runtime.plugins.Plugin.available`)."""
    return tensorrt_status()


def tensorrt_has_weak_fp16() -> bool:
    """Whether this TensorRT still has the weakly typed ``BuilderFlag.FP16`` (TensorRT 10;
    deprecated in 10.12, removed in 11, where half precision comes only from float16 graphs)."""
    import tensorrt as trt

    return hasattr(trt.BuilderFlag, "FP16")


def tensorrt_cuda_major() -> str | None:
    """The CUDA build of the installed TensorRT wheels, read from package metadata: ``cu12`` or
    ``cu13`` (``tensorrt-cu13``, ``tensorrt-cu13-libs``, ...); None when TensorRT came without
    such wheels (a tarball, a container). Two majors at once (a broken install) are both named."""
    from importlib import metadata

    found = set()
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
        m = re.fullmatch(r"tensorrt-(cu\d+)(-libs|-bindings)?", name)
        if m:
            found.add(m.group(1))
    return "+".join(sorted(found)) or None


def gpu_identity(device: int = 0) -> dict[str, Any]:
    """What an engine is tied to: GPU name and compute capability, the TensorRT version and the
    CUDA major of its wheels (:func:`tensorrt_cuda_major`). The driver version is recorded but
    not matched (drivers are backward compatible); cuda-python's own runtime version is not
    recorded at all, since it says nothing about the CUDA that TensorRT runs on."""
    import tensorrt as trt

    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    drv = int(_check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"))
    return {
        "gpu": name.strip("\x00").strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "tensorrt": trt.__version__,
        "tensorrt_cuda": tensorrt_cuda_major(),
        "cuda_driver": f"{drv // 1000}.{(drv % 1000) // 10}",
    }


# the identity fields an engine must match to be used (see gpu_identity)
ENGINE_MATCH_FIELDS = ("gpu", "compute_capability", "tensorrt", "tensorrt_cuda")


@dataclass(frozen=True)
class TrtBuildOptions:
    """fp16: build half-precision kernels. A float16 ONNX graph is built as a strongly typed
    network (the TensorRT 10.12+ way, the only one in TensorRT 11); ``fp16`` on a float32 graph
    uses the weakly typed ``BuilderFlag.FP16`` where this TensorRT still has it. Float32 builds
    turn TF32 off so they keep the float32 parity tolerance.
    min/opt/max_batch: the optimization profile of the batch axis. workspace_mib: builder
    scratch memory limit."""

    fp16: bool = False
    int8: bool = False  # an int8 QDQ graph: explicit quantization, scales from the graph (no calibrator)
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 4096

    def __post_init__(self) -> None:
        if self.fp16 and self.int8:
            raise ValueError("an engine is built either from the float16 graph or from the int8 QDQ graph, not both")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def engine_key(graph: str, options: TrtBuildOptions, ident: dict[str, Any]) -> str:
    """File stem of an engine: what it is and the hardware/software it only runs on."""
    cuda = f"-{ident['tensorrt_cuda']}" if ident.get("tensorrt_cuda") else ""
    return (f"{graph}-{options.precision}-b{options.min_batch}-{options.opt_batch}-{options.max_batch}"
            f"-{_slug(ident['gpu'])}-sm{ident['compute_capability'].replace('.', '')}-trt{ident['tensorrt']}{cuda}")


def engine_cache_dir(bundle_root: str | Path) -> Path:
    """Where engines built on the target (and their timing cache) are kept: ``<bundle>/engines/cache``,
    not part of the bundle's checksummed files."""
    return Path(bundle_root) / ENGINE_DIR / "cache"


def engine_requirements(ident: dict[str, Any], graph: str, onnx_sha256: str, options: TrtBuildOptions) -> dict[str, Any]:
    """The fields an engine's record must hold, exactly, for it to be used here."""
    return {**{k: ident.get(k) for k in ENGINE_MATCH_FIELDS}, "graph": graph, "onnx_sha256": onnx_sha256,
            "options": asdict(options)}


def engine_matches(record: dict[str, Any], requirements: dict[str, Any]) -> bool:
    return all(record.get(k) == v for k, v in requirements.items())


def engine_metadata(ident: dict[str, Any], graph: str, onnx_sha256: str, options: TrtBuildOptions,
                    file: str, plan_sha256: str) -> dict[str, Any]:
    """The record of one built engine: the manifest's ``engines`` entry at export and the
    ``.json`` beside a cached engine alike. ``file`` is relative to the bundle root."""
    return {
        **ident,
        **engine_requirements(ident, graph, onnx_sha256, options),
        "file": file,
        "plan_sha256": plan_sha256,
        "precision": options.precision,
        "profile": {"min": options.min_batch, "opt": options.opt_batch, "max": options.max_batch},
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _attach_timing_cache(config, cache_path: Path | None, log: Callable[[str], None]) -> None:
    """Load ``cache_path`` into the builder config; a cache that TensorRT refuses (written by
    another TensorRT or GPU) is replaced by a fresh one, and a refused fresh one is an error."""
    blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
        return
    if blob:
        log(f"timing cache {cache_path} does not fit this TensorRT/GPU: starting a fresh one")
        if config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            return
    raise RuntimeError("TensorRT refused its timing cache (IBuilderConfig.set_timing_cache returned False)")


def build_tensorrt_engine(onnx_path: str | Path, options: TrtBuildOptions = TrtBuildOptions(),
                          timing_cache: str | Path | None = None, fp16_graph: bool | None = None,
                          log: Callable[[str], None] = print) -> bytes:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and build a serialized engine.

    ``fp16_graph``: whether the ONNX computes in float16 (built strongly typed); None guesses it
    from the bundle's file naming (``*fp16*``). Parser errors are logged one per line and raised.
    ``timing_cache`` (a file) is loaded when present and written back after the build, so
    rebuilds on the same GPU skip layer timing.
    """
    ok, reason = tensorrt_status()
    if not ok:
        raise DeviceUnavailableError(reason)
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    strongly_typed = "fp16" in onnx_path.name if fp16_graph is None else fp16_graph
    if options.int8:
        # explicit quantization: TensorRT 10 builds a QDQ graph weakly typed with the INT8 flag
        # (deprecated since 10.12); TensorRT 11 has no such flag and builds it strongly typed
        strongly_typed = not hasattr(trt.BuilderFlag, "INT8")
    if options.fp16 is False and strongly_typed and not options.int8:
        raise ValueError(f"{onnx_path} is a float16 graph: build it with fp16=True")
    if options.fp16 and not strongly_typed:
        if not tensorrt_has_weak_fp16():
            raise DeviceUnavailableError(
                f"TensorRT {trt.__version__} has no weakly typed FP16 flag: build the bundle's float16 graph "
                "(features_fp16) instead"
            )
        ident = gpu_identity()
        if tuple(int(v) for v in ident["compute_capability"].split(".")) < (5, 3):
            raise DeviceUnavailableError(f"{ident['gpu']} (sm {ident['compute_capability']}) has no float16 arithmetic")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # follows ONNX external data beside the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            log(f"TensorRT ONNX parser: {e}")
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the graph ({len(errors)} error(s)): "
                           + "; ".join(errors[:3]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.int8 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)
    if not options.fp16 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)

    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    if any(d < 0 for d in chw):
        raise ValueError(f"{onnx_path}: only the batch axis may be dynamic, input shape is {tuple(inp.shape)}")
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (options.min_batch, *chw), (options.opt_batch, *chw), (options.max_batch, *chw))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    _attach_timing_cache(config, cache_path, log)

    log(f"building TensorRT {options.precision} engine from {onnx_path.name} "
        f"({'int8 QDQ graph, explicit quantization' if options.int8 else 'strongly typed float16 graph' if strongly_typed else 'float32 graph'}, "
        f"batch {options.min_batch}/{options.opt_batch}/{options.max_batch}, TensorRT {trt.__version__})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def timing_cache_path(cache_dir: Path, ident: dict[str, Any]) -> Path:
    """The timing cache file for this GPU and TensorRT build (shared by all its builds)."""
    cuda = f"-{ident['tensorrt_cuda']}" if ident.get("tensorrt_cuda") else ""
    return Path(cache_dir) / f"timing-{_slug(ident['gpu'])}-sm{ident['compute_capability'].replace('.', '')}" \
        f"-trt{ident['tensorrt']}{cuda}.cache"


def open_variant(bundle, variant, device: str = "tensorrt", threads: int | None = None,
                 log: Callable[[str], None] = print) -> "TensorRTEngine":
    """The engines table's loader: ``variant``'s graph of ``bundle`` as a TensorRT engine for this GPU
    (shipped, cached or built here: :meth:`TensorRTEngine.from_bundle`)."""
    return TensorRTEngine.from_bundle(bundle, variant.graph, log=log)


class TensorRTEngine:
    """A deserialized TensorRT engine with device buffers sized for its largest batch.

    ``run``/``run_outputs`` take host arrays; batches above the profile's maximum are split, an
    empty batch gives empty outputs.
    """

    def __init__(self, plan: bytes, name: str = "tensorrt", info: dict[str, Any] | None = None):
        ok, reason = tensorrt_status()
        if not ok:
            raise DeviceUnavailableError(reason)
        import tensorrt as trt

        self._trt = trt
        self._cudart = _cudart()
        self.info = dict(info or {})
        self.name = name
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise DeviceUnavailableError(
                "TensorRT could not deserialize the engine: it was built for another GPU or TensorRT version"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        min_shape, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._stream_handle = native_handle(self._stream)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._tails: dict[str, tuple[int, ...]] = {}  # tensor shapes after the batch axis
        self._set_batch_shape(tuple(max_shape))
        for n in names:
            shape = tuple(max_shape) if n == self.input_name else tuple(self.context.get_tensor_shape(n))
            self._tails[n] = shape[1:]
            nbytes = int(np.prod(shape)) * self._dtypes[n].itemsize
            ptr = int(_check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[n] = (ptr, nbytes)
            self.context.set_tensor_address(n, ptr)

    def _set_batch_shape(self, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(self.input_name, shape):
            raise ValueError(f"TensorRT engine {self.name} refused input shape {shape} "
                             f"(its profile takes batch {self.min_batch}..{self.max_batch})")

    @classmethod
    def from_bundle(cls, bundle, graph: str = "features_fp32", options: TrtBuildOptions | None = None,
                    rebuild: bool = False, log: Callable[[str], None] = print) -> "TensorRTEngine":
        """The engine for ``graph`` of ``bundle`` (a Bundle or folder) on this GPU.

        Uses, in order: an engine shipped in the bundle's ``engines`` section built for this GPU,
        TensorRT build and options; one cached in :func:`engine_cache_dir` from the same ONNX;
        else builds one from the ONNX here and caches it (with its timing cache)."""
        from ..bundle import Bundle, read_bundle

        ok, reason = tensorrt_status()
        if not ok:
            raise DeviceUnavailableError(reason)
        b = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        info = b.graph_info(graph)
        onnx_path = b.path(info["file"])
        if options is None:
            options = TrtBuildOptions(fp16=info.get("dtype") == "float16", int8=info.get("dtype") == "int8")
        ident = gpu_identity()
        onnx_sha = b.manifest["files"][info["file"]]["sha256"]
        want = engine_requirements(ident, graph, onnx_sha, options)
        for key, entry in b.manifest.get("engines", {}).items():
            if engine_matches(entry, want) and not rebuild:
                log(f"using TensorRT engine {entry['file']} shipped in the bundle")
                return cls(b.path(entry["file"]).read_bytes(), name=f"tensorrt:{key}", info=entry)
        key = engine_key(graph, options, ident)
        cache_dir = engine_cache_dir(b.root)
        plan_path, meta_path = cache_dir / f"{key}.plan", cache_dir / f"{key}.json"
        if not rebuild and plan_path.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if engine_matches(meta, want) and meta.get("plan_sha256") == sha256_file(plan_path):
                log(f"using cached TensorRT engine {plan_path}")
                return cls(plan_path.read_bytes(), name=f"tensorrt:{key}", info=meta)
            log(f"cached engine {plan_path} does not match this bundle/GPU: rebuilding")
        timing = timing_cache_path(cache_dir, ident)
        plan = build_tensorrt_engine(onnx_path, options, timing_cache=timing,
                                     fp16_graph=info.get("dtype") == "float16", log=log)
        cache_dir.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(plan)
        meta = engine_metadata(ident, graph, onnx_sha, options, plan_path.relative_to(b.root).as_posix(),
                               sha256_file(plan_path))
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return cls(plan, name=f"tensorrt:{key}", info=meta)

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cudart, H2D, D2H = self._cudart, self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, \
            self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        x = np.ascontiguousarray(x, dtype=self._dtypes[self.input_name])
        self._set_batch_shape(x.shape)
        ptr, _ = self._buffers[self.input_name]
        _check(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, H2D, self._stream), "cudaMemcpyAsync")
        if not self.context.execute_async_v3(self._stream_handle):
            raise RuntimeError("TensorRT execution failed")
        outs = {}
        for n in self.output_names:
            out = np.empty(tuple(self.context.get_tensor_shape(n)), self._dtypes[n])
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[n][0], out.nbytes, D2H, self._stream),
                   "cudaMemcpyAsync")
            outs[n] = out
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {n: _float32(o) for n, o in outs.items()}

    def run_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if len(images) == 0:
            return {n: _float32(np.empty((0, *self._tails[n]), self._dtypes[n])) for n in self.output_names}
        parts = [self._run_chunk(images[s : s + self.max_batch]) for s in range(0, len(images), self.max_batch)]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}

    def run(self, images: np.ndarray) -> np.ndarray:
        first = "embeddings" if "embeddings" in self.output_names else self.output_names[0]
        return self.run_outputs(images)[first].astype(np.float32, copy=False)

    def close(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:  # pragma: no cover - GPU only
        try:
            self.close()
        except Exception:
            pass
