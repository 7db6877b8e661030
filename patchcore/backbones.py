"""Public entry point for backbones: ``get_spec(name)`` and ``create_trunk(name, ...)``.

Importing this module registers every family (ImageNet CNNs, CLIP encoders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import backbones_cnn  # noqa: F401  (registers the CNN entries)
from .registry import (  # noqa: F401  (re-exported)
    BackboneSpec,
    FeatureLayer,
    UnknownBackboneError,
    WeightsUnavailableError,
    get_spec,
    names,
)

try:  # CLIP entries need open_clip only when built; registration itself is cheap
    from . import backbones_clip  # noqa: F401
except ImportError as _e:  # pragma: no cover - module absent in stripped installs
    if "backbones_clip" not in str(_e):
        raise


def create_trunk(
    name: str,
    layers: Sequence[str] | None = None,
    weights: str | Path = "default",
    seed: int = 0,
) -> tuple[torch.nn.Module, BackboneSpec, tuple[FeatureLayer, ...]]:
    """Build backbone ``name`` cut after its deepest chosen layer, in eval mode, frozen.

    ``weights``: "default" (the registry's pretrained tag), "random" (initialised under ``seed``,
    for tests and export checks), or a path to a local checkpoint.
    """
    spec = get_spec(name)
    chosen = spec.resolve_layers(layers)
    if isinstance(weights, Path):
        weights = str(weights)
    if weights not in ("default", "random") and not Path(weights).is_file():
        raise WeightsUnavailableError(f"weights file not found: {weights} (use default, random or a file path)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = spec.build([l.name for l in chosen], weights)
    trunk.eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk, spec, chosen
