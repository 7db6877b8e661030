"""The candidate recipes selection chooses among, declared up front.

aggregation x input budget {224², 320², the images' own size up to a cap}: at most 6. Budgets that
give the same network input on these images (a 256 x 256 part at 320² and at its own size) are one
candidate, so nothing is measured twice. Eq. 7's neighbour count is not an axis: every candidate
uses the default's, because candidates differing only in it have the same maps and near-equal
image figures (docs/selection.md, "Candidates"), so they added time and clones of the challenger
but no choice. The fixed default (:data:`patchcore.presets.PRESETS` ``default``) is always first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .. import input_geometry

# The aggregations tried, each with the fit options it sets besides ``aggregation``. A new
# aggregation (e.g. ``fused``, once patchcore/features.py has it) is one line here.
AGGREGATIONS: dict[str, dict] = {
    "paper": {"target_dim": 1024},
    "local-mean": {"target_dim": None},
}
BUDGETS = (224 * 224, 320 * 320)
NATIVE_CAP = 448 * 448  # the largest input budget tried (the images' own size when smaller)


@dataclass(frozen=True)
class Candidate:
    aggregation: str
    budget: int  # --max-pixels-in of --geometry auto
    n_reweight: int
    input_hw: tuple[int, int]  # the network input this budget gives on the training images

    @property
    def label(self) -> str:
        dims = {1024: "1024", None: "native"}.get(self.options.get("target_dim"), str(self.options.get("target_dim")))
        return f"{self.aggregation} {dims} / {self.input_hw[0]}x{self.input_hw[1]} / k={self.n_reweight}"

    @property
    def options(self) -> dict:
        return AGGREGATIONS.get(self.aggregation, {"target_dim": None})

    @property
    def group(self) -> tuple[str, tuple[int, int]]:
        """Candidates of one group share the bank and the maps."""
        return self.aggregation, self.input_hw

    def settings(self) -> dict:
        """The fit options this candidate sets (PatchCoreConfig fields)."""
        return {"aggregation": self.aggregation, **self.options, "geometry": "auto", "max_pixels_in": self.budget,
                "n_reweight": self.n_reweight}


def declare(sizes: Sequence[tuple[int, int]], stride: int, default: dict, native_cap: int = NATIVE_CAP,
            aggregations: Sequence[str] = tuple(AGGREGATIONS)) -> list[Candidate]:
    """The candidates for training images of ``sizes`` (h, w) on a backbone whose deepest stride is
    ``stride``; ``default`` is the default preset's settings, which comes first. Two budgets that
    give the same network input on these images are one candidate."""
    native = min(native_cap, int(sorted(h * w for h, w in sizes)[len(sizes) // 2]))
    budgets = sorted({*BUDGETS, max(1024, native)})
    hw = {b: input_geometry.auto_size(sizes, b, stride, upsample=False) for b in budgets}
    k = default["n_reweight"]
    first = Candidate(default["aggregation"], default["max_pixels_in"], k,
                      input_geometry.auto_size(sizes, default["max_pixels_in"], stride, upsample=False))
    out = [first]
    for agg in aggregations:
        for b in budgets:
            if all((x.aggregation, x.input_hw) != (agg, hw[b]) for x in out):
                out.append(Candidate(agg, b, k, hw[b]))
    return out
