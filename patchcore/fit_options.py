"""The fitting options, written once for every command that fits (``patchcore fit``, ``eval``,
``export``), so that a flag has one name, one default and one help text everywhere.

:class:`FitOptions` is the list: each field is one option of every fitting command, with its flag,
default and help, in their order on the command line. A command receives them as one object (built
once, by :func:`fit_command`) and turns it into the model's config (:meth:`FitOptions.config`).
Kept free of torch so that building a command line (``--help``) stays fast.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, get_type_hints

import typer

from .presets import AUTO, DEFAULT_POLICY, DEFAULT_RULE, PRESET_CALIBRATION, resolve_preset

BACKBONE = typer.Option("effnet-lite0", "--backbone", "-b", help="registry name (see `patchcore backbones`)")
RAY = typer.Option(False, "--ray", help="run on Ray (pip install 'patchcore-rt[scale]'): several classes x "
                   "backbones as one task each; one class x backbone with its embedding or shards as tasks")
TARGET_DIM_AUTO = "auto"  # export chooses the dimension per product (patchcore.dims_choice)
FULL_DIM = 1024  # what --target-dim auto fits its evidence at and keeps when no smaller size is as good
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster to join (implies --ray; default: a local Ray)")


def _flag(default, *names, **settings):
    """A FitOptions field: its default, and its flag (``typer.Option(default, *names, **settings)``)."""
    return field(default=default, metadata={"option": typer.Option(default, *names, **settings)})


@dataclass(frozen=True)
class FitOptions:
    """The options every fitting command takes (all but ``--backbone``, which ``fit`` and ``eval``
    repeat), as given: None = unset, completed from ``preset`` by :meth:`config`."""

    coreset: Optional[float] = _flag(
        None, "--coreset", help="fraction of patches kept in the memory bank (default: the preset's: "
        "1%, the paper's 10% with --preset paper)")
    weights: str = _flag("default", "--weights", help="default | random | PATH to a checkpoint")
    layers: Optional[str] = _flag(None, "--layers", help="comma-separated feature layers (default: the backbone's)")
    seed: int = _flag(0, "--seed", help="seed of the coreset, the hold-out split and random weights")
    n_reweight: Optional[int] = _flag(
        None, "--n-reweight", min=0, help="eq. 7 reweighting neighbours (0 = off; default: the "
        "preset's)")
    holdout: float = _flag(
        0.1, "--holdout", help="with --calibration holdout: fraction of good training images kept "
        "for the threshold; 0: no threshold (no verdicts) with either calibration")
    resize: Optional[int] = _flag(
        None, "--resize", help="override the paper recipe's resize (shorter side; implies --geometry "
        "paper unless crop is given)")
    crop: Optional[int] = _flag(
        None, "--crop", help="override the paper recipe's center crop (implies --geometry paper)")
    device: str = _flag("auto", "--device", help="torch device for fitting: auto | cpu | cuda")
    batch_size: int = _flag(8, "--batch-size", min=1, help="network inputs (images, or tiles) per forward pass")
    target_dim: Optional[str] = _flag(
        None, "--target-dim", help="patch embedding dimension (default: the preset's; "
        "paper aggregation 1024, local-mean its native dims; smaller banks search faster, see "
        "BENCHMARKS.md) | auto (export: the smallest of 512, 256, 128 within 0.005 image and pixel AUROC of "
        "1024 on the product's good images with synthetic defects, recorded in the manifest; opt-in: its "
        "evidence missed real losses on 2 of 6 classes, docs/defaults.md)")
    geometry: Optional[str] = _flag(
        None, "--geometry", help="how images become the network input: auto (default: H x W from the "
        "training images' aspect, whole image), paper (resize 256, center crop 224), crop, resize, pad "
        "(letterbox); with --tile: resize")
    input_size: Optional[str] = _flag(
        None, "--input-size", help="network input HEIGHTxWIDTH for crop, resize and pad (e.g. "
        "352x144); with --tile, the canvas that is tiled")
    tile: Optional[str] = _flag(
        None, "--tile", help="tile the canvas: tile HEIGHTxWIDTH (or one number) in network pixels, each "
        "tile a network input")
    tile_overlap: int = _flag(0, "--tile-overlap", min=0, help="pixels neighbouring tiles share")
    tile_scale: Optional[float] = _flag(
        None, "--tile-scale", help="with --tile and no --input-size: the canvas is the training "
        "images' size times this (default 1: native resolution)")
    bank_size: Optional[int] = _flag(
        None, "--bank-size", min=1, help="rows of the memory bank, instead of --coreset's ratio "
        "(the fit then grows linearly with the training set, not quadratically)")
    shards: int = _flag(
        1, "--shards", min=1, help="select the coreset in this many shards of the training images, "
        "then once over their union (faster; in parallel with --ray; 1 = exact)")
    work_dir: Optional[Path] = _flag(
        None, "--work-dir", help="folder for the patch embeddings spilled to disk while fitting "
        "(default: the system temp folder, $TMPDIR); freed when the fit ends")
    aggregation: Optional[str] = _flag(
        None, "--aggregation", help="patch features: paper (unfold 3x3 + adaptive pooling to "
        "--target-dim) | local-mean (each layer's 3x3 average, concatenated) | fused (both, each with its own "
        "bank, scores averaged on each one's out-of-fold good scale; --target-dim sets its paper part; "
        "docs/fused.md) (default: the preset's)")
    max_pixels_in: Optional[int] = _flag(
        None, "--max-pixels-in", help="--geometry auto's pixel budget for the network input "
        "(default: the preset's); never beyond the training images' size without --upsample")
    upsample: bool = _flag(
        False, "--upsample", help="--geometry auto may enlarge training images smaller than "
        "--max-pixels-in")
    roi: Optional[str] = _flag(
        None, "--roi", help="fixed region of interest x0,y0,x1,y1 in original pixels (end exclusive): "
        "only it is fitted and scored; maps and locations stay on the original image")
    preset: str = _flag(
        "default", "--preset", help="default (chosen by the study in BENCHMARKS.md) | paper (the "
        "paper's recipe: --geometry paper --aggregation paper --target-dim 1024 --n-reweight 3) | auto "
        "(each product's recipe chosen on its good images with synthetic defects, docs/selection.md); "
        "explicit options override default and paper")
    calibration: Optional[str] = _flag(
        None, "--calibration", help="how the threshold is calibrated: oof (every good training "
        "image scored against a bank of the other folds; also calibrates the pixel threshold) | "
        "holdout (the --holdout share of the images, kept out of the bank) (default: the preset's: "
        "oof; holdout with --preset paper, which keeps its figures bit for bit)")
    folds: int = _flag(5, "--folds", min=2, help="--calibration oof: folds of the good training images")
    operating_point: Optional[str] = _flag(
        None, "--operating-point", help="where the bundle calls a part NG (--calibration oof): "
        "false-calls=R | recall=R | f1 | f1@D | value=X (R, D as 0.02 or 2%); chosen on out-of-"
        f"fold good images and synthetic defects (default: {DEFAULT_POLICY}, docs/defaults.md)")
    rule: str = _flag(
        DEFAULT_RULE, "--rule", help="verdict rule: image-score | either (image score, or a region larger "
        "than any good image's) | auto (the better of the two on the evidence) (default: "
        f"{DEFAULT_RULE}, docs/defaults.md)")
    ng: Optional[Path] = _flag(
        None, "--ng", help="folder of real NG images: half join the defect evidence (and, with --preset auto, "
        "the recipe's ranking), half check the chosen operating point; eval leaves them out of its figures")
    latency_budget_ms: Optional[float] = _flag(
        None, "--latency-budget-ms", min=0.0, help="--preset auto: drop candidate recipes "
        "slower than this per image (measured while selecting)")

    def config(self, backbone: str):
        """The :class:`~patchcore.config.PatchCoreConfig` to fit ``backbone`` with, unset options from
        the preset (a ValueError, exit 2, names a bad value or an impossible combination)."""
        from .config import PatchCoreConfig  # torch: imported when a command runs, not to build --help

        target_dim = parse_target_dim(self.target_dim)
        v = resolve_preset(self.preset, dict(aggregation=self.aggregation, target_dim=target_dim,
                                             n_reweight=self.n_reweight, geometry=self.geometry,
                                             max_pixels_in=self.max_pixels_in, coreset=self.coreset),
                           self.tile, self.input_size, self.resize, self.crop)
        if self.latency_budget_ms is not None and self.preset != AUTO:
            raise ValueError("--latency-budget-ms belongs to --preset auto (it drops candidate recipes)")
        return PatchCoreConfig(
            backbone=backbone, coreset_ratio=v["coreset"], weights=self.weights, aggregation=v["aggregation"],
            max_pixels_in=v["max_pixels_in"], upsample=self.upsample, roi=self.roi,
            layers=tuple(self.layers.split(",")) if self.layers else None, seed=self.seed,
            n_reweight=v["n_reweight"], holdout=self.holdout, resize=self.resize, crop=self.crop, device=self.device,
            batch_size=self.batch_size, geometry=v["geometry"],
            target_dim=FULL_DIM if v["target_dim"] == TARGET_DIM_AUTO else v["target_dim"],
            target_dim_auto=v["target_dim"] == TARGET_DIM_AUTO,
            input_size=self.input_size, tile=self.tile, tile_overlap=self.tile_overlap, tile_scale=self.tile_scale,
            bank_size=self.bank_size, shards=self.shards,
            work_dir=str(self.work_dir) if self.work_dir is not None else None,
            calibration=self.calibration or PRESET_CALIBRATION.get(self.preset, "oof"), folds=self.folds,
            select=self.preset == AUTO, select_latency_ms=self.latency_budget_ms,
            operating_point=self.operating_point, rule=self.rule, ng=None if self.ng is None else str(self.ng))


def parse_target_dim(value: str | int | None) -> int | str | None:
    """``--target-dim``'s value: None (unset), ``auto``, or a positive integer; else a ValueError (exit 2)."""
    if value is None or value == TARGET_DIM_AUTO:
        return value
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--target-dim must be a positive integer or {TARGET_DIM_AUTO}, got {value!r}")
    return int(text)


def flag(name: str):
    """The command-line flag of the field ``name`` of :class:`FitOptions`, for a command that takes it alone."""
    return next(f.metadata["option"] for f in fields(FitOptions) if f.name == name)


SEED, DEVICE, BATCH_SIZE = flag("seed"), flag("device"), flag("batch_size")


def fit_command(command: Callable) -> Callable:
    """A typer command whose one parameter annotated :class:`FitOptions` stands for the fit options:
    the command line lists their flags in its place, and the command receives them as one object."""
    own = inspect.signature(command, eval_str=True)
    [slot] = [p.name for p in own.parameters.values() if p.annotation is FitOptions]
    hints = get_type_hints(FitOptions)
    names = [f.name for f in fields(FitOptions)]
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["option"],
                                annotation=hints[f.name]) for f in fields(FitOptions)]
    params = []
    for p in own.parameters.values():  # keyword-only: typer passes every value by name
        params.extend(shared if p.name == slot else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)])

    @functools.wraps(command)
    def run(**given):
        return command(**{slot: FitOptions(**{n: given.pop(n) for n in names})}, **given)

    run.__signature__ = own.replace(parameters=params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run
