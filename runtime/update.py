"""Teach a bundle new good images without refitting: the work behind ``patchcore-rt update``
(embeddings from the bundle's ONNX graph) and ``patchcore update`` (from the PyTorch model).

1. The new images are embedded by the caller's ``embed`` and the memory bank is extended by
   continuing the greedy coreset (:mod:`runtime.coreset_update`) until every new patch lies
   within the fit's greedy radius of the bank (``memory_bank.fit_radius``: the new patches
   covered as well as the fit covered its own), at most ``add`` rows when given. A bundle that
   does not record that radius (exported before it was) keeps the earlier rule, and says so: at
   most the bundle's coreset ratio of the new patches, stopping at its covering radius.
2. Threshold, for bundles calibrated by a quantile (held out, or out of fold): the same quantile over the
   parent's calibration scores (as the parent's bank scored them: those images are not kept)
   together with a held-out score of every new image, by cross-validation (the update repeated
   without the image's fold, which then scores it). A handful of new images thus all teach the
   bank and all calibrate, where a held-out share would be one image or none. The scale
   likewise. A threshold that rises means the new images, held out, still score above the old
   good ones: more images of their kind bring it back down. Bundles calibrated otherwise (F1 on
   a labelled folder) keep their threshold; the lineage entry says which happened. A bundle with
   an operating point (``threshold.operating_point``) instead re-applies its policy (false-calls=R,
   recall=R, f1@D, value=X) under its rule to the extended good evidence: the parent's good
   evidence plus the new images' held-out scores (their regions are not measured: 0), with the
   defect evidence as the parent's bank scored it; the section is written anew (policy, value,
   expected rates, curve, evidence) and the scale follows the new value.
3. The new bundle is written beside the parent, which is never modified: the parent's graphs,
   engines and projection copied, the extended bank, and a manifest with one more ``lineage``
   entry (parent id, the images and their sha256, patches and rows, covering radius,
   calibration before and after, timings), sealed by :func:`runtime.bundle.finalize_manifest`.
   It is assembled in a hidden folder and renamed into place, so a watcher never sees half of it.

``scores_*`` graphs hold the old bank inside them: they (and engines built from them) are left
out of the new bundle; export again to get them back.
"""

from __future__ import annotations

import copy
import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .bundle import BANK_FILE, DIGEST_FIELD, Bundle, BundleError, read_bundle
from .coreset_update import Extension, distances_to_bank, extend_coreset, project
from .errors import UsageError
from .fileio import check_output_folder, sha256_file
from .images import read_image
from .calibration import spread, trust
from .operating_point import Evidence, read as read_operating_point, section
from .postprocess import quantile_threshold, robust_scale
from .threshold import KEPT_OP_KEYS  # export's facts that stay true when the threshold moves (rule_choice)

QUANTILE_METHODS = ("holdout-quantile", "oof-quantile")  # thresholds an update recalibrates
from .search.build import build_index
from .search.scorer import PatchScorer
from .versions import write_version

Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]  # RGB uint8 images -> (B, P, D) float32
Progress = Callable[[str, int, int], None]  # (stage, done, total)

REFIT = "refit or re-export it with this version of patchcore-rt"
WARN_RISE = 0.25  # an update that raises the threshold by more than this fraction warns
FOLDS = 10  # cross-validation folds for the new images' held-out scores: each costs one more selection


