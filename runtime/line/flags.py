"""What several ``patchcore-rt`` commands share: the device and search choices, the options that
mean the same everywhere, opening a bundle's predictor with the line's rule (and a long-running
command's reloadable bundle), the scoring progress bar, the image limits and stopping on signals (split out of :mod:`runtime.line.cli` so command modules such as
:mod:`runtime.line.threshold` can use them without importing the command line)."""

from __future__ import annotations

import contextlib
import enum
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..drift import DriftAlarms
from ..images import ImageLimits
from ..predictor import Predictor
from ..regions import Judge, MinArea, check_scale, parse_min_area
from .console import err, info
from .outputs import numbered
from .products import Products, parse_bundles
from .reload import BundleSource
from .selection import resolve_bundle
from .sinks.table import SINKS
from .status import StatusLine


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    openvino = "openvino"


class Search(str, enum.Enum):
    auto = "auto"
    faiss = "faiss"
    numpy = "numpy"
    bf16 = "bf16"
    int8 = "int8"


# Options shared by several commands, so a flag means the same everywhere.
DeviceOpt = typer.Option(Device.auto, "--device", help="auto (GPU when usable, else CPU), cpu, cuda, tensorrt, or "
                         "openvino (x86 CPUs; the [openvino] extra; runs features_fp32, features_bf16, features_int8).")
SearchOpt = typer.Option(Search.auto, "--search", help="Nearest-neighbour search: auto (faiss on a GPU when present, "
                         "else int8 where this CPU runs it fast, measured at load, or the exact search in onnxruntime; "
                         "image scores, regions and maps at and above the pixel threshold (the overlay floor where "
                         "overlays are drawn) exact either way), faiss, numpy (the exact numpy "
                         "search of earlier releases), int8 (candidates found by an integer product in "
                         "onnxruntime) or bf16 (by OpenVINO; the [openvino] extra): candidates rescored in float32 as "
                         "bounds, the patches that decide scores and shown maps settled exactly.")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads for the feature graph (default: all).")
BatchOpt = typer.Option(8, "--batch-size", min=1, help="Images per model call.")
MaxPixelsOpt = typer.Option(None, "--max-pixels", min=1, help="Refuse images over this many pixels (width x "
                            "height, read from the file header before decoding; default 100000000 or "
                            "$PATCHCORE_RT_MAX_PIXELS). Such an image gets an error record.")
MinAreaOpt = typer.Option(None, "--min-area", help="A part is NG only when its image score reaches the threshold AND "
                          "its largest defect region is at least this large: pixels of the original image (50, 50px) "
                          "or mm² (1.5mm2, needs a scale). Smaller regions turn NG parts OK; this replaces the bundle's "
                          "rule (default: off, the bundle's rule decides: the image score, or the image score or a "
                          "large enough region; see info).")
MmPerPxOpt = typer.Option(None, "--mm-per-px", help="Millimetres per original image pixel: region areas in mm² "
                          "(default: the scale recorded at export, if any).")
BundlesOpt = typer.Option(None, "--bundle", help="Bundle folder or name (default: $PATCHCORE_RT_BUNDLE, else the "
                          "only bundle under $PATCHCORE_RT_MODELS or ./models); NAME=DIR, repeated, gives each "
                          "product its bundle (a cell that changes over: see docs/runtime.md).")
LoadOpt = typer.Option("lazy", "--load", help="With several --bundle NAME=DIR: open each product's bundle when its "
                       "first part comes (lazy) or all at start (eager). The first is always opened at start.")
GraphOpt = typer.Option("auto", "--graph", help="Which of the bundle's graphs to run (see info): auto (the "
                        "fastest here, timed at load, of features_fp32 and the reduced-precision variants whose parity "
                        "the export approved; features_fp32 when none was), features_fp32 (the exact path), "
                        "features_fp16, features_int8 (int8 QDQ), features_bf16 (--device openvino).")


