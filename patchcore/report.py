"""The results folder written by ``patchcore eval``.

Layout::

    out_dir/<class>/<backbone>/metrics.json   one run (flat JSON: class, backbone, metrics, extras)
    out_dir/summary.csv                       one row per class x backbone
    out_dir/summary.md                        per-class table + the reference study's table
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pro", "f1_max")
LEADING_COLUMNS = ("class", "backbone", "family", *METRIC_KEYS, "f1_threshold", "coreset")
FAMILY_ORDER = ("ImageNet", "CLIP")
REFERENCE_LABEL = "reference (published, all 15 classes)"
# (backbone, family, image AUROC %, pixel AUROC %); MVTec AD 15-class means, 10% coreset.
REFERENCE_ROWS = (
    ("paper (WRN50)", "ImageNet", 99.1, 98.1),
    ("WideResNet50 (ImageNet)", "ImageNet", 97.9, 97.8),
    ("CLIP RN50", "CLIP", 97.8, 97.5),
    ("CLIP RN101", "CLIP", 96.5, 96.9),
)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_run_metrics(out_dir, class_name: str, backbone: str, metrics: Mapping, extra: Mapping | None = None) -> Path:
    """Write ``out_dir/<class>/<backbone>/metrics.json``: one flat object of class, backbone,
    ``metrics`` (fractions) and ``extra`` (family, coreset, timings, ...). Returns the path."""
    extra = dict(extra or {})
    clash = ((set(metrics) | set(extra)) & {"class", "backbone"}) | (set(metrics) & set(extra))
    if clash:
        raise ValueError(f"write_run_metrics: keys given twice or reserved: {sorted(clash)}")
    path = Path(out_dir) / class_name / backbone / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"class": class_name, "backbone": backbone, **metrics, **extra}
    path.write_text(json.dumps(row, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def load_rows(out_dir) -> list[dict]:
    """All ``<class>/<backbone>/metrics.json`` rows under ``out_dir``, sorted by (class, backbone)."""
    rows = []
    for path in sorted(Path(out_dir).glob("*/*/metrics.json")):
        try:
            row = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(row, dict) or not {"class", "backbone"} <= set(row):
            raise ValueError(f"{path}: expected an object with 'class' and 'backbone'")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["class"], r["backbone"]))


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _backbone_order(rows) -> list[str]:
    """Backbones grouped ImageNet, CLIP, then any other family; first appearance within a group."""
    family = {}
    for r in rows:
        family.setdefault(r["backbone"], r.get("family", "other"))
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(family, key=lambda b: rank.get(family[b], len(rank)))  # sort is stable


def backbone_means(rows) -> list[dict]:
    """Per backbone: family, number of classes and mean of each metric over its classes."""
    out = []
    for b in _backbone_order(rows):
        mine = [r for r in rows if r["backbone"] == b]
        mean = {k: _mean(r.get(k) for r in mine) for k in METRIC_KEYS}
        out.append({"backbone": b, "family": mine[0].get("family", "other"), "classes": len(mine), **mean})
    return out


def _backbone_label(backbone: str, rows) -> str:
    """Backbone name as shown in tables: non-default weights are said, so a random-weights row is
    never read as the pretrained backbone's result."""
    weights = {r.get("weights") for r in rows if r["backbone"] == backbone} - {None, "default"}
    if not weights:
        return backbone
    w = weights.pop() if len(weights) == 1 else "mixed"
    return f"{backbone} ({w} weights)" if w in ("random", "mixed") else f"{backbone} (weights {Path(str(w)).name})"


def _md_table(header, lines) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(l) + " |" for l in lines)]


