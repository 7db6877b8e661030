"""The export pipeline behind ``patchcore export`` and ``make export``: fit (or reuse a bundle
fitted with the same settings), calibrate, write the bundle with its graphs, build engines.

A plain library function (:func:`export_model`) so that the command line only parses and
prints, and scripts can call the same steps.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from patchcore.config import PatchCoreConfig
from patchcore.data import NoTestImages, load_class, load_test_set
from patchcore.model import PatchCore
from patchcore.recipe import model_for
from patchcore.registry import WeightsUnavailableError
from patchcore.synthetic import make_synthetic_class
from runtime.bundle import Bundle, BundleError, read_bundle
from runtime.calibration import threshold_words
from runtime.engines.table import variants
from runtime.fileio import sha256_file
from runtime.operating_point import describe

from .onnx_export import export_bundle
from .tensorrt_build import TensorRTUnavailableError, build_bundle_engine

SYNTHETIC_DEST = Path("datasets/synthetic")
HIGH_FALSE_CALLS = 0.05  # an operating point that calls more good parts NG than this is flagged in words


@dataclass
class ExportRequest:
    """What to export: the fit settings, where the data and the bundle are, which graphs."""

    config: PatchCoreConfig
    out: Path
    data: Path | None = None  # None: the embedded synthetic class
    name: str | None = None
    fp16: bool = True
    scoring_graph: bool = False
    bank_dtype: str = "float32"
    tensorrt: bool = False
    calibrate: Path | None = None
    reuse: bool = False
    int8: Any = None  # export.quantize.Int8Settings: also write features_int8
    mm_per_px: float | None = None  # recorded as units.mm_per_px: region areas in mm² at runtime


@dataclass
class ExportResult:
    bundle: Bundle
    data: Path
    reused: bool
    tensorrt_skipped: str | None = None

    def summary(self) -> dict[str, Any]:
        """The one JSON line the command prints."""
        m = self.bundle.manifest
        out = {"bundle": str(self.bundle.root), "id": self.bundle.bundle_id, "reused": self.reused,
               "graphs": sorted(m["graphs"]), "engines": sorted(m.get("engines", {})),
               "files": {k: v["bytes"] for k, v in m["files"].items()}, "threshold": m["threshold"]["value"],
               "threshold_trust": m["threshold"].get("trust"), "data": str(self.data)}
        point = m["threshold"].get("operating_point")
        if point:
            e = point["expected"]
            out["operating_point"] = {"policy": point["policy"], "rule": point["rule"],
                                      "false_calls": e["false_calls"], "false_calls_interval": e["false_calls_interval"],
                                      "catch_rate": e["catch_rate"], "catch_rate_interval": e["catch_rate_interval"],
                                      "trust": (m["threshold"].get("trust") or {}).get("level")}
        if self.tensorrt_skipped:
            out["tensorrt_skipped"] = self.tensorrt_skipped
        return out


def operating_point_words(threshold: dict) -> list[str]:
    """The bundle's operating point in words (policy, rule, expected false calls and catch rate with
    their intervals, the trust in them, and the --ng check when there was one); [] without one."""
    point = threshold.get("operating_point")
    if not point:
        return []
    lines = describe(point)
    fc = point["expected"]["false_calls"]
    if fc > HIGH_FALSE_CALLS:
        lines.append(f"  warning: {fc:.1%} of the good evidence is called NG at this point (more than "
                     f"{HIGH_FALSE_CALLS:.0%}); --operating-point false-calls=R caps it")
    trust = threshold.get("trust") or {}
    if trust:
        lines.append(f"  trust: {trust.get('level')}: {trust.get('why')}")
    check = point.get("check")
    if check:
        lo, hi = check["catch_rate_interval"]
        lines.append(f"  checked on {check['source']}: caught {check['caught']} of {check['n']} "
                     f"({check['catch_rate']:.0%}, 95% interval {lo:.0%}-{hi:.0%})")
    return lines


def files_digest(root: Path, paths) -> str:
    """Digest of a file list (relative names and sizes): changes when the images change."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def fit_settings(cfg: PatchCoreConfig, data_root: Path, train: list[Path], calibrate: Path | None) -> dict:
    """Everything that determines the fitted memory bank and threshold: what ``--reuse`` compares."""
    if cfg.weights not in ("default", "random") and not Path(cfg.weights).is_file():
        raise WeightsUnavailableError(f"weights file not found: {cfg.weights} (use default, random or a file path)")
    s = {k: v for k, v in asdict(cfg).items() if k not in ("device", "search_backend", "batch_size", "work_dir")}
    s = json.loads(json.dumps(s))  # tuples as lists, as a manifest gives them back
    if cfg.weights not in ("default", "random"):
        s["weights"] = str(Path(cfg.weights).resolve())
        s["weights_sha256"] = sha256_file(Path(cfg.weights))
    s["data"] = {"root": str(data_root.resolve()), "train": files_digest(data_root, train)}
    s["calibrate"] = None if calibrate is None else str(calibrate.resolve())
    return s


