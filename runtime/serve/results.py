"""The recent results the page shows and the review queue draws from, by ids the server issues.

A request never names a file: it names a result id, and the server knows where that result's
pixels are (kept bytes of an uploaded part called defective, or the watched file the journal
recorded). The store is bounded: the latest ``keep`` results, and uploaded images kept only for
defective calls, at most ``keep_bytes`` in all (the oldest dropped first).
"""

from __future__ import annotations

import collections
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..images import DEFAULT_LIMITS, ImageLimits, ImageReadError, read_file_bytes
from ..line.outputs import overlay_image

THUMB_SIDE = 240  # pixels, the longer side of a thumbnail


@dataclass
class Result:
    id: str
    seq: int
    record: dict[str, Any]
    source: str  # "api" or "watch"
    suffix: str = ".png"  # of the original image, for the file a teach reads
    overlay_png: bytes | None = None
    overlay_path: Path | None = None  # the watcher's overlay file
    thumb: bytes | None = None
    image_bytes: bytes | None = None  # an uploaded defective part, kept for "mark good"
    image_path: Path | None = None  # a watched part (where the journal says it is)
    marked: bool = False
    taught: bool = False
    review: dict[str, Any] | None = None  # the latest review (runtime.serve.reviews)

    @property
    def has_image(self) -> bool:
        return self.image_bytes is not None or self.image_path is not None

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {"id": self.id, "seq": self.seq, "source": self.source, "file": r.get("file"),
                "verdict": r.get("verdict"), "score": r.get("score"), "normalised": r.get("normalised"),
                "bundle": r.get("bundle"), "time": r.get("time"), "error": r.get("error"),
                "location": r.get("location"), "marked": self.marked, "taught": self.taught,
                "can_mark": self.has_image and r.get("verdict") == "ng",
                "product": r.get("product"), "review": (self.review or {}).get("review"),
                "reviewer": (self.review or {}).get("reviewer"),
                "thumb": f"/v1/results/{self.id}/thumb.jpg" if self.thumb or self.overlay_path else None,
                "overlay": f"/v1/results/{self.id}/overlay.png" if self.overlay_png or self.overlay_path else None}


def thumbnail(image: np.ndarray, amap: np.ndarray, spec, threshold, scale) -> bytes:
    """A small overlay (JPEG): the image shrunk first, the map drawn on it (the geometry is
    relative, so the heat lies where it lies on the full image)."""
    h, w = image.shape[:2]
    f = min(1.0, THUMB_SIDE / max(h, w))
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) \
        if f < 1 else image
    ok, buf = cv2.imencode(".jpg", overlay_image(small, amap, spec, threshold, scale), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""


def shrink_png(png: bytes) -> bytes:
    """A thumbnail (JPEG) of an overlay file."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return b""
    h, w = img.shape[:2]
    f = min(1.0, THUMB_SIDE / max(h, w))
    if f < 1:
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""


class ResultStore:
    def __init__(self, keep: int = 200, keep_bytes: int = 256 << 20, limits: ImageLimits = DEFAULT_LIMITS):
        self.keep, self.keep_bytes, self.limits = keep, keep_bytes, limits
        self._by_id: collections.OrderedDict[str, Result] = collections.OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()
        self.listeners: list[Callable[[Result], None]] = []

    def add(self, record: dict[str, Any], source: str, **kw: Any) -> Result:
        with self._lock:
            self._seq += 1
            res = Result(secrets.token_urlsafe(9), self._seq, record, source, **kw)
            self._by_id[res.id] = res
            while len(self._by_id) > self.keep:
                self._by_id.popitem(last=False)
            kept = 0
            for r in reversed(self._by_id.values()):  # newest first: the oldest images go first
                if r.image_bytes is not None:
                    kept += len(r.image_bytes)
                    if kept > self.keep_bytes:
                        r.image_bytes = None
        for listen in self.listeners:
            listen(res)
        return res

    def get(self, rid: str) -> Result | None:
        with self._lock:
            return self._by_id.get(rid)

    def since(self, seq: int, limit: int = 100) -> list[Result]:
        with self._lock:
            out = [r for r in self._by_id.values() if r.seq > seq]
        return out[-limit:]

    def flags(self) -> dict[str, list[str]]:
        """Ids of the kept results marked good (not yet taught) and taught: the page's review state."""
        with self._lock:
            rs = list(self._by_id.values())
        return {"marked_ids": [r.id for r in rs if r.marked and not r.taught], "taught_ids": [r.id for r in rs if r.taught]}

    def marked(self) -> list[Result]:
        with self._lock:
            return [r for r in self._by_id.values() if r.marked and not r.taught]

    def thumb(self, res: Result) -> bytes | None:
        if res.thumb is None and res.overlay_path is not None:
            png = self._kept_or_read(None, res.overlay_path)
            if png is None:
                return None
            res.thumb = shrink_png(png)
        return res.thumb

    def overlay(self, res: Result) -> bytes | None:
        return self._kept_or_read(res.overlay_png, res.overlay_path)

    def image_bytes(self, res: Result) -> bytes | None:
        """The part's encoded image: kept bytes, or the watched file (None once it is gone)."""
        return self._kept_or_read(res.image_bytes, res.image_path)

    def _kept_or_read(self, kept: bytes | None, path) -> bytes | None:
        """``kept`` when the result holds the bytes, else the file's (None without one, or once it is gone)."""
        if kept is not None or path is None:
            return kept
        try:
            return read_file_bytes(path, self.limits.max_bytes)
        except ImageReadError:
            return None
