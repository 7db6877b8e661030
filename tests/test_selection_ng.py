"""Real NG images in the recipe selection (``--ng DIR``): which images and masks are read, the
refusals (one line, exit 2), their cells in the ranking and the record, ``eval`` leaving them out
of its figures, and that without ``--ng`` nothing reads test/ to choose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.errors import UsageError

from tests.test_selection import _config, _smooth_class

REPO = Path(__file__).resolve().parents[1]
FAST = dict(per_cell=1, families=("stain", "scratch", "missing"))


@pytest.fixture(scope="module")
def part(tmp_path_factory) -> Path:
    return _smooth_class(tmp_path_factory.mktemp("ng"), 12, 64)


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def test_masks_are_found_beside_the_image_or_in_mvtec_s_ground_truth(part, tmp_path):
    from patchcore.recipe.real_ng import choosing_half, load, mask_path

    pit = part / "test" / "pit"
    assert mask_path(pit / "000.png", pit) == part / "ground_truth" / "pit" / "000_mask.png"
    own = tmp_path / "rejects"
    img = _png(own / "a.png", np.full((32, 32, 3), 90, np.uint8))
    _png(own / "b.png", np.full((32, 32, 3), 90, np.uint8))
    m = np.zeros((32, 32), np.uint8)
    m[4:8, 4:8] = 255
    _png(own / "a_mask.png", m)
    assert mask_path(img, own) == own / "a_mask.png" and mask_path(own / "b.png", own) is None
    # the same seeded half as the operating point's "set" half; the rest is left to check
    files = sorted(pit.glob("*.png"))
    half = choosing_half(files, 0)
    perm = np.random.default_rng([0, 7]).permutation(len(files))
    assert half == sorted(files[i] for i in perm[:len(files) // 2]) and len(half) == 1
    got = load(pit, 0)
    assert [g.path for g in got] == half and got[0].mask is not None and got[0].mask.any()
    assert got[0].mask.shape == got[0].image.shape[:2]


def test_bad_ng_folders_are_one_line_usage_errors(part, tmp_path):
    from patchcore.recipe.real_ng import load

    with pytest.raises(UsageError, match="folder not found"):
        load(tmp_path / "nowhere", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="needs at least 2 NG images.*found 0"):
        load(tmp_path / "empty", 0)
    bad = tmp_path / "bad"
    _png(bad / "a.png", np.full((32, 32, 3), 90, np.uint8))
    (bad / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(UsageError) as e:
        load(bad, 0)
    assert str(e.value).startswith(f"--ng {bad}:") and "b.png" in str(e.value) and "\n" not in str(e.value)
    small = tmp_path / "small"
    _png(small / "a.png", np.full((32, 32, 3), 90, np.uint8))
    _png(small / "b.png", np.full((32, 32, 3), 90, np.uint8))
    _png(small / "a_mask.png", np.zeros((16, 16), np.uint8))
    _png(small / "b_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(UsageError, match="is 16x16, its image 32x32"):
        load(small, 0)


def test_ng_images_enter_the_ranking_as_real_cells_and_the_record_says_what_decided(part):
    from patchcore.data import load_class
    from patchcore.recipe import Settings, select_recipe
    from patchcore.recipe.real_ng import load

    ng = load(part / "test" / "pit", 0)
    sel = select_recipe(_config(), load_class(part), Settings(**FAST, draws=1), ng=ng)
    rec = sel.record
    assert rec["validation"]["real_ng"] == {"images": 1, "masks": True}
    assert rec["validation"]["families"][-1] == "real"
    assert all("real" in c["families"] for c in rec["candidates"])
    g = rec["groups"]["local-mean"]
    assert g["real_lead"] is not None and g["synthetic_lead"] is not None
    assert rec["decided_by"] in ("synthetic and real agreeing", "real (the synthetic defects disagreed)",
                                 "real (the synthetic lead was not confirmed)")
    # real figures shown beside the choice only when a check set is given: none here
    assert all(c["real"] is None for c in rec["candidates"])


def test_without_ng_selection_reads_no_test_image(part, tmp_path, monkeypatch):
    """The fitting path (model_for) on a class whose test images are all unreadable still selects."""
    import shutil

    import patchcore.recipe as recipe
    from patchcore.data import load_class

    cls = tmp_path / "part"
    shutil.copytree(part, cls)
    for p in (cls / "test").rglob("*.png"):
        p.write_bytes(b"broken")
    from patchcore.recipe.validate import Settings as Real

    monkeypatch.setattr(recipe, "Settings", lambda **kw: Real(**FAST, draws=1, **kw))  # a small validation
    model = recipe.model_for(_config(), load_class(cls), log=lambda s: None)
    assert model.selection["verdict"] in ("switched", "kept default", "uncertain")
    assert all(c["real"] is None for c in model.selection["candidates"])


def test_eval_leaves_ng_images_out_of_its_figures(part, tmp_path):
    import shutil

    from patchcore.data import load_class
    from patchcore.evaluation import without_ng

    cls = tmp_path / "part"
    shutil.copytree(part, cls)
    shutil.copytree(cls / "test" / "pit", cls / "test" / "dent")
    shutil.copytree(cls / "ground_truth" / "pit", cls / "ground_truth" / "dent")
    ds = load_class(cls)
    pits = sorted((cls / "test" / "pit").glob("*.png"))
    kept = without_ng(ds, str(cls / "test" / "pit"))
    assert len(kept.test) == len(ds.test) - len(pits)
    assert not {s.path.resolve() for s in kept.test} & {p.resolve() for p in pits}
    assert without_ng(ds, None) is ds


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHCORE_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PATCHCORE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "patchcore", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("command", ["fit", "eval"])
def test_a_missing_ng_folder_is_exit_2_with_one_line(part, tmp_path, command):
    r = _cli(command, "--data", str(part), "--out", str(tmp_path / "o"), "--preset", "auto", "--ng",
             str(tmp_path / "nowhere"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "folder not found" in lines[0], r.stderr


def test_eval_with_every_defect_in_ng_is_refused_with_one_line(part, tmp_path):
    r = _cli("eval", "--data", str(part), "--out", str(tmp_path / "o"), "--preset", "auto", "--ng",
             str(part / "test" / "pit"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "nothing left to evaluate" in lines[0], r.stderr