def reusable(out: Path, settings: dict) -> tuple[bool, str]:
    """Whether the bundle at ``out`` was fitted with ``settings``, and why (not)."""
    if not (out / "manifest.json").is_file():
        return False, f"no bundle at {out}"
    try:
        old = read_bundle(out).manifest
    except BundleError as e:
        return False, f"existing bundle unusable ({e})"
    have = old.get("export", {}).get("settings")
    if have == settings:
        return True, "fit settings match"
    if not isinstance(have, dict):
        return False, "existing bundle does not record its fit settings"
    diff = sorted(k for k in set(have) | set(settings) if have.get(k) != settings.get(k))
    return False, f"fit settings differ ({', '.join(diff)})"


def calibrate_f1(model: PatchCore, folder: Path) -> None:
    """Set the F1-optimal threshold of ``folder``'s labelled test images."""
    ds = load_test_set(folder, need_test=False)
    if not ds.test:
        raise NoTestImages(f"--calibrate {folder}: no test images (test/good, test/<defect>) to calibrate on; "
                           "without --calibrate the threshold is the out-of-fold quantile of train/good")
    labels = np.array([s.label for s in ds.test])
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"{folder}: --calibrate needs good and defective test images (test/good and test/<defect>)")
    scores = model.predict_paths([s.path for s in ds.test], desc="calibrate").image_scores
    model.calibrate_f1(labels, scores)
    model.fit_info["calibration"]["folder"] = str(folder.resolve())


def _reload(out: Path, device: str) -> PatchCore:
    """The fitted model of the bundle at ``out``, with the fit facts its manifest recorded."""
    old = read_bundle(out).manifest
    model = PatchCore.load(out, device=device)
    model.fit_info = dict(old.get("fit", {}))
    model.fit_info["calibration"] = {k: v for k, v in old["threshold"].items() if k not in ("value", "scale")}
    return model


def export_model(req: ExportRequest, log: Callable[[str], None] = lambda s: None) -> ExportResult:
    """Fit (or reuse) and write the bundle ``req.out``; build TensorRT engines when asked and
    possible (a machine without TensorRT skips them and says why)."""
    if req.bank_dtype not in ("float32", "float16"):
        raise ValueError(f"--bank-dtype must be float32 or float16, got {req.bank_dtype!r}")
    data_dir = req.data
    if data_dir is None:
        data_dir = make_synthetic_class(SYNTHETIC_DEST)
        log(f"no --data: using the embedded synthetic class {data_dir}")
    ds = load_class(data_dir, image_level_only=True, need_test=False)  # train/good is enough
    settings = fit_settings(req.config, Path(data_dir), ds.train, req.calibrate)
    reused = False
    if req.reuse:
        reused, why = reusable(req.out, settings)
        log(f"--reuse: {'reusing' if reused else 'fitting again'}: {why}")
    dims = None  # --target-dim auto's record (the manifest's target_dim_choice)
    if reused:
        model = _reload(req.out, req.config.device)
        dims = read_bundle(req.out).manifest.get("target_dim_choice")
    else:
        config = req.config
        if config.target_dim_auto:
            from patchcore.dims_choice import choose_target_dim

            choice = choose_target_dim(config, ds.train, log=log)
            config, dims = replace(config, target_dim=choice.dim), choice.record
        model = model_for(config, data_dir, log=log).fit(ds.train)
        if req.calibrate is not None:
            if req.data is not None and req.calibrate.resolve() == Path(data_dir).resolve():
                log("warning: --calibrate uses the same folder's test images that evaluation uses: "
                    "metrics on them will be optimistic")
            calibrate_f1(model, req.calibrate)
    calibration = None
    if req.int8 is not None:
        from .quantize import calibration_inputs

        calibration = calibration_inputs(model, ds.train, req.int8.images)
        log(f"int8: calibrating on {len(calibration)} network inputs of good training images ({req.int8.method}, "
            f"float layers: {req.int8.keep_float})")
    bundle = export_bundle(model, req.out, name=req.name, fp16=req.fp16, scoring=req.scoring_graph,
                           bank_dtype=req.bank_dtype, int8_calibration=calibration, int8_settings=req.int8,
                           extra={"export": {"settings": settings, "tool": "patchcore export"},
                                  **({"units": {"mm_per_px": req.mm_per_px}} if req.mm_per_px else {}),
                                  **({"target_dim_choice": dims} if dims else {})})
    if req.int8 is not None:  # measured parity of the reduced variants (int8, and bf16 where OpenVINO runs)
        from .reduced_check import check_images, measure_reduced, record_reduced

        paths, source = check_images(Path(data_dir), ds.train, req.int8.images)
        facts = measure_reduced(req.out, paths, source, log=log)
        if facts:
            bundle = record_reduced(req.out, facts)
    skipped = None
    if req.tensorrt:
        try:
            # the TensorRT rows of the engines x precisions table whose graph this export wrote
            for v in variants("tensorrt", set(bundle.manifest["graphs"])):
                bundle = build_bundle_engine(req.out, graph=v.graph, fp16=v.precision == "fp16", log=log)
        except TensorRTUnavailableError as e:
            skipped = str(e)
            log(f"skipped: {e}")
    m = bundle.manifest
    log(f"bundle written: {req.out} ({', '.join(sorted(m['graphs']))}); {threshold_words(m['threshold'])}")
    for line in operating_point_words(m["threshold"]):
        if not line.startswith("  trust:"):  # the line above says it
            log(line)
    return ExportResult(bundle, Path(data_dir), reused, skipped)
