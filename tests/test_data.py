"""patchcore.data: MVTec AD layout on the real shared classes and on tmp_path fixtures for every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.data import (ClassDataset, DatasetError, NoTestImages, Sample, _images, load_class, load_mask,
                            load_test_set)
from runtime.images import read_image


def _png(path: Path, size=(8, 6), value=0, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _tiny_class(root: Path, masks: bool = True) -> Path:
    for i in range(3):
        _png(root / "train" / "good" / f"{i:03d}.png")
    _png(root / "test" / "good" / "000.png")
    for t in ("scratch", "crack"):
        for i in range(2):
            _png(root / "test" / t / f"{i:03d}.png")
            if masks:
                m = np.zeros((6, 8), np.uint8)
                m[i, 2:5] = 255
                (root / "ground_truth" / t).mkdir(parents=True, exist_ok=True)
                Image.fromarray(m).save(root / "ground_truth" / t / f"{i:03d}_mask.png")
    (root / "license.txt").write_text("x")
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    return root


def test_real_bottle_counts_and_masks(shared_datasets):
    ds = load_class(shared_datasets / "mvtec_ad" / "bottle")
    assert ds.name == "bottle" and isinstance(ds, ClassDataset)
    assert len(ds.train) == 209
    good = [s for s in ds.test if s.label == 0]
    bad = [s for s in ds.test if s.label == 1]
    assert len(good) == 20 and len(bad) == 63
    assert ds.defect_types == ["broken_large", "broken_small", "contamination"]
    assert {t: sum(s.defect_type == t for s in bad) for t in ds.defect_types} == {
        "broken_large": 20, "broken_small": 22, "contamination": 21}
    assert ds.has_masks and all(s.mask_path.name == f"{s.path.stem}_mask.png" for s in bad)
    assert all(s.mask_path is None and s.defect_type == "good" for s in good)
    assert ds.train == sorted(ds.train)
    s = bad[0]
    img = read_image(s.path)
    m = load_mask(s, img.shape)
    assert m.shape == (512, 512) and m.dtype == np.bool_ and 0 < m.sum() < m.size
    assert not load_mask(good[0], img.shape).any()


@pytest.mark.parametrize("name", ["hazelnut_reduced", "transistor_reduced"])
def test_real_reduced_one_bit_masks(shared_datasets, name):
    ds = load_class(shared_datasets / "mvtec_ad" / name)
    assert (len(ds.train), sum(s.label == 0 for s in ds.test), sum(s.label for s in ds.test)) == (50, 2, 8)
    assert len(ds.defect_types) == 4
    for s in ds.test:
        m = load_mask(s, (256, 256, 3))
        assert m.shape == (256, 256)
        assert (m.sum() > 0) == bool(s.label)


def test_tiny_layout_order_and_ignores_non_images(tmp_path):
    root = _tiny_class(tmp_path / "tiny")
    # A mask without an image is ignored.
    _png(root / "ground_truth" / "crack" / "099_mask.png", mode="L")
    ds = load_class(root)
    assert [p.name for p in ds.train] == ["000.png", "001.png", "002.png"]
    assert [(s.defect_type, s.path.name) for s in ds.test] == [
        ("good", "000.png"), ("crack", "000.png"), ("crack", "001.png"),
        ("scratch", "000.png"), ("scratch", "001.png")]
    assert [s.label for s in ds.test] == [0, 1, 1, 1, 1]
    s = ds.test[2]
    m = load_mask(s, (6, 8))
    expect = np.zeros((6, 8), bool)
    expect[1, 2:5] = True
    np.testing.assert_array_equal(m, expect)
    assert load_class(root) == ds  # deterministic


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"nope: dataset folder not found"):
        load_class(tmp_path / "nope")


def test_not_mvtec_layout(tmp_path):
    import shutil

    root = _tiny_class(tmp_path / "c")
    shutil.rmtree(root / "train" / "good")
    with pytest.raises(DatasetError, match="not an MVTec AD class folder \\(missing train/good/\\)") as e:
        load_class(root)
    assert str(root) in str(e.value)


def test_plain_folder_of_images_says_where_they_belong(tmp_path):
    _png(tmp_path / "c" / "0.png")
    with pytest.raises(DatasetError, match=r"the images directly in .*c belong in .*c/train/good"):
        load_class(tmp_path / "c", need_test=False)


def test_train_only_loads_for_fitting_and_is_nothing_to_measure_for_evaluation(tmp_path):
    import shutil

    root = _tiny_class(tmp_path / "c")
    shutil.rmtree(root / "test")
    ds = load_class(root, need_test=False)
    assert ds.test == [] and len(ds.train) == len(_images(root / "train" / "good")) > 0
    with pytest.raises(NoTestImages, match=r"no test images under test/.*nothing to measure.*patchcore export"):
        load_class(root)
    (root / "test" / "good").mkdir(parents=True)  # an empty test folder is the same
    assert load_test_set(root, need_test=False).test == []
    with pytest.raises(NoTestImages):
        load_test_set(root)


def test_empty_train_and_empty_test(tmp_path):
    root = _tiny_class(tmp_path / "c")
    for p in (root / "train" / "good").glob("*.png"):
        p.unlink()
    with pytest.raises(DatasetError, match=r"train/good: no training images"):
        load_class(root)
    root2 = tmp_path / "d"
    _png(root2 / "train" / "good" / "0.png")
    (root2 / "test" / "good").mkdir(parents=True)
    with pytest.raises(NoTestImages, match=r"d: no test images under test/"):
        load_class(root2)


def test_defect_without_mask(tmp_path):
    root = _tiny_class(tmp_path / "c")
    (root / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"1 defective test image\(s\) have no mask") as e:
        load_class(root)
    assert str(root / "test" / "scratch" / "001.png") in str(e.value)
    assert "image_level_only=True" in str(e.value)


def test_image_level_only_without_ground_truth(tmp_path):
    root = _tiny_class(tmp_path / "c", masks=False)
    with pytest.raises(DatasetError, match="4 defective"):
        load_class(root)
    ds = load_class(root, image_level_only=True)
    assert [s.label for s in ds.test] == [0, 1, 1, 1, 1]
    assert all(s.mask_path is None for s in ds.test) and not ds.has_masks
    with pytest.raises(DatasetError, match="no mask"):
        load_mask(ds.test[1], (6, 8))


def test_mask_shape_mismatch_names_both_files(tmp_path):
    root = _tiny_class(tmp_path / "c")
    ds = load_class(root)
    s = ds.test[1]
    with pytest.raises(DatasetError) as e:
        load_mask(s, (12, 16, 3))
    assert str(s.mask_path) in str(e.value) and str(s.path) in str(e.value)


def test_corrupt_mask_is_dataset_error(tmp_path):
    root = _tiny_class(tmp_path / "c")
    (root / "ground_truth" / "crack" / "000_mask.png").write_bytes(b"broken")
    s = load_class(root).test[1]
    with pytest.raises(DatasetError, match="000_mask.png: cannot decode"):
        load_mask(s, (6, 8))


def test_sample_fields():
    s = Sample(Path("a.png"), 1, "hole", Path("a_mask.png"))
    assert (s.label, s.defect_type) == (1, "hole")
