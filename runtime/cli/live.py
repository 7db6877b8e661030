"""``watch`` and ``camera``: the long-running line commands. Both start through :class:`LineRun`
(status line, sinks, a reloadable bundle per product, signals); the loops are
:class:`runtime.line.watch.Watcher` and :class:`runtime.line.camera.CameraRunner` (a PLC trigger's:
:class:`runtime.line.trigger.TriggeredCamera`)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from ..line.camera import CameraOptions, CameraRunner
from ..line.messages import info
from ..line.run_options import RunOptions
from ..line.sources import check_available
from ..line.sources.settings import load_settings
from ..line.trigger import TriggeredCamera
from ..line.triggers import make_trigger
from ..line.watch import Watcher, WatchOptions
from .console import known_errors
from .flags import BatchOpt, BundlesOpt, LoadOpt, PublishOpt, with_run_options
from .long_running import LineRun


@with_run_options(publish=True)
def watch(
    folder: Path = typer.Argument(..., help="Folder to watch (sub-folders too, unless --no-recursive)."),
    bundle: Optional[List[str]] = BundlesOpt,
    load: str = LoadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder: results.jsonl, overlays/, ok/ ng/ "
                                       "error/ (default: FOLDER/_patchcore, which is never scanned)."),
    existing: bool = typer.Option(True, "--existing/--no-existing", help="Also score files already in the folder at start."),
    move: bool = typer.Option(False, "--move", help="After its result is saved, move each input to OUT/ok, OUT/ng or "
                              "OUT/error (never overwriting: name-1.ext, name-2.ext ...)."),
    overlays: bool = typer.Option(False, "--overlays", help="Write heat-map overlays to OUT/overlays."),
    batch: int = BatchOpt,
    poll: float = typer.Option(0.25, "--poll", help="Seconds between scans of the folder."),
    settle: float = typer.Option(1.0, "--settle", help="A file is read once its size and mtime were unchanged this many seconds."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Watch sub-folders too."),
    once: bool = typer.Option(False, "--once", help="Score what is there (once complete), then exit."),
    follow_links: bool = typer.Option(False, "--follow-links", help="Score symbolic links that resolve to files "
                                      "inside FOLDER (other links, and all links without this, get an error record)."),
    *, run: RunOptions,
) -> None:
    """Score every image that lands in a folder, exactly once.

    Every image that lands in FOLDER is scored exactly once, also across crashes and restarts.
    Results go to OUT/results.jsonl (fsynced; it is also the journal of what was done) and to
    stdout. Files still being written (size/mtime changing, *.part, *.tmp, *.crdownload, dot-files)
    wait. A corrupt file gives an error record. SIGINT/SIGTERM finish the current batch and exit 0.
    Symbolic links are not followed (see --follow-links); OUT may lie inside FOLDER but not be it.
    When the bundle folder is replaced (a symlink flipped, a folder renamed into place) or on
    SIGHUP, the new bundle is checked and used from the next batch on (a bad one is refused with a
    warning); each record names the bundle that scored it.
    """
    with known_errors():
        if not folder.is_dir():
            raise UsageError(f"watch folder not found: {folder}" if not folder.exists() else f"{folder}: not a folder")
        opts = WatchOptions(folder, out if out is not None else folder / "_patchcore", existing, move, overlays,
                            batch, poll, settle, recursive, once, follow_links)
        line = LineRun("files", run, opts.out)  # a bad --publish URL: exit 2 before the bundle loads
        products = line.open_bundles(bundle, load, require_threshold=move, overlays=overlays)
        watcher = Watcher(products.current(products.first), opts,
                          emit=lambda r: (line.lines.emit(r), line.drift.observe(r)), status=line.status,
                          stop=line.stop, source=line.single, run=run, publisher=line.publisher,
                          products=None if line.single else products)
        info(f"watching {folder} -> {opts.out / 'results.jsonl'}" + (" (moving inputs)" if move else ""))
        with line.running():
            summary = watcher.run()
        c = summary.counts
        info(f"stopped: {summary.scored} files scored in this run ({c['ok']} ok, {c['ng']} ng, {c['error']} error); "
             f"{summary.already_recorded} were already recorded{line.reloads_text()}")


@with_run_options(max_pixels=False)
def camera(
    source: str = typer.Argument(..., help="Camera device index (0), video file, stream URL (rtsp://...), or an "
                                 "industrial camera: genicam://<address or id> (kinds: docs/cameras.md)."),
    bundle: Optional[List[str]] = BundlesOpt,
    load: str = LoadOpt,
    product: Optional[str] = typer.Option(None, "--product", help="With --bundle NAME=DIR: the product in front of "
                                          "the camera (a PLC trigger's product_in, when mapped, names it per part)."),
    out: Path = typer.Option(Path("anomalies"), "--out", "-o", help="Folder for anomalous frames and their overlays."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after scoring this many frames."),
    stride: int = typer.Option(1, "--stride", min=1, help="Video files: score every k-th frame (default: all)."),
    realtime: bool = typer.Option(False, "--realtime", help="Video files: read at the file's frame rate and drop "
                                  "frames the model cannot keep up with, like a live camera."),
    batch: int = typer.Option(4, "--batch-size", min=1, help="Frames per model call for files (live sources: 1)."),
    publish: Optional[List[str]] = PublishOpt,  # here, not at the end: where camera --help has always shown it
    trigger: Optional[str] = typer.Option(None, "--trigger", metavar="URL", help="Score only when the PLC asks: "
                                          "opc.tcp://plc:4840?map=nodes.json#<trigger node>, "
                                          "modbus://plc:502?trigger=COIL&ready=COIL or mqtt(s)://broker/PREFIX; "
                                          "the newest frame is scored, the result written, \"result ready\" raised and the trigger "
                                          "cleared (see the docs' \"Connecting to the line\")."),
    settings: Optional[Path] = typer.Option(None, "--settings", help="Industrial cameras: settings file (YAML or "
                                            "JSON: exposure, gain, pixel format, region, trigger, frame rate), "
                                            "applied at open and recorded in each record."),
    fire_every: Optional[float] = typer.Option(None, "--fire-trigger-every", help="Industrial cameras set to "
                                               "software trigger: fire it every this many seconds."),
    *, run: RunOptions,
) -> None:
    """Score camera, stream or video frames; save anomalous ones.

    Frames are scored at the rate the model sustains; anomalous frames are saved with overlays.
    Live sources (device index, URL) are read by a thread that keeps only the newest frame, so
    frames are dropped rather than falling behind (each record counts them in "dropped"). Video
    files are read in order, every frame (or every --stride-th) unless --realtime. A replaced
    bundle folder or SIGHUP switches bundles between batches, as for watch.
    """
    with known_errors():
        check_available(source)  # a kind not installed here (genicam without PyGObject): before the bundle loads
        opts = CameraOptions(source, out, max_frames, stride, realtime, batch,
                             settings=load_settings(settings) if settings is not None else None, fire_every=fire_every)
        run = replace(run, publish=tuple(publish or ()))
        line = LineRun("frames", run, out)
        plc = make_trigger(trigger) if trigger else None
        # anomalous frames are saved with overlays, their maps settled for them (runtime.line.records.drawn_outcome)
        products = line.open_bundles(bundle, load, require_threshold=True)
        products.check(product, "--product")  # an unknown product: exit 2 before the camera opens
        kind, extra = (CameraRunner, {}) if plc is None else (TriggeredCamera, {"trigger": plc, "log": line.status.log})
        runner = kind(products.current(products.first), opts,
                      emit=lambda r: (line.publisher.publish(r), line.lines.emit(r), line.drift.observe(r)),
                      status=line.status, stop=line.stop, source=line.single,
                      products=None if line.single else products, run=run, **extra)
        runner.product = product
        with line.running(line.publisher, plc or contextlib.nullcontext()):
            summary = runner.run()
        camera_faults = "" if summary.missed is None else f", {summary.missed} missed, {summary.errors} incomplete"
        info(f"stopped: {summary.processed} frames scored, {summary.dropped} dropped{camera_faults}, "
             f"{len(summary.saved)} anomalous saved to {out}{line.reloads_text()}"
             + (f"; {runner.round_trip_text()}" if plc is not None else ""))
