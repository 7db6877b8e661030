"""``bench``, ``info`` and ``update``: the commands that measure, describe and teach one bundle. The
work lives in :mod:`runtime.line.bench`, :mod:`runtime.line.info` and :mod:`runtime.update`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..bundle import BundleError
from ..errors import UsageError
from ..line import bench as bench_mod
from ..line.image_files import collect_inputs
from ..line.info import bundle_info, print_update, render
from ..line.messages import err
from ..line.run_options import RunOptions
from ..update import update_bundle
from .bundle_choice import resolve_bundle
from .console import known_errors, stage_progress
from .flags import BatchOpt, Device, DeviceOpt, ThreadsOpt, with_run_options
from .options import UPDATE_ADD, UPDATE_GOOD, UPDATE_JSON, UPDATE_OUT, UPDATE_RECURSIVE


@with_run_options(max_pixels=False, rule=False)
def bench(
    bundle: str = typer.Argument(..., help="Bundle folder (or name under ./models)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images to use (default: synthetic PNGs "
                                          "at the bundle's input size)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
    repeat: int = typer.Option(10, "--repeat", min=1, help="Timed runs per batch size (after warm-up)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed runs per batch size first."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    *, run: RunOptions,
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
        p = run.load_predictor(resolve_bundle(bundle))
        if encoded is None:
            encoded = bench_mod.synthetic_images(tuple(p.spec.canvas_hw))
        report = bench_mod.run_bench(p, encoded, sizes, repeat, warmup,
                                     progress=lambda b: err.print(f"batch {b} ...", end="\r") if err.is_terminal else None)
        err.print(bench_mod.table(report))
        typer.echo(json.dumps(report))
        if report_file is not None:
            report_file.parent.mkdir(parents=True, exist_ok=True)
            report_file.write_text(json.dumps(report, indent=2) + "\n")


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
        p = RunOptions(device=device.value, threads=threads).load_predictor(resolve_bundle(bundle))
        with stage_progress() as progress:
            result = update_bundle(p.bundle, images, p.embed, out, add=add, batch_size=batch,
                                   tool="patchcore-rt update", embedder=f"{p.info()['engine']} {p.graph}",
                                   progress=progress)
        print_update(result, as_json)