@dataclass
class UpdateResult:
    bundle: Bundle
    parent: Bundle
    entry: dict[str, Any]  # the lineage entry this update appended
    selected: np.ndarray  # rows added: indices into the bank images' patches (image-major), in order

    def summary(self) -> dict[str, Any]:
        """The one JSON object the update commands print."""
        e = self.entry
        return {"bundle": str(self.bundle.root), "id": self.bundle.bundle_id, "parent": e["parent"],
                "images": len(e["images"]),
                "patches": e["patches"], "covered": e["covered"], "rows_added": e["rows_added"],
                "rows": e["rows"]["after"], "stopped": e["stopped"], "stop": e["stop"],
                "threshold": {k: e["calibration"][k]["value"] for k in ("before", "after")},
                "graphs_dropped": e["graphs_dropped"], "warnings": self.warnings()}

    def warnings(self) -> list[str]:
        """What the person who taught these images should check before deploying the result."""
        stop = self.entry.get("stop", {})
        out = [stop["why"]] if stop.get("rule") == "row-budget" else []
        rise = threshold_rise(self.entry)
        if rise is None:
            return out
        before, after = rise
        return out + [f"the threshold rose by {after / before - 1:.0%} ({before:.4g} -> {after:.4g}): the taught images "
                "scored far above the parent's good images. Check that they are good parts and that known "
                "defects still score above the new threshold before deploying this bundle"]


def threshold_rise(entry: dict[str, Any]) -> tuple[float, float] | None:
    """(before, after) when a recalibration raised the threshold by more than :data:`WARN_RISE`
    of its value: the taught images scored far above the parent's good images, which is what
    teaching defective parts (or a variant the bank barely covers) looks like."""
    cal = entry.get("calibration", {})
    before, after = cal.get("before", {}).get("value"), cal.get("after", {}).get("value")
    if not cal.get("recalibrated") or before is None or after is None or before <= 0:
        return None
    return (float(before), float(after)) if after > before * (1 + WARN_RISE) else None


def requirements(bundle: Bundle) -> tuple[np.ndarray, float]:
    """The projection matrix and covering radius an update continues from; a BundleError (exit
    3) naming the missing fields for bundles written before updates existed."""
    mb, thr = bundle.manifest["memory_bank"], bundle.manifest["threshold"]
    if bundle.manifest["features"].get("parts") is not None:
        raise UsageError(f"{bundle.root}: a fused bundle cannot be updated (each part's bank and its out-of-fold "
                         "normaliser would have to be fitted again): refit it with the new good images")
    missing = [f"memory_bank.{k}" for k in ("projection_file", "coverage_radius", "coreset_ratio") if k not in mb]
    if thr.get("method") in QUANTILE_METHODS and "calibration_scores" not in thr:
        missing.append("threshold.calibration_scores")
    if missing:
        raise BundleError(f"{bundle.root}: cannot be updated: its manifest lacks {', '.join(missing)} "
                          f"(written before bank updates existed); {REFIT}")
    return bundle.coreset_projection(), float(mb["coverage_radius"])


@dataclass(frozen=True)
class StopRule:
    """Where an update's greedy continuation stops: at ``radius`` (every new patch within it of
    the bank), or after ``cap`` rows when given, whichever comes first; ``why``: where the rule
    came from, recorded in the lineage and, for the fallback, told as a warning."""

    radius: float
    cap: int | None
    rule: str  # "fit-radius" or "row-budget" (a bundle without memory_bank.fit_radius)
    why: str

    def budget(self, n_patches: int) -> int:
        """Rows the continuation may add at most: the cap, else one per new patch (no cap)."""
        return n_patches if self.cap is None else self.cap

    def record(self) -> dict[str, Any]:
        return {"rule": self.rule, "radius": self.radius, "cap": self.cap, "why": self.why}


def stop_rule(bundle: Bundle, n_patches: int, add: int | None) -> StopRule:
    """The fit's greedy radius with ``add`` as a cap; for a bundle that does not record that
    radius, today's row budget (``add``, else the coreset ratio of the new patches) at the
    bank's covering radius."""
    mb = bundle.manifest["memory_bank"]
    if "fit_radius" in mb:
        why = (f"until every new patch lies within the fit's greedy radius {mb['fit_radius']:.4g} of the bank"
               + (f", at most {add} rows (--add)" if add is not None else ""))
        return StopRule(float(mb["fit_radius"]), add, "fit-radius", why)
    cap = add if add is not None else max(1, int(n_patches * mb["coreset_ratio"]))
    why = (f"{bundle.root} records no fit radius (memory_bank.fit_radius; exported by an earlier version): at most "
           f"{cap} rows ({'--add' if add is not None else 'the coreset ratio of the new patches'}), stopping at its "
           "covering radius; new patches may stay less covered than the fit's own. Re-export the bundle to stop "
           "by the fit's radius")
    return StopRule(float(mb["coverage_radius"]), cap, "row-budget", why)


