"""The GPU checks, in the order they run: the most valuable figures first.

Each check is a function of a :class:`Context` returning a dict of figures with ``status`` ok or
fail, or raising :class:`Skip` with the reason. ``requires`` names the probes (torch on CUDA,
onnxruntime's CUDA provider, TensorRT, faiss on the GPU) that must pass for it to run at all;
``bundles`` the recipes it needs (fitted first when absent, which the time budget counts).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gpu_workspace import BUNDLE_SECONDS, RECIPES, REHEARSAL, Sizes, Workspace

FP32_FEATURES_TOL = 1e-4  # torch on CUDA (TF32 off) against the CPU, max |a - b| / max |a|
# relative covering-radius difference allowed once float order splits the CPU and GPU selections:
# perturbing the features slightly (what float order does) moves the radius by less than this, while
# another random start moves it by more, and a random selection by far more
CORESET_RADIUS_TOL = 0.02


class Skip(Exception):
    """The check cannot run here; the message says why."""


@dataclass
class Context:
    work: Path
    deadline: float
    rehearse: bool = False  # every check on the CPU with tiny data: tests this script, not the GPU
    log: Callable[[str], None] = print
    probes: dict = field(default_factory=dict)
    _workspace: Workspace | None = None
    # what the checks run on: the GPU, or the CPU when rehearsing (set from ``rehearse``)
    torch_device: str = field(init=False)
    ort_device: str = field(init=False)
    ort_provider: str = field(init=False)
    parity_engine: str = field(init=False)

    def __post_init__(self) -> None:
        cpu = self.rehearse
        self.torch_device = self.ort_device = "cpu" if cpu else "cuda"
        self.ort_provider = "CPUExecutionProvider" if cpu else "CUDAExecutionProvider"
        self.parity_engine = "ort-cpu" if cpu else "ort-cuda"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace(self.work, self.torch_device, REHEARSAL if self.rehearse else Sizes(), self.log)
        return self._workspace


# -------------------------------------------------------------------------------------- probes
def probe_torch_cuda(ctx: Context) -> str | None:
    """None when torch can use a CUDA device, else the reason."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if ctx.rehearse:
        return None
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def tiny_graph(path: Path) -> Path:
    """A one-MatMul float32 ONNX graph: enough to see which provider loads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def ort_cuda_status(ctx: Context) -> dict:
    """Which onnxruntime build is loaded, which providers it offers, and which one a float32
    session actually gets with ``--device cuda`` (TF32 off): computed once per run."""
    if "ort" in ctx.probes:
        return ctx.probes["ort"]
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401  (loads the CUDA 13 libraries of the nvidia wheels first, as onnxruntime advises)
    import onnxruntime as ort

    from runtime.engines import OnnxEngine

    info: dict = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    with contextlib.suppress(ImportError):
        from onnxruntime.capi import build_and_package_info as build

        info["package"] = getattr(build, "package_name", None)
        info["built_for_cuda"] = getattr(build, "cuda_version", None) or None
    if not ctx.rehearse and "CUDAExecutionProvider" not in info["available"]:
        info["reason"] = (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the CPU build; the pack "
                          "installs onnxruntime-gpu on its last call)")
        ctx.probes["ort"] = info
        return info
    if not ctx.rehearse and hasattr(ort, "preload_dlls"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia wheels (LD_LIBRARY_PATH set by run.sh)
        info["preload_dlls_messages"] = out.getvalue().strip().splitlines()[-5:]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            eng = OnnxEngine(tiny_graph(Path(tmp) / "probe_fp32.onnx"), device=ctx.ort_device)
        except Exception as e:
            info["reason"] = f"no onnxruntime session on {ctx.ort_device}: {type(e).__name__}: {e}"
            ctx.probes["ort"] = info
            return info
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        y = eng.session.run(None, {"x": x})[0]
        info.update(provider=eng.provider, session_providers=eng.session.get_providers(),
                    provider_options=eng.session.get_provider_options().get(eng.provider, {}),
                    failures=eng.provider_failures, computes=bool(np.allclose(y, 2 * x)))
    if info["provider"] != ctx.ort_provider:
        info["reason"] = f"onnxruntime loaded {info['provider']} instead of {ctx.ort_provider}"
    ctx.probes["ort"] = info
    return info


def probe_ort_cuda(ctx: Context) -> str | None:
    return ort_cuda_status(ctx).get("reason")


def probe_tensorrt(ctx: Context) -> str | None:
    from runtime.engines import tensorrt_status

    ok, reason = tensorrt_status()
    return None if ok else reason


def probe_faiss_gpu(ctx: Context) -> str | None:
    try:
        import faiss
    except ImportError:
        return ("faiss is not installed; PyPI has no faiss build for CUDA 13 (faiss-gpu-cu12 is CUDA 12), so on "
                "this stack the GPU search is the in-graph search graph (check gpu-search)")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return f"faiss {faiss.__version__} is a CPU build (or sees no GPU)"
    return None


PROBES = {"torch-cuda": probe_torch_cuda, "ort-cuda": probe_ort_cuda, "tensorrt": probe_tensorrt,
          "faiss-gpu": probe_faiss_gpu}


# -------------------------------------------------------------------------------------- checks
def check_torch_features(ctx: Context) -> dict:
    """Patch features of both backbones in PyTorch on CUDA (TF32 off) against the CPU."""
    import torch

    from runtime.preprocess import preprocess_batch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ws = ctx.workspace()
    images = ws.test_images(8)
    out: dict = {"tolerance": FP32_FEATURES_TOL, "images": len(images), "backbones": {}}
    for name in RECIPES:
        cpu, gpu = ws.model(name, "cpu"), ws.model(name, ctx.torch_device)
        x = preprocess_batch(images, cpu.preprocess)
        a = cpu.embed_tensor(x)
        gpu.embed_tensor(x)  # warm-up (cuDNN picks its kernels)
        t0 = time.perf_counter()
        b = gpu.embed_tensor(x)
        t1 = time.perf_counter()
        out["backbones"][name] = {"weights": cpu.config.weights, "shape": list(a.shape),
                                  "features_max_rel_err": float(np.abs(a - b).max() / np.abs(a).max()),
                                  "gpu_ms_per_image": round(1000 * (t1 - t0) / len(images), 3)}
    ok = all(v["features_max_rel_err"] <= FP32_FEATURES_TOL for v in out["backbones"].values())
    return {"status": "ok" if ok else "fail", **out}


def check_fit(ctx: Context) -> dict:
    """Both bundles fitted on the GPU and exported with every graph; fit and export times."""
    ws = ctx.workspace()
    out = {}
    for name in RECIPES:
        reused = ws.has_bundle(name)
        ws.bundle(name)
        record = {k: v for k, v in ws.fit_record(name).items() if k not in ("recipe", "sizes")}
        out[name] = {**record, "reused": reused}
    return {"status": "ok", **out}


def covering_radius(x, selected: np.ndarray, chunk: int = 4096) -> float:
    """max over points of the distance to the nearest selected point (torch tensors on any device)."""
    import torch

    c = x[torch.as_tensor(selected, device=x.device)]
    c_sq = (c * c).sum(1)
    worst = 0.0
    for s in range(0, len(x), chunk):
        q = x[s : s + chunk]
        d = (q * q).sum(1, keepdim=True) - 2 * q @ c.T + c_sq
        worst = max(worst, float(d.min(1).values.clamp(min=0).max().sqrt()))
    return worst


def check_coreset(ctx: Context) -> dict:
    """The greedy coreset on CUDA against the CPU on wrn50's patch features of the training set:
    the same selection, or (once float order splits the two) a covering radius within 2%;
    and the speed-up."""
    import torch

    from patchcore.coreset import greedy_coreset, random_projection

    ws = ctx.workspace()
    model = ws.model("wrn50", ctx.torch_device)
    paths = ws.train_paths()
    feats = np.concatenate([model.embed_images([_read(p) for p in paths[s : s + 16]]) for s in range(0, len(paths), 16)])
    flat = feats.reshape(-1, feats.shape[-1])
    del model
    ratio = 0.1 if ctx.rehearse else 0.01
    greedy_coreset(flat[:2048], 0.01, device=ctx.torch_device)  # warm-up: CUDA context, cuBLAS
    t0 = time.perf_counter()
    cpu = greedy_coreset(flat, ratio, device="cpu")
    t1 = time.perf_counter()
    gpu = greedy_coreset(flat, ratio, device=ctx.torch_device)
    t2 = time.perf_counter()
    full = greedy_coreset(flat, 0.1, device=ctx.torch_device)
    t3 = time.perf_counter()
    same = bool(np.array_equal(cpu, gpu))
    diverge = None if same else int(np.argmax(cpu != gpu))
    x = random_projection(torch.as_tensor(flat).to(ctx.torch_device), 128, 0)
    r_cpu, r_gpu = covering_radius(x, cpu), covering_radius(x, gpu)
    rel = abs(r_gpu - r_cpu) / r_cpu if r_cpu else 0.0
    ok = same or rel <= CORESET_RADIUS_TOL
    return {"status": "ok" if ok else "fail", "patches": list(flat.shape), "ratio": ratio, "selected": len(cpu),
            "same_selection": same, "first_difference_at": diverge, "covering_radius_cpu": r_cpu,
            "covering_radius_gpu": r_gpu, "radius_rel_diff": rel, "radius_tolerance": CORESET_RADIUS_TOL,
            "cpu_seconds": round(t1 - t0, 3), "gpu_seconds": round(t2 - t1, 3),
            "speedup": round((t1 - t0) / max(t2 - t1, 1e-9), 1),
            "gpu_seconds_10pct": round(t3 - t2, 3), "selected_10pct": len(full)}


def _read(path: Path) -> np.ndarray:
    from runtime.images import read_image

    return read_image(path)


def check_ort_provider(ctx: Context) -> dict:
    """onnxruntime-gpu loads its CUDA provider, with TF32 off for float32 graphs, and computes."""
    info = dict(ort_cuda_status(ctx))
    tf32_off = info.get("provider_options", {}).get("use_tf32", "0") == "0"
    ok = info.get("provider") == ctx.ort_provider and info.get("computes") and tf32_off
    return {"status": "ok" if ok else "fail", "tf32_off": tf32_off, **info}


def _parity(ctx: Context, name: str) -> dict:
    from export.parity import run_parity

    ws = ctx.workspace()
    rep = run_parity(ws.bundle(name), ws.data(), engines=(ctx.parity_engine,), torch_device="cpu", log=ctx.log)
    if not rep.results and not rep.broken:
        raise Skip("; ".join(sorted({s["reason"] for s in rep.skipped})) or f"no {ctx.parity_engine} target")
    ctx.log(rep.format())
    d = rep.to_dict()
    targets = [{k: r[k] for k in ("name", "provider", "precision", "errors", "auroc", "verdicts", "failures", "ok")}
               for r in d["results"]]
    return {"status": "ok" if rep.ok else "fail", "images": d["n_images"], "reference": d["reference"],
            "targets": targets, "broken": d["broken"], "skipped": d["skipped"]}


def check_parity_effnet(ctx: Context) -> dict:
    """The effnet-lite0 bundle's every graph (features and in-graph search, fp32 and fp16) on
    onnxruntime's CUDA provider against PyTorch on the CPU: export.parity's tolerances (fp32 image
    scores <= 1e-4 relative, fp16 <= 1e-2), AUROC and verdicts."""
    return _parity(ctx, "effnet-lite0")


def check_parity_wrn50(ctx: Context) -> dict:
    """The same parity suite for the wide_resnet50_2 bundle (10% bank of 1024 dims inside its
    in-graph search graphs)."""
    return _parity(ctx, "wrn50")


def _throughput(ctx: Context, name: str, goal: float | None = None) -> dict:
    from gpu_throughput import BATCHES, measure

    ws = ctx.workspace()
    batches = (1, 2) if ctx.rehearse else BATCHES
    res = measure(ws.bundle(name), ws.line_images(), device=ctx.ort_device, batches=batches, deadline=ctx.deadline - 5,
                  log=ctx.log)
    if goal is not None and "best_end_to_end" in res:
        best = res["best_end_to_end"]
        res["goal_images_per_s"] = goal
        res["goal_met"] = best["images_per_s"] >= goal
        if not res["goal_met"]:
            res["short_of_goal"] = f"{best['images_per_s']:.0f} of {goal:.0f} images/s end to end; bounded by {best['bound']}"
    return {"status": "ok" if res["runs"] else "fail", **res}


def check_throughput_wrn50(ctx: Context) -> dict:
    """wide_resnet50_2 (random weights, 10% bank, 1024 dims): images/s and latency at batch
    1/8/32/64, fp32 and fp16, end to end from decoded 900x900 frames and for the graph alone,
    and where the time goes; the goal is 2,000 images/s end to end."""
    return _throughput(ctx, "wrn50", goal=2000.0)


def check_throughput_effnet(ctx: Context) -> dict:
    """effnet-lite0 (1% bank, 128 dims): the same throughput figures."""
    return _throughput(ctx, "effnet-lite0")


def check_gpu_search(ctx: Context) -> dict:
    """GPU search without faiss: the in-graph search graph on the CUDA provider, against numpy's
    exact search on the CPU; which path ran, agreement and the search time per image."""
    from runtime.predictor import Predictor
    from runtime.preprocess import preprocess_batch
    from runtime.search.build import build_index
    from runtime.search.scorer import PatchScorer

    ws = ctx.workspace()
    root = ws.bundle("wrn50")
    gpu = Predictor(root, device=ctx.ort_device, graph="scores_fp32", search="numpy")
    frames = ws.line_images()[:32]
    x = preprocess_batch(frames, gpu.spec)
    outs = gpu.engine.run_outputs(x)
    emb = outs["embeddings"]
    scorer = PatchScorer(gpu.scorer.bank, build_index(gpu.scorer.bank, "numpy")[0], gpu.scorer.n_reweight)
    t0 = time.perf_counter()
    ref = scorer.score(emb)
    t1 = time.perf_counter()
    got = gpu.scorer.score_candidates(emb, outs["nn_index"])
    t2 = time.perf_counter()
    exact_nn = ref.nearest.reshape(len(frames), -1)
    dist_err = float(np.abs(outs["nn_distance"] - ref.patch_scores).max() / np.abs(ref.patch_scores).max())
    img_err = float(np.max(np.abs(got.image_scores - ref.image_scores) / np.abs(ref.image_scores)))
    return {"status": "ok" if img_err <= 1e-4 else "fail",
            "path": f"in-graph search (scores_fp32) on {gpu.engine.provider}, exact rescoring on the CPU",
            "faiss": probe_faiss_gpu(ctx) or "faiss with GPUs present (check faiss-gpu)",
            "bank": list(gpu.scorer.bank.shape), "images": len(frames),
            "same_nearest_fraction": float(np.mean(outs["nn_index"] == exact_nn)),
            "in_graph_distance_max_rel_err": dist_err, "image_score_max_rel_err": img_err,
            "numpy_search_cpu_ms_per_image": round(1000 * (t1 - t0) / len(frames), 3),
            "rescoring_cpu_ms_per_image": round(1000 * (t2 - t1) / len(frames), 3)}


def check_faiss_gpu(ctx: Context) -> dict:
    """faiss on the GPU against numpy's exact search (where a faiss GPU build is installed)."""
    from runtime.predictor import Predictor
    from runtime.preprocess import preprocess_batch
    from runtime.search.build import build_index
    from runtime.search.scorer import PatchScorer

    ws = ctx.workspace()
    p = Predictor(ws.bundle("wrn50"), device=ctx.ort_device, graph="features_fp32", search="numpy")
    emb = p.engine.run(preprocess_batch(ws.line_images()[:16], p.spec))
    ref = PatchScorer(p.scorer.bank, build_index(p.scorer.bank, "numpy")[0], p.scorer.n_reweight).score(emb)
    t0 = time.perf_counter()
    scorer = PatchScorer(p.scorer.bank, build_index(p.scorer.bank, "faiss", device="cuda")[0], p.scorer.n_reweight)
    got = scorer.score(emb)
    secs = time.perf_counter() - t0
    img = float(np.max(np.abs(ref.image_scores - got.image_scores) / np.abs(ref.image_scores)))
    ok = scorer.backend == "faiss-gpu" and img <= 1e-6
    return {"status": "ok" if ok else "fail", "backend": scorer.backend, "image_max_rel_err": img,
            "seconds": round(secs, 3)}


