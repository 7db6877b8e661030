"""What several ``patchcore-rt`` commands share: the device and search choices, the options that
mean the same everywhere, the run options that end the scoring commands (defined once here, see
:func:`with_run_options`), the scoring progress bar and the image limits."""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
from dataclasses import replace
from typing import Callable, Iterator, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..engines.table import DEVICE_ENGINE
from ..images import DEFAULT_LIMITS, ImageLimits
from ..line.messages import err
from ..line.run_options import LineRule, RunOptions
from ..line.sinks.table import SINKS
from ..search.table import AUTO, INDEXES
from .console import known_errors


def _choice(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A str enum of ``values`` for typer (its --help lists them as ``[a|b|c]``)."""
    return enum.Enum(name, [(v, v) for v in values], type=str)


Device = _choice("Device", tuple(DEVICE_ENGINE))  # the engines table's --device column
Search = _choice("Search", (AUTO, *INDEXES.keys()))  # the search-index table's rows


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
PublishOpt = typer.Option(None, "--publish", metavar="URL", help="Also send each result to the line's systems "
                          "(repeatable): " + ", ".join(f"{k}://" for k in SINKS.keys()) + " (see the docs' "
                          "\"Connecting to the line\"; credentials and TLS from the environment). A sink that is "
                          "away never stops scoring: its results wait in OUT/outbox and go out in order when it is "
                          "back, also after a restart.")


def with_run_options(*, publish: bool = False, max_pixels: bool = True, search: bool = True, rule: bool = True,
                     threads=ThreadsOpt) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Append the run options to a command, in this order: ``--publish`` (``publish``), ``--max-pixels``
    (``max_pixels``), ``--device``, ``--search`` (``search``), ``--threads``, ``--graph``, ``--min-area`` and
    ``--mm-per-px`` (``rule``), and call the command with ``run``, the :class:`RunOptions` they make.

    One definition of the options that end predict, score, watch, camera, bench, threshold and serve,
    so a flag means the same everywhere and reads the same in every ``--help``. A bad value (a rule that does
    not parse, a limit in the environment that is not a number) is exit 2 before the command runs."""
    extra = [("publish", Optional[List[str]], PublishOpt)] if publish else []
    extra += [("max_pixels", Optional[int], MaxPixelsOpt)] if max_pixels else []
    extra += [("device", Device, DeviceOpt)] + ([("search", Search, SearchOpt)] if search else [])
    extra += [("threads", Optional[int], threads), ("graph", str, GraphOpt)]
    extra += [("min_area", Optional[str], MinAreaOpt), ("mm_per_px", Optional[float], MmPerPxOpt)] if rule else []

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True)
        params = [p for name, p in own.parameters.items() if name != "run"]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                   for name, kind, default in extra]

        @functools.wraps(command)
        def with_run(**kw):
            given = {name: kw.pop(name) for name, _, _ in extra}
            with known_errors():
                run = RunOptions(
                    device=given["device"].value, search=given["search"].value if search else Search.auto.value,
                    threads=given["threads"], graph=given["graph"],
                    rule=LineRule.parse(given["mm_per_px"], given["min_area"]) if rule else LineRule(),
                    limits=image_limits(given["max_pixels"]) if max_pixels else DEFAULT_LIMITS,
                    publish=tuple(given.get("publish") or ()))
            return command(**kw, run=run)

        with_run.__signature__ = own.replace(parameters=params)
        with_run.__annotations__ = {p.name: p.annotation for p in params}
        return with_run

    return decorate


@contextlib.contextmanager
def scoring_progress(total: int) -> Iterator[Callable[[int], None]]:
    if not err.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as prog:
        task = prog.add_task("scoring", total=total)
        yield lambda n: prog.advance(task, n)


def image_limits(max_pixels: int | None) -> ImageLimits:
    """The image limits: $PATCHCORE_RT_MAX_PIXELS / $PATCHCORE_RT_MAX_BYTES, then the option."""
    limits = ImageLimits.from_env()
    return replace(limits, max_pixels=max_pixels) if max_pixels else limits