def check_out(parent: Bundle, out: Path) -> None:
    """``out`` must be a new (or empty) folder, neither the parent nor inside it."""
    if out.resolve().is_relative_to(parent.root.resolve()):
        raise UsageError(f"--out {out} is (inside) the bundle being updated: give a new folder (the original is "
                         "never modified)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists: give a new folder")
    check_output_folder(out, "--out")  # a file on its path, or an unwritable parent: exit 9 before any work


def embed_images(items: Sequence[tuple[Path, str]], embed: Embedder, batch_size: int,
                 progress: Progress | None = None, stage: str = "embedding") -> np.ndarray:
    """(N, P, D) float32 embeddings of image files, read and embedded ``batch_size`` at a time."""
    out = []
    for s in range(0, len(items), batch_size):
        out.append(np.asarray(embed([read_image(path) for path, _ in items[s : s + batch_size]]), np.float32))
        if progress:
            progress(stage, sum(len(o) for o in out), len(items))
    return np.concatenate(out)


def recalibrates(threshold: dict[str, Any]) -> bool:
    """Whether an update recalibrates this threshold (a held-out or out-of-fold quantile) or keeps it."""
    return threshold.get("method") in QUANTILE_METHODS and threshold.get("value") is not None


def recalibrate(threshold: dict[str, Any], new_scores: Sequence[float]) -> tuple[dict[str, Any], bool]:
    """The new threshold section, and whether it was recalibrated (see the module docstring)."""
    if not recalibrates(threshold):
        return dict(threshold), False
    scores = [float(s) for s in threshold["calibration_scores"]] + [float(s) for s in new_scores]
    value, scale = quantile_threshold(scores, threshold["quantile"])
    out = {**threshold, "value": value, "scale": scale, "n_images": len(scores), "calibration_scores": scores}
    if "trust" in threshold:
        out.update(spread=spread(scores), trust=trust(len(scores), threshold["quantile"]))
    return out, True




def reapply_operating_point(threshold: dict[str, Any], new_scores: Sequence[float], tool: str) -> dict[str, Any]:
    """``threshold`` with its operating point's policy re-applied to the good evidence extended by
    ``new_scores`` (the new images' held-out scores), its value, scale and section written anew."""
    ev, rule, policy = read_operating_point(threshold)
    n = len(new_scores)
    facts = {**ev.facts, "taught": ev.facts.get("taught", 0) + n}
    grown = Evidence(np.concatenate([ev.good_scores, np.asarray(new_scores, np.float64)]), ev.defect_scores,
                     np.concatenate([ev.good_region_px, np.zeros(n)]), ev.defect_region_px,
                     f"{ev.good_source} + {n} taught images (held out; regions not measured)", ev.defect_source, facts)
    old = threshold["operating_point"]
    op = section(grown, rule, policy, f"{tool} (policy re-applied)",
                 extra={k: old[k] for k in KEPT_OP_KEYS if k in old})
    value = float(op["value"])
    return {**threshold, "value": value, "scale": robust_scale(value, grown.good_scores), "operating_point": op}


def _calibration_view(threshold: dict[str, Any]) -> dict[str, Any]:
    return {k: threshold.get(k) for k in ("value", "scale", "method", "n_images")}


def dropped_graphs(manifest: dict[str, Any]) -> list[str]:
    """Graphs that hold the memory bank inside (``scores_*``): stale after an update."""
    return sorted(k for k, g in manifest.get("graphs", {}).items() if g.get("kind") == "scores")


