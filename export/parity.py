"""Parity: does the deployed runtime score exactly like the PyTorch model it came from?

The reference is ``PatchCore.load(bundle)`` in PyTorch. Each target is the runtime
:class:`~runtime.predictor.Predictor` on one graph with one engine: onnxruntime CPU, onnxruntime
CUDA and TensorRT, for every graph of the bundle (float32, float16, in-graph search). All see the
same test images of a class folder; the report gives, per target:

- max relative errors: features, patch scores, anomaly maps and in-graph distances relative to
  the reference's largest magnitude (``max|a - b| / max|a|``; elementwise ratios explode near 0),
  image scores elementwise (``max |a - b| / |a|``: every image's score must hold), and for
  diagnosis the unweighted image scores (max patch score; eq. 7 reweighting is discontinuous:
  when two patches or bank neighbours are nearly tied, a tiny feature error can select another
  neighbourhood N_b(m*) and move the weight by far more than the error);
- image and pixel AUROC of reference and target, and their difference;
- verdicts: images whose reference score lies outside a band of ``2 x image tolerance`` (relative)
  around the calibrated threshold must get the same verdict; inside it a flip is allowed and
  counted.

A target passes when every figure is within its tolerance (:data:`FP32` or :data:`FP16`).
``runtime_spec`` replaces the runtime's preprocessing (only): it shows that a preprocessing
mismatch, the classic cause of exported models scoring differently, is caught.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.bundle import Bundle, read_bundle
from runtime.engines import DeviceUnavailableError, TensorRTEngine, TrtBuildOptions, tensorrt_status
from runtime.images import read_image
from runtime.predictor import Predictor
from runtime.preprocess import PreprocessSpec, preprocess_batch, preprocess_mask


@dataclass(frozen=True)
class Tolerance:
    features: float
    patch: float
    image: float
    maps: float
    auroc: float  # absolute, AUROC in [0, 1]

    @property
    def band(self) -> float:
        """Relative half-width of the band around the threshold where verdicts may differ."""
        return 2.0 * self.image


FP32 = Tolerance(features=1e-4, patch=1e-4, image=1e-4, maps=1e-4, auroc=1e-4)
FP16 = Tolerance(features=2e-2, patch=1e-2, image=1e-2, maps=1e-2, auroc=1e-3)


@dataclass
class Target:
    """One runtime configuration: ``engine`` (ort-cpu, ort-cuda, tensorrt) on ``graph``."""

    engine: str
    graph: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.engine}:{self.graph}"

    @property
    def tolerance(self) -> Tolerance:
        return FP16 if self.precision == "float16" else FP32


@dataclass
class TargetResult:
    name: str
    engine: str
    graph: str
    precision: str
    provider: str
    tolerance: dict[str, float]
    errors: dict[str, float]
    auroc: dict[str, float | None]
    verdicts: dict[str, Any]
    seconds: float
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    bundle: str
    data: str
    n_images: int
    reference: dict[str, Any]
    results: list[TargetResult]
    skipped: list[dict[str, str]]  # targets this machine lacks (no GPU, no TensorRT): not failures
    broken: list[dict[str, str]] = field(default_factory=list)  # targets that failed to load or run

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.broken and all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "bundle": self.bundle, "data": self.data, "n_images": self.n_images,
                "reference": self.reference, "results": [{**asdict(r), "ok": r.ok} for r in self.results],
                "skipped": self.skipped, "broken": self.broken}

    def format(self) -> str:
        """A fixed-width table, one line per target, then failures and skips."""
        ref = self.reference
        lines = [f"parity of {self.bundle} on {self.n_images} images of {self.data}",
                 f"reference {ref['engine']}: image AUROC {_pct(ref['image_auroc'])}, pixel AUROC {_pct(ref['pixel_auroc'])}",
                 f"{'target':34} {'features':>9} {'patch':>9} {'image':>9} {'maps':>9} {'img AUROC':>10} "
                 f"{'pix AUROC':>10} {'verdicts':>9}  result"]
        for r in self.results:
            e, v = r.errors, r.verdicts
            flips = "-" if v.get("checked") is None else f"{v['disagree_outside']}/{v['checked']}"
            lines.append(f"{r.name:34} {e['features']:9.1e} {e['patch']:9.1e} {e['image']:9.1e} {e['maps']:9.1e} "
                         f"{_pct(r.auroc['image']):>10} {_pct(r.auroc['pixel']):>10} {flips:>9}  "
                         f"{'ok' if r.ok else 'FAIL'}")
        for r in self.results:
            for f in r.failures:
                lines.append(f"FAIL {r.name}: {f}")
            if not r.ok and r.errors["image"] > r.tolerance["image"] >= r.errors.get("image_unweighted", 1.0):
                lines.append(f"note {r.name}: the unweighted image scores (max patch score) agree to "
                             f"{r.errors['image_unweighted']:.1e}: the difference comes from eq. 7 reweighting, "
                             "where near-tied patches or bank neighbours pick another N_b(m*) and jump the weight")
            if "in_graph_distance" in r.errors:
                lines.append(f"note {r.name}: in-graph nn_distance max rel err {r.errors['in_graph_distance']:.1e} "
                             "(the runtime rescored exactly)")
        for b in self.broken:
            lines.append(f"FAIL {b['name']}: could not run: {b['reason']}")
        by_reason: dict[str, list[str]] = {}
        for s in self.skipped:
            by_reason.setdefault(s["reason"], []).append(s["name"])
        for reason, names in by_reason.items():
            lines.append(f"skipped {', '.join(names)}: {reason}")
        lines.append("PARITY OK" if self.ok else "PARITY FAILED")
        return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _ort_has(provider: str) -> bool:
    import onnxruntime as ort

    return provider in ort.get_available_providers()


def discover_targets(bundle: Bundle, engines: Sequence[str] = ("ort-cpu", "ort-cuda", "tensorrt")
                     ) -> tuple[list[Target], list[dict[str, str]]]:
    """Every (engine, graph) pair this machine can run, and the skipped ones with the reason."""
    graphs = bundle.manifest.get("graphs", {})
    targets, skipped = [], []
    trt_ok, trt_reason = tensorrt_status()
    for engine in engines:
        if engine not in ("ort-cpu", "ort-cuda", "tensorrt"):
            raise ValueError(f"unknown engine {engine!r}; choose ort-cpu, ort-cuda or tensorrt")
        for key, info in sorted(graphs.items()):
            t = Target(engine, key, info.get("dtype", "float32"))
            if engine == "ort-cuda" and not _ort_has("CUDAExecutionProvider"):
                skipped.append({"name": t.name, "reason": "onnxruntime has no CUDAExecutionProvider "
                                "(install onnxruntime-gpu on a machine with a CUDA GPU)"})
            elif engine == "tensorrt" and not trt_ok:
                skipped.append({"name": t.name, "reason": trt_reason})
            else:
                targets.append(t)
    return targets, skipped


def make_predictor(bundle: Bundle, target: Target, log: Callable[[str], None] = lambda s: None) -> Predictor:
    """The runtime for ``target``. Every target searches with numpy (exact rescoring), so the
    comparison isolates the engine; GPU search is checked on its own (scripts/gpu_checks.py)."""
    if target.engine == "ort-cpu":
        return Predictor(bundle, device="cpu", graph=target.graph, search="numpy")
    if target.engine == "ort-cuda":
        return Predictor(bundle, device="cuda", graph=target.graph, search="numpy")
    engine = TensorRTEngine.from_bundle(bundle, target.graph,
                                        TrtBuildOptions(fp16=target.precision == "float16"), log=log)
    return Predictor(bundle, device="cuda", graph=target.graph, engine=engine, search="numpy")


def _subset(n: int, k: int | None) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (so both good and defective images stay)."""
    if not k or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


