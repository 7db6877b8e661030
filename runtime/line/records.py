"""Score a batch of files or frames and turn each into a result record.

One undecodable or unusable input never fails its batch: decoding errors are caught per input,
and when the batch's preprocessing fails (an image too small to crop, say) the batch is scored
again image by image so the culprit gets an error record and the others their scores.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..geometry import Plan, peak_on_original
from ..images import ImageReadError, decode_image, read_image
from ..preprocess import PreprocessError


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


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode(item: Item) -> None:
    """Fill ``item.image`` (or ``item.error``) from its bytes or path, timing it."""
    if item.image is not None or item.error is not None:
        return
    t0 = time.perf_counter()
    try:
        if item.data is not None:
            item.image = decode_image(item.data, item.name)
        elif item.path is not None:
            item.image = read_image(item.path)
        else:
            item.error = f"{item.name}: nothing to decode"
    except ImageReadError as e:
        item.error = str(e)
    item.decode_s = time.perf_counter() - t0


def _outcomes(items: Sequence[Item], res, seconds: float) -> list[Outcome]:
    out = []
    for i, it in enumerate(items):
        verdict = None if res.verdicts is None else ("ng" if bool(res.verdicts[i]) else "ok")
        out.append(Outcome(
            it, float(res.image_scores[i]),
            None if res.normalised is None else float(res.normalised[i]),
            verdict, 1000.0 * (it.decode_s + seconds), res.maps[i], plan=None if res.plans is None else res.plans[i],
        ))
    return out


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


def score_items(predictor, items: Sequence[Item]) -> list[Outcome]:
    """Decode and score ``items`` as one batch; returns one Outcome per item, in order.

    ``latency_ms`` is the input's own decode time plus the wall time of the model call it was
    part of (what a file waits for once it is picked up).
    """
    for it in items:
        decode(it)
    good = [it for it in items if it.image is not None]
    by_id: dict[int, Outcome] = {}
    if good:
        t0 = time.perf_counter()
        try:
            res = predictor.predict([it.image for it in good])
            for o in _outcomes(good, res, time.perf_counter() - t0):
                by_id[id(o.item)] = o
        except PreprocessError:
            for it in good:  # isolate the image(s) the batch could not take
                t0 = time.perf_counter()
                try:
                    res = predictor.predict([it.image])
                except PreprocessError as e:
                    it.error = f"{it.name}: {e}"
                    continue
                by_id[id(it)] = _outcomes([it], res, time.perf_counter() - t0)[0]
    out = []
    for it in items:
        o = by_id.get(id(it))
        if o is None:
            o = Outcome(it, verdict="error", error=it.error or f"{it.name}: not scored",
                        latency_ms=1000.0 * it.decode_s)
        it.image = None if o.error else it.image
        out.append(o)
    return out


def record(outcome: Outcome, bundle_id: str, **extra: Any) -> dict[str, Any]:
    """The JSON record of one outcome. Fields: file, score, normalised, verdict, latency_ms,
    bundle, time, location (see :func:`location`; + error for inputs that could not be scored,
    + anything in ``extra``)."""
    r: dict[str, Any] = {"file": outcome.item.name}
    r.update(outcome.item.extra)
    r.update({
        "score": outcome.score,
        "normalised": outcome.normalised,
        "verdict": outcome.verdict,
        "latency_ms": round(outcome.latency_ms, 3),
        "bundle": bundle_id,
        "time": now_iso(),
    })
    where = location(outcome)
    if where is not None:
        r["location"] = where
    if outcome.error:
        r["error"] = outcome.error
    r.update(extra)
    return r
