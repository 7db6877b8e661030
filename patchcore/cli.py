"""The ``patchcore`` command's fit-side commands: fit, eval, update, backbones, download, synth.

Thin wrappers over library functions; known errors become one readable line on stderr and
their exit code from the shared table (:mod:`runtime.errors`). The export floor adds ``export``,
``parity`` and ``engine`` to this same app (:mod:`export.cli`), and the ``patchcore`` script
runs that composed app. Modules that import torch are imported inside the commands, on
purpose: building the command line (``--help``, ``download``) must not load torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer

from runtime import __version__
from runtime.fileio import check_output_folder
from runtime.cli.console import known_errors
from runtime.cli.options import (EXIT_CODES_HELP, UPDATE_ADD, UPDATE_GOOD, UPDATE_JSON, UPDATE_OUT,
                                  UPDATE_RECURSIVE, app as make_app, version_callback)

from . import fit_options as opt
from .fit_options import FitOptions
from .presets import AUTO

PROG = "patchcore"
app = make_app(PROG, "Fit, evaluate and export PatchCore (PyTorch), and check the exported bundle's parity.")

# Old spellings that still work for one release (runtime.cli.options.rewrite_deprecated).
DEPRECATED = {"*": {"-d": "--data"}}


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback(PROG, __version__),
                                       is_eager=True, help="Print the version and exit.")) -> None:
    """Fit, evaluate and export PatchCore (PyTorch), and check the exported bundle's parity."""


@app.command(epilog=EXIT_CODES_HELP)
@opt.fit_command
def fit(
    data: List[Path] = typer.Option(..., "--data", help="class folder(s) in MVTec AD layout (repeatable)"),
    out: Path = typer.Option(None, "--out", "-o", help="bundle folder (default models/<class>-<backbone>); with "
                             "several classes or backbones, the folder that receives the <class>-<backbone> bundles"),
    backbone: List[str] = typer.Option(["effnet-lite0"], "--backbone", "-b", help="backbone(s) (repeatable)"),
    options: FitOptions = FitOptions(), ray: bool = opt.RAY, ray_address: Optional[str] = opt.RAY_ADDRESS,
):
    """Fit on DATA/train/good and save the model as a bundle (no ONNX; `patchcore export` adds it)."""
    from .evaluation import fit_bundle

    with known_errors():
        _check_folders(data)
        _check_ray(options.preset, ray or bool(ray_address))
        combos = [(d, bb) for d in data for bb in backbone]
        jobs = []
        for d, bb in combos:
            cfg = _fits_here(options.config(bb))
            dest = out if out is not None and len(combos) == 1 else (out or Path("models")) / f"{d.name}-{bb}"
            check_output_folder(dest, "--out")
            jobs.append((d, cfg, dest))
        for dest in run_jobs(fit_bundle, jobs, ray or bool(ray_address), ray_address, options.device):
            typer.echo(str(dest))


def _fits_here(cfg):
    """``cfg``, unless it asks for ``--target-dim auto``: a choice ``patchcore export`` makes (exit 2 here)."""
    if cfg.target_dim_auto:
        raise ValueError("--target-dim auto is chosen by `patchcore export`; fit and eval take a number "
                         "(or leave it unset)")
    return cfg


def _check_ray(preset: str, use_ray: bool) -> None:
    if use_ray and preset == AUTO:
        raise ValueError("--preset auto selects its recipe in this process; drop --ray or choose a preset")


def _check_folders(data: List[Path]) -> None:
    from .data import DatasetError

    for d in data:
        if not Path(d).is_dir():
            raise DatasetError(f"{d}: dataset folder not found")


def run_jobs(fn: Callable[..., Any], jobs: list[tuple], use_ray: bool, address: Optional[str],
             device: str) -> Iterator[Any]:
    """``fn(*job)`` for each job (``job[1]`` is its fit config), in order. With Ray: several jobs
    run as one Ray task each; a single job runs here with its embedding or shards on Ray."""
    if not use_ray:
        for job in jobs:
            yield fn(*job)
        return
    from runtime.line.ray_cluster import ray_session

    from .ray_fit import RayFit, run_tasks

    with ray_session(address) as ray_mod:
        if len(jobs) == 1:
            yield fn(*jobs[0], executor=RayFit(ray_mod, jobs[0][1]))
        else:
            yield from run_tasks(ray_mod, fn, jobs, device)