class _Acc:
    """max |a - b| and max |a| accumulated over batches."""

    def __init__(self) -> None:
        self.diff = 0.0
        self.ref = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        if not np.all(np.isfinite(got64)):
            self.diff = float("inf")
        else:
            self.diff = max(self.diff, float(np.max(np.abs(ref64 - got64))))
        self.ref = max(self.ref, float(np.max(np.abs(ref64))))

    @property
    def value(self) -> float:
        return self.diff / self.ref if self.ref > 0 else (0.0 if self.diff == 0 else float("inf"))


def _load_test_set(data: Path):
    from patchcore.data import DatasetError, load_class

    try:
        return load_class(data)
    except DatasetError as e:
        if "no mask" not in str(e):
            raise
        return load_class(data, image_level_only=True)


def run_parity(bundle_root: str | Path, data: str | Path, engines: Sequence[str] = ("ort-cpu", "ort-cuda", "tensorrt"),
               graphs: Sequence[str] | None = None, max_images: int | None = None, batch_size: int = 8,
               torch_device: str = "cpu", runtime_spec: PreprocessSpec | None = None, reference=None,
               log: Callable[[str], None] = lambda s: None) -> ParityReport:
    """Compare PyTorch with every available runtime target on the test images of ``data``.

    ``reference``: the fitted PatchCore the bundle was exported from, when it is in memory
    (saves rebuilding it); by default ``PatchCore.load(bundle)``, which also proves that the
    bundle alone reconstructs the PyTorch model."""
    from patchcore.data import load_mask
    from patchcore.metrics import image_auroc, pixel_auroc
    from patchcore.model import PatchCore

    bundle = read_bundle(bundle_root)
    ds = _load_test_set(Path(data))
    samples = [ds.test[i] for i in _subset(len(ds.test), max_images)]
    labels = np.array([s.label for s in samples])
    model = reference if reference is not None else PatchCore.load(bundle.root, device=torch_device)
    if model.device.type == "cuda":  # TF32 would cost the reference its float32 precision
        import torch

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    targets, skipped = discover_targets(bundle, engines)
    if graphs:
        missing = sorted(set(graphs) - set(bundle.manifest.get("graphs", {})))
        if missing:
            raise ValueError(f"bundle has no graph(s) {missing}; graphs: {sorted(bundle.manifest.get('graphs', {}))}")
        targets = [t for t in targets if t.graph in graphs]
    predictors: dict[str, Predictor] = {}
    broken: list[dict[str, str]] = []
    for t in list(targets):
        try:
            predictors[t.name] = make_predictor(bundle, t, log)
        except DeviceUnavailableError as e:  # the hardware/software is not there: a skip
            skipped.append({"name": t.name, "reason": str(e)})
            targets.remove(t)
        except Exception as e:  # it is there but the graph does not load or build: a failure
            broken.append({"name": t.name, "reason": f"{type(e).__name__}: {e}"})
            targets.remove(t)
    for p in predictors.values():
        if runtime_spec is not None:
            p.spec = runtime_spec
    log(f"parity: {len(samples)} images, targets {', '.join(t.name for t in targets) or 'none'}")

    acc = {t.name: {k: _Acc() for k in ("features", "patch", "maps", "in_graph_distance")} for t in targets}
    img_err = {t.name: 0.0 for t in targets}
    unw_err = {t.name: 0.0 for t in targets}  # max patch score s*, before eq. 7 reweighting
    seconds = {t.name: 0.0 for t in targets}
    ref_scores, ref_maps, masks = [], [], []
    got_scores = {t.name: [] for t in targets}
    got_maps = {t.name: [] for t in targets}
    has_masks = ds.has_masks
    for s in range(0, len(samples), batch_size):
        chunk = samples[s : s + batch_size]
        images = [read_image(x.path) for x in chunk]
        x_ref = preprocess_batch(images, model.preprocess)
        emb_ref = model.embed_tensor(x_ref)
        ref = model.predict_embeddings(emb_ref)
        ref_scores.append(ref.image_scores)
        ref_maps.append(ref.maps)
        if has_masks:
            masks += [preprocess_mask(load_mask(x, im.shape), model.preprocess) for x, im in zip(chunk, images)]
        for t in list(targets):
            pred = predictors[t.name]
            a = acc[t.name]
            try:
                t0 = time.perf_counter()
                out = pred.predict(images)
                seconds[t.name] += time.perf_counter() - t0
                x_rt = preprocess_batch(images, pred.spec)
                if pred.in_graph_search:
                    outs = pred.engine.run_outputs(x_rt)
                    a["features"].add(emb_ref, outs["embeddings"])
                    a["in_graph_distance"].add(ref.patch_scores.reshape(len(images), -1), outs["nn_distance"])
                else:
                    a["features"].add(emb_ref, pred.engine.run(x_rt))
            except Exception as e:  # an engine that fails at run time fails parity, the others go on
                broken.append({"name": t.name, "reason": f"{type(e).__name__}: {e}"})
                targets.remove(t)
                continue
            a["patch"].add(ref.patch_scores, out.patch_scores)
            a["maps"].add(ref.maps, out.maps)
            rel = np.abs(out.image_scores - ref.image_scores) / np.maximum(np.abs(ref.image_scores), 1e-30)
            img_err[t.name] = max(img_err[t.name], float(np.max(np.where(np.isfinite(rel), rel, np.inf))))
            s_ref, s_got = ref.patch_scores.reshape(len(images), -1).max(1), out.patch_scores.reshape(len(images), -1).max(1)
            rel = np.abs(s_got - s_ref) / np.maximum(np.abs(s_ref), 1e-30)
            unw_err[t.name] = max(unw_err[t.name], float(np.max(np.where(np.isfinite(rel), rel, np.inf))))
            got_scores[t.name].append(out.image_scores)
            got_maps[t.name].append(out.maps)

    ref_s = np.concatenate(ref_scores)
    two_classes = len(set(labels.tolist())) == 2
    ref_img_auc = image_auroc(labels, ref_s) if two_classes else None
    mask_arr = np.stack(masks) if has_masks and masks else None
    ref_pix_auc = pixel_auroc(mask_arr, np.concatenate(ref_maps)) if mask_arr is not None and mask_arr.any() else None
    threshold = model.threshold
    results = []
    for t in targets:
        tol = t.tolerance
        got_s = np.concatenate(got_scores[t.name])
        errors = {"features": acc[t.name]["features"].value, "patch": acc[t.name]["patch"].value,
                  "image": img_err[t.name], "maps": acc[t.name]["maps"].value,
                  "image_unweighted": unw_err[t.name]}
        if predictors[t.name].in_graph_search:
            errors["in_graph_distance"] = acc[t.name]["in_graph_distance"].value
        img_auc = image_auroc(labels, got_s) if two_classes else None
        pix_auc = pixel_auroc(mask_arr, np.concatenate(got_maps[t.name])) if ref_pix_auc is not None else None
        auroc = {"image": img_auc, "pixel": pix_auc,
                 "image_diff": None if img_auc is None else abs(img_auc - ref_img_auc),
                 "pixel_diff": None if pix_auc is None else abs(pix_auc - ref_pix_auc)}
        verdicts: dict[str, Any] = {"threshold": threshold, "band_rel": tol.band, "checked": None}
        failures = []
        for k in ("features", "patch", "image", "maps"):
            limit = getattr(tol, k)
            if not errors[k] <= limit:  # also catches NaN
                failures.append(f"{k} max relative error {errors[k]:.2e} > {limit:.0e}")
        for k in ("image", "pixel"):
            d = auroc[f"{k}_diff"]
            if d is not None and not d <= tol.auroc:
                failures.append(f"{k} AUROC differs by {d:.2e} > {tol.auroc:.0e}")
        if threshold is not None:
            band = tol.band * abs(threshold)
            outside = np.abs(ref_s - threshold) > band
            disagree = (ref_s >= threshold) != (got_s >= threshold)
            verdicts.update(checked=int(outside.sum()), inside_band=int((~outside).sum()),
                            disagree_outside=int((disagree & outside).sum()),
                            disagree_inside=int((disagree & ~outside).sum()))
            if verdicts["disagree_outside"]:
                failures.append(f"{verdicts['disagree_outside']} verdict(s) differ outside the band "
                                f"+-{tol.band:.0e} x threshold")
        pred = predictors[t.name]
        results.append(TargetResult(t.name, t.engine, t.graph, t.precision, pred.engine.name, asdict(tol), errors,
                                    auroc, verdicts, round(seconds[t.name], 3), failures))
    reference = {"engine": f"torch:{model.device}", "image_auroc": ref_img_auc, "pixel_auroc": ref_pix_auc,
                 "threshold": threshold}
    return ParityReport(str(bundle.root), str(data), len(samples), reference, results, skipped, broken)
