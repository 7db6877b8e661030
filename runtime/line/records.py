"""Score a batch of files or frames and turn each into a result record.

One undecodable or unusable input never fails its batch: each input is decoded and prepared
(preprocessed into its network inputs) on its own, so a corrupt file or an image too small to
crop gets an error record and the others their scores. Memory stays bounded: an input's decoded
pixels are dropped as soon as its network inputs exist, so a batch holds at most one decoded
image at a time (:func:`image_of` decodes an input again when an overlay needs its pixels).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..geometry import Plan, peak_on_original
from ..images import DEFAULT_LIMITS, ImageLimits, ImageReadError, decode_image, read_image
from ..preprocess import PreprocessError
from ..regions import Judge


@dataclass
class Item:
    """One input. Give ``image`` (decoded RGB), or ``data`` (encoded bytes), or ``path``."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    image: np.ndarray | None = None
    error: str | None = None
    decode_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the record


@dataclass
class Outcome:
    item: Item
    score: float | None = None
    normalised: float | None = None
    verdict: str | None = None  # "ok", "ng", "error"; None when the bundle has no threshold
    latency_ms: float = 0.0
    map: np.ndarray | None = None  # (H, W) anomaly map on the bundle's canvas (see plan)
    error: str | None = None
    plan: Plan | None = None  # the image's geometry: canvas -> original image pixels
    regions: list[dict[str, Any]] | None = None  # the largest defect regions (runtime.regions); None: not cut
    regions_total: int = 0
    regions_note: str | None = None  # why there are none
    rule: str | None = None  # the verdict's rule, and which of its tests decided
    decided_by: str | None = None
    threshold_trust: str | None = None  # only when the threshold rests on too few good images


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode(item: Item, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Fill ``item.image`` (or ``item.error``) from its bytes or path, timing it."""
    if item.image is not None or item.error is not None:
        return
    t0 = time.perf_counter()
    try:
        item.image = _decoded(item, limits)
    except ImageReadError as e:
        item.error = str(e)
    item.decode_s = time.perf_counter() - t0


def _decoded(item: Item, limits: ImageLimits) -> np.ndarray:
    if item.data is not None:
        return decode_image(item.data, item.name, limits)
    if item.path is not None:
        return read_image(item.path, limits)
    raise ImageReadError(f"{item.name}: nothing to decode")


def image_of(item: Item, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray | None:
    """The input's pixels: kept ones (camera frames), else decoded again; None if that fails."""
    if item.image is not None:
        return item.image
    try:
        return _decoded(item, limits)
    except ImageReadError:
        return None


def _outcome(it: Item, res, i: int, seconds: float, judge: Judge | None = None) -> Outcome:
    latency = 1000.0 * (it.decode_s + seconds)
    score = float(res.image_scores[i])
    normalised = None if res.normalised is None else float(res.normalised[i])
    if not math.isfinite(score) or (normalised is not None and not math.isfinite(normalised)):
        it.error = (f"{it.name}: the model gave a non-finite anomaly score ({score}); "
                    "no verdict (check the bundle and the image)")
        return Outcome(it, verdict="error", latency_ms=latency, error=it.error)
    verdict = None if res.verdicts is None else ("ng" if bool(res.verdicts[i]) else "ok")
    plan = None if getattr(res, "plans", None) is None else res.plans[i]
    o = Outcome(it, score, normalised, verdict, latency, res.maps[i], plan=plan)
    if judge is not None and plan is not None:
        o.regions, o.regions_total, o.regions_note = judge.regions(res.maps[i], plan)
        if verdict is not None:
            ng, o.decided_by = judge.decide(verdict == "ng", o.regions)
            o.verdict, o.rule, o.threshold_trust = ("ng" if ng else "ok"), judge.rule, judge.trust
    return o


def bundle_judge(predictor) -> Judge | None:
    """The judge of the predictor's bundle as exported: regions at the pixel threshold, the bundle's
    rule decides (what a run without --min-area / --mm-per-px uses; see RunOptions.judge)."""
    if getattr(predictor, "bundle", None) is None:
        return None
    return Judge.for_manifest(predictor.bundle.manifest)


def location(outcome: Outcome) -> dict[str, Any] | None:
    """Where the outcome's evidence lies, in the original image's pixels ("coords": "original";
    x to the right, y down, from the top-left corner): the image size [w, h], the part the
    network saw ("roi", [x0, y0, x1, y1]: all of it unless a center crop cut the rest) and the
    anomaly map's maximum ("peak", [x, y])."""
    p = outcome.plan
    if p is None or outcome.map is None:
        return None
    return {"coords": "original", "image_size": [p.image_hw[1], p.image_hw[0]],
            "roi": [round(v, 1) for v in p.roi()], "peak": [round(v, 1) for v in peak_on_original(outcome.map, p)]}


def explanation(outcome: Outcome) -> dict[str, Any]:
    """A record's regions, rule and decided_by (and threshold_trust when the threshold rests on
    too few good images): what explains its verdict."""
    r: dict[str, Any] = {}
    if outcome.regions is not None:
        r["regions"] = outcome.regions
        r["regions_total"] = outcome.regions_total
        if outcome.regions_note:
            r["regions_note"] = outcome.regions_note
    if outcome.rule is not None:
        r["rule"], r["decided_by"] = outcome.rule, outcome.decided_by
    if outcome.threshold_trust:
        r["threshold_trust"] = outcome.threshold_trust
    return r


def score_items(predictor, items: Sequence[Item], limits: ImageLimits = DEFAULT_LIMITS,
                judge: Judge | None = None, overlays: bool | Sequence[bool] | None = None) -> list[Outcome]:
    """Decode, prepare and score ``items`` as one batch; returns one Outcome per item, in order.
    ``judge`` cuts the regions and decides the verdicts (default: the bundle's own, :func:`bundle_judge`).
    ``overlays``: the items whose overlay will be drawn (one flag per item, or one for all; None: the
    predictor's own setting), whose maps are then exact down to the overlays' floor
    (:meth:`runtime.predictor.Predictor.level`); the others' maps are exact at the pixel threshold.

    Each input is decoded and prepared in turn and its decoded pixels dropped at once (an item
    given decoded, a camera frame, keeps its ``image``). ``latency_ms`` is the input's own decode
    and preparation time plus the wall time of the model call it was part of (what a file waits
    for once it is picked up).
    """
    prepared = []
    drawn = [overlays] * len(items) if overlays is None or isinstance(overlays, bool) else list(overlays)
    drawn_of = {id(it): bool(d) for it, d in zip(items, drawn)}
    for it in items:
        decode(it, limits)
        if it.image is None:
            continue
        t0 = time.perf_counter()
        try:
            prepared.append((it, predictor.prepare(it.image)))
        except PreprocessError as e:
            it.error = f"{it.name}: {e}"
        it.decode_s += time.perf_counter() - t0
        if it.data is not None or it.path is not None:
            it.image = None  # the network inputs are made: the pixels can go
    by_id: dict[int, Outcome] = {}
    if prepared:
        t0 = time.perf_counter()
        if overlays is None:
            res = predictor.predict_prepared([p for _, p in prepared])
        else:
            res = predictor.predict_prepared([p for _, p in prepared], overlays=[drawn_of[id(it)] for it, _ in prepared])
        seconds = time.perf_counter() - t0
        judge = judge if judge is not None else bundle_judge(predictor)
        for i, (it, _) in enumerate(prepared):
            by_id[id(it)] = _outcome(it, res, i, seconds, judge)
    out = []
    for it in items:
        o = by_id.get(id(it))
        if o is None:
            o = Outcome(it, verdict="error", error=it.error or f"{it.name}: not scored",
                        latency_ms=1000.0 * it.decode_s)
        out.append(o)
    return out


def settles_for_overlays(predictor) -> bool:
    """Whether ``predictor``'s maps, as scored for records, may hold values an overlay would show that
    the exact search would not give (a reduced search that settled them only down to the pixel
    threshold): an image to be drawn is then scored again with ``overlays`` (:func:`drawn_outcome`)."""
    scorer = getattr(predictor, "scorer", None)
    if not getattr(scorer, "approximate", False) or getattr(predictor, "in_graph_search", False):
        return False
    return not predictor.overlays and predictor.level(True) != predictor.level(False)


def drawn_outcome(predictor, outcome: Outcome, limits: ImageLimits = DEFAULT_LIMITS,
                  judge: Judge | None = None) -> Outcome:
    """The outcome to draw an overlay from: ``outcome`` itself where its map is already exact down to
    the overlays' floor, else ``outcome`` with the map of its image scored again with the overlay band
    settled (only the images drawn pay for it; the score, verdict and regions stay ``outcome``'s: they
    are exact either way)."""
    image = outcome.item.image
    if image is None or outcome.map is None or not settles_for_overlays(predictor):
        return outcome
    again = score_items(predictor, [Item(outcome.item.name, image=image)], limits, judge, overlays=True)[0]
    return outcome if again.map is None else replace(outcome, map=again.map)


def record(outcome: Outcome, bundle_id: str, **extra: Any) -> dict[str, Any]:
    """The JSON record of one outcome. Fields: file, score, normalised, verdict, latency_ms,
    bundle, time, location (see :func:`location`), regions (the largest defect regions, see
    :mod:`runtime.regions`; regions_total, and regions_note when there are none), rule and
    decided_by (the verdict's rule and which of its tests decided; + error for inputs that could not be scored,
    + the engine and precision that ran, ``precision``, from the commands;
    + anything in ``extra``)."""
    r: dict[str, Any] = {"file": outcome.item.name}
    r.update(outcome.item.extra)
    r.update(scored_fields(outcome))
    r.update({"bundle": bundle_id, "time": now_iso()})
    r.update(evidence_fields(outcome))
    r.update(extra)
    return r


def scored_fields(outcome: Outcome) -> dict[str, Any]:
    """What every result record says of its score: score, normalised, verdict, latency_ms."""
    return {"score": outcome.score, "normalised": outcome.normalised, "verdict": outcome.verdict,
            "latency_ms": round(outcome.latency_ms, 3)}


def evidence_fields(outcome: Outcome) -> dict[str, Any]:
    """What every result record says to explain its verdict: location, regions, rule (and error)."""
    r: dict[str, Any] = {}
    where = location(outcome)
    if where is not None:
        r["location"] = where
    r.update(explanation(outcome))
    if outcome.error:
        r["error"] = outcome.error
    return r

def dumps(record: dict[str, Any]) -> str:
    """One compact JSON line, ASCII only: file names that are not valid UTF-8 (decoded by Python
    with surrogate escapes) round-trip as \\udcXX escapes instead of failing to encode."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