def held_out_scores(old_bank: np.ndarray, projected_old: np.ndarray, embeddings: np.ndarray,
                    projected: np.ndarray, start: np.ndarray, budget: int, radius: float, n_reweight: int,
                    search: str = "auto", progress: Progress | None = None) -> list[float]:
    """Each new image's score as if held out of the update (cross-validation over at most
    :data:`FOLDS` folds): the bank extended from the other images, by the same stop rule with the
    budget scaled to their share, scores the fold's images. Re-selecting per fold matters: the coreset keeps one
    row for patches many images share, so dropping only an image's own rows would uncover them."""
    n, p = embeddings.shape[:2]
    k = min(n, FOLDS)
    fold = np.arange(n) % k
    scores = np.empty(n)
    for f in range(k):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        rows = (train[:, None] * p + np.arange(p)).ravel()
        b = int(budget * len(train) / n)
        ext = extend_coreset(projected_old, projected[rows], b, radius, start=start[rows])
        bank = np.concatenate([old_bank, embeddings.reshape(-1, embeddings.shape[-1])[rows[ext.selected]]])
        scorer = PatchScorer(bank, build_index(bank, search)[0], n_reweight=n_reweight)
        scores[test] = scorer.score(embeddings[test]).image_scores
        if progress:
            progress("calibrating", f + 1, k)
    return scores.tolist()


def update_bundle(parent: Bundle | str | Path, images: Sequence[tuple[Path, str]], embed: Embedder, out: Path, *,
                  add: int | None = None, batch_size: int = 8, search: str = "auto", tool: str = "patchcore-rt update",
                  embedder: str = "", progress: Progress | None = None) -> UpdateResult:
    """Write ``out``: ``parent`` with ``images`` (``(path, name)`` pairs) taught as good."""
    parent = parent if isinstance(parent, Bundle) else read_bundle(parent)
    m = parent.manifest
    projection, coverage = requirements(parent)
    out = Path(out)
    check_out(parent, out)
    if not images:
        raise UsageError("no new good images given")
    if add is not None and add < 0:
        raise ValueError(f"--add must be >= 0, got {add}")
    t0 = time.perf_counter()
    emb = embed_images(images, embed, batch_size, progress)
    old_bank = parent.memory_bank()
    grid = m["features"]["grid"]
    if emb.shape[1:] != (grid[0] * grid[1], old_bank.shape[1]):
        raise BundleError(f"{parent.root}: the feature extractor gave embeddings {emb.shape[1:]}, the bundle's bank "
                          f"has rows of {old_bank.shape[1]} on a grid of {grid}")
    patches = emb.reshape(-1, emb.shape[-1])
    t1 = time.perf_counter()
    stop = stop_rule(parent, len(patches), add)
    budget, radius = stop.budget(len(patches)), stop.radius
    projected_old, projected = project(old_bank, projection), project(patches, projection)
    start = distances_to_bank(projected_old, projected)
    ext = extend_coreset(projected_old, projected, budget, radius, start=start,
                         progress=(lambda d, t: progress("selecting", d, t)) if progress else None)
    new_bank = np.concatenate([old_bank, patches[ext.selected].astype(old_bank.dtype)])
    t2 = time.perf_counter()
    new_scores: list[float] = []
    has_op = read_operating_point(m["threshold"]) is not None
    if recalibrates(m["threshold"]) or has_op:
        new_scores = held_out_scores(old_bank.astype(np.float32), projected_old, emb, projected, start, budget, radius,
                                     m["scoring"]["n_reweight"], search, progress)
    threshold, recalibrated = recalibrate(m["threshold"], new_scores)
    if has_op:
        threshold, recalibrated = reapply_operating_point(threshold, new_scores, tool), True
    seconds = {"embed": t1 - t0, "select": t2 - t1, "calibrate": time.perf_counter() - t2}
    entry = lineage_entry(parent, images, emb.shape[1], ext, stop, coverage, threshold, recalibrated, new_scores,
                          tool, embedder, seconds)
    manifest = copy.deepcopy(m)
    manifest.pop(DIGEST_FIELD, None)
    manifest["created"] = entry["created"]
    manifest["memory_bank"].update(rows=int(len(new_bank)), coverage_radius=entry["coverage_radius"]["after"])
    manifest["threshold"] = threshold
    manifest["lineage"] = [*parent.lineage, entry]
    return UpdateResult(write_update(parent, manifest, new_bank, out), parent, entry, ext.selected)


