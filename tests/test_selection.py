"""Recipe selection (`--preset auto`): synthetic defects with exact masks, a reproducible choice,
a built case with one clearly right candidate, the fallback with too few images, and the
command line's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from patchcore import synthetic_defects as D

REPO = Path(__file__).resolve().parents[1]


def _part(size: int = 160, seed: int = 0) -> np.ndarray:
    """A textured disc (the part) on a dark background."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 12, np.uint8)
    tex = np.clip(rng.normal(150, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    disc = np.zeros((size, size), np.uint8)
    cv2.circle(disc, (size // 2, size // 2), int(size * 0.38), 1, -1)
    img[disc.astype(bool)] = tex[disc.astype(bool)]
    return img


@pytest.mark.parametrize("family", D.FAMILIES)
def test_each_family_changes_only_pixels_inside_its_mask_and_on_the_part(family):
    img, donor = _part(seed=0), _part(seed=1)
    fg = D.foreground(img)
    assert 0.3 < fg.mean() < 0.6  # the disc, not the background
    for i, share in enumerate(D.SIZE_BUCKETS):
        rng = np.random.default_rng(i)
        area = share * fg.sum()
        out, mask, facts = D.draw(img, family, area, rng, fg, donor)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert mask.any() and not (mask & ~fg).any()  # on the part only
        assert np.array_equal(out[~mask], img[~mask])  # exact: nothing outside the mask moved
        assert (out[mask] != img[mask]).any()
        assert mask.sum() <= 4 * max(area, D.MIN_AREA), (family, share, mask.sum(), area)
        assert facts["family"] == family and facts["area_px"] == int(mask.sum())


def test_a_texture_filling_the_frame_is_all_part():
    rng = np.random.default_rng(0)
    tex = np.clip(rng.normal(120, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert D.foreground(tex).all()


def _disc_part(rng: np.random.Generator, size: int, sigma: float, mean: float, amplitude: float, radius: float,
               jitter: int = 0) -> np.ndarray:
    """A grey disc of blurred noise (the part) on a dark background, shifted sideways by up to
    ``jitter`` pixels."""
    img = np.full((size, size, 3), 20, np.uint8)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigma)
    body = np.clip(mean + amplitude * noise, 0, 255).astype(np.uint8)
    disc = np.zeros((size, size), np.uint8)
    dx = int(rng.integers(-jitter, jitter + 1)) if jitter else 0
    cv2.circle(disc, (size // 2 + dx, size // 2), int(size * radius), 1, -1)
    img[disc.astype(bool)] = body[disc.astype(bool)][:, None]
    return img


def _smooth_class(root: Path, n_train: int, size: int, seed: int = 0) -> Path:
    """Parts on a flat background; a test set with tiny pits (3 px) as real defects."""
    rng = np.random.default_rng(seed)
    cls = root / "part"
    for sub in ("train/good", "test/good", "test/pit", "ground_truth/pit"):
        (cls / sub).mkdir(parents=True, exist_ok=True)

    def part():
        return _disc_part(rng, size, sigma=1.0, mean=160, amplitude=60, radius=0.4, jitter=3)

    for i in range(n_train):
        cv2.imwrite(str(cls / "train/good" / f"{i:03d}.png"), part())
    for i in range(3):
        cv2.imwrite(str(cls / "test/good" / f"{i:03d}.png"), part())
        img, mask = part(), np.zeros((size, size), np.uint8)
        c = (int(size / 2 + rng.integers(-size // 5, size // 5)), int(size / 2 + rng.integers(-size // 5, size // 5)))
        cv2.circle(mask, c, 2, 255, -1)
        img[mask > 0] = 255
        cv2.imwrite(str(cls / "test/pit" / f"{i:03d}.png"), img)
        cv2.imwrite(str(cls / "ground_truth/pit" / f"{i:03d}_mask.png"), mask)
    return cls


@pytest.fixture(scope="module")
def small_class(tmp_path_factory) -> Path:
    return _smooth_class(tmp_path_factory.mktemp("sel"), 12, 64)


def _config(**kw):
    from patchcore.config import preset_config

    return preset_config("auto", backbone="effnet-lite0", device="cpu", **kw)


def _quiet(record: dict) -> dict:
    """The record without its timings (which differ run to run)."""
    out = {k: v for k, v in record.items() if k != "seconds"}
    out["candidates"] = [{k: v for k, v in c.items() if k != "latency_ms"} for c in record["candidates"]]
    return out


def test_same_seed_same_choice(small_class):
    from patchcore.data import load_class
    from patchcore.recipe import Settings, select_recipe

    ds = load_class(small_class)
    settings = Settings(per_cell=1, families=("stain", "scratch", "missing"))
    a = select_recipe(_config(), ds, settings)
    b = select_recipe(_config(), ds, settings)
    assert a.record["candidates"] and _quiet(a.record) == _quiet(b.record)
    assert a.config == b.config
    # 64 x 64 images: every budget gives the same input, so only the aggregations remain, at the default's k
    assert [(c["aggregation"], c["n_reweight"]) for c in a.record["candidates"]] == [("paper", 9), ("local-mean", 9)]
    assert a.record["verdict"] in ("switched", "kept default", "uncertain")
    # 12 good images (< 100): three fold draws, the lead given per draw and its spread
    v, g = a.record["validation"], a.record["groups"]["local-mean"]
    assert v["draws"] == 3 and g["folds"] == 9 and len(g["lead_per_draw"]) == 3
    assert g["lead_spread"] == pytest.approx(max(g["lead_per_draw"]) - min(g["lead_per_draw"]), abs=2e-4)
    assert a.record["decided_by"] == "synthetic" and v["real_ng"] is None


def test_too_few_good_images_fit_the_fixed_default_with_one_line(tmp_path):
    from patchcore.data import load_class
    from patchcore.config import preset_config
    from patchcore.recipe import select_recipe

    cls = _smooth_class(tmp_path, 7, 64)
    lines = []
    sel = select_recipe(_config(), load_class(cls), log=lines.append)
    assert sel.record["verdict"] == "not run"
    assert len(lines) == 1 and "at least 12 good training images" in lines[0] and "got 7" in lines[0]
    default = preset_config("default", backbone="effnet-lite0", device="cpu")
    assert sel.config == default


def _fine_grain_class(root: Path, n_train: int = 15, size: int = 448, seed: int = 1) -> Path:
    """448 x 448 parts whose surface is a fine grain (noise blurred by 0.7 px): a defect of 0.05%
    of the part (about 7 px across) is resolved at the images' own size and blurred into the grain
    when they are shrunk to the default's 320² or to 224²."""
    rng = np.random.default_rng(seed)
    cls = root / "grain"
    for sub in ("train/good", "test/good"):
        (cls / sub).mkdir(parents=True, exist_ok=True)

    def part():
        return _disc_part(rng, size, sigma=0.7, mean=150, amplitude=120, radius=0.45)

    for i in range(n_train):
        cv2.imwrite(str(cls / "train/good" / f"{i:03d}.png"), part())
    cv2.imwrite(str(cls / "test/good" / "000.png"), part())
    return cls


@pytest.mark.slow
def test_the_larger_input_that_alone_resolves_small_defects_is_chosen(tmp_path):
    """Through the whole selection (trunk per input size, folds, banks, synthetic defects, the
    rule): the validation is narrowed to the smallest size bucket, where the input size decides,
    with 3 defects per cell so that 4 families x 3 folds give the rule 12 pairs."""
    from patchcore.data import load_class
    from patchcore.recipe import Settings, select_recipe

    settings = Settings(per_cell=3, families=("stain", "missing", "scratch", "perlin"), sizes=(0.0005,), draws=1)
    sel = select_recipe(_config(), load_class(_fine_grain_class(tmp_path)), settings)
    cands, r = sel.candidates, sel.ranking
    assert cands[0].input_hw == (320, 320)  # the fixed default
    assert sorted({c.input_hw for c in cands}) == [(224, 224), (320, 320), (448, 448)]
    mean = {hw: [r.mean[i] for i, c in enumerate(cands) if c.input_hw == hw] for hw in ((224, 224), (320, 320),
                                                                                         (448, 448))}
    assert min(mean[(448, 448)]) > max(mean[(320, 320)]) > max(mean[(224, 224)])
    assert sel.record["verdict"] == "switched", sel.record["reason"]
    assert cands[r.chosen].input_hw == (448, 448) and r.folds_won == 3 and r.interval[0] > 0
    assert sel.config.max_pixels_in == cands[r.chosen].budget and sel.config.max_pixels_in > 320 * 320


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHCORE_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PATCHCORE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "patchcore", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("command,extra", [("fit", ["--aggregation", "local-mean"]),
                                           ("eval", ["--max-pixels-in", "50176"]),
                                           ("export", ["--n-reweight", "3"])])
def test_auto_with_an_option_it_chooses_is_exit_2_with_one_line(small_class, tmp_path, command, extra):
    r = _cli(command, "--data", str(small_class), "--out", str(tmp_path / "o"), "--preset", "auto", *extra)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--preset auto chooses" in lines[0] and extra[0] in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_fit_with_auto_records_the_selection_in_the_manifest_and_info_shows_it(small_class, tmp_path):
    out = tmp_path / "bundle"
    r = _cli("fit", "--data", str(small_class), "--out", str(out), "--preset", "auto", "--coreset", "0.05")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    sel = manifest["selection"]
    assert sel["verdict"] in ("switched", "kept default", "uncertain")
    assert manifest["features"]["aggregation"] == sel["settings"]["aggregation"]
    assert manifest["scoring"]["n_reweight"] == sel["settings"]["n_reweight"]
    assert "| candidate |" in r.stderr  # the selection table
    info = subprocess.run([sys.executable, "-m", "runtime", "info", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "--preset auto: " + sel["verdict"] in info.stdout


def test_a_latency_budget_times_the_exported_graph_in_onnxruntime_and_drops_what_is_over(small_class):
    from patchcore.data import load_class
    from patchcore.recipe import Settings, fixed_default, select_recipe

    ds = load_class(small_class)
    fast = dict(per_cell=1, families=("stain", "missing"), draws=1)
    sel = select_recipe(_config(), ds, Settings(latency_budget_ms=1e6, **fast))
    rows = sel.record["candidates"]
    assert rows and all(r["latency_on"] == "onnxruntime:CPUExecutionProvider" for r in rows)
    assert all(r["latency_ms"] > 0 and "dropped" not in r for r in rows)
    lines = []
    sel = select_recipe(_config(), ds, Settings(latency_budget_ms=1e-3, **fast), log=lines.append)
    assert sel.record["verdict"] == "not run" and "over the latency budget of 0.001 ms" in sel.record["reason"]
    assert sel.config == fixed_default(_config())
