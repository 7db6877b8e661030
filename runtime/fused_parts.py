"""A fused bundle's parts as its manifest records them (``features.parts``): what each part is and how
its scores are normalised, and the checks a manifest reader applies (:mod:`runtime.fused` scores them;
this module stays free of the search so that reading a manifest does not import it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class FusedPart:
    """One part of a fused bundle: its aggregation, its columns' count, and the affine maps that put
    its image and patch scores on its good parts' scale (normalised = (s - center) / scale)."""

    aggregation: str
    dim: int
    image_center: float
    image_scale: float
    pixel_center: float
    pixel_scale: float

    def __post_init__(self) -> None:
        if self.dim < 1 or not (self.image_scale > 0 and self.pixel_scale > 0):
            raise ValueError(f"fused part {self.aggregation!r}: dims and scales must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusedPart":
        return cls(str(d["aggregation"]), int(d["dim"]), float(d["image_center"]), float(d["image_scale"]),
                   float(d["pixel_center"]), float(d["pixel_scale"]))


def read_parts(features: dict) -> list[FusedPart] | None:
    """A fused bundle's parts from its manifest's ``features`` (None for a bundle of one aggregation)."""
    parts = features.get("parts")
    return None if parts is None else [FusedPart.from_dict(p) for p in parts]


def check_features(features: dict) -> str | None:
    """What is wrong with a manifest's ``features`` as a fused bundle's (None when fine, or when the
    bundle has one aggregation and no parts): the parts and the aggregation agree, each part is whole,
    and the parts' dims add up to ``target_dim`` (the graph's and the bank's columns)."""
    parts = features.get("parts")
    fused = features.get("aggregation") == "fused"
    if parts is None:
        return "a 'parts' list (the aggregation is fused)" if fused else None
    if not fused:
        return "absent: 'parts' belong to the fused aggregation"
    if not isinstance(parts, list) or len(parts) < 2:
        return "a list of two parts or more"
    try:
        got = [FusedPart.from_dict(p) for p in parts]
    except (KeyError, TypeError, ValueError) as e:
        return f"parts with aggregation, dim and positive scales ({str(e).strip() or type(e).__name__})"
    if not all(np.isfinite([p.image_center, p.image_scale, p.pixel_center, p.pixel_scale]).all() for p in got):
        return "parts with finite normalisers"
    if sum(p.dim for p in got) != features.get("target_dim"):
        return f"parts whose dims add up to 'features.target_dim' ({features.get('target_dim')})"
    return None
