"""Regions are not cut where none can exist: a map whose largest value stays below the pixel threshold
skips taking the map onto the original image and the component search (most good parts), with the
same regions, count and note as the full cut; a map at or near the level is cut as before."""

from __future__ import annotations

import numpy as np
import pytest

import runtime.regions as regions_module
from runtime.calibration import PixelLevel
from runtime.geometry import map_to_original
from runtime.preprocess import PreprocessSpec
from runtime.regions import Judge, below_level, find_regions

PLANS = [PreprocessSpec(resize=64, crop=56).plan(90, 120),  # shorter side resized, a center crop
         PreprocessSpec(mode="resize", size=(56, 56)).plan(300, 300),  # the whole image, upsampled
         PreprocessSpec(mode="resize", size=(56, 56)).plan(37, 41)]  # downsampled


def _full_cut(judge: Judge, amap: np.ndarray, plan) -> tuple:
    found, total = find_regions(map_to_original(amap, plan, fill=-np.inf), judge.level.value, judge.mm_per_px,
                                judge.level.base)
    return found, total, None if found else f"no pixel reaches the pixel threshold {judge.level.value:.6g}"


@pytest.mark.parametrize("plan", PLANS)
def test_regions_equal_the_full_cut_at_every_distance_from_the_level(plan):
    rng = np.random.default_rng(0)
    level = 3.0
    judge = Judge(PixelLevel(level, "test", base=1.0))
    skipped = cut = 0
    for gap in (-1e-3, -2e-6, -1e-7, -1e-9, 0.0, 1e-9, 1e-7, 1e-3):
        for _ in range(4):
            amap = rng.uniform(0.5, 1.0, plan.canvas_hw).astype(np.float32)
            y, x = rng.integers(0, plan.canvas_hw[0]), rng.integers(0, plan.canvas_hw[1])
            amap[max(0, y - 3):y + 3, max(0, x - 3):x + 3] = np.float32(level * (1 + gap))  # a plateau at the peak
            assert judge.regions(amap, plan) == _full_cut(judge, amap, plan)
            if below_level(amap, level):
                skipped += 1
                assert map_to_original(amap, plan).max() < level  # and the map on the original stays below
            else:
                cut += 1
    assert skipped >= 8 and cut >= 16  # maps well below the level skip; those within a rounding are cut


def test_a_map_below_the_level_is_never_taken_onto_the_original(monkeypatch):
    plan = PLANS[1]
    judge = Judge(PixelLevel(3.0, "test"))
    calls = []
    monkeypatch.setattr(regions_module, "map_to_original", lambda *a, **k: calls.append(1) or map_to_original(*a, **k))
    low = np.full(plan.canvas_hw, 2.9, np.float32)
    assert judge.regions(low, plan) == ([], 0, "no pixel reaches the pixel threshold 3") and calls == []
    high = low.copy()
    high[10:20, 10:20] = 3.5
    found, total, why = judge.regions(high, plan)
    assert total == 1 and why is None and calls == [1]
    nan = low.copy()
    nan[0, 0] = np.nan  # not below any level: cut as before
    judge.regions(nan, plan)
    assert calls == [1, 1]
