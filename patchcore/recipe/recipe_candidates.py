"""The candidate recipes selection chooses among, declared up front.

aggregation {paper 1024 dims, local-mean native} x input budget {224², 320², the images' own size
up to a cap} x eq. 7 neighbours {9, 3}: at most 12. Budgets that give the same network input on
these images (a 256 x 256 part at 320² and at its own size) are one candidate. The fixed default
(:data:`patchcore.presets.PRESETS` ``default``) is always one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .. import input_geometry

AGGREGATIONS = ("paper", "local-mean")
BUDGETS = (224 * 224, 320 * 320)
NATIVE_CAP = 448 * 448  # the largest input budget tried (the images' own size when smaller)
N_REWEIGHTS = (9, 3)


@dataclass(frozen=True)
class Candidate:
    aggregation: str
    budget: int  # --max-pixels-in of --geometry auto
    n_reweight: int
    input_hw: tuple[int, int]  # the network input this budget gives on the training images

    @property
    def label(self) -> str:
        dims = "1024" if self.aggregation == "paper" else "native"
        return f"{self.aggregation} {dims} / {self.input_hw[0]}x{self.input_hw[1]} / k={self.n_reweight}"

    @property
    def group(self) -> tuple[str, tuple[int, int]]:
        """Candidates of one group share the bank and the maps (eq. 7 changes image scores only)."""
        return self.aggregation, self.input_hw

    def settings(self) -> dict:
        """The fit options this candidate sets (PatchCoreConfig fields)."""
        return {"aggregation": self.aggregation, "target_dim": 1024 if self.aggregation == "paper" else None,
                "geometry": "auto", "max_pixels_in": self.budget, "n_reweight": self.n_reweight}


def declare(sizes: Sequence[tuple[int, int]], stride: int, default: dict, native_cap: int = NATIVE_CAP,
            aggregations: Sequence[str] = AGGREGATIONS, n_reweights: Sequence[int] = N_REWEIGHTS) -> list[Candidate]:
    """The candidates for training images of ``sizes`` (h, w) on a backbone whose deepest stride is
    ``stride``; ``default`` is the default preset's settings, which comes first."""
    native = min(native_cap, int(sorted(h * w for h, w in sizes)[len(sizes) // 2]))
    budgets = sorted({*BUDGETS, max(1024, native)})
    hw = {b: input_geometry.auto_size(sizes, b, stride, upsample=False) for b in budgets}
    first = Candidate(default["aggregation"], default["max_pixels_in"], default["n_reweight"],
                      input_geometry.auto_size(sizes, default["max_pixels_in"], stride, upsample=False))
    out = [first]
    for agg in aggregations:
        for b in budgets:
            for k in n_reweights:
                c = Candidate(agg, b, k, hw[b])
                if all((x.aggregation, x.input_hw, x.n_reweight) != (agg, hw[b], k) for x in out):
                    out.append(c)
    return out
