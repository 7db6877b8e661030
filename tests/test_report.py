import csv
import json

import cv2
import numpy as np
import pytest

from patchcore.report import (
    REFERENCE_LABEL,
    backbone_means,
    load_rows,
    overlay_image,
    write_overlays,
    write_run_metrics,
    write_summary,
)

BACKBONES = {"clip_rn50": "CLIP", "effnet_lite0": "ImageNet", "wrn50": "ImageNet"}


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for c in ("bottle", "grid", "screw"):
        for b, fam in BACKBONES.items():
            pix = None if (c, b) == ("grid", "wrn50") else float(rng.uniform(0.8, 1))
            rows.append({"class": c, "backbone": b, "family": fam, "image_auroc": float(rng.uniform(0.8, 1)),
                         "pixel_auroc": pix, "pro": float(rng.uniform(0.5, 1)), "f1_max": 0.9, "coreset": 0.1})
    return rows


def _md_table_after(md: str, heading: str) -> list[list[str]]:
    after = md.split(heading, 1)[1]
    block = after[after.index("\n|") + 1:].split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_summary_means_order_and_reference(tmp_path):
    rows = _rows()
    md_path, csv_path = write_summary(tmp_path / "new", rows)
    assert md_path.parent == tmp_path / "new"
    md = md_path.read_text()

    study = _md_table_after(md, "shaped like the reference study")
    # ImageNet rows first (in first-appearance order), then CLIP, then the 4 reference rows
    assert [r[0] for r in study[:3]] == ["effnet_lite0", "wrn50", "clip_rn50"]
    for line in study[:3]:
        mine = [r for r in rows if r["backbone"] == line[0]]
        img = np.mean([r["image_auroc"] for r in mine])
        pix = np.mean([r["pixel_auroc"] for r in mine if r["pixel_auroc"] is not None])
        assert line[3:5] == [f"{100 * img:.1f}", f"{100 * pix:.1f}"]
        assert line[2] == "3"
    assert len(study) == 7 and all(REFERENCE_LABEL in r[0] for r in study[3:])
    assert study[3][0].startswith("paper (WRN50)") and study[3][3:5] == ["99.1", "98.1"]
    assert study[6][0].startswith("CLIP RN101") and study[6][3:5] == ["96.5", "96.9"]

    per_class = _md_table_after(md, "## Per class")
    bottle_wrn = next(r for r in rows if r["class"] == "bottle" and r["backbone"] == "wrn50")
    assert per_class[0][0] == "bottle"
    assert per_class[0][2] == "/".join(f"{100 * bottle_wrn[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "pro"))
    assert per_class[1][2].split("/")[1] == "–"  # grid/wrn50 has no pixel metric

    means = {m["backbone"]: m for m in backbone_means(rows)}
    assert means["wrn50"]["pixel_auroc"] == pytest.approx(
        np.mean([r["pixel_auroc"] for r in rows if r["backbone"] == "wrn50" and r["pixel_auroc"] is not None]))

    with csv_path.open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == 9
    assert list(back[0])[:4] == ["class", "backbone", "family", "image_auroc"]
    by_key = {(r["class"], r["backbone"]): r for r in back}
    for r in rows:
        got = by_key[r["class"], r["backbone"]]
        assert float(got["image_auroc"]) == r["image_auroc"]
        assert got["pixel_auroc"] == ("" if r["pixel_auroc"] is None else repr(r["pixel_auroc"]))


def test_run_metrics_round_trip(tmp_path):
    rows = _rows()
    for r in rows:
        metrics = {k: r[k] for k in ("image_auroc", "pixel_auroc", "pro", "f1_max")}
        extra = {"family": r["family"], "coreset": r["coreset"], "ms_per_image": np.float32(12.5)}
        p = write_run_metrics(tmp_path, r["class"], r["backbone"], metrics, extra)
        assert p == tmp_path / r["class"] / r["backbone"] / "metrics.json"
    text = (tmp_path / "bottle" / "wrn50" / "metrics.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys
    back = load_rows(tmp_path)
    assert [{k: v for k, v in r.items() if k != "ms_per_image"} for r in back] == sorted(
        rows, key=lambda r: (r["class"], r["backbone"]))
    assert all(r["ms_per_image"] == 12.5 for r in back)
    md1, _ = write_summary(tmp_path, back)
    md2, _ = write_summary(tmp_path / "again", rows)
    assert md1.read_text() == md2.read_text()


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write_run_metrics(tmp_path, "bottle", "wrn50", {"image_auroc": 1.0}, {"image_auroc": 0.5})
    with pytest.raises(ValueError, match="no rows"):
        write_summary(tmp_path, [])
    bad = tmp_path / "bottle" / "wrn50" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        load_rows(tmp_path)


def _scene(h=64, w=80):
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    amap = np.zeros((h, w), np.float32)
    amap[30:50, 40:60] = 1.0  # predicted defect
    gt = np.zeros((h, w), bool)
    gt[25:45, 20:35] = True
    return image, amap, gt


def _border(mask):
    return mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def test_overlay_contours_and_panels():
    image, amap, gt = _scene()
    h, w = amap.shape
    panel = overlay_image(image, amap, gt, threshold=0.5, vmin=0.0, vmax=1.0)
    assert panel.shape == (h, 3 * w, 3) and panel.dtype == np.uint8
    left, mid, right = panel[:, :w], panel[:, w:2 * w], panel[:, 2 * w:]

    pred_border = _border(amap >= 0.5)
    assert (mid[pred_border] == (255, 0, 0)).all()  # red (RGB) predicted contour
    assert not (mid[~pred_border] == (255, 0, 0)).all(axis=1).any()
    gt_border = _border(gt)
    assert (left[gt_border] == (0, 255, 0)).all()  # green ground-truth contour
    assert (left[40:60, 60:80] == image[40:60, 60:80]).all()  # elsewhere the input is untouched
    assert (right[gt] == 255).all() and (right[40:, 40:][~gt[40:, 40:]] == 0).all()
    # heatmap: inside the predicted region the map is at vmax -> JET's dark red, blended 50/50
    jet_max = cv2.applyColorMap(np.full((1, 1), 255, np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    expected = (image[40, 50].astype(int) + jet_max) / 2
    assert np.abs(mid[40, 50].astype(int) - expected).max() <= 1


def test_overlay_threshold_moves_contour_and_no_mask():
    image, _, _ = _scene()
    amap = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (64, 1))
    panel = overlay_image(image, amap, None, threshold=0.75)
    mid = panel[:, 80:160]
    red_cols = np.flatnonzero((mid[40] == (255, 0, 0)).all(axis=1))
    first = int(np.argmax(amap[0] >= 0.75))
    assert red_cols[0] == first  # contour starts where the map crosses the threshold
    assert (panel[20:, 160:] == 0).all()  # no mask: empty right panel
    with pytest.raises(ValueError, match="sizes differ"):
        overlay_image(image, amap[:, :10])
    with pytest.raises(ValueError, match="uint8"):
        overlay_image(image.astype(np.float32), amap)


def test_write_overlays(tmp_path):
    image, amap, gt = _scene()
    panel = overlay_image(image, amap, gt, threshold=0.5)
    paths = write_overlays(tmp_path / "overlays", [("broken_large/000", panel), ("good/001", panel)])
    assert paths[0] == tmp_path / "overlays" / "broken_large" / "000.png"
    back = cv2.cvtColor(cv2.imread(str(paths[1])), cv2.COLOR_BGR2RGB)
    assert (back == panel).all()  # written as BGR, so RGB comes back


def test_summary_says_when_a_row_does_not_use_the_pretrained_weights(tmp_path):
    rows = [
        {"class": "bottle", "backbone": "wrn50", "family": "ImageNet", "weights": "random",
         "image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.6},
        {"class": "bottle", "backbone": "effnet-lite0", "family": "ImageNet", "weights": "default",
         "image_auroc": 1.0, "pixel_auroc": 0.98, "pro": 0.95},
    ]
    md, _ = write_summary(tmp_path, rows)
    text = md.read_text()
    assert "| wrn50 (random weights) | ImageNet | 1 | 90.0 | 80.0 | 60.0 |" in text
    assert "| effnet-lite0 | ImageNet | 1 | 100.0 | 98.0 | 95.0 |" in text
