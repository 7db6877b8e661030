"""What a scoring run needs beyond its bundle, built once per command from its options and passed
down: how to open the bundle (device, search, threads, graph), the line's rule for regions and
verdicts (``--min-area``, ``--mm-per-px``), the image limits and where results are published.

The rule's :class:`~runtime.regions.Judge` is made from each bundle's manifest (a reloaded or
switched bundle brings its own pixel threshold and scale), so a run carries the rule and asks
:meth:`RunOptions.judge` for the judge of the predictor at hand, then passes that judge to what
cuts regions and decides verdicts (:func:`runtime.line.records.score_items`,
:func:`runtime.line.outputs.outcome_overlay`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..images import DEFAULT_LIMITS, ImageLimits
from ..predictor import Predictor
from ..regions import Judge, MinArea, check_scale, parse_min_area
from .messages import info


class LineRule(NamedTuple):
    """``--mm-per-px`` and ``--min-area``, checked (exit 2) before any bundle is opened."""

    mm_per_px: float | None = None
    min_area: MinArea | None = None

    @classmethod
    def parse(cls, mm_per_px: float | None, min_area: str | None) -> "LineRule":
        check_scale(mm_per_px)
        return cls(mm_per_px, parse_min_area(min_area))


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"
    search: str = "auto"
    threads: int | None = None
    graph: str = "features_fp32"
    rule: LineRule = field(default_factory=LineRule)
    limits: ImageLimits = DEFAULT_LIMITS
    publish: tuple[str, ...] = ()  # --publish URLs (runtime.line.sinks)

    def judge(self, predictor) -> Judge:
        """The rule applied to ``predictor``'s bundle: its regions and the verdict's rule."""
        return Judge.for_manifest(predictor.bundle.manifest, *self.rule)

    def load_predictor(self, bundle: str | Path, overlays: bool = False) -> Predictor:
        """The bundle's predictor, its choices logged. ``overlays``: the command draws overlays, so a
        reduced search settles the maps down to the overlays' floor (:attr:`Predictor.map_level`).
        The rule is checked against the bundle here (a mm² area without any scale is exit 2 at load,
        and a reloaded bundle it does not fit is refused)."""
        p = Predictor(bundle, device=self.device, graph=self.graph, search=self.search, threads=self.threads,
                      log=info, overlays=overlays)
        d = p.info()
        info(f"bundle {d['bundle']}: {d['engine']}, graph {d.get('graph', self.graph)}, precision {d['precision']}, "
             f"search {d['search']}")
        if "search_choice" in d:
            c = d["search_choice"]
            info(f"search auto: int8 candidate product {c['int8_ms']} ms, exact {c['exact_ms']} ms on {c['queries']} "
                 f"queries ({c['speedup']}x, int8 from {c['min_speedup']}x): {c['chose']}")
        judge = self.judge(p)
        if self.rule.min_area is not None or judge.bundle_rule.kind != "image-score":
            info(f"rule: {judge.rule} ({judge.level.source})")
        return p