def check_tensorrt(ctx: Context) -> dict:
    """A TensorRT engine built into the effnet-lite0 bundle, picked up by the runtime, and the
    parity suite on TensorRT for every graph."""
    import shutil

    from export.parity import run_parity
    from export.tensorrt_build import build_bundle_engine
    from runtime.engines import TensorRTEngine

    ws = ctx.workspace()
    root = ws.bundle("effnet-lite0")
    copy = Path(shutil.copytree(root, ctx.work / "trt-bundle", dirs_exist_ok=True))
    t0 = time.perf_counter()
    b = build_bundle_engine(copy, fp16=True, log=ctx.log)
    build_s = time.perf_counter() - t0
    messages: list[str] = []
    TensorRTEngine.from_bundle(copy, "features_fp16", log=messages.append).close()
    shipped = any("shipped in the bundle" in m for m in messages)
    rep = run_parity(copy, ws.data(), engines=("tensorrt",), torch_device="cpu", log=ctx.log)
    ctx.log(rep.format())
    return {"status": "ok" if rep.ok and shipped else "fail", "build_seconds": round(build_s, 1),
            "engines": sorted(b.manifest["engines"]), "shipped_engine_used": shipped,
            "parity": [{"name": r.name, "errors": r.errors, "ok": r.ok} for r in rep.results]}


