"""Fit + evaluate one class with one backbone and write its results (metrics, scores, overlays)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from runtime.images import read_image
from runtime.preprocess import preprocess_mask

from .config import PatchCoreConfig
from .data import ClassDataset, load_class, load_mask
from .metrics import evaluate
from .model import FitExecutor, PatchCore
from .recipe import model_for
from .report import overlay_image, write_overlays, write_run_metrics


def score_dataset(model: PatchCore, ds: ClassDataset):
    """Test-set predictions and ground truth at the network input geometry: the masks go through
    the images' own geometry plans (crop, resize, letterbox) onto the canvas of the maps."""
    paths = [s.path for s in ds.test]
    pred = model.predict_paths(paths, desc=f"{ds.name} test")
    labels = np.array([s.label for s in ds.test])
    masks = None
    if not ds.image_level_only:
        masks = np.stack([preprocess_mask(load_mask(s, p.image_hw), model.preprocess) for s, p in zip(ds.test, pred.plans)])
    return pred, labels, masks


def original_resolution_metrics(ds: ClassDataset, pred) -> dict:
    """Pixel AUROC and PRO with each map taken back onto its original image (crop, resize,
    padding, tiles undone; pixels a center crop never showed score 0) against the original masks."""
    if ds.image_level_only:
        return {}
    masks = [load_mask(s, p.image_hw) for s, p in zip(ds.test, pred.plans)]
    if not any(m.any() for m in masks):
        return {}
    maps = [pred.map_on_original(i) for i in range(len(ds.test))]
    m = evaluate(np.array([s.label for s in ds.test]), pred.image_scores, masks, maps)
    return {"pixel_auroc_original": m.pixel_auroc, "pro_original": m.pro}


def at_threshold(model: PatchCore, labels: np.ndarray, pred) -> dict:
    """What the bundle's verdicts do on the test set (images that took no part in choosing the
    threshold, the rule or the pixel threshold): defects caught, false calls, F1, under the
    operating point's rule (regions measured as the runtime measures them)."""
    from runtime import operating_point as op
    from runtime.regions import find_regions

    if model.threshold is None or labels.min() == labels.max():
        return {}
    cal = model.fit_info.get("calibration", {})
    rule = op.Rule.from_dict((cal.get("operating_point") or {}).get("rule"))
    regions = np.zeros(len(labels))
    if rule.kind == "either":
        for i in range(len(labels)):
            found, _ = find_regions(pred.map_on_original(i, fill=-np.inf), cal["pixel_value"], None,
                                    cal.get("pixel_base"), top=1)
            regions[i] = found[0]["area_px"] if found else 0
    ng = rule.called_ng(pred.image_scores, regions, model.threshold)
    tp, fp = int((ng & (labels == 1)).sum()), int((ng & (labels == 0)).sum())
    n_def, n_good = int((labels == 1).sum()), int((labels == 0).sum())
    return {"threshold_rule": str(rule), "caught": f"{tp}/{n_def}", "false_calls": f"{fp}/{n_good}",
            "f1_at_threshold": round(2 * tp / (2 * tp + fp + n_def - tp), 4)}


def write_scores(path: Path, ds: ClassDataset, pred) -> None:
    """Per-image scores as JSON lines (what the runtime's parity test compares against)."""
    with open(path, "w") as f:
        for i, s in enumerate(ds.test):
            rec = {"file": str(s.path), "label": int(s.label), "defect_type": s.defect_type,
                   "score": float(pred.image_scores[i])}
            if pred.verdicts is not None:
                rec["verdict"] = "ng" if pred.verdicts[i] else "ok"
            f.write(json.dumps(rec) + "\n")