def write_summary(out_dir, rows: list[dict]) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` for ``rows`` (see module docstring)."""
    if not rows:
        raise ValueError("write_summary: no rows (no metrics.json found?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["class"], r["backbone"]))

    keys = set().union(*rows)
    columns = [k for k in LEADING_COLUMNS if k in keys] + sorted(keys - set(LEADING_COLUMNS))
    csv_path = out_dir / "summary.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})

    backbones = _backbone_order(rows)
    cell = {(r["class"], r["backbone"]): r for r in rows}
    classes = sorted({r["class"] for r in rows})
    per_class = [
        [c] + ["/".join(_pct(cell[c, b].get(k)) for k in METRIC_KEYS[:3]) if (c, b) in cell else "" for b in backbones]
        for c in classes
    ]
    means = backbone_means(rows)
    study = [[_backbone_label(m["backbone"], rows), m["family"], str(m["classes"]), *(_pct(m[k]) for k in METRIC_KEYS[:3])] for m in means]
    study += [[f"{name} — {REFERENCE_LABEL}", fam, "15", f"{img:.1f}", f"{pix:.1f}", "–"] for name, fam, img, pix in REFERENCE_ROWS]

    lines = [
        "# PatchCore results",
        "",
        "## Per class (image AUROC / pixel AUROC / PRO, %)",
        "",
        *_md_table(["class", *(_backbone_label(b, rows) for b in backbones)], per_class),
        "",
        "## Mean over classes (%), shaped like the reference study",
        "",
        *_md_table(["backbone", "family", "classes", "image AUROC", "pixel AUROC", "PRO"], study),
        "",
        "Reference rows are published numbers on all 15 MVTec AD classes (the study reduced the test "
        "sets of four); means here are over the classes listed above only. – = not available.",
        "",
    ]
    md_path = out_dir / "summary.md"
    md_path.write_text("\n".join(lines))
    return md_path, csv_path


def _draw_contour(img: np.ndarray, mask: np.ndarray, color) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, color, 1)


def _label(img: np.ndarray, text: str) -> None:
    for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined: readable on any background
        cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, thick, cv2.LINE_AA)


GREEN, RED = (0, 255, 0), (255, 0, 0)  # RGB


def overlay_image(image_rgb: np.ndarray, amap: np.ndarray, gt_mask: np.ndarray | None = None,
                  threshold: float | None = None, vmin: float | None = None, vmax: float | None = None,
                  roi: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """RGB uint8 panel (H, 3W, 3): [input + ground-truth contour (green) | JET heatmap of ``amap``
    scaled to [vmin, vmax] (default: its own range) blended over the input, with the predicted
    defect contour ``amap >= threshold`` (red) | ground-truth mask]. ``roi`` (x0, y0, x1, y1): the
    part of the image the network saw, outlined in white on the first two panels."""
    image_rgb, amap = np.asarray(image_rgb), np.asarray(amap, np.float32)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"overlay_image: image must be HxWx3 uint8, got {image_rgb.shape} {image_rgb.dtype}")
    if amap.shape != image_rgb.shape[:2] or (gt_mask is not None and np.shape(gt_mask) != amap.shape):
        raise ValueError(f"overlay_image: image {image_rgb.shape[:2]}, map {amap.shape} and mask sizes differ")
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    scaled = np.clip((amap - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)

    left = image_rgb.copy()
    mid = cv2.addWeighted(image_rgb, 0.5, heat, 0.5, 0.0)
    right = np.zeros_like(image_rgb)
    if gt_mask is not None:
        gt = np.asarray(gt_mask, bool)
        _draw_contour(left, gt, GREEN)
        right[gt] = 255
    if threshold is not None:
        _draw_contour(mid, amap >= threshold, RED)
    if roi is not None:
        p0, p1 = (int(round(roi[0])), int(round(roi[1]))), (int(round(roi[2])) - 1, int(round(roi[3])) - 1)
        for panel in (left, mid):
            cv2.rectangle(panel, p0, p1, (255, 255, 255), max(1, image_rgb.shape[1] // 300))
    _label(left, "input + GT")
    _label(mid, "anomaly map" if threshold is None else f"map, t={threshold:.3g}")
    _label(right, "GT mask" if gt_mask is not None else "no mask")
    return np.concatenate([left, mid, right], axis=1)


def write_overlays(out_dir, items: Iterable[tuple[str, np.ndarray]]) -> list[Path]:
    """Write each ``(name, rgb_panel)`` as ``out_dir/<name>.png`` (``name`` may contain '/')."""
    paths = []
    for name, panel in items:
        path = Path(out_dir) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(np.asarray(panel), cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cv2.imwrite failed")
        paths.append(path)
    return paths