@app.command("eval", epilog=EXIT_CODES_HELP)
@opt.fit_command
def eval_(
    data: List[Path] = typer.Option(..., "--data", help="class folder(s) in MVTec AD layout (repeatable)"),
    backbone: List[str] = typer.Option(["effnet-lite0"], "--backbone", "-b", help="backbone(s) (repeatable)"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="results folder"),
    options: FitOptions = FitOptions(), ray: bool = opt.RAY, ray_address: Optional[str] = opt.RAY_ADDRESS,
    overlays: int = typer.Option(12, "--overlays", help="overlay images per class and backbone (0 = none)"),
    original_resolution: bool = typer.Option(False, "--original-resolution", help="also compute pixel AUROC and PRO "
                                             "with the maps taken back onto the original images and masks"),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="evaluate this saved bundle instead of fitting"),
):
    """Fit and evaluate each class x backbone; write metrics, per-image scores, overlays and the
    summary table (summary.md, summary.csv) under OUT."""
    from .evaluation import evaluate_bundle, fit_and_evaluate
    from .report import load_rows, write_summary

    with known_errors():
        configs = [_fits_here(options.config(bb)) for bb in backbone]  # bad options fail before any data is read
        _check_ray(options.preset, ray or bool(ray_address))
        _check_folders(data)
        check_output_folder(out, "--out")
        if bundle is not None:
            for d in data:
                row = evaluate_bundle(bundle, d, out, device=options.device, original=original_resolution)
                typer.echo(_row_line(row))
        else:
            jobs = [(d, cfg, out, overlays, None, original_resolution) for d in data for cfg in configs]
            for row in run_jobs(fit_and_evaluate, jobs, ray or bool(ray_address), ray_address, options.device):
                typer.echo(_row_line(row))
        md, csv = write_summary(out, load_rows(out))
        typer.echo(f"summary: {md} {csv}", err=True)


def _row_line(row: dict) -> str:
    keep = ("class", "backbone", "geometry", "image_auroc", "pixel_auroc", "pro", "pixel_auroc_original",
            "pro_original", "f1_max", "f1_at_threshold", "caught", "false_calls", "bank_rows", "fit_seconds", "ms_per_image")
    return json.dumps({k: row[k] for k in keep if k in row})


@app.command(epilog=EXIT_CODES_HELP)
def update(
    bundle: Path = typer.Argument(..., help="bundle folder to teach (not modified)"),
    good: List[Path] = UPDATE_GOOD, out: Path = UPDATE_OUT, add: Optional[int] = UPDATE_ADD,
    recursive: bool = UPDATE_RECURSIVE, device: str = opt.DEVICE,
    batch_size: int = opt.BATCH_SIZE, as_json: bool = UPDATE_JSON,
):
    """Teach a bundle new good images with the PyTorch feature extractor and write a new bundle
    (what `patchcore-rt update` does torch-free with the bundle's ONNX graph; same selection)."""
    from runtime.bundle import read_bundle
    from runtime.cli.console import stage_progress
    from runtime.line.info import print_update
    from runtime.line.image_files import collect_inputs
    from runtime.update import requirements, update_bundle

    from .model import PatchCore

    with known_errors():
        images = collect_inputs(good, recursive)
        parent = read_bundle(bundle)
        requirements(parent)  # before loading the backbone: an old bundle is refused at once
        model = PatchCore.load(bundle, device=device)
        with stage_progress() as progress:
            result = update_bundle(parent, images, model.embed_images, out, add=add, batch_size=batch_size,
                                   tool="patchcore update",
                                   embedder=f"torch {model.device} {model.config.backbone}", progress=progress)
        print_update(result, as_json)


@app.command(epilog=EXIT_CODES_HELP)
def backbones():
    """List the registered backbones, their layers and weight sources."""
    from .backbones import get_spec, names

    for n in names():
        s = get_spec(n)
        lay = ", ".join(f"{l.name}({l.channels}ch/{l.stride})" for l in s.layers if l.name in s.default_layers)
        typer.echo(f"{n:14s} {s.family:8s} default layers {lay}; weights: {s.weights_tag}")


@app.command(epilog=EXIT_CODES_HELP)
def download(
    classes: List[str] = typer.Argument(None, help="MVTec AD classes (default: all 15)"),
    dest: Path = typer.Option(Path("datasets/mvtec_ad"), "--dest"),
):
    """Download and extract MVTec AD classes (resumable; CC BY-NC-SA 4.0)."""
    from .download import download_all

    with known_errors():
        check_output_folder(dest, "--dest")
        for p in download_all(classes or None, dest):
            typer.echo(str(p))


@app.command(epilog=EXIT_CODES_HELP)
def synth(
    dest: Path = typer.Option(Path("datasets/synthetic"), "--dest"),
    texture: str = typer.Option("brick", "--texture", help="brick | grass | gravel"),
    n_train: int = typer.Option(40, "--n-train"),
    layout: str = typer.Option("square", "--layout", help="square (256 px) | tall (1:2.5 parts, defects near the "
                               "ends) | large (high resolution, defects a few pixels wide)"),
    size: Optional[int] = typer.Option(None, "--size", help="image side (tall: width) in pixels (default 256; "
                                       "tall 128; large 1024)"),
    seed: int = opt.SEED,
):
    """Write the embedded default dataset (real texture photos shipped with scikit-image, with
    synthetic defects and exact masks) in MVTec AD layout; prints its folder."""
    from .synthetic import make_synthetic_class

    with known_errors():
        check_output_folder(dest, "--dest")
        side = size or {"tall": 128, "large": 1024}.get(layout, 256)
        typer.echo(str(make_synthetic_class(dest, texture, n_train=n_train, size=side, seed=seed, layout=layout)))
