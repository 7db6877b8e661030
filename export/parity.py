"""Parity: does the deployed runtime score exactly like the PyTorch model it came from?

The reference is ``PatchCore.load(bundle)`` in PyTorch. Each target is the runtime
:class:`~runtime.predictor.Predictor` on one graph with one engine: onnxruntime CPU, onnxruntime
CUDA and TensorRT, for every graph of the bundle (float32, float16, in-graph search). All see the
same test images of a class folder (a folder with only ``train/good``: its training images, see
:func:`run_parity`); the report gives, per target:

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

A target passes when every figure is within its tolerance (:data:`FP32`, :data:`FP16`, or :data:`REDUCED`
for the int8 and bf16 variants, judged by AUROC, unweighted image scores and verdicts). In
float16 the image-score tolerance applies to the unweighted image scores: float16's feature error
is large enough to tip a near-tie of eq. 7 (the reweighting then moves an image score by far more
than the feature error itself does), so the reweighted scores are judged by what a line sees of
them instead: the same AUROC within 0.1 points and the same verdicts outside the band.
``runtime_spec`` replaces the runtime's preprocessing (only): it shows that a preprocessing
mismatch, the classic cause of exported models scoring differently, is caught.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort
import torch

from patchcore.data import GOOD, Sample, load_mask, load_test_set
from patchcore.metrics import image_auroc, pixel_auroc
from patchcore.model import PatchCore
from runtime import errors
from runtime.bundle import Bundle, read_bundle
from runtime.engines import DeviceUnavailableError, TensorRTEngine, TrtBuildOptions, tensorrt_status
from runtime.engines.openvino_engine import openvino_status
from runtime.engines.table import variants
from runtime.images import read_image
from runtime.postprocess import Prediction
from runtime.predictor import Predictor
from runtime.preprocess import PreprocessSpec, preprocess_batch, preprocess_mask


@dataclass(frozen=True)
class Tolerance:
    features: float
    patch: float
    image: float
    maps: float
    auroc: float  # absolute, AUROC in [0, 1]
    image_scores: str = "reweighted"  # which image scores ``image`` bounds: "reweighted" or "unweighted"

    @property
    def band(self) -> float:
        """Relative half-width of the band around the threshold where verdicts may differ."""
        return 2.0 * self.image


FP32 = Tolerance(features=1e-4, patch=1e-4, image=1e-4, maps=1e-4, auroc=1e-4)
FP16 = Tolerance(features=2e-2, patch=1e-2, image=1e-2, maps=1e-2, auroc=1e-3, image_scores="unweighted")
# int8 / bf16 (README "Precision and engines"): what a line sees must hold, not the digits. Image
# AUROC and pixel AUROC within 0.5 points of float32; image scores before eq. 7 reweighting within
# REDUCED.image relative; verdicts identical outside a band of 2 x that around the threshold.
# Features, patch scores and maps are bounded loosely (a broken graph, not a rounding, breaks them).
REDUCED = Tolerance(features=0.5, patch=0.25, image=0.05, maps=0.25, auroc=5e-3, image_scores="unweighted")
_TOLERANCES = {"float32": FP32, "float16": FP16, "bfloat16": REDUCED, "int8": REDUCED}
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}
# parity engine name -> the engines x precisions table's engine
PARITY_ENGINES = {"ort-cpu": "onnxruntime", "ort-cuda": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


@dataclass
class Target:
    """One runtime configuration: ``engine`` (ort-cpu, ort-cuda, openvino, tensorrt) on ``graph`` (a
    ``--graph`` key of the engines x precisions table); ``precision`` float32, float16, bfloat16, int8."""

    engine: str
    graph: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.engine}:{self.graph}"

    @property
    def tolerance(self) -> Tolerance:
        return _TOLERANCES[self.precision]


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
    images: str = "test"  # which images: "test", or "training" for a folder without test images

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.broken and all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "bundle": self.bundle, "data": self.data, "n_images": self.n_images,
                "images": self.images, "reference": self.reference,
                "results": [{**asdict(r), "ok": r.ok} for r in self.results],
                "skipped": self.skipped, "broken": self.broken}

    def format(self) -> str:
        """A fixed-width table, one line per target, then failures and skips."""
        ref = self.reference
        lines = [f"parity of {self.bundle} on {self.n_images} {self.images} images of {self.data}",
                 f"reference {ref['engine']}: image AUROC {_pct(ref['image_auroc'])}, pixel AUROC {_pct(ref['pixel_auroc'])}",
                 f"{'target':34} {'features':>9} {'patch':>9} {'image':>9} {'maps':>9} {'img AUROC':>10} "
                 f"{'pix AUROC':>10} {'verdicts':>9}  result"]
        for r in self.results:
            e, v = r.errors, r.verdicts
            flips = "-" if v.get("checked") is None else f"{v['disagree_outside']}/{v['checked']}"
            lines.append(f"{r.name:34} {e['features']:9.1e} {e['patch']:9.1e} {e['image']:9.1e} {e['maps']:9.1e} "
                         f"{_pct(r.auroc['image']):>10} {_pct(r.auroc['pixel']):>10} {flips:>9}  "
                         f"{'ok' if r.ok else 'FAIL'}")
        if self.results:
            lines.append(VERDICTS_LEGEND)
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


VERDICTS_LEGEND = ("verdicts N/M: of the M images whose reference score lies outside the band around the threshold "
                   "(2 x the target's image tolerance), N got another ok/ng verdict from the target (must be 0; "
                   "inside the band a flip is allowed); - : the bundle has no threshold")


def parity_record(report: "ParityReport", bundle_id: str, created: str) -> dict[str, Any]:
    """What ``patchcore parity`` keeps beside the manifest (:mod:`runtime.parity_record`)."""
    return {"bundle_id": bundle_id, "created": created, "ok": report.ok, "data": report.data,
            "images": report.images, "n_images": report.n_images,
            "targets": {r.name: {"ok": r.ok, "precision": r.precision, **r.errors} for r in report.results},
            "skipped": [s["name"] for s in report.skipped], "broken": [b["name"] for b in report.broken]}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _ort_has(provider: str) -> bool:
    return provider in ort.get_available_providers()


def discover_targets(bundle: Bundle, engines: Sequence[str] = ("ort-cpu", "ort-cuda", "openvino", "tensorrt")
                     ) -> tuple[list[Target], list[dict[str, str]]]:
    """Every (engine, graph) pair of the engines x precisions table that the bundle offers and this
    machine can run, and the skipped ones with the reason."""
    graphs = set(bundle.manifest.get("graphs", {}))
    targets, skipped = [], []
    trt_ok, trt_reason = tensorrt_status()
    for engine in engines:
        if engine not in PARITY_ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose {', '.join(PARITY_ENGINES)}")
        for v in sorted(variants(PARITY_ENGINES[engine], graphs), key=lambda v: v.key):
            t = Target(engine, v.key, _DTYPES[v.precision])
            if engine == "openvino" and not openvino_status()[0]:
                skipped.append({"name": t.name, "reason": openvino_status()[1]})
            elif engine == "ort-cuda" and not _ort_has("CUDAExecutionProvider"):
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
    if target.engine == "openvino":
        return Predictor(bundle, device="openvino", graph=target.graph, search="numpy", log=log)
    engine = TensorRTEngine.from_bundle(bundle, target.graph,
                                        TrtBuildOptions(fp16=target.precision == "float16",
                                                        int8=target.precision == "int8"), log=log)
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


class ParityBroken(RuntimeError):
    """At least one runtime target broke a tolerance (the report says which)."""

    exit_code = errors.PARITY


def open_targets(bundle: Bundle, engines: Sequence[str], graphs: Sequence[str] | None,
                 log: Callable[[str], None] = lambda s: None
                 ) -> tuple[dict[str, tuple[Target, Predictor]], list[dict[str, str]], list[dict[str, str]]]:
    """A predictor per target this machine can run; the skipped targets (hardware or software
    absent) and the broken ones (present, but the graph does not load or build), with reasons."""
    targets, skipped = discover_targets(bundle, engines)
    if graphs:
        keys = {v.key for v in variants(graphs=set(bundle.manifest.get("graphs", {})))}
        missing = sorted(set(graphs) - keys)
        if missing:
            raise ValueError(f"bundle has no graph(s) {missing}; graphs: {sorted(bundle.manifest.get('graphs', {}))}")
        targets = [t for t in targets if t.graph in graphs]
    opened: dict[str, tuple[Target, Predictor]] = {}
    broken: list[dict[str, str]] = []
    for t in targets:
        try:
            opened[t.name] = (t, make_predictor(bundle, t, log))
        except DeviceUnavailableError as e:
            skipped.append({"name": t.name, "reason": str(e)})
        except Exception as e:  # noqa: BLE001 - any load/build failure of a present target is a parity failure
            broken.append({"name": t.name, "reason": f"{type(e).__name__}: {e}"})
    return opened, skipped, broken


class TargetComparison:
    """One target's running comparison with the reference, batch by batch."""

    def __init__(self, target: Target, predictor: Predictor):
        self.target, self.predictor = target, predictor
        self.acc = {k: _Acc() for k in ("features", "patch", "maps", "in_graph_distance")}
        self.image_err = 0.0
        self.unweighted_err = 0.0  # max patch score s*, before eq. 7 reweighting
        self.seconds = 0.0
        self.scores: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []

    def add(self, images: list[np.ndarray], emb_ref: np.ndarray, ref: Prediction) -> None:
        pred = self.predictor
        t0 = time.perf_counter()
        out = pred.predict(images)
        self.seconds += time.perf_counter() - t0
        x_rt = preprocess_batch(images, pred.spec)
        if pred.in_graph_search:
            outs = pred.engine.run_outputs(x_rt)
            self.acc["features"].add(emb_ref, outs["embeddings"])
            stitched = pred.layout.stitch(outs["nn_distance"].reshape(len(images), -1))  # tiles onto the canvas grid
            self.acc["in_graph_distance"].add(ref.patch_scores, stitched)
        else:
            self.acc["features"].add(emb_ref, pred.engine.run(x_rt))
        self.acc["patch"].add(ref.patch_scores, out.patch_scores)
        self.acc["maps"].add(ref.maps, out.maps)
        self.image_err = max(self.image_err, _max_rel(ref.image_scores, out.image_scores))
        n = len(images)
        self.unweighted_err = max(self.unweighted_err, _max_rel(ref.patch_scores.reshape(n, -1).max(1),
                                                                out.patch_scores.reshape(n, -1).max(1)))
        self.scores.append(out.image_scores)
        self.maps.append(out.maps)

    def judge(self, labels: np.ndarray, ref_scores: np.ndarray, ref_aurocs: tuple[float | None, float | None],
              masks: np.ndarray | None, threshold: float | None) -> TargetResult:
        """Errors, AUROCs and verdicts against the tolerance of the target's precision."""
        t, tol = self.target, self.target.tolerance
        got = np.concatenate(self.scores)
        errors = {"features": self.acc["features"].value, "patch": self.acc["patch"].value,
                  "image": self.image_err, "maps": self.acc["maps"].value, "image_unweighted": self.unweighted_err}
        if self.predictor.in_graph_search:
            errors["in_graph_distance"] = self.acc["in_graph_distance"].value
        ref_img, ref_pix = ref_aurocs
        img = image_auroc(labels, got) if ref_img is not None else None
        pix = pixel_auroc(masks, np.concatenate(self.maps)) if ref_pix is not None else None
        auroc = {"image": img, "pixel": pix, "image_diff": None if img is None else abs(img - ref_img),
                 "pixel_diff": None if pix is None else abs(pix - ref_pix)}
        checked = {"features": "features", "patch": "patch", "maps": "maps",
                   "image": "image" if tol.image_scores == "reweighted" else "image_unweighted"}
        failures = [f"{key} max relative error {errors[key]:.2e} > {getattr(tol, k):.0e}"
                    for k, key in checked.items() if not errors[key] <= getattr(tol, k)]  # NaN fails
        failures += [f"{k} AUROC differs by {auroc[f'{k}_diff']:.2e} > {tol.auroc:.0e}" for k in ("image", "pixel")
                     if auroc[f"{k}_diff"] is not None and not auroc[f"{k}_diff"] <= tol.auroc]
        verdicts = verdict_agreement(ref_scores, got, threshold, tol)
        if verdicts.get("disagree_outside"):
            failures.append(f"{verdicts['disagree_outside']} verdict(s) differ outside the band "
                            f"+-{tol.band:.0e} x threshold")
        return TargetResult(t.name, t.engine, t.graph, t.precision, self.predictor.engine.name, asdict(tol), errors,
                            auroc, verdicts, round(self.seconds, 3), failures)