@dataclass(frozen=True)
class Check:
    name: str
    phase: str  # "torch": needs torch on CUDA only; "ort": needs onnxruntime's CUDA provider
    requires: tuple[str, ...]
    bundles: tuple[str, ...]
    estimate_s: float  # on the H200 box, bundles excluded
    fn: Callable[[Context], dict]

    @property
    def proves(self) -> str:
        return " ".join((self.fn.__doc__ or self.name).split())


CHECKS = (
    Check("torch-features", "torch", ("torch-cuda",), (), 30, check_torch_features),
    Check("fit", "torch", ("torch-cuda",), ("effnet-lite0", "wrn50"), 5, check_fit),
    Check("coreset", "torch", ("torch-cuda",), (), 60, check_coreset),
    Check("ort-provider", "ort", ("ort-cuda",), (), 5, check_ort_provider),
    Check("parity-effnet-lite0", "ort", ("ort-cuda",), ("effnet-lite0",), 30, check_parity_effnet),
    Check("throughput-wrn50", "ort", ("ort-cuda",), ("wrn50",), 120, check_throughput_wrn50),
    Check("parity-wrn50", "ort", ("ort-cuda",), ("wrn50",), 60, check_parity_wrn50),
    Check("throughput-effnet-lite0", "ort", ("ort-cuda",), ("effnet-lite0",), 60, check_throughput_effnet),
    Check("gpu-search", "ort", ("ort-cuda",), ("wrn50",), 20, check_gpu_search),
    Check("faiss-gpu", "ort", ("faiss-gpu", "ort-cuda"), ("wrn50",), 20, check_faiss_gpu),
    Check("tensorrt", "ort", ("tensorrt",), ("effnet-lite0",), 180, check_tensorrt),
)


def needed_seconds(ctx: Context, check: Check) -> float:
    """The check's estimate plus the bundles it would have to fit first."""
    ws = ctx.workspace()
    return check.estimate_s + sum(BUNDLE_SECONDS[b] for b in check.bundles if not ws.has_bundle(b))