def _overlays(model: PatchCore, ds: ClassDataset, pred, masks, n: int, threshold: float):
    """Up to ``n`` overlay panels: defect images first (all types), then good ones."""
    order = [i for i, s in enumerate(ds.test) if s.label] + [i for i, s in enumerate(ds.test) if not s.label]
    if n >= 0:
        # spread the picks over defect types, then goods
        order = order[:: max(1, len(order) // max(n, 1))][:n] if n < len(order) else order
    vmin, vmax = float(np.min(pred.maps)), float(np.max(pred.maps))
    for i in order:
        s = ds.test[i]
        img = read_image(s.path)  # panels on the original image: the map is taken back onto it
        plan = pred.plans[i]
        gt = load_mask(s, img.shape) if masks is not None else None
        roi = None if plan.covers_whole_image() else plan.roi()
        panel = overlay_image(img, pred.map_on_original(i, fill=vmin), gt, threshold, vmin, vmax, roi=roi)
        yield f"{s.defect_type}_{s.path.stem}", panel


def fit_bundle(data: str | Path, config: PatchCoreConfig, dest: str | Path | None = None,
               executor: FitExecutor | None = None) -> Path:
    """Fit on ``data``'s train/good and save the bundle at ``dest`` (default
    ``models/<class>-<backbone>``); returns the bundle folder. Needs no test images."""
    ds = load_class(data, need_test=False)
    dest = Path(dest) if dest is not None else Path("models") / f"{ds.name}-{config.backbone}"
    return model_for(config, ds).fit(ds.train, executor=executor).save(dest)


def without_ng(ds: ClassDataset, ng: str | Path | None) -> ClassDataset:
    """``ds`` without the test images that are also in ``--ng`` (they took part in choosing the recipe
    or the operating point, so they cannot judge it); one line says how many left. A UsageError
    (exit 2) when no good or no defective test image is left."""
    if ng is None:
        return ds
    from dataclasses import replace as _replace

    from runtime.errors import UsageError

    from .recipe.real_ng import ng_files

    given = {p.resolve() for p in ng_files(ng)}
    test = [s for s in ds.test if s.path.resolve() not in given]
    if len(test) == len(ds.test):
        return ds
    if len({s.label for s in test}) < 2:
        raise UsageError(f"--ng {ng} holds the test set's {'defective' if any(s.label == 0 for s in test) else 'good'} "
                         "images: nothing left to evaluate on (name NG images that are not in test/, or a part of them)")
    print(f"eval: {len(ds.test) - len(test)} test images are in --ng {ng}: left out of the figures", file=sys.stderr)
    return _replace(ds, test=test)


def fit_and_evaluate(data: str | Path, config: PatchCoreConfig, out_dir: str | Path, n_overlays: int = 12,
                     bundle_dir: str | Path | None = None, original: bool = False,
                     executor: FitExecutor | None = None) -> dict:
    """Fit on ``data``'s train/good, score its test set, write metrics.json, scores.jsonl and
    overlays under ``out_dir/<class>/<backbone>/``; return the summary row. ``original`` adds
    pixel metrics at the original resolution."""
    ds = without_ng(load_class(data), config.ng)
    t0 = time.perf_counter()  # with --preset auto, the selection is part of the fit time
    model = model_for(config, ds, Path(out_dir) / ds.name / config.backbone)
    model.fit(ds.train, executor=executor)
    t1 = time.perf_counter()
    pred, labels, masks = score_dataset(model, ds)
    t2 = time.perf_counter()
    metrics = evaluate(labels, pred.image_scores, masks, pred.maps)
    run_dir = Path(out_dir) / ds.name / config.backbone
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "family": model.spec.family,
        "coreset": config.coreset_ratio,
        "bank_size": config.bank_size,
        "shards": config.shards,
        "weights": config.weights,
        "layers": ",".join(l.name for l in model.layers),
        "geometry": model.fit_info["geometry"]["picked"],
        "bank_rows": int(model.bank.shape[0]),
        "n_train": model.fit_info.get("n_train"),
        "n_test": len(ds.test),
        "fit_seconds": round(t1 - t0, 2),
        "feature_seconds": model.fit_info.get("feature_seconds"),
        "coreset_seconds": model.fit_info.get("coreset_seconds"),
        "eval_seconds": round(t2 - t1, 2),
        "ms_per_image": round(1000 * (t2 - t1) / max(1, len(ds.test)), 1),
        "threshold": model.threshold,
        **at_threshold(model, np.asarray(labels), pred),
        **({"selection": model.selection["verdict"], "recipe": model.selection.get("chosen")}
           if model.selection else {}),
        **(original_resolution_metrics(ds, pred) if original else {}),
    }
    write_run_metrics(out_dir, ds.name, config.backbone, metrics.to_dict(), extra)
    write_scores(run_dir / "scores.jsonl", ds, pred)
    thr = model.threshold if model.threshold is not None else metrics.f1_threshold
    if n_overlays:
        write_overlays(run_dir / "overlays", _overlays(model, ds, pred, masks, n_overlays, thr))
    if bundle_dir is not None:
        model.save(bundle_dir)
    row = {"class": ds.name, "backbone": config.backbone, **metrics.to_dict(), **extra}
    return row


def evaluate_bundle(bundle: str | Path, data: str | Path, out_dir: str | Path | None = None, device: str = "auto",
                    original: bool = False) -> dict:
    """Score ``data``'s test set with a saved bundle in PyTorch (the reference the runtime is
    compared with); writes scores.jsonl and metrics.json when ``out_dir`` is given."""
    model = PatchCore.load(bundle, device=device)
    ds = load_class(data)
    pred, labels, masks = score_dataset(model, ds)
    metrics = evaluate(labels, pred.image_scores, masks, pred.maps)
    extra = original_resolution_metrics(ds, pred) if original else {}
    if out_dir is not None:
        run_dir = Path(out_dir) / ds.name / model.config.backbone
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_metrics(out_dir, ds.name, model.config.backbone, metrics.to_dict(),
                          {"family": model.spec.family, "bundle": str(bundle), **extra})
        write_scores(run_dir / "scores.jsonl", ds, pred)
    return {"class": ds.name, "backbone": model.config.backbone, **metrics.to_dict(), **extra}