def _max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    """max |got - ref| / |ref| elementwise; a non-finite value counts as infinite error."""
    rel = np.abs(np.asarray(got, np.float64) - ref) / np.maximum(np.abs(ref), 1e-30)
    return float(np.max(np.where(np.isfinite(rel), rel, np.inf)))


def verdict_agreement(ref: np.ndarray, got: np.ndarray, threshold: float | None, tol: Tolerance) -> dict[str, Any]:
    """Verdict agreement outside a band of ``tol.band`` x threshold (inside it a flip is allowed)."""
    out: dict[str, Any] = {"threshold": threshold, "band_rel": tol.band, "checked": None}
    if threshold is None:
        return out
    outside = np.abs(ref - threshold) > tol.band * abs(threshold)
    disagree = (ref >= threshold) != (got >= threshold)
    out.update(checked=int(outside.sum()), inside_band=int((~outside).sum()),
               disagree_outside=int((disagree & outside).sum()), disagree_inside=int((disagree & ~outside).sum()))
    return out


def run_parity(bundle_root: str | Path, data: str | Path,
               engines: Sequence[str] = ("ort-cpu", "ort-cuda", "openvino", "tensorrt"),
               graphs: Sequence[str] | None = None, max_images: int | None = None, batch_size: int = 8,
               torch_device: str = "cpu", runtime_spec: PreprocessSpec | None = None, reference=None,
               log: Callable[[str], None] = lambda s: None) -> ParityReport:
    """Compare PyTorch with every available runtime target on the test images of ``data``.

    A folder without test images (only ``train/good``) is compared on its training images: the
    runtime must score every image as PyTorch does, so they prove parity as well; the AUROCs are
    then not measured (one class of images) and the verdicts are compared as on any images.

    ``reference``: the fitted PatchCore the bundle was exported from, when it is in memory
    (saves rebuilding it); by default ``PatchCore.load(bundle)``, which also proves that the
    bundle alone reconstructs the PyTorch model."""
    bundle = read_bundle(bundle_root)
    ds = load_test_set(Path(data), need_test=False)
    pool, image_set = ds.test, "test"
    if not pool:
        pool, image_set = [Sample(p, 0, GOOD) for p in ds.train], "training"
        log(f"parity: {data} has no test images: comparing on its training images (train/good)")
    samples = [pool[i] for i in _subset(len(pool), max_images)]
    labels = np.array([s.label for s in samples])
    model = reference if reference is not None else PatchCore.load(bundle.root, device=torch_device)
    if model.device.type == "cuda":  # TF32 would cost the reference its float32 precision
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    opened, skipped, broken = open_targets(bundle, engines, graphs, log)
    comparisons = {}
    for name, (t, pred) in opened.items():
        if runtime_spec is not None:
            pred.spec = runtime_spec
        comparisons[name] = TargetComparison(t, pred)
    log(f"parity: {len(samples)} images, targets {', '.join(comparisons) or 'none'}")

    ref_scores, ref_maps, masks = [], [], []
    for s in range(0, len(samples), batch_size):
        chunk = samples[s : s + batch_size]
        images = [read_image(x.path) for x in chunk]
        emb_ref = model.embed_tensor(preprocess_batch(images, model.preprocess))
        ref = model.predict_embeddings(emb_ref)
        ref_scores.append(ref.image_scores)
        ref_maps.append(ref.maps)
        if ds.has_masks:
            masks += [preprocess_mask(load_mask(x, im.shape), model.preprocess) for x, im in zip(chunk, images)]
        for name, comp in list(comparisons.items()):
            try:
                comp.add(images, emb_ref, ref)
            except Exception as e:  # noqa: BLE001 - an engine failing at run time fails parity; the others go on
                broken.append({"name": name, "reason": f"{type(e).__name__}: {e}"})
                del comparisons[name]

    ref_s = np.concatenate(ref_scores)
    ref_img = image_auroc(labels, ref_s) if len(set(labels.tolist())) == 2 else None
    mask_arr = np.stack(masks) if masks else None
    ref_pix = pixel_auroc(mask_arr, np.concatenate(ref_maps)) if mask_arr is not None and mask_arr.any() else None
    results = [c.judge(labels, ref_s, (ref_img, ref_pix), mask_arr, model.threshold) for c in comparisons.values()]
    reference = {"engine": f"torch:{model.device}", "image_auroc": ref_img, "pixel_auroc": ref_pix,
                 "threshold": model.threshold}
    return ParityReport(str(bundle.root), str(data), len(samples), reference, results, skipped, broken, image_set)
