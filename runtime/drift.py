"""Drift that reaches the line: a per-product alarm on the share of parts scoring high.

The statistic is the one behind ``patchcore_drift_share`` (:mod:`runtime.serve.metrics`), kept per
product, over the last :data:`WINDOW` scored parts (called ok *or* ng): the share whose score lies
above the :data:`QUANTILE` quantile of the bundle's calibration scores (held-out good images). With
nothing drifting that is about 5% plus the defect rate. Counting only good calls (as the metric
does) hides drift where the calibration's 95% quantile lies close to the threshold: parts jump from
"below the quantile" to "called ng" and never count (measured on the test bundle: quantile 173.1,
threshold 176.1; a brightness ramp of +40 grey levels put 30% of good parts above the quantile, half
of them called ng). The **alarm** is raised when the share reaches :data:`LEVEL` (25%) over a full
window, and cleared when it falls back to :data:`CLEAR` (10%). With no drift and no defects, 13 or
more of 50 above the 95% quantile has a chance of about 8e-7 (binomial); a burst of defects also
raises it, which the line wants to hear about as well.

Each change of state is an **event record** for the sinks (through the publisher), e.g.
``{"kind": "drift", "id": "drift-<product>-<n>-<time>", "product": "a", "state": "alarm" | "cleared",
"share": 0.31, "level": 0.25, "parts": 200, "bundle": "<id>", "time": "..."}``. A bundle without
calibration scores has no drift statistic (``share`` None, never an alarm).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

import numpy as np

WINDOW = 50
QUANTILE = 0.95
LEVEL = 0.25
CLEAR = 0.10
MIN_PARTS = 50


class _Product:
    def __init__(self, cut: float | None, bundle: str | None):
        self.cut, self.bundle = cut, bundle
        self.above: collections.deque[bool] = collections.deque(maxlen=WINDOW)
        self.alarm = False
        self.events = 0

    @property
    def share(self) -> float | None:
        return sum(self.above) / len(self.above) if self.above and self.cut is not None else None


class DriftAlarms:
    """Per product (None: the unnamed one): the drift share and its alarm. ``publish`` gets each
    event record; ``log`` one line per event."""

    def __init__(self, publish: Callable[[dict[str, Any]], None] = lambda r: None,
                 log: Callable[[str], None] = print, level: float = LEVEL, clear: float = CLEAR,
                 min_parts: int = MIN_PARTS):
        self.publish, self.log = publish, log
        self.level, self.clear, self.min_parts = level, clear, min_parts
        self.products: dict[str | None, _Product] = {}
        self._lock = threading.Lock()

    def set_bundle(self, product: str | None, bundle) -> None:
        """The product's bundle (a new one starts a new window: its own calibration)."""
        with self._lock:
            old = self.products.get(product)
            if old is not None and old.bundle == bundle.bundle_id:
                return
        cal = bundle.manifest.get("threshold", {}).get("calibration_scores")
        cut = float(np.quantile(np.asarray(cal, np.float64), QUANTILE)) if cal else None
        with self._lock:
            self.products[product] = _Product(cut, bundle.bundle_id)

    def observe(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """Count one result record; returns (and publishes) an event record when the state changes."""
        if rec.get("verdict") not in ("ok", "ng") or rec.get("score") is None:
            return None
        product = rec.get("product")
        with self._lock:
            st = self.products.get(product)
            if st is None or st.cut is None or (rec.get("bundle") and rec["bundle"] != st.bundle):
                return None
            st.above.append(float(rec["score"]) > st.cut)
            share = st.share
            if not st.alarm and len(st.above) >= min(self.min_parts, WINDOW) and share >= self.level:
                st.alarm = True
            elif st.alarm and share <= self.clear:
                st.alarm = False
            else:
                return None
            st.events += 1
            event = {"kind": "drift", "id": f"drift-{product or 'default'}-{st.events}-{rec.get('time')}",
                     "product": product, "state": "alarm" if st.alarm else "cleared", "share": round(share, 4),
                     "level": self.level, "parts": len(st.above), "bundle": st.bundle, "time": rec.get("time")}
        self.log(f"drift {event['state']}{' for product ' + product if product else ''}: {share:.0%} of the last "
                 f"{event['parts']} parts score above the calibration's {QUANTILE:.0%} quantile "
                 f"(alarm at {self.level:.0%})")
        self.publish(event)
        return event

    def view(self) -> dict[str, dict[str, Any]]:
        """Per product: share, parts, alarm (the page and /v1/status; the key "" is the unnamed one)."""
        with self._lock:
            return {(k or ""): {"share": v.share, "parts": len(v.above), "alarm": v.alarm, "level": self.level}
                    for k, v in self.products.items()}

    def text(self) -> str:
        """A few words for the status line while any product is in alarm."""
        with self._lock:
            bad = [(k, v.share) for k, v in self.products.items() if v.alarm]
        return "; ".join(f"DRIFT {k or ''} {s:.0%}".replace("  ", " ") for k, s in bad)
