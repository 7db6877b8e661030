"""Prometheus metrics of one server (its own registry, so two apps in one process stay apart).

``patchcore_drift_share``: of the last :data:`DRIFT_WINDOW` parts called good, the share whose
score lies above the 95th percentile of the served bundle's calibration scores (the held-out
good images' scores it was calibrated on). With nothing drifting that is about 5%; a share that
climbs means good parts creep towards the threshold (lighting, a new supplier) before they start
being called defective. Bundles without calibration scores leave it NaN.
"""

from __future__ import annotations

import collections
import math
import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

disable_created_metrics()  # the *_created series: noise for a scraper that knows the process start

DRIFT_WINDOW = 200
DRIFT_QUANTILE = 0.95
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class ServeMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.results = Counter("patchcore_results", "Results by verdict (ok, ng, error) and source (api, watch).",
                               ["verdict", "source"], registry=r)
        self.errors = Counter("patchcore_errors", "Requests refused or failed, by reason.", ["reason"], registry=r)
        self.latency = Histogram("patchcore_predict_latency_seconds", "Time from a /v1/predict request's body "
                                 "read to its answer.", buckets=LATENCY_BUCKETS, registry=r)
        self.scores = Histogram("patchcore_score_normalised", "Normalised scores (0.5 = the threshold).",
                                buckets=SCORE_BUCKETS, registry=r)
        self.batch = Histogram("patchcore_batch_size", "Requests per model call.", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=r)
        self.queue = Gauge("patchcore_queue_depth", "Requests waiting or being scored.", registry=r)
        self.bundle = Info("patchcore_bundle", "The bundle being served.", registry=r)
        self.drift = Gauge("patchcore_drift_share", f"Share of the last {DRIFT_WINDOW} good parts scoring above the "
                           f"{DRIFT_QUANTILE:.0%} quantile of the bundle's calibration scores.", registry=r)
        self.drift.set(math.nan)
        self.drift_share: float | None = None
        self._above: collections.deque[bool] = collections.deque(maxlen=DRIFT_WINDOW)
        self._cut: float | None = None
        self._lock = threading.Lock()
        self.sinks = lambda: []  # the result sinks' stats (runtime.line.sinks.delivery.SinkStats)
        r.register(_SinkCollector(lambda: self.sinks()))

    def set_bundle(self, predictor) -> None:
        m = predictor.bundle.manifest
        self.bundle.info({"bundle_id": predictor.bundle.bundle_id, "name": predictor.bundle.name})
        cal = m["threshold"].get("calibration_scores")
        with self._lock:
            self._cut = float(np.quantile(np.asarray(cal, np.float64), DRIFT_QUANTILE)) if cal else None
            self._above.clear()
            self.drift.set(math.nan)
            self.drift_share = None

    def result(self, record: dict, source: str, drift: bool = True) -> None:
        verdict = record.get("verdict") or "none"
        self.results.labels(verdict, source).inc()
        if record.get("normalised") is not None:
            self.scores.observe(record["normalised"])
        if drift and verdict == "ok" and record.get("score") is not None:
            with self._lock:
                if self._cut is not None:
                    self._above.append(record["score"] > self._cut)
                    self.drift_share = sum(self._above) / len(self._above)
                    self.drift.set(self.drift_share)

    def exposition(self, queue_depth: int) -> bytes:
        self.queue.set(queue_depth)
        return generate_latest(self.registry)


class _SinkCollector:
    """Per ``--publish`` sink: delivered, waiting in the outbox, overflowed, and whether it is up."""

    def __init__(self, stats):
        self.stats = stats

    def describe(self):
        return []

    def collect(self):
        delivered = CounterMetricFamily("patchcore_sink_delivered", "Results a sink has taken.", labels=["sink"])
        overflow = CounterMetricFamily("patchcore_sink_overflow", "Results that found a sink's outbox full (they stay "
                                       "in the journal).", labels=["sink"])
        pending = GaugeMetricFamily("patchcore_sink_pending", "Results waiting in a sink's outbox.", labels=["sink"])
        up = GaugeMetricFamily("patchcore_sink_up", "1 while a sink takes results, 0 while it is away.",
                               labels=["sink"])
        for st in self.stats():
            delivered.add_metric([st.url], st.delivered)
            overflow.add_metric([st.url], st.overflow)
            pending.add_metric([st.url], st.pending)
            up.add_metric([st.url], 0 if st.state == "down" else 1)
        yield from (delivered, overflow, pending, up)