def lineage_entry(parent: Bundle, images: Sequence[tuple[Path, str]], patches_per_image: int, ext: Extension,
                  stop: StopRule, coverage: float, threshold: dict[str, Any], recalibrated: bool, scores: list[float],
                  tool: str, embedder: str, seconds: dict[str, float]) -> dict[str, Any]:
    """What the new manifest records about this update (see the module docstring)."""
    m = parent.manifest
    rows_from = np.bincount(ext.selected // patches_per_image, minlength=len(images))
    n_old = m["memory_bank"]["rows"]
    how = (f"parent's calibration scores + the new images' held-out scores ({min(len(images), FOLDS)}-fold)"
           if recalibrated else "kept (the parent's threshold is not a quantile of good scores)")
    op = threshold.get("operating_point")
    if op is not None:
        how = (f"operating point {op['policy']} re-applied to the parent's good evidence + the new images' held-out "
               f"scores ({min(len(images), FOLDS)}-fold)")
    return {
        "parent": parent.bundle_id,
        "parent_manifest_sha256": m.get(DIGEST_FIELD),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": tool,
        "version": __version__,
        "embedder": embedder,
        "images": [{"file": name, "sha256": sha256_file(path), "rows": int(rows_from[i]),
                    **({"score": scores[i]} if scores else {})} for i, (path, name) in enumerate(images)],
        "patches": int(len(images) * patches_per_image),
        "covered": ext.covered,
        "budget": stop.cap,
        "stop": stop.record(),
        "rows_added": int(len(ext.selected)),
        "rows": {"before": n_old, "after": n_old + int(len(ext.selected))},
        "stopped": ext.stopped,
        "coverage_radius": {"before": coverage, "after": max(coverage, ext.radius_after)},
        "new_patch_distance": {"max_before": ext.radius_before, "max_after": ext.radius_after},
        "calibration": {"before": _calibration_view(m["threshold"]), "after": _calibration_view(threshold),
                        "recalibrated": recalibrated, "method": how,
                        **({"operating_point": {"policy": op["policy"],
                                                "before": m["threshold"]["operating_point"]["expected"],
                                                "after": op["expected"]}} if op is not None else {})},
        "graphs_dropped": dropped_graphs(m),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def write_update(parent: Bundle, manifest: dict[str, Any], bank: np.ndarray, out: Path) -> Bundle:
    """The new bundle at ``out``: the parent's files but the bank (and stale ``scores_*`` graphs),
    the new bank, the manifest last; assembled in a hidden folder beside ``out`` and renamed."""
    drop = set(dropped_graphs(manifest))
    for key in drop:
        manifest["graphs"].pop(key)
    manifest["engines"] = {k: e for k, e in manifest.get("engines", {}).items() if e.get("graph") not in drop}
    keep = {BANK_FILE, manifest["memory_bank"]["projection_file"]}
    for part in ("graphs", "engines"):
        for entry in manifest[part].values():
            keep.update([entry["file"], *entry.get("external_data", [])])
    t0 = time.perf_counter()

    def record_write_time() -> None:
        manifest["lineage"][-1]["seconds"]["write"] = round(time.perf_counter() - t0, 3)

    return write_version(parent, out, manifest, keep, {BANK_FILE: bank}, kind="update",
                         what="the updated bundle", before_seal=record_write_time)
