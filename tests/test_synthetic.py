"""patchcore.synthetic: loadable MVTec layout, masks cover exactly the damaged pixels, same seed same bytes."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from patchcore.data import load_class, load_mask
from patchcore.synthetic import DEFECT_TYPES, TEXTURES, add_defect, iter_images, load_texture, make_synthetic_class
from runtime.images import read_image, read_mask

SMALL = dict(n_train=6, n_test_good=3, n_test_defect=4, size=96, seed=3)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_class_loads(tmp_path):
    root = make_synthetic_class(tmp_path)
    assert root == tmp_path / "brick"
    ds = load_class(root)
    assert len(ds.train) == 40 and ds.has_masks
    assert sum(s.label == 0 for s in ds.test) == 10
    assert ds.defect_types == sorted(DEFECT_TYPES)
    assert all(sum(s.defect_type == t for s in ds.test) == 10 for t in DEFECT_TYPES)
    img = read_image(ds.train[0])
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    for s in ds.test:
        m = load_mask(s, read_image(s.path).shape)
        assert (m.sum() > 0) == bool(s.label)


@pytest.mark.parametrize("texture", sorted(TEXTURES))
def test_masks_cover_exactly_the_altered_pixels(tmp_path, texture):
    root = make_synthetic_class(tmp_path, texture, **SMALL)
    n_defect = 0
    for item in iter_images(texture, **SMALL):
        written = read_image(root / item.relpath)
        np.testing.assert_array_equal(written, item.image)  # files are what the generator made
        if item.mask is None:
            continue
        n_defect += 1
        kind, stem = item.relpath.split("/")[1], item.relpath.split("/")[2][:-4]
        mask = read_mask(root / "ground_truth" / kind / f"{stem}_mask.png")
        np.testing.assert_array_equal(mask, item.mask)
        changed = np.any(written != item.clean, axis=2)
        np.testing.assert_array_equal(changed, mask)  # outside: identical; inside: every pixel altered
        assert 5 <= mask.sum() < 0.25 * mask.size
        # Visible, not a one-level nudge.
        assert np.abs(written[mask].astype(int) - item.clean[mask]).max(axis=1).mean() > 25, item.relpath
    assert n_defect == 3 * SMALL["n_test_defect"]


def test_deterministic_bytes_and_seed_matters(tmp_path):
    a = _files(make_synthetic_class(tmp_path / "a", **SMALL))
    b = _files(make_synthetic_class(tmp_path / "b", **SMALL))
    assert a == b
    c = _files(make_synthetic_class(tmp_path / "c", **{**SMALL, "seed": 4}))
    assert c.keys() == a.keys() and c["train/good/000.png"] != a["train/good/000.png"]


def test_reuse_replace_and_refuse(tmp_path):
    root = make_synthetic_class(tmp_path, **SMALL)
    mtime = (root / "train" / "good" / "000.png").stat().st_mtime_ns
    assert make_synthetic_class(tmp_path, **SMALL) == root
    assert (root / "train" / "good" / "000.png").stat().st_mtime_ns == mtime  # reused, not rewritten
    make_synthetic_class(tmp_path, **{**SMALL, "n_train": 2})
    assert len(list((root / "train" / "good").glob("*.png"))) == 2  # other params: replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic")]
    (tmp_path / "gravel").mkdir()
    with pytest.raises(ValueError, match="not made by make_synthetic_class"):
        make_synthetic_class(tmp_path, "gravel", **SMALL)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown texture 'wood'"):
        make_synthetic_class(tmp_path, "wood")
    with pytest.raises(ValueError, match="unknown defect type"):
        make_synthetic_class(tmp_path, defects=("crack",))
    with pytest.raises(ValueError, match="n_train >= 1"):
        make_synthetic_class(tmp_path, n_train=0)
    assert list(tmp_path.iterdir()) == []


def test_add_defect_invariant_on_flat_extremes():
    # Flat white and black images stress the "every masked pixel changes" rule (clipping, rounding).
    rng = np.random.default_rng(0)
    for value in (0, 255, 127):
        clean = np.full((64, 64, 3), value, np.uint8)
        for kind in DEFECT_TYPES:
            out, mask = add_defect(clean, kind, rng)
            np.testing.assert_array_equal(np.any(out != clean, axis=2), mask, err_msg=f"{kind} on {value}")
            assert mask.any()


def test_texture_is_real_photo():
    tex = load_texture("brick")
    assert tex.shape == (512, 512, 3) and tex.dtype == np.uint8
    assert tex.std() > 10  # a photo, not a flat fill


def test_tall_layout_puts_defects_near_the_ends(tmp_path):
    from patchcore.synthetic import TALL_ASPECT

    root = make_synthetic_class(tmp_path, layout="tall", size=64, n_train=2, n_test_good=1, n_test_defect=3)
    assert root.name == "brick-tall"
    ds = load_class(root)
    h = int(round(64 * TALL_ASPECT))
    assert read_image(ds.train[0]).shape == (h, 64, 3)
    for s in ds.test:
        if s.label:
            ys = np.nonzero(load_mask(s, (h, 64)))[0]
            # outside the central square a 64-wide center crop keeps (rows 48..112 of 160)
            assert ys.max() < 0.28 * h or ys.min() >= 0.72 * h, (s.path, ys.min(), ys.max())


def test_large_layout_defects_are_a_few_pixels_wide(tmp_path):
    root = make_synthetic_class(tmp_path, layout="large", size=256, n_train=1, n_test_good=1, n_test_defect=2)
    ds = load_class(root)
    assert ds.defect_types == ["fine_scratch", "pit", "speck"]
    for s in ds.test:
        if s.label:
            m = load_mask(s, (256, 256)).astype(np.uint8)
            width = 2 * cv2.distanceTransform(m, cv2.DIST_L2, 3).max()
            assert 1 <= width <= 10, (s.path, width)
