"""``predict`` and ``score``: the commands that score files given on the command line (``predict``
prints a record per file; ``score`` writes an archive's results resumably). The work lives in
:mod:`runtime.line.predict` and :mod:`runtime.line.score`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..bundle import read_bundle
from ..errors import InputsFailed
from ..line.image_files import collect_inputs
from ..line.messages import info
from ..line.predict import predict_files
from ..line.run_options import RunOptions
from ..line.score import list_inputs, run_score, score_in_process
from .bundle_choice import resolve_bundle
from .console import JsonLines, known_errors
from .flags import BatchOpt, scoring_progress, with_run_options


@with_run_options()
def predict(
    bundle: str = typer.Argument(..., help="Bundle folder (or the name of a bundle under ./models)."),
    paths: List[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    batch: int = BatchOpt,
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take images in sub-folders of folders."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Write heat-map overlays (PNG) into this folder, "
                                            "keeping each input's path relative to the folder given (hole/000.png); "
                                            "an overlay of the same name from an earlier run is replaced."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 8 when any input could not be scored."),
    *, run: RunOptions,
) -> None:
    """Score image files and folders (JSON lines).

    One JSON line per file on stdout, in argument order.

    A file that cannot be read or decoded gives a record with "verdict": "error" and an "error"
    message, and the others are still scored.
    """
    with known_errors():
        inputs = collect_inputs(paths, recursive)
        p = run.load_predictor(resolve_bundle(bundle), overlays=overlays is not None)
        out = JsonLines()
        failed = 0
        with scoring_progress(len(inputs)) as advance:
            for rec in predict_files(p, inputs, paths, batch, run, overlays, advance):
                failed += "error" in rec
                out.emit(rec)
        if failed:
            info(f"{failed} of {len(inputs)} inputs could not be scored (see the records with \"error\")")
        if strict and failed:
            raise InputsFailed(f"--strict: {failed} of {len(inputs)} inputs could not be scored")


@with_run_options(max_pixels=False, rule=False,
                  threads=typer.Option(None, "--threads", min=1, help="CPU threads for the feature graph "
                                       "(default: all; with --ray: per actor, default 1)."))
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
    *, run: RunOptions,
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
        with scoring_progress(len(inputs)) as advance:
            if ray or ray_address:
                from ..line.ray_cluster import ray_session
                from ..line.score_ray import score_with_ray

                bundle_id = read_bundle(root).bundle_id
                with ray_session(ray_address) as ray_mod:
                    summary = run_score(inputs, out, bundle_id, lambda todo: score_with_ray(
                        ray_mod, root, todo, batch, run.device, run.search, run.threads, run.graph, workers), advance)
            else:
                p = run.load_predictor(root)
                summary = run_score(inputs, out, p.bundle.bundle_id, lambda todo: score_in_process(p, todo, batch),
                                    advance)
        typer.echo(json.dumps(summary.to_dict()))
        if summary.errors:
            info(f"{summary.errors} of {summary.scored} inputs could not be scored (see the records with \"error\")")
        if strict and summary.errors:
            raise InputsFailed(f"--strict: {summary.errors} of {summary.scored} inputs could not be scored")
