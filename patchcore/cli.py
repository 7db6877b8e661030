"""The ``patchcore`` command: fit, evaluate, download data, run the demo.

Thin wrappers over library functions; known errors become one readable line on stderr and a
distinct exit code (2 bad input, 3 bad bundle, 4 device unavailable, 5 weights unavailable).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fit and evaluate PatchCore in PyTorch (exit codes: 2 bad input, 3 bad bundle, 4 device unavailable, 5 weights unavailable).")

EXIT_INPUT, EXIT_BUNDLE, EXIT_DEVICE, EXIT_WEIGHTS = 2, 3, 4, 5


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _config(backbone: str, coreset: float, weights: str, layers: Optional[str], seed: int, n_reweight: int,
            holdout: float, resize: Optional[int], crop: Optional[int], device: str, batch_size: int,
            target_dim: int = 1024):
    from .model import PatchCoreConfig

    return PatchCoreConfig(backbone=backbone, coreset_ratio=coreset, weights=weights,
                           layers=tuple(layers.split(",")) if layers else None, seed=seed, n_reweight=n_reweight,
                           holdout=holdout, resize=resize, crop=crop, device=device, batch_size=batch_size,
                           target_dim=target_dim)


def guard(fn, extra: tuple[tuple[type[BaseException], int], ...] = ()):
    """Run ``fn``, mapping the project's known errors to one line on stderr and an exit code;
    ``extra`` (exception type, code) pairs are checked first (the export CLI adds its own)."""
    from runtime.bundle import BundleError
    from runtime.engines import DeviceUnavailableError
    from runtime.images import ImageReadError

    from .data import DatasetError
    from .registry import UnknownBackboneError, WeightsUnavailableError

    known = (*extra, (WeightsUnavailableError, EXIT_WEIGHTS), (BundleError, EXIT_BUNDLE), (DeviceUnavailableError, EXIT_DEVICE),
             ((DatasetError, ImageReadError, UnknownBackboneError, ValueError, FileNotFoundError), EXIT_INPUT))
    try:
        return fn()
    except Exception as e:
        for types, code in known:
            if isinstance(e, types):
                _fail(str(e), code)
        raise


_guard = guard


_BACKBONE = typer.Option("effnet-lite0", "--backbone", "-b", help="registry name (see `patchcore backbones`)")
_CORESET = typer.Option(0.1, "--coreset", help="fraction of patches kept in the memory bank")
_WEIGHTS = typer.Option("default", "--weights", help="default | random | PATH to a checkpoint")
_LAYERS = typer.Option(None, "--layers", help="comma-separated feature layers (default: the backbone's)")
_SEED = typer.Option(0, "--seed")
_REWEIGHT = typer.Option(3, "--n-reweight", help="eq. 7 reweighting neighbours (0 = off)")
_HOLDOUT = typer.Option(0.1, "--holdout", help="fraction of good training images kept for the threshold")
_RESIZE = typer.Option(None, "--resize", help="override the backbone's resize (shorter side)")
_CROP = typer.Option(None, "--crop", help="override the backbone's center crop")
_DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda")
_BATCH = typer.Option(8, "--batch-size")
_TARGET_DIM = typer.Option(1024, "--target-dim", min=1, help="patch embedding dimension (the paper's 1024; "
                           "smaller banks search faster, see BENCHMARKS.md)")


@app.command()
def fit(
    data: Path = typer.Option(..., "--data", "-d", help="class folder in MVTec AD layout"),
    out: Path = typer.Option(None, "--out", "-o", help="bundle folder (default models/<class>-<backbone>)"),
    backbone: str = _BACKBONE, coreset: float = _CORESET, weights: str = _WEIGHTS, layers: Optional[str] = _LAYERS,
    seed: int = _SEED, n_reweight: int = _REWEIGHT, holdout: float = _HOLDOUT, resize: Optional[int] = _RESIZE,
    crop: Optional[int] = _CROP, device: str = _DEVICE, batch_size: int = _BATCH, target_dim: int = _TARGET_DIM,
):
    """Fit on DATA/train/good and save the model as a bundle (no ONNX; `python -m export` adds it)."""
    from .data import load_class
    from .model import PatchCore

    def run():
        ds = load_class(data)
        cfg = _config(backbone, coreset, weights, layers, seed, n_reweight, holdout, resize, crop, device, batch_size,
                      target_dim)
        model = PatchCore(cfg).fit(ds.train)
        dest = out or Path("models") / f"{ds.name}-{backbone}"
        model.save(dest)
        typer.echo(str(dest))

    _guard(run)


@app.command("eval")
def eval_(
    data: List[Path] = typer.Option(..., "--data", "-d", help="class folder(s) in MVTec AD layout (repeatable)"),
    backbone: List[str] = typer.Option(["effnet-lite0"], "--backbone", "-b", help="backbone(s) (repeatable)"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="results folder"),
    coreset: float = _CORESET, weights: str = _WEIGHTS, layers: Optional[str] = _LAYERS, seed: int = _SEED,
    n_reweight: int = _REWEIGHT, holdout: float = _HOLDOUT, resize: Optional[int] = _RESIZE,
    crop: Optional[int] = _CROP, device: str = _DEVICE, batch_size: int = _BATCH, target_dim: int = _TARGET_DIM,
    overlays: int = typer.Option(12, "--overlays", help="overlay images per class and backbone (0 = none)"),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="evaluate this saved bundle instead of fitting"),
):
    """Fit and evaluate each class x backbone; write metrics, per-image scores, overlays and the
    summary table (summary.md, summary.csv) under OUT."""
    from .evaluation import evaluate_bundle, fit_and_evaluate
    from .report import load_rows, write_summary

    def run():
        for d in data:
            if not Path(d).is_dir():
                raise ValueError(f"data folder not found: {d}")
        if bundle is not None:
            for d in data:
                row = evaluate_bundle(bundle, d, out, device=device)
                typer.echo(_row_line(row))
        else:
            for d in data:
                for bb in backbone:
                    cfg = _config(bb, coreset, weights, layers, seed, n_reweight, holdout, resize, crop, device,
                                  batch_size, target_dim)
                    row = fit_and_evaluate(d, cfg, out, n_overlays=overlays)
                    typer.echo(_row_line(row))
        md, csv = write_summary(out, load_rows(out))
        typer.echo(f"summary: {md} {csv}", err=True)

    _guard(run)


def _row_line(row: dict) -> str:
    import json

    keep = ("class", "backbone", "image_auroc", "pixel_auroc", "pro", "f1_max", "fit_seconds", "ms_per_image")
    return json.dumps({k: row[k] for k in keep if k in row})


@app.command()
def backbones():
    """List the registered backbones, their layers and weight sources."""
    from .backbones import get_spec, names

    for n in names():
        s = get_spec(n)
        lay = ", ".join(f"{l.name}({l.channels}ch/{l.stride})" for l in s.layers if l.name in s.default_layers)
        typer.echo(f"{n:14s} {s.family:8s} default layers {lay}; weights: {s.weights_tag}")


@app.command()
def download(
    classes: List[str] = typer.Argument(None, help="MVTec AD classes (default: all 15)"),
    dest: Path = typer.Option(Path("datasets/mvtec_ad"), "--dest"),
):
    """Download and extract MVTec AD classes (resumable; CC BY-NC-SA 4.0)."""
    from .download import DownloadError, download_all

    try:
        for p in download_all(classes or None, dest):
            typer.echo(str(p))
    except (DownloadError, ValueError) as e:
        _fail(str(e), EXIT_INPUT)


@app.command()
def synth(
    dest: Path = typer.Option(Path("datasets/synthetic"), "--dest"),
    texture: str = typer.Option("brick", "--texture", help="brick | grass | gravel"),
    n_train: int = typer.Option(40, "--n-train"),
    seed: int = _SEED,
):
    """Write the embedded default dataset (real texture photos shipped with scikit-image, with
    synthetic defects and exact masks) in MVTec AD layout; prints its folder."""
    from .synthetic import make_synthetic_class

    _guard(lambda: typer.echo(str(make_synthetic_class(dest, texture, n_train=n_train, seed=seed))))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
