"""One served bundle and everything around it, without the web framework: the batch scorer
behind ``/v1/predict``, the recent results, the operator's actions, health, metrics and the
in-process watcher (``--watch``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..images import IMAGE_SUFFIXES
from ..line.info import bundle_info, describe_update
from ..line.outputs import encode_png, outcome_overlay
from ..line.records import Item, Outcome, record, score_items
from ..drift import DriftAlarms
from ..line.products import Products
from ..line.sinks.delivery import Publisher
from ..line.watch import Watcher, WatchOptions
from ..operating_point import parse_policy
from ..threshold import basis, preview
from .metrics import ServeMetrics
from .operator import Operator
from .options import ServeOptions
from .results import Result, ResultStore, thumbnail
from .reviews import ReviewLog

RECENT_SCORES = 500  # scores behind the page's histogram


@dataclass
class Job:
    """One /v1/predict request on its way through the batcher."""

    item: Item
    overlay: bool = False
    data: bytes | None = None  # the upload, kept for the review queue (a false call or a missed defect)
    suffix: str = ".png"
    product: str | None = None  # ?product=NAME (runtime.line.products)


class LockedSource:
    """The watcher's view of the bundle source: the service's, so reloads and switches never run
    at once and a reload (folder replaced, SIGHUP) updates health and metrics whoever noticed it."""

    def __init__(self, current: Callable[[], Any]):
        self.current = current


class Service:
    def __init__(self, options: ServeOptions, open_predictor: Callable[[Path], Any], log: Callable[[str], None] = print):
        self.opts, self.log = options, log
        self.lock = threading.Lock()
        self.products = Products.reloadable(options.bundles or {None: options.bundle}, open_predictor, options.load, log)
        self.primary = self.products.first  # the product whose bundle the operator teaches, switches and moves
        self.source = self.products.sources[self.primary]
        self.metrics = ServeMetrics()
        self.store = ResultStore(options.keep_results, limits=options.limits)
        self.counts = {"ok": 0, "ng": 0, "error": 0, "none": 0}
        self.recent_scores: list[tuple[str, float]] = []  # (bundle id, score)
        self._counts_lock = threading.Lock()
        self._temp_state = options.watch is None
        self.state_dir = (self._watch_out() / "serve") if options.watch else Path(tempfile.mkdtemp(prefix="patchcore-serve-"))
        # result sinks: parsed here (a bad URL is exit 2 before the bundle loads), opened by open_sinks()
        self.publisher = Publisher(list(options.publish), options.watch_out if options.watch is None and
                                   options.watch_out is not None else (self._watch_out() if options.watch else
                                                                       self.state_dir), log)
        if self.publisher and options.watch is None and options.watch_out is None:
            log(f"--publish without --out: the outbox lies in {self.state_dir}, which a restart does not keep")
        self.reviews = ReviewLog(self._results_dir() / "reviews", log)
        self.drift = DriftAlarms(self.publisher.publish, log)
        for name, src in self.products.sources.items():
            self.drift.set_bundle(name, src.predictor.bundle)
        self.operator = Operator(self.source, self.lock, self.store, self.state_dir, options.models_dir,
                                 on_switch=self._switched, log=log, reviews=self.reviews, product=self.primary,
                                 judge=options.run_options.judge)
        self.health: dict[str, Any] = {"ok": False, "reason": "not checked yet"}
        self.watcher: Watcher | None = None
        self.watch_error: BaseException | None = None
        self.stop = threading.Event()
        self.request_exit: Callable[[], None] = lambda: None
        self._watch_thread: threading.Thread | None = None
        self._info_cache: tuple[str, dict] | None = None
        self.check_health()
        self.metrics.set_bundle(self.predictor)
        self._serving = self.predictor.bundle.bundle_id
        if options.watch is not None:
            wopts = WatchOptions(options.watch, self._watch_out(), existing=True, move=options.watch_move,
                                 overlays=True, batch=options.max_batch, poll=options.watch_poll,
                                 settle=options.watch_settle)
            self.watcher = Watcher(self.predictor, wopts, emit=self._watched, stop=self.stop,
                                   source=LockedSource(self.current), run=options.run_options,
                                   publisher=self.publisher.shared(),
                                   products=self.products if self.products.named else None)

    @property
    def predictor(self):
        return self.source.predictor

    def _results_dir(self) -> Path:
        """Where what outlives the process goes (reviews): --out, else the watcher's output folder,
        else the temporary state folder (said at start)."""
        if self.opts.watch_out is not None:
            return self.opts.watch_out
        if self.opts.watch is not None:
            return self._watch_out()
        self.log(f"no --out: reviews are kept in {self.state_dir}, which a restart does not keep")
        return self.state_dir

    def _watch_out(self) -> Path:
        return self.opts.watch_out if self.opts.watch_out is not None else self.opts.watch / "_patchcore"

    # ------------------------------------------------------------------------ health
    def check_health(self) -> dict[str, Any]:
        """The bundle loaded and one blank image scored to a finite number."""
        p = self.predictor
        h, w = p.input_size
        try:
            score = float(p.predict([np.zeros((h, w, 3), np.uint8)]).image_scores[0])
        except Exception as e:  # noqa: BLE001 - reported by /healthz
            self.health = {"ok": False, "bundle": p.bundle.bundle_id, "reason": f"blank image failed: {e}"}
        else:
            ok = bool(np.isfinite(score))
            self.health = {"ok": ok, "bundle": p.bundle.bundle_id, "blank_score": score if ok else None,
                           "checked": time.time()}
            if not ok:
                self.health["reason"] = f"a blank image scored {score}"
        return self.health

    def healthz(self) -> dict[str, Any]:
        h = dict(self.health)
        if self.watcher is not None:
            alive = self._watch_thread is not None and self._watch_thread.is_alive()
            h["watch"] = "running" if alive else f"stopped: {self.watch_error}" if self.watch_error else "not started"
            h["ok"] = h["ok"] and alive
        return h

    # ------------------------------------------------------------------------ scoring
    def current(self):
        """The predictor for the next batch (:meth:`BundleSource.current`: a replaced bundle folder
        or SIGHUP reloads it); a new bundle gets its health check and metrics."""
        with self.lock:
            p = self.source.current()
            changed = p.bundle.bundle_id != self._serving
            self._serving = p.bundle.bundle_id
        if changed:
            self._switched(p)
        return p

    def score_jobs(self, jobs: Sequence[Job]) -> list[tuple[Outcome, Result]]:
        """One model call per product in the batch (in the batcher's worker thread)."""
        groups: dict[str | None, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault(j.product, []).append(i)
        out: list = [None] * len(jobs)
        for product, idx in groups.items():
            try:
                p = self.current() if product == self.primary else self.products.current(product)
            except Exception as e:  # noqa: BLE001 - a lazy bundle that cannot open: error records (422), others go on
                for i in idx:
                    j = jobs[i]
                    o = Outcome(j.item, verdict="error", error=f"{j.item.name}: product {product!r}: bundle not "
                                f"usable ({e or type(e).__name__})")
                    rec = record(o, None, product=product)
                    self.publisher.publish(rec)
                    out[i] = (o, self._add(rec, "api"))
                continue
            self.drift.set_bundle(product, p.bundle)
            for i, pair in zip(idx, self._score_group(p, [jobs[i] for i in idx], product)):
                out[i] = pair
        return out

    def _score_group(self, p, jobs: Sequence[Job], product: str | None) -> list[tuple[Outcome, Result]]:
        judge = self.opts.run_options.judge(p)
        # maps exact down to the overlay's floor only for the requests that ask for an overlay; the others
        # (and their thumbnails on the results page) exact at and above the pixel threshold
        outcomes = score_items(p, [j.item for j in jobs], self.opts.limits, judge, overlays=[j.overlay for j in jobs])
        out = []
        for j, o in zip(jobs, outcomes):
            rec = record(o, p.bundle.bundle_id, precision=p.precision,
                         **({"product": product} if self.products.named else {}))
            kw: dict[str, Any] = {"suffix": j.suffix}
            image = o.item.image
            if image is not None and o.map is not None:
                kw["thumb"] = thumbnail(image, o.map, p.spec, p.threshold, p.scale)
                if j.overlay:
                    kw["overlay_png"] = encode_png(outcome_overlay(image, o, p, judge))
            if o.verdict in ("ng", "ok"):  # a false call, or a missed defect, can be reviewed
                kw["image_bytes"] = j.data
            o.item.image = None
            self.publisher.publish(rec)  # the watcher's records are published by the watcher, before its commit
            out.append((o, self._add(rec, "api", **kw)))
        return out

    def _add(self, rec: dict[str, Any], source: str, **kw: Any) -> Result:
        res = self.store.add(rec, source, **kw)
        product = rec.get("product")
        self.metrics.result(rec, source, drift=product == self.primary)  # the gauge: the served bundle's
        src = self.products.sources.get(product) if product in self.products.paths else None
        if src is not None:
            self.drift.set_bundle(product, src.predictor.bundle)  # a product the watcher opened, or reloaded
        self.drift.observe(rec)
        with self._counts_lock:
            self.counts[rec.get("verdict") or "none"] += 1
            if rec.get("score") is not None:
                self.recent_scores.append((rec.get("bundle"), rec["score"]))
                del self.recent_scores[:-RECENT_SCORES]
        return res

    def _watched(self, rec: dict[str, Any]) -> None:
        out = self._watch_out()
        kw: dict[str, Any] = {"suffix": image_suffix(rec.get("file", ""))}
        if rec.get("overlay"):
            kw["overlay_path"] = out / rec["overlay"]
        if rec.get("verdict") in ("ng", "ok"):
            kw["image_path"] = out / rec["moved_to"] if rec.get("moved_to") else self.opts.watch / rec["file"]
        self._add(rec, "watch", **kw)

    # ------------------------------------------------------------------------ switch, info, status
    def _switched(self, predictor) -> None:
        self._serving = predictor.bundle.bundle_id
        self.metrics.set_bundle(predictor)
        self.drift.set_bundle(self.primary, predictor.bundle)
        self.check_health()

    def review(self, res: Result, review: str, reviewer: str) -> dict[str, Any]:
        """Store the review and send it out with the results (a record through the publisher)."""
        r = self.operator.review(res, review, reviewer)
        self.publisher.publish(dict(r))
        return r

    def bundle_info(self) -> dict[str, Any]:
        b = self.predictor.bundle
        if self._info_cache is None or self._info_cache[0] != b.bundle_id:
            self._info_cache = (b.bundle_id, bundle_info(b.root))
        return self._info_cache[1]

    def status(self) -> dict[str, Any]:
        p = self.predictor
        with self._counts_lock:
            counts = dict(self.counts)
            # the histogram is drawn against the served bundle's threshold: its own scores only
            scores = [v for b, v in self.recent_scores if b == p.bundle.bundle_id]
        return {"bundle": p.bundle.bundle_id, "bundle_name": Path(os.path.realpath(p.bundle.root)).name, "threshold": p.threshold,
                "lineage": [describe_update(e) for e in p.bundle.lineage],
                "counts": counts, "recent_scores": scores, "health": self.healthz(),
                "actions": self.opts.actions_enabled, "marked": len(self.store.marked()),
                "teach": self.operator.job.view(),
                "previous": self.operator.previous.name if self.operator.previous else None, "watch": str(self.opts.watch) if self.opts.watch else None,
                "drift_share": self.metrics.drift_share, "drift": self.drift.view(),
                "product": self.primary, "products": self.products_view(), "reviews": self.reviews.counts(),
                **self.store.flags()}

    def products_view(self) -> list[dict[str, Any]]:
        """Each product: its bundle (None until a lazy one is opened) and its drift."""
        drift = self.drift.view()
        out = []
        for name in self.products.names():
            src = self.products.sources.get(name)
            p = src.predictor if src is not None else None
            out.append({"product": name, "loaded": p is not None, "bundle": p.bundle.bundle_id if p else None,
                        "threshold": p.threshold if p else None, "load_s": self.products.load_s.get(name),
                        "drift": drift.get(name or "")})
        return out

    def threshold_view(self, text: str | None) -> dict[str, Any]:
        """The served bundle's operating point and, for a proposed policy ``text``, how it would
        have called the recent parts this bundle scored (:func:`runtime.threshold.preview`)."""
        p = self.predictor
        bid = p.bundle.bundle_id
        recent = [(r.id, float(r.record["score"]), float((r.record.get("regions") or [{}])[0].get("area_px", 0)))
                  for r in self.store.since(0, limit=self.store.keep)
                  if r.record.get("bundle") == bid and r.record.get("score") is not None]
        view = preview(basis(p.bundle.manifest), parse_policy(text) if text else None, recent, p.threshold)
        return {"bundle": bid, **view}

    # ------------------------------------------------------------------------ watcher
    def open_sinks(self) -> None:
        """Connect the result sinks (exit 2 for one that cannot work), before the server listens."""
        self.publisher.open()
        self.metrics.sinks = self.publisher.stats

    def start_watch(self) -> None:
        if self.watcher is None:
            return

        def run() -> None:
            try:
                self.watcher.run()
            except BaseException as e:  # noqa: BLE001 - the server stops, and the command says it with its exit code
                self.watch_error = e
                self.request_exit()

        self._watch_thread = threading.Thread(target=run, name="watch", daemon=True)
        self._watch_thread.start()

    def close(self) -> None:
        self.stop.set()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=60)
        self.publisher.close()
        if self._temp_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def image_suffix(name: str) -> str:
    """The suffix a marked image is copied under (its own when it is an image suffix)."""
    s = Path(name).suffix.lower()
    return s if s in IMAGE_SUFFIXES else ".img"

