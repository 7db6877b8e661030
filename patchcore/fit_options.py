"""The fitting options, defined once for every command that fits (``patchcore fit``, ``eval``,
``export``) so that a flag has one name, one default and one help text everywhere.

Kept free of torch so that building a command line (``--help``) stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

BACKBONE = typer.Option("effnet-lite0", "--backbone", "-b", help="registry name (see `patchcore backbones`)")
CORESET = typer.Option(None, "--coreset", help="fraction of patches kept in the memory bank (default: the preset's: "
                       "1%, the paper's 10% with --preset paper)")
WEIGHTS = typer.Option("default", "--weights", help="default | random | PATH to a checkpoint")
LAYERS = typer.Option(None, "--layers", help="comma-separated feature layers (default: the backbone's)")
SEED = typer.Option(0, "--seed", help="seed of the coreset, the hold-out split and random weights")
N_REWEIGHT = typer.Option(None, "--n-reweight", min=0, help="eq. 7 reweighting neighbours (0 = off; default: the "
                          "preset's)")
HOLDOUT = typer.Option(0.1, "--holdout", help="with --calibration holdout: fraction of good training images kept "
                       "for the threshold; 0: no threshold (no verdicts) with either calibration")
CALIBRATION = typer.Option(None, "--calibration", help="how the threshold is calibrated: oof (every good training "
                           "image scored against a bank of the other folds; also calibrates the pixel threshold) | "
                           "holdout (the --holdout share of the images, kept out of the bank) (default: the preset's: "
                           "oof; holdout with --preset paper, which keeps its figures bit for bit)")
FOLDS = typer.Option(5, "--folds", min=2, help="--calibration oof: folds of the good training images")
RESIZE = typer.Option(None, "--resize", help="override the paper recipe's resize (shorter side; implies --geometry "
                      "paper unless crop is given)")
CROP = typer.Option(None, "--crop", help="override the paper recipe's center crop (implies --geometry paper)")
GEOMETRY = typer.Option(None, "--geometry", help="how images become the network input: auto (default: H x W from the "
                        "training images' aspect, whole image), paper (resize 256, center crop 224), crop, resize, pad "
                        "(letterbox); with --tile: resize")
INPUT_SIZE = typer.Option(None, "--input-size", help="network input HEIGHTxWIDTH for crop, resize and pad (e.g. "
                          "352x144); with --tile, the canvas that is tiled")
TILE = typer.Option(None, "--tile", help="tile the canvas: tile HEIGHTxWIDTH (or one number) in network pixels, each "
                    "tile a network input")
TILE_OVERLAP = typer.Option(0, "--tile-overlap", min=0, help="pixels neighbouring tiles share")
TILE_SCALE = typer.Option(None, "--tile-scale", help="with --tile and no --input-size: the canvas is the training "
                          "images' size times this (default 1: native resolution)")
DEVICE = typer.Option("auto", "--device", help="torch device for fitting: auto | cpu | cuda")
BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="network inputs (images, or tiles) per forward pass")
BANK_SIZE = typer.Option(None, "--bank-size", min=1, help="rows of the memory bank, instead of --coreset's ratio "
                         "(the fit then grows linearly with the training set, not quadratically)")
SHARDS = typer.Option(1, "--shards", min=1, help="select the coreset in this many shards of the training images, "
                      "then once over their union (faster; in parallel with --ray; 1 = exact)")
WORK_DIR = typer.Option(None, "--work-dir", help="folder for the patch embeddings spilled to disk while fitting "
                        "(default: the system temp folder, $TMPDIR); freed when the fit ends")
RAY = typer.Option(False, "--ray", help="run on Ray (pip install 'patchcore-rt[scale]'): several classes x "
                   "backbones as one task each; one class x backbone with its embedding or shards as tasks")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster to join (implies --ray; default: a local Ray)")
TARGET_DIM = typer.Option(None, "--target-dim", min=1, help="patch embedding dimension (default: the preset's; "
                          "paper aggregation 1024, local-mean its native dims; smaller banks search faster, see "
                          "BENCHMARKS.md)")
AGGREGATION = typer.Option(None, "--aggregation", help="patch features: paper (unfold 3x3 + adaptive pooling to "
                           "--target-dim) | local-mean (each layer's 3x3 average, concatenated; default: the preset's)")
MAX_PIXELS_IN = typer.Option(None, "--max-pixels-in", help="--geometry auto's pixel budget for the network input "
                             "(default: the preset's); never beyond the training images' size without --upsample")
UPSAMPLE = typer.Option(False, "--upsample", help="--geometry auto may enlarge training images smaller than "
                        "--max-pixels-in")
ROI = typer.Option(None, "--roi", help="fixed region of interest x0,y0,x1,y1 in original pixels (end exclusive): "
                   "only it is fitted and scored; maps and locations stay on the original image")
PRESET = typer.Option("default", "--preset", help="default (chosen by the study in BENCHMARKS.md) | paper (the "
                      "paper's recipe: --geometry paper --aggregation paper --target-dim 1024 --n-reweight 3) | auto "
                      "(each product's recipe chosen on its good images with synthetic defects, docs/selection.md); "
                      "explicit options override default and paper")
LATENCY_BUDGET = typer.Option(None, "--latency-budget-ms", min=0.0, help="--preset auto: drop candidate recipes "
                              "slower than this per image (measured while selecting)")

# The operating point's default policy and the decision rules (patchcore.operating_evidence): chosen
# by the study in BENCHMARKS.md ("Operating point"), docs/defaults.md.
DEFAULT_POLICY = "false-calls=4%"
DEFAULT_RULE = "image-score"
RULE_CHOICES = ("auto", "image-score", "either")
OPERATING_POINT = typer.Option(None, "--operating-point", help="where the bundle calls a part NG (--calibration oof): "
                               "false-calls=R | recall=R | f1 | f1@D | value=X (R, D as 0.02 or 2%); chosen on out-of-"
                               f"fold good images and synthetic defects (default: {DEFAULT_POLICY}, docs/defaults.md)")
RULE = typer.Option(DEFAULT_RULE, "--rule", help="verdict rule: image-score | either (image score, or a region larger "
                    "than any good image's) | auto (the better of the two on the evidence) (default: "
                    f"{DEFAULT_RULE}, docs/defaults.md)")
NG = typer.Option(None, "--ng", help="folder of real NG images: half join the defect evidence, half check the chosen "
                  "operating point (never the dataset's test/)")

# The settings each preset gives options left unset (geometry None: the effective default of
# patchcore.input_geometry; max_pixels_in applies to --geometry auto only).
# "default" is what the study in BENCHMARKS.md ("Patch features and resolution") measured best
# across classes (README, "Defaults, presets, patch features and a region of interest").
PRESETS = {
    "default": {"aggregation": "paper", "target_dim": 1024, "n_reweight": 9, "geometry": None,
                "max_pixels_in": 320 * 320, "coreset": 0.01},
    "paper": {"aggregation": "paper", "target_dim": 1024, "n_reweight": 3, "geometry": "paper", "max_pixels_in": None,
              "coreset": 0.1},
}
# How each preset calibrates its threshold when --calibration is not given: --preset paper keeps the
# held-out share out of the bank, as it always did, so its figures stay bit for bit.
PRESET_CALIBRATION = {"default": "oof", "paper": "holdout", "auto": "oof"}
# "auto" chooses these itself among candidates (patchcore.selection); it fits "default"'s bank
AUTO = "auto"
CHOSEN_BY_AUTO = {"aggregation": "--aggregation", "target_dim": "--target-dim", "n_reweight": "--n-reweight",
                  "geometry": "--geometry", "max_pixels_in": "--max-pixels-in", "resize": "--resize", "crop": "--crop",
                  "input_size": "--input-size", "tile": "--tile"}


def preset_values(preset: str, **given):
    """The options ``given`` (None = unset) completed from ``preset``; ValueError for an unknown preset."""
    if preset not in PRESETS and preset != AUTO:
        raise ValueError(f"--preset must be one of {', '.join([*PRESETS, AUTO])}, got {preset!r}")
    values = PRESETS["default" if preset == AUTO else preset]
    out = {k: (values.get(k) if v is None else v) for k, v in given.items()}
    return out


def check_auto(preset: str, **given) -> None:
    """``--preset auto`` chooses the recipe itself: an explicit option it chooses is a ValueError (exit 2)."""
    if preset != AUTO:
        return
    clash = [CHOSEN_BY_AUTO[k] for k, v in given.items() if k in CHOSEN_BY_AUTO and v is not None]
    if clash:
        raise ValueError(f"--preset auto chooses {', '.join(clash)} itself; give either --preset auto or "
                         f"{' '.join(clash)} (with --preset default or paper)")


def _resolve_preset(preset: str, given: dict, tile, input_size, resize, crop) -> dict:
    from . import input_geometry

    check_auto(preset, tile=tile, input_size=input_size, resize=resize, crop=crop, **given)
    v = preset_values(preset, **given)
    if given["aggregation"] is not None and given["target_dim"] is None:
        v["target_dim"] = None  # an aggregation chosen by hand keeps its own dims (local-mean: native)
    if v["geometry"] == "paper" and given["geometry"] is None and (tile is not None or input_size is not None):
        v["geometry"] = None  # the preset's crop gives way to explicit tiling or canvas options
    if given["max_pixels_in"] is None and input_geometry.effective_geometry(v["geometry"], tile, resize, crop) != "auto":
        v["max_pixels_in"] = None  # the preset's budget is auto's only
    return v


def preset_config(preset: str = "default", **options):
    """A :class:`~patchcore.model.PatchCoreConfig` with ``preset``'s settings for what
    ``options`` (PatchCoreConfig's fields) leave unset: what the commands fit with."""
    from .model import PatchCoreConfig

    given = {k: options.pop(k, None) for k in ("aggregation", "target_dim", "n_reweight", "geometry", "max_pixels_in")}
    given["coreset"] = options.pop("coreset_ratio", None)
    v = _resolve_preset(preset, given, options.get("tile"), options.get("input_size"), options.get("resize"),
                        options.get("crop"))
    v["coreset_ratio"] = v.pop("coreset")
    if options.get("calibration") is None:
        options["calibration"] = PRESET_CALIBRATION.get(preset, "oof")
    return PatchCoreConfig(**v, **options, select=preset == AUTO)


def fit_config(backbone: str, coreset: Optional[float], weights: str, layers: Optional[str], seed: int,
               n_reweight: Optional[int], holdout: float, resize: Optional[int], crop: Optional[int], device: str,
               batch_size: int, target_dim: Optional[int], geometry: Optional[str] = None,
               input_size: Optional[str] = None, tile: Optional[str] = None, tile_overlap: int = 0,
               tile_scale: Optional[float] = None, bank_size: Optional[int] = None, shards: int = 1,
               work_dir: Optional[Path] = None, *, aggregation: Optional[str] = None,
               max_pixels_in: Optional[int] = None, upsample: bool = False, roi: Optional[str] = None,
               preset: str = "default", calibration: Optional[str] = None, folds: int = 5,
               latency_budget_ms: Optional[float] = None, operating_point: Optional[str] = None,
               rule: str = DEFAULT_RULE, ng: Optional[Path] = None):
    """The :class:`~patchcore.model.PatchCoreConfig` of the options above, unset ones from
    ``preset`` (a ValueError, exit 2, names a bad value or an impossible combination)."""
    from .model import PatchCoreConfig  # torch: imported when a command runs, not to build --help

    v = _resolve_preset(preset, dict(aggregation=aggregation, target_dim=target_dim, n_reweight=n_reweight,
                                     geometry=geometry, max_pixels_in=max_pixels_in, coreset=coreset), tile,
                        input_size, resize, crop)
    if latency_budget_ms is not None and preset != AUTO:
        raise ValueError("--latency-budget-ms belongs to --preset auto (it drops candidate recipes)")
    return PatchCoreConfig(backbone=backbone, coreset_ratio=v["coreset"], weights=weights, aggregation=v["aggregation"],
                           max_pixels_in=v["max_pixels_in"], upsample=upsample, roi=roi,
                           layers=tuple(layers.split(",")) if layers else None, seed=seed,
                           n_reweight=v["n_reweight"], holdout=holdout, resize=resize, crop=crop, device=device,
                           batch_size=batch_size, target_dim=v["target_dim"], geometry=v["geometry"],
                           input_size=input_size, tile=tile,
                           tile_overlap=tile_overlap, tile_scale=tile_scale, bank_size=bank_size, shards=shards,
                           work_dir=str(work_dir) if work_dir is not None else None,
                           calibration=calibration or PRESET_CALIBRATION.get(preset, "oof"),
                           folds=folds, select=preset == AUTO, select_latency_ms=latency_budget_ms,
                           operating_point=operating_point, rule=rule, ng=None if ng is None else str(ng))
