"""The fitting options, defined once for every command that fits (``patchcore fit``, ``eval``,
``export``) so that a flag has one name, one default and one help text everywhere.

Kept free of torch so that building a command line (``--help``) stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

BACKBONE = typer.Option("effnet-lite0", "--backbone", "-b", help="registry name (see `patchcore backbones`)")
CORESET = typer.Option(0.1, "--coreset", help="fraction of patches kept in the memory bank")
WEIGHTS = typer.Option("default", "--weights", help="default | random | PATH to a checkpoint")
LAYERS = typer.Option(None, "--layers", help="comma-separated feature layers (default: the backbone's)")
SEED = typer.Option(0, "--seed", help="seed of the coreset, the hold-out split and random weights")
N_REWEIGHT = typer.Option(3, "--n-reweight", min=0, help="eq. 7 reweighting neighbours (0 = off)")
HOLDOUT = typer.Option(0.1, "--holdout", help="fraction of good training images kept for the threshold")
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
TARGET_DIM = typer.Option(1024, "--target-dim", min=1, help="patch embedding dimension (the paper's 1024; "
                          "smaller banks search faster, see BENCHMARKS.md)")


def fit_config(backbone: str, coreset: float, weights: str, layers: Optional[str], seed: int, n_reweight: int,
               holdout: float, resize: Optional[int], crop: Optional[int], device: str, batch_size: int,
               target_dim: int, geometry: Optional[str] = None, input_size: Optional[str] = None,
               tile: Optional[str] = None, tile_overlap: int = 0, tile_scale: Optional[float] = None,
               bank_size: Optional[int] = None, shards: int = 1, work_dir: Optional[Path] = None):
    """The :class:`~patchcore.model.PatchCoreConfig` of the options above (a ValueError, exit 2,
    names an impossible combination of geometry options)."""
    from .model import PatchCoreConfig  # torch: imported when a command runs, not to build --help

    return PatchCoreConfig(backbone=backbone, coreset_ratio=coreset, weights=weights,
                           layers=tuple(layers.split(",")) if layers else None, seed=seed, n_reweight=n_reweight,
                           holdout=holdout, resize=resize, crop=crop, device=device, batch_size=batch_size,
                           target_dim=target_dim, geometry=geometry, input_size=input_size, tile=tile,
                           tile_overlap=tile_overlap, tile_scale=tile_scale, bank_size=bank_size, shards=shards,
                           work_dir=str(work_dir) if work_dir is not None else None)
