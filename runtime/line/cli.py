"""``patchcore-rt``: the torch-free runtime command line (predict, score, watch, camera, bench, info,
threshold, update).

stdout carries results as JSON lines; stderr carries progress, the status line and errors. Exit
codes are the table of :mod:`runtime.errors`, shared with ``patchcore`` and ``python -m export``.

The command functions are thin: they parse options, call the library (:mod:`runtime.line.watch`,
:mod:`runtime.line.camera`, :mod:`runtime.line.bench`, :mod:`runtime.line.info`,
:mod:`runtime.line.records`, :mod:`runtime.line.score`, :mod:`runtime.update`) and print;
``threshold`` lives in :mod:`runtime.line.threshold`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import cv2
import typer
from rich.console import Console

from .. import __version__
from ..bundle import BundleError, read_bundle
from ..errors import InputsFailed, OutputError, UsageError
from ..update import update_bundle
from . import bench as bench_mod
from .camera import CameraOptions, CameraRunner
from .console import JsonLines, err, info, known_errors, stage_progress
from .flags import (BatchOpt, BundlesOpt, Device, DeviceOpt, GraphOpt, LineRule, LoadOpt, MaxPixelsOpt, MinAreaOpt,
                    MmPerPxOpt, PublishOpt, Search, SearchOpt, ThreadsOpt, bundle_paths, image_limits as _limits, line_drift,
                    line_products, load_predictor, reloads_text as _reloads, scoring_progress as _progress,
                    stop_on_signals, unique_in_run as _unique_in_run)
from .info import bundle_info, print_update, render
from .options import (EXIT_CODES_HELP, UPDATE_ADD, UPDATE_GOOD, UPDATE_JSON, UPDATE_OUT, UPDATE_RECURSIVE,
                      app as make_app, run, version_callback)
from .outputs import encode_png, outcome_overlay, write_replace
from .records import Item, image_of, record, score_items
from .reload import reload_on_sighup
from .score import list_inputs, run_score, score_in_process
from .selection import collect_inputs, output_relpath, resolve_bundle
from .sinks.delivery import Publisher
from .trigger import TriggeredCamera, make_trigger
from .sources import check_available
from .sources.settings import load_settings
from .status import StatusLine
from .threshold import threshold as threshold_cmd
from .watch import Watcher, WatchOptions

PROG = "patchcore-rt"
app = make_app(PROG, "Run PatchCore bundles without torch: score files, watch a folder, read a camera, benchmark, "
               "move the operating point, teach new good images.")

# Old spellings that still work for one release (runtime.line.options.rewrite_deprecated).
DEPRECATED = {
    "*": {"-d": "--device", "-b": "--batch-size", "--batch": "--batch-size"},
    "bench": {"--json": "--report"},
}


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback(PROG, __version__),
                                       is_eager=True, help="Print the version and exit.")) -> None:
    """Run PatchCore bundles without torch: score files, watch a folder, read a camera, benchmark, move the operating
    point, teach new good images."""


# ---------------------------------------------------------------------------------------- predict
@app.command(epilog=EXIT_CODES_HELP)
def predict(
    bundle: str = typer.Argument(..., help="Bundle folder (or the name of a bundle under ./models)."),
    paths: List[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    batch: int = BatchOpt,
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take images in sub-folders of folders."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Write heat-map overlays (PNG) into this folder, "
                                            "keeping each input's path relative to the folder given (hole/000.png); "
                                            "an overlay of the same name from an earlier run is replaced."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 8 when any input could not be scored."),
    max_pixels: Optional[int] = MaxPixelsOpt,
    device: Device = DeviceOpt,
    search: Search = SearchOpt,
    threads: Optional[int] = ThreadsOpt,
    graph: str = GraphOpt,
    min_area: Optional[str] = MinAreaOpt,
    mm_per_px: Optional[float] = MmPerPxOpt,
) -> None:
    """Score image files and folders (JSON lines).

    One JSON line per file on stdout, in argument order.

    A file that cannot be read or decoded gives a record with "verdict": "error" and an "error"
    message, and the others are still scored.
    """
    with known_errors():
        limits = _limits(max_pixels)
        rule = LineRule.parse(mm_per_px, min_area)
        inputs = collect_inputs(paths, recursive)
        p = load_predictor(resolve_bundle(bundle), device, search, threads, graph, rule, overlays=overlays is not None)
        out = JsonLines()
        failed = 0
        used: set[Path] = set()
        with _progress(len(inputs)) as advance:
            for s in range(0, len(inputs), batch):
                chunk = inputs[s : s + batch]
                outcomes = score_items(p, [Item(name, path=path) for path, name in chunk], limits)
                for o in outcomes:
                    extra = {}
                    image = image_of(o.item, limits) if overlays is not None and o.map is not None else None
                    if image is not None:
                        dst = _unique_in_run(overlays / output_relpath(o.item.path, paths).with_suffix(".png"), used)
                        img = outcome_overlay(image, o, p)
                        try:
                            extra["overlay"] = str(write_replace(dst, encode_png(img)))
                        except OSError as e:
                            raise OutputError(f"--overlays {overlays}: cannot write {dst.relative_to(overlays)} "
                                              f"({e.strerror or e})") from None
                    failed += o.error is not None
                    out.emit(record(o, p.bundle.bundle_id, precision=p.precision, **extra))
                advance(len(chunk))
        if failed:
            info(f"{failed} of {len(inputs)} inputs could not be scored (see the records with \"error\")")
        if strict and failed:
            raise InputsFailed(f"--strict: {failed} of {len(inputs)} inputs could not be scored")


# ------------------------------------------------------------------------------------------ score
@app.command(epilog=EXIT_CODES_HELP)
def score(
    bundle: str = typer.Argument(..., help="Bundle folder (or the name of a bundle under ./models)."),
    paths: Optional[List[Path]] = typer.Argument(None, help="Folders (scored with their sub-folders) and/or image files."),
    list_file: Optional[Path] = typer.Option(None, "--list", help="A text file naming one image file per line "
                                             "(blank lines and # comments are skipped)."),
    out: Path = typer.Option(..., "--out", "-o", help="results.jsonl (JSON lines) or results.parquet (a folder of "
                             "Parquet part files; needs pyarrow). A rerun with the same --out resumes."),
    batch: int = BatchOpt,
    strict: bool = typer.Option(False, "--strict", help="Exit with code 8 when any input could not be scored."),
    ray: bool = typer.Option(False, "--ray", help="Score with Ray Data, the predictor in actors "
                             "(pip install 'patchcore-rt[scale]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (implies --ray; "
                                              "default: a local Ray on this machine)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="With --ray: predictor actors (default: "
                                          "as many as the cluster's CPUs / --threads, or its GPUs)."),
    device: Device = DeviceOpt,
    search: Search = SearchOpt,
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the feature graph "
                                          "(default: all; with --ray: per actor, default 1)."),
    graph: str = GraphOpt,
) -> None:
    """Score an archive into JSON lines or Parquet, resumably.

    Scores every image of the folders (sub-folders too) and of --list into OUT, where each result
    is saved as soon as its batch is done. Rerunning the same command after a crash or a kill
    scores only the images OUT has no result for (a file is the same file while its name, size
    and mtime are). Prints a summary as one JSON line.
    """
    with known_errors():
        inputs = list_inputs(paths or [], list_file)
        root = resolve_bundle(bundle)
        with _progress(len(inputs)) as advance:
            if ray or ray_address:
                from .ray_cluster import ray_session
                from .score_ray import score_with_ray

                bundle_id = read_bundle(root).bundle_id
                with ray_session(ray_address) as ray_mod:
                    summary = run_score(inputs, out, bundle_id, lambda todo: score_with_ray(
                        ray_mod, root, todo, batch, device.value, search.value, threads, graph, workers), advance)
            else:
                p = load_predictor(root, device, search, threads, graph)
                summary = run_score(inputs, out, p.bundle.bundle_id, lambda todo: score_in_process(p, todo, batch),
                                    advance)
        typer.echo(json.dumps(summary.to_dict()))
        if summary.errors:
            info(f"{summary.errors} of {summary.scored} inputs could not be scored (see the records with \"error\")")
        if strict and summary.errors:
            raise InputsFailed(f"--strict: {summary.errors} of {summary.scored} inputs could not be scored")


# ------------------------------------------------------------------------------------------ watch
@app.command(epilog=EXIT_CODES_HELP)
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
    publish: Optional[List[str]] = PublishOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    device: Device = DeviceOpt,
    search: Search = SearchOpt,
    threads: Optional[int] = ThreadsOpt,
    graph: str = GraphOpt,
    min_area: Optional[str] = MinAreaOpt,
    mm_per_px: Optional[float] = MmPerPxOpt,
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
        limits = _limits(max_pixels)
        rule = LineRule.parse(mm_per_px, min_area)
        stop = threading.Event()
        status = StatusLine("files")
        publisher = Publisher(publish or [], opts.out, status.log)  # a bad URL: exit 2 before the bundle loads
        status.notes = publisher.status_text
        products = line_products(bundle or [], load, device, search, threads, graph, status, require_threshold=move,
                                 rule=rule, overlays=overlays)
        single = None if products.named else products.source(None)
        source = single or products
        drift = line_drift(products, publisher, status)
        lines = JsonLines()
        watcher = Watcher(products.current(products.first), opts, emit=lambda r: (lines.emit(r), drift.observe(r)),
                          status=status, stop=stop,
                          source=single, limits=limits, publisher=publisher, products=None if single else products)
        info(f"watching {folder} -> {opts.out / 'results.jsonl'}" + (" (moving inputs)" if move else ""))
        with stop_on_signals(stop, status.log), reload_on_sighup(source), status:
            summary = watcher.run()
        c = summary.counts
        info(f"stopped: {summary.scored} files scored in this run ({c['ok']} ok, {c['ng']} ng, {c['error']} error); "
             f"{summary.already_recorded} were already recorded{_reloads(source)}")


# ----------------------------------------------------------------------------------------- camera
@app.command(epilog=EXIT_CODES_HELP)
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
    publish: Optional[List[str]] = PublishOpt,
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
    device: Device = DeviceOpt,
    search: Search = SearchOpt,
    threads: Optional[int] = ThreadsOpt,
    graph: str = GraphOpt,
    min_area: Optional[str] = MinAreaOpt,
    mm_per_px: Optional[float] = MmPerPxOpt,
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
        rule = LineRule.parse(mm_per_px, min_area)
        stop = threading.Event()
        status = StatusLine("frames")
        publisher = Publisher(publish or [], out, status.log)
        status.notes = publisher.status_text
        plc = make_trigger(trigger) if trigger else None
        # anomalous frames are saved with overlays
        products = line_products(bundle or [], load, device, search, threads, graph, status, require_threshold=True,
                                 rule=rule, overlays=True)
        products.check(product, "--product")  # an unknown product: exit 2 before the camera opens
        single = None if products.named else products.source(None)
        bundles = single or products
        lines = JsonLines()
        kind, extra = (CameraRunner, {}) if plc is None else (TriggeredCamera, {"trigger": plc, "log": status.log})
        drift = line_drift(products, publisher, status)
        runner = kind(products.current(products.first), opts,
                      emit=lambda r: (publisher.publish(r), lines.emit(r), drift.observe(r)),
                      status=status, stop=stop, source=single, products=None if single else products, **extra)
        runner.product = product
        with publisher, plc or contextlib.nullcontext(), stop_on_signals(stop, status.log), \
                reload_on_sighup(bundles), status:
            summary = runner.run()
        camera_faults = "" if summary.missed is None else f", {summary.missed} missed, {summary.errors} incomplete"
        info(f"stopped: {summary.processed} frames scored, {summary.dropped} dropped{camera_faults}, "
             f"{len(summary.saved)} anomalous saved to {out}{_reloads(bundles)}"
             + (f"; {runner.round_trip_text()}" if plc is not None else ""))


# ------------------------------------------------------------------------------------------ bench
@app.command(epilog=EXIT_CODES_HELP)
def bench(
    bundle: str = typer.Argument(..., help="Bundle folder (or name under ./models)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images to use (default: synthetic PNGs "
                                          "at the bundle's input size)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
    repeat: int = typer.Option(10, "--repeat", min=1, help="Timed runs per batch size (after warm-up)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed runs per batch size first."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    device: Device = DeviceOpt,
    search: Search = SearchOpt,
    threads: Optional[int] = ThreadsOpt,
    graph: str = GraphOpt,
) -> None:
    """Per-stage latency and throughput of a bundle on this machine.

    Median latency per stage (decode, preprocess, features, search, post-process) after warm-up,
    and throughput, per batch size: a table on stderr, the JSON report on stdout.
    """
    with known_errors():
        try:
            sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
        encoded = bench_mod.load_images(images) if images is not None else None
        p = load_predictor(resolve_bundle(bundle), device, search, threads, graph)
        if encoded is None:
            encoded = bench_mod.synthetic_images(tuple(p.spec.canvas_hw))
        report = bench_mod.run_bench(p, encoded, sizes, repeat, warmup,
                                     progress=lambda b: err.print(f"batch {b} ...", end="\r") if err.is_terminal else None)
        err.print(bench_mod.table(report))
        typer.echo(json.dumps(report))
        if report_file is not None:
            report_file.parent.mkdir(parents=True, exist_ok=True)
            report_file.write_text(json.dumps(report, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- info
@app.command("info", epilog=EXIT_CODES_HELP)
def info_cmd(
    bundle: str = typer.Argument(..., help="Bundle folder (or name under ./models)."),
    as_json: bool = typer.Option(False, "--json", help="Print the information as one JSON object."),
) -> None:
    """Describe a bundle and the devices it can use here.

    What the bundle is, what it was built with, and which devices it can use on this machine.

    Also checks every file against its sha256 in the manifest (exit code 3 when one differs).
    """
    with known_errors():
        data = bundle_info(resolve_bundle(bundle))
        if as_json:
            typer.echo(json.dumps(data))
        else:
            Console(highlight=False).print(render(data))
        if not data["checksums_ok"]:
            bad = ", ".join(k for k, v in data["checksums"].items() if v != "ok")
            raise BundleError(f"{data['path']}: sha256 of {bad} does not match the manifest (file edited or corrupt)")


app.command("threshold", epilog=EXIT_CODES_HELP)(threshold_cmd)


# ----------------------------------------------------------------------------------------- update
@app.command(epilog=EXIT_CODES_HELP)
def update(
    bundle: str = typer.Argument(..., help="Bundle folder (or name under ./models) to teach; it is not modified."),
    good: List[Path] = UPDATE_GOOD,
    out: Path = UPDATE_OUT,
    add: Optional[int] = UPDATE_ADD,
    recursive: bool = UPDATE_RECURSIVE,
    batch: int = BatchOpt,
    device: Device = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = UPDATE_JSON,
) -> None:
    """Teach a bundle new good images (torch-free) and write the result as a new bundle.

    The images are embedded with the bundle's own feature graph; the memory bank grows by the
    new patches it does not yet cover (greedy coreset continued from the bank), the threshold is
    recalibrated with each new image scored as if held out, and the new bundle records its parent
    and what was added (see info). Point the bundle folder of a running watch or camera at the new
    bundle (flip a symlink, or rename it into place) and it switches without a restart.
    """
    with known_errors():
        images = collect_inputs(good, recursive)
        p = load_predictor(resolve_bundle(bundle), device, Search.auto, threads)
        with stage_progress() as progress:
            result = update_bundle(p.bundle, images, p.embed, out, add=add, batch_size=batch,
                                   tool="patchcore-rt update", embedder=f"{p.info()['engine']} {p.graph}",
                                   progress=progress)
        print_update(result, as_json)


# ------------------------------------------------------------------------------------------ serve
@app.command(epilog=EXIT_CODES_HELP)
def serve(
    bundle: Optional[List[str]] = typer.Option(None, "--bundle", help="Bundle folder or name (default as for watch). "
                                               "A symbolic link is flipped by a switch. NAME=DIR, repeated: a bundle "
                                               "per product (?product=NAME); the first is the one taught and switched."),
    load: str = LoadOpt,
    watch_folder: Optional[Path] = typer.Option(None, "--watch", help="Also watch this folder (as patchcore-rt watch "
                                                "does: same journal, exactly once); its results feed the page."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --watch: its output folder (default: "
                                       "FOLDER/_patchcore). With --publish: where the outbox is kept (OUT/outbox; "
                                       "without --watch or --out, a temporary folder that a restart does not keep)."),
    move: bool = typer.Option(False, "--move", help="With --watch: move inputs to OUT/ok, OUT/ng, OUT/error."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Beyond loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="PATCHCORE_RT_TOKEN", show_envvar=True,
                                        help="Bearer token for mark, teach, switch and roll back (off without one)."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Requests scored together in one model call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long a batch waits for more requests."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests waiting at most; more are answered 503."),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", min=1, help="Largest upload in bytes (default: "
                                            "$PATCHCORE_RT_MAX_BYTES, else 64 MiB)."),
    models: Optional[Path] = typer.Option(None, "--models", help="Where taught bundles are written (default: "
                                          "beside the bundle)."),
    settle: float = typer.Option(1.0, "--settle", help="With --watch: seconds a file must stay unchanged."),
    publish: Optional[List[str]] = PublishOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    device: Device = DeviceOpt,
    search: Search = SearchOpt,
    threads: Optional[int] = ThreadsOpt,
    graph: str = GraphOpt,
    min_area: Optional[str] = MinAreaOpt,
    mm_per_px: Optional[float] = MmPerPxOpt,
) -> None:
    """Serve a bundle over HTTP: an API, the operator's page and Prometheus metrics.

    POST /v1/predict takes an image (raw bytes or multipart) and answers the record predict prints.
    The page at / shows the latest results, a review queue of defective calls to mark good, teach
    and switch. Listens on 127.0.0.1 unless --host; those actions need --token.
    """
    with known_errors():
        try:
            from ..serve.options import DEFAULT_MAX_BYTES, ServeOptions
            from ..serve.server import serve as run_server
        except ImportError as e:
            raise UsageError(f"serve needs the [serve] extra ({e.name} is missing): pip install "
                             "'patchcore-rt[serve]'") from None
        limits = _limits(max_pixels)
        if max_bytes is not None:
            limits = replace(limits, max_bytes=max_bytes)
        elif not os.environ.get("PATCHCORE_RT_MAX_BYTES"):
            limits = replace(limits, max_bytes=DEFAULT_MAX_BYTES)
        if watch_folder is not None and not watch_folder.is_dir():
            raise UsageError(f"--watch {watch_folder}: not a folder")
        paths = bundle_paths(bundle)
        opts = ServeOptions(next(iter(paths.values())), bundles=paths, load=load, host=host, port=port,
                            token=token or None, limits=limits, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, models=models,
                            watch=watch_folder, watch_out=out, watch_move=move, watch_settle=settle,
                            publish=tuple(publish or ()))
        rule = LineRule.parse(mm_per_px, min_area)
        # any request may ask for an overlay
        run_server(opts, lambda path: load_predictor(path, device, search, threads, graph, rule, overlays=True), info)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``patchcore-rt``; also ``python -m runtime``)."""
    _quiet_opencv()
    run(app, PROG, DEPRECATED, argv)


def _quiet_opencv() -> None:
    """OpenCV logs its own warning for every corrupt image; our error record already says it."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # builds without the logging utilities
        pass


if __name__ == "__main__":
    main()
