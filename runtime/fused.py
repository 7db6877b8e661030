"""Fused scoring: two aggregations of the same trunk maps, each searched in its own bank, each score
put on its own good parts' scale, then averaged (``--aggregation fused``; docs/fused.md).

The feature graph gives one ``embeddings`` tensor whose columns are the parts side by side (the
manifest's ``features.parts``: each part's aggregation and dims, in column order); the bank file holds
the parts' banks side by side too (each part selected its own rows, the same number of them: the
coreset budget depends only on the patch count). A part's patch scores are mapped by its pixel
normaliser and its image scores by its image normaliser, ``(s - center) / scale``, both fitted on its
out-of-fold good training images (:mod:`patchcore.fused`), and the fused score is their mean. The
maps' upsampling and blur are linear and keep constants, so the fused map is the mean of the parts'
normalised maps as well. Fused bundles search exactly (every patch of both parts): the fused map at
the pixel threshold is then exact by construction (docs/fused.md says why no reduced step here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .search.scorer import PatchScorer, Scores


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


def split_columns(rows: np.ndarray, dims: Sequence[int]) -> list[np.ndarray]:
    """(..., sum(dims)) -> one contiguous (..., dim) array per part, in column order."""
    if rows.shape[-1] != sum(dims):
        raise ValueError(f"fused embeddings must have {sum(dims)} columns ({' + '.join(map(str, dims))}), "
                         f"got {rows.shape[-1]}")
    edges = np.cumsum([0, *dims])
    return [np.ascontiguousarray(rows[..., a:b]) for a, b in zip(edges[:-1], edges[1:])]


def combine(parts: Sequence[FusedPart], scores: Sequence[Scores]) -> Scores:
    """The parts' Scores -> the fused Scores: each part's patch and image scores normalised, then
    averaged. ``nearest`` is the first part's (a fused score has no one nearest bank row)."""
    patch = np.mean([(s.patch_scores.astype(np.float64) - p.pixel_center) / p.pixel_scale
                     for p, s in zip(parts, scores)], axis=0)
    image = np.mean([(np.asarray(s.image_scores, np.float64) - p.image_center) / p.image_scale
                     for p, s in zip(parts, scores)], axis=0)
    return Scores(patch.astype(np.float32), image, scores[0].nearest)


def combine_images(parts: Sequence[FusedPart], image_scores: Sequence[np.ndarray]) -> np.ndarray:
    """The parts' image scores (each (N,)) -> fused image scores (N,) float64."""
    return np.mean([(np.asarray(s, np.float64) - p.image_center) / p.image_scale
                    for p, s in zip(parts, image_scores)], axis=0)


def combine_maps(parts: Sequence[FusedPart], maps: Sequence[np.ndarray]) -> np.ndarray:
    """The parts' anomaly maps (each (N, H, W)) -> fused maps (N, H, W) float32: what :func:`combine`'s
    patch scores give after the (linear, constant-keeping) upsampling and blur."""
    return np.mean([(np.asarray(m, np.float32) - p.pixel_center) / p.pixel_scale for p, m in zip(parts, maps)],
                   axis=0).astype(np.float32)


class FusedScorer:
    """Scores a fused bundle's embeddings: each part's columns in its own bank (a PatchScorer each),
    then :func:`combine`. It has PatchScorer's ``score``; the parts' scorers must search exactly."""

    approximate = False

    def __init__(self, parts: Sequence[FusedPart], scorers: Sequence[PatchScorer]):
        if len(parts) != len(scorers) or len(parts) < 2:
            raise ValueError("a fused scorer needs one scorer per part, and two parts or more")
        for p, s in zip(parts, scorers):
            if s.bank.shape[1] != p.dim:
                raise ValueError(f"fused part {p.aggregation!r}: its bank has {s.bank.shape[1]} dims, not {p.dim}")
            if s.approximate:
                raise ValueError("fused bundles search exactly: a reduced candidate step cannot serve a fused part")
        self.parts = list(parts)
        self.scorers = list(scorers)
        self.dims = [p.dim for p in self.parts]
        self.bank = np.concatenate([s.bank for s in self.scorers], axis=1)

    @property
    def backend(self) -> str:
        return "+".join(dict.fromkeys(s.backend for s in self.scorers))

    @property
    def index(self):
        return self.scorers[0].index

    def score(self, embeddings: np.ndarray, settle=None) -> Scores:
        """(B, P, sum(dims)) -> fused Scores (``settle`` is for reduced steps; fused parts search exactly)."""
        if embeddings.ndim != 3:
            raise ValueError(f"embeddings must be (B, P, {sum(self.dims)}), got {embeddings.shape}")
        columns = split_columns(embeddings, self.dims)
        return combine(self.parts, [s.score(e) for s, e in zip(self.scorers, columns)])

    def part_scores(self, embeddings: np.ndarray) -> list[Scores]:
        """Each part's own (raw) Scores, in part order."""
        return [s.score(e) for s, e in zip(self.scorers, split_columns(embeddings, self.dims))]


REDUCED_SEARCHES = ("bf16", "int8")


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


def make_scorer(bank: np.ndarray, parts: Sequence[FusedPart], search: str, n_reweight: int, device: str = "auto"):
    """The runtime's scorer of a fused bundle: each part's bank (its columns) in an exact index of the
    ``search`` asked for (``auto`` picks among the exact ones); a reduced step is refused (ValueError):
    the fused map is exact at the pixel threshold only where both parts search exactly."""
    from .search.build import build_index

    if search in REDUCED_SEARCHES:
        raise ValueError(f"--search {search}: a fused bundle searches exactly (both parts, every patch); use "
                         "--search auto, numpy or faiss")
    banks = split_columns(bank, [p.dim for p in parts])
    scorers = [PatchScorer(b, build_index(b, search, device=device, exact=True)[0], n_reweight=n_reweight)
               for b in banks]
    return FusedScorer(parts, scorers)