def load_predictor(bundle: str | Path, device: Device, search: Search, threads: int | None,
                   graph: str = "features_fp32", rule: LineRule | None = None, overlays: bool = False) -> Predictor:
    """The bundle's predictor, its choices logged. ``overlays``: the command draws overlays, so a
    reduced search settles the maps down to the overlays' floor (:attr:`Predictor.map_level`)."""
    p = Predictor(bundle, device=device.value, graph=graph, search=search.value, threads=threads, log=info,
                  overlays=overlays)
    d = p.info()
    info(f"bundle {d['bundle']}: {d['engine']}, graph {d.get('graph', graph)}, precision {d['precision']}, "
         f"search {d['search']}")
    if "search_choice" in d:
        c = d["search_choice"]
        info(f"search auto: int8 candidate product {c['int8_ms']} ms, exact {c['exact_ms']} ms on {c['queries']} "
             f"queries ({c['speedup']}x, int8 from {c['min_speedup']}x): {c['chose']}")
    p.judge = Judge.for_manifest(p.bundle.manifest, *(rule or LineRule()))  # regions and the verdict's rule
    if (rule is not None and rule.min_area is not None) or p.judge.bundle_rule.kind != "image-score":
        info(f"rule: {p.judge.rule} ({p.judge.level.source})")
    return p


class LineRule(NamedTuple):
    """``--mm-per-px`` and ``--min-area``, checked (exit 2) before any bundle is opened."""

    mm_per_px: float | None = None
    min_area: MinArea | None = None

    @classmethod
    def parse(cls, mm_per_px: float | None, min_area: str | None) -> "LineRule":
        check_scale(mm_per_px)
        return cls(mm_per_px, parse_min_area(min_area))


@contextlib.contextmanager
def scoring_progress(total: int) -> Iterator[Callable[[int], None]]:
    if not err.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as prog:
        task = prog.add_task("scoring", total=total)
        yield lambda n: prog.advance(task, n)


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


def image_limits(max_pixels: int | None) -> ImageLimits:
    """The image limits: $PATCHCORE_RT_MAX_PIXELS / $PATCHCORE_RT_MAX_BYTES, then the option."""
    limits = ImageLimits.from_env()
    return replace(limits, max_pixels=max_pixels) if max_pixels else limits


def unique_in_run(path: Path, used: set[Path]) -> Path:
    """``path``, numbered (``name-1.png`` ...) when this run wrote that name already."""
    n = 0
    while numbered(path, n) in used:
        n += 1
    used.add(numbered(path, n))
    return numbered(path, n)


def bundle_source(bundle: Optional[str], device: Device, search: Search, threads: Optional[int], graph: str,
                   status: StatusLine, require_threshold: bool, rule: LineRule | None = None,
                   overlays: bool = False) -> BundleSource:
    """The bundle of a long-running command, reopened with the same settings when replaced."""
    return BundleSource(resolve_bundle(bundle),
                        lambda path: load_predictor(path, device, search, threads, graph, rule, overlays),
                        require_threshold=require_threshold, log=status.log)


def bundle_paths(bundles: list[str] | None) -> dict[str | None, Path]:
    """``--bundle`` values (none: the default bundle) -> {product: bundle folder}; exit 2 for bad ones."""
    return {name: resolve_bundle(path) for name, path in (parse_bundles(bundles) if bundles else {None: None}).items()}


def line_products(bundles: list[str], load: str, device: Device, search: Search, threads: Optional[int], graph: str,
                  status: StatusLine, require_threshold: bool, rule: LineRule | None = None,
                  overlays: bool = False) -> Products:
    """``--bundle NAME=DIR`` (repeatable) of a long-running command: a reloadable bundle per product."""
    paths = bundle_paths(bundles)
    return Products(paths, lambda path: BundleSource(
        path, lambda p: load_predictor(p, device, search, threads, graph, rule, overlays),
        require_threshold=require_threshold, log=status.log), load=load, log=status.log)


def line_drift(products: Products, publisher, status: StatusLine) -> DriftAlarms:
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


def reloads_text(source: BundleSource) -> str:
    """How often a long-running command's bundle was reloaded or refused (for its last line)."""
    if not source.reloads + source.refused:
        return ""
    return f"; bundle reloaded {source.reloads} time(s), {source.refused} refused"


PublishOpt = typer.Option(None, "--publish", metavar="URL", help="Also send each result to the line's systems "
                          "(repeatable): " + ", ".join(f"{k.scheme}://" for k in SINKS) + " (see the docs' "
                          "\"Connecting to the line\"; credentials and TLS from the environment). A sink that is "
                          "away never stops scoring: its results wait in OUT/outbox and go out in order when it is "
                          "back, also after a restart.")
