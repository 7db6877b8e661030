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

from typing import Sequence

import numpy as np

from .fused_parts import FusedPart, check_features, read_parts  # noqa: F401 - the fused bundle's facts, here too
from .search.scorer import PatchScorer, Scores


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
