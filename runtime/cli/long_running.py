"""The wiring the long-running commands share (``watch``, ``camera``; ``serve`` opens its bundles the
same way): the status line, the result sinks' publisher, a reloadable bundle per product, the drift
alarm, stopping on SIGINT/SIGTERM and reloading on SIGHUP. One helper, so the three commands cannot
drift apart in how they start, stop and switch bundles."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from ..drift import DriftAlarms
from ..line.products import Products
from ..line.reload import BundleSource, reload_on_sighup
from ..line.run_options import RunOptions
from ..line.sinks.delivery import Publisher
from .bundle_choice import bundle_paths
from .console import JsonLines
from .status import StatusLine


class LineRun:
    """One long-running command's run: made before any bundle opens (a bad ``--publish`` URL is exit 2
    first), then :meth:`open_bundles`, then ``with line_run.running(): ...``."""

    def __init__(self, unit: str, run: RunOptions, out: Path):
        self.run = run
        self.stop = threading.Event()
        self.status = StatusLine(unit)
        self.publisher = Publisher(list(run.publish), out, self.status.log)
        self.status.notes = self.publisher.status_text
        self.lines = JsonLines()

    def open_bundles(self, bundles: list[str] | None, load: str, require_threshold: bool,
                     overlays: bool = False) -> Products:
        """``--bundle NAME=DIR`` (repeatable): a reloadable bundle per product; a single unnamed one is
        ``self.single``. Also sets up the per-product drift alarm (events to the sinks, a word on the
        status line)."""
        self.products = Products.reloadable(bundle_paths(bundles), lambda p: self.run.load_predictor(p, overlays),
                                            load, self.status.log, require_threshold)
        self.single = None if self.products.named else self.products.source(None)
        self.drift = _drift(self.products, self.publisher, self.status)
        return self.products

    @property
    def bundles(self) -> BundleSource | Products:
        """What SIGHUP and a replaced folder reload: the single bundle, else every product's."""
        return self.single or self.products

    @contextlib.contextmanager
    def running(self, *more: Any) -> Iterator[None]:
        """Signals handled, SIGHUP reloading, the status line drawn (and ``more`` entered first)."""
        with contextlib.ExitStack() as stack:
            for ctx in more:
                stack.enter_context(ctx)
            stack.enter_context(stop_on_signals(self.stop, self.status.log))
            stack.enter_context(reload_on_sighup(self.bundles))
            stack.enter_context(self.status)
            yield

    def reloads_text(self) -> str:
        """How often the bundle was reloaded or refused (for the command's last line)."""
        source = self.bundles
        if not source.reloads + source.refused:
            return ""
        return f"; bundle reloaded {source.reloads} time(s), {source.refused} refused"


def _drift(products: Products, publisher, status: StatusLine) -> DriftAlarms:
    """The per-product drift alarm of watch and camera: events to the sinks, a word on the status line."""
    drift = DriftAlarms(publisher.publish, status.log)
    observe = drift.observe

    def with_bundle(rec):  # the product's bundle as it is now (a reload starts a new window)
        src = products.sources.get(rec.get("product"))
        if src is not None:
            drift.set_bundle(rec.get("product"), src.predictor.bundle)
        return observe(rec)

    drift.observe = with_bundle
    notes = status.notes
    status.notes = lambda: "; ".join(t for t in ((notes() if notes else ""), drift.text()) if t)
    return drift


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, log: Callable[[str], None]) -> Iterator[None]:
    """First SIGINT/SIGTERM: set ``stop`` (the current batch finishes, results are flushed, exit 0).
    A second one aborts at once (exit 130)."""
    count = {"n": 0}

    def handler(signum, frame):
        count["n"] += 1
        if count["n"] > 1:
            raise KeyboardInterrupt
        stop.set()
        log(f"{signal.Signals(signum).name}: finishing the current batch, then stopping (send again to abort)")

    sigs = [signal.SIGINT, signal.SIGTERM]
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
