"""Teaching a deployed bundle new good images: the greedy coreset continued in numpy, the
torch-free ``patchcore-rt update`` and the PyTorch ``patchcore update`` (same rows), lineage,
recalibration, and a fresh fit as the reference for coverage.

The class built here is a fixtured part (a washer, same position every time, noise and lighting
varying) fitted in steel; the good variant absent from training is the same part in copper (a new
supplier's colour). Defects are the synthetic generator's scratches, stains and holes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from export.onnx_export import export_bundle
from patchcore.coreset import greedy_coreset, projection_matrix, random_projection
from patchcore.metrics import image_auroc
from patchcore.config import PatchCoreConfig
from patchcore.model import PatchCore
from patchcore.synthetic import add_defect
from runtime import bundle as bundle_io
from runtime.bundle import BundleError, finalize_manifest, read_bundle
from runtime.coreset_update import distances_to_bank, extend_coreset, project, selection_radius
from runtime.errors import UsageError
from runtime.fileio import sha256_file
from runtime.images import read_image
from runtime.line.info import bundle_info, render
from runtime.predictor import Predictor
from runtime.update import requirements, threshold_rise, update_bundle

STEEL, COPPER = (150, 160, 175), (190, 120, 70)
N_TEACH = 8  # "a handful" of copper parts taught as good


def part(rng: np.random.Generator, colour=STEEL, size: int = 128) -> np.ndarray:
    """A washer with six bolt holes on a dark belt, lit from one side; sensor noise and a few
    per cent of brightness vary from part to part (RGB uint8)."""
    img = np.full((size, size, 3), 60, np.float32) + rng.normal(0, 2, (size, size, 3))
    c, r = (size // 2, size // 2), int(size * 0.36)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, c, r, 1, -1)
    cv2.circle(mask, c, int(r * 0.35), 0, -1)
    shade = np.linspace(0.9, 1.1, size, dtype=np.float32)[None, :, None]
    body = np.array(colour, np.float32) * rng.uniform(0.97, 1.03) * shade + rng.normal(0, 2, (size, size, 3))
    img = np.where(mask[..., None] > 0, body, img)
    for k in range(6):
        a = k * np.pi / 3 + 0.2
        cv2.circle(img, (int(c[0] + 0.68 * r * np.cos(a)), int(c[1] + 0.68 * r * np.sin(a))), 4, (40, 40, 40), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The class on disk, a bundle fitted on its steel parts (10% coreset, 20% held out for the
    threshold) and the fitted PyTorch model."""
    root = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(0)
    train = [_write(root / f"train/good/{i:03d}.png", part(rng)) for i in range(30)]
    for i in range(10):
        _write(root / f"test/good/{i:03d}.png", part(rng))
    kinds = ("scratch", "stain", "hole")
    for i in range(12):
        _write(root / f"test/{kinds[i % 3]}/{i:03d}.png", add_defect(part(rng), kinds[i % 3], rng)[0])
    for i in range(N_TEACH):
        _write(root / f"copper/teach/{i:03d}.png", part(rng, COPPER))
    for i in range(10):
        _write(root / f"copper/held_out/{i:03d}.png", part(rng, COPPER))
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=128, crop=128, holdout=0.2, device="cpu",
                          calibration="holdout")
    model = PatchCore(cfg).fit(train)
    export_bundle(model, root / "bundle", fp16=False)
    return {"root": root, "bundle": root / "bundle", "model": model}


def _images(folder: Path) -> list[tuple[Path, str]]:
    return [(p, p.name) for p in sorted(folder.glob("*.png"))]


def _test_set(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    files = sorted((root / "test").rglob("*.png"))
    return [read_image(f) for f in files], np.array([f.parent.name != "good" for f in files], int)


def _file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================ the greedy, in numpy
def _reference_continuation(bank: np.ndarray, new: np.ndarray, budget: int, radius: float) -> list[int]:
    """The greedy continuation in float64, written plainly."""
    d = np.sqrt(((new[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)).min(1)
    out = []
    for _ in range(budget):
        i = int(np.argmax(d))
        if d[i] <= radius:
            break
        out.append(i)
        d = np.minimum(d, np.linalg.norm(new.astype(np.float64) - new[i], axis=1))
    return out


def test_extend_coreset_is_the_greedy_continued_and_stops_at_the_radius():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 16)).astype(np.float32)
    near = bank[rng.integers(0, 300, 200)] + rng.normal(0, 0.01, (200, 16)).astype(np.float32)  # covered
    far = (rng.normal(size=(200, 16)) + 6).astype(np.float32)  # a new mode
    new = np.concatenate([near, far])
    ext = extend_coreset(bank, new, budget=50, radius=2.0)
    assert ext.selected.tolist() == _reference_continuation(bank, new, 50, 2.0)
    assert ext.selected.min() >= 200  # nothing taken from the covered points
    assert ext.covered >= 200 and ext.stopped == "budget" and ext.radius_after > 2.0
    # a large budget stops by itself once everything lies within the radius
    ext = extend_coreset(bank, new, budget=10_000, radius=2.0)
    assert ext.stopped == "covered" and ext.radius_after <= 2.0 < ext.radius_before
    assert ext.selected.tolist() == _reference_continuation(bank, new, 10_000, 2.0)
    # points the bank already holds add nothing
    ext = extend_coreset(bank, bank[:50].copy(), budget=10, radius=0.5)
    assert len(ext.selected) == 0 and ext.covered == 50 and ext.stopped == "covered"


def test_selection_radius_is_where_the_fits_greedy_stopped():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(20, 64)) * 5)[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 64))
    idx = greedy_coreset(x.astype(np.float32), 0.05, projection_dim=16, seed=3, device="cpu")
    w = projection_matrix(64, 16, 3).numpy()
    xp = project(x, w)
    np.testing.assert_allclose(xp, random_projection(torch.from_numpy(x).float(), 16, 3).numpy(), rtol=1e-5, atol=1e-4)
    # the last row's distance to the rows chosen before it = the greedy's last selection distance
    d_last = np.linalg.norm(xp[idx[:-1]].astype(np.float64) - xp[idx[-1]], axis=1).min()
    assert selection_radius(xp[idx]) == pytest.approx(d_last, rel=1e-4)
    # and every training point lies (nearly) within it of the selection: it is the covering radius
    cover = distances_to_bank(xp[idx], xp).max()
    assert cover <= d_last * 1.0001


# ============================================================================ the bundle fields
def test_bundle_stores_the_projection_the_fit_selected_in(parts):
    b = read_bundle(parts["bundle"])
    mb = b.manifest["memory_bank"]
    assert mb["projection_file"] == bundle_io.PROJECTION_FILE and bundle_io.PROJECTION_FILE in b.manifest["files"]
    w = b.coreset_projection()
    assert w.shape == (128, 1024) and w.dtype == np.float32
    np.testing.assert_array_equal(w, projection_matrix(1024, 128, 0).numpy())
    bank = b.memory_bank()
    assert mb["coverage_radius"] == pytest.approx(selection_radius(project(bank, w)), rel=1e-6)
    thr = b.manifest["threshold"]
    assert thr["method"] == "holdout-quantile" and len(thr["calibration_scores"]) == thr["n_images"] == 6
    assert np.quantile(thr["calibration_scores"], thr["quantile"]) == pytest.approx(thr["value"])


def test_a_bundle_without_the_projection_is_refused_with_exit_3(tmp_path, parts):
    old = tmp_path / "old"
    shutil.copytree(parts["bundle"], old)
    m = json.loads((old / "manifest.json").read_text())
    for k in ("projection_file", "coverage_radius"):
        m["memory_bank"].pop(k)
    m["threshold"].pop("calibration_scores")
    (old / bundle_io.PROJECTION_FILE).unlink()
    finalize_manifest(old, m, [f for f in m["files"] if f != bundle_io.PROJECTION_FILE])
    with pytest.raises(BundleError, match="memory_bank.projection_file, memory_bank.coverage_radius, "
                                          "threshold.calibration_scores.*refit or re-export"):
        requirements(read_bundle(old))
    from runtime.cli.app import app

    teach = parts["root"] / "copper" / "teach"
    r = CliRunner().invoke(app, ["update", str(old), "--good", str(teach), "--out", str(tmp_path / "new"),
                                 "--device", "cpu"])
    assert r.exit_code == 3, r.output
    assert "refit or re-export" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "new").exists()


# ============================================================================ Done means (1)
def test_update_teaches_a_new_colour_without_losing_defects(tmp_path, parts):
    """The copper parts are all "ng" for the steel bundle; after teaching 8 of them, at most 1 of
    10 others is flagged, the steel test set ranks as before (image AUROC within 0.005) and no file
    of the original bundle changed. The new patches are covered as well as the fit covered its own:
    more rows than the coreset ratio of them would give (the earlier default)."""
    bundle, root = parts["bundle"], parts["root"]
    before_files = _file_digests(bundle)
    held_out = [read_image(p) for p, _ in _images(root / "copper" / "held_out")]
    test_images, labels = _test_set(root)
    p0 = Predictor(bundle, device="cpu")
    assert p0.predict(held_out).verdicts.all()  # the new colour is flagged everywhere
    auroc0 = image_auroc(labels, p0.predict(test_images).image_scores)

    result = update_bundle(bundle, _images(root / "copper" / "teach"), p0.embed, tmp_path / "v2")
    p1 = Predictor(tmp_path / "v2", device="cpu")
    copper = p1.predict(held_out)
    assert copper.verdicts.sum() <= 1, (copper.image_scores, p1.threshold)
    steel = p1.predict(test_images)
    auroc1 = image_auroc(labels, steel.image_scores)
    assert auroc1 >= auroc0 - 0.005
    assert not steel.verdicts[labels == 0].any()  # steel good parts still pass
    assert _file_digests(bundle) == before_files  # the original is never modified

    e = result.entry
    n_patches = N_TEACH * 16 * 16
    fit_radius = p0.bundle.manifest["memory_bank"]["fit_radius"]
    assert e["patches"] == n_patches and e["budget"] is None and e["stopped"] == "covered"
    assert e["stop"] == {"rule": "fit-radius", "radius": fit_radius, "cap": None, "why": e["stop"]["why"]}
    assert e["new_patch_distance"]["max_after"] <= fit_radius < e["new_patch_distance"]["max_before"]
    assert e["rows_added"] > int(0.1 * n_patches) and e["covered"] < n_patches
    assert read_bundle(tmp_path / "v2").manifest["memory_bank"]["fit_radius"] == fit_radius  # kept
    assert e["rows"] == {"before": p0.scorer.bank.shape[0], "after": p1.scorer.bank.shape[0]}
    assert sum(i["rows"] for i in e["images"]) == e["rows_added"]
    # the new rows are copper patches, appended in selection order after the old bank
    np.testing.assert_array_equal(p1.scorer.bank[: len(p0.scorer.bank)], p0.scorer.bank)
    assert e["calibration"]["recalibrated"] and e["calibration"]["before"]["value"] == p0.threshold
    assert e["calibration"]["after"]["value"] == p1.threshold
    assert read_bundle(tmp_path / "v2").manifest["threshold"]["n_images"] == 6 + N_TEACH
    print(f"\ncopper held-out scores {np.round(copper.image_scores, 1).tolist()} threshold "
          f"{p0.threshold:.1f} -> {p1.threshold:.1f}; rows +{e['rows_added']} ({e['stopped']}); "
          f"AUROC {auroc0:.4f} -> {auroc1:.4f}")


def test_lineage_info_and_update_of_an_update(tmp_path, parts):
    bundle, root = parts["bundle"], parts["root"]
    teach = _images(root / "copper" / "teach")
    p0 = Predictor(bundle, device="cpu")
    first = update_bundle(bundle, teach[:5], p0.embed, tmp_path / "v2")
    p1 = Predictor(tmp_path / "v2", device="cpu")
    second = update_bundle(p1.bundle, teach[5:], p1.embed, tmp_path / "v3")
    lineage = read_bundle(tmp_path / "v3").lineage
    assert [e["parent"] for e in lineage] == [p0.bundle.bundle_id, p1.bundle.bundle_id]
    assert lineage[0] == first.entry and lineage[1] == second.entry
    assert [i["file"] for e in lineage for i in e["images"]] == [name for _, name in teach]
    recorded = lineage[0]["images"] + lineage[1]["images"]
    assert all(i["sha256"] == sha256_file(path) for (path, _), i in zip(teach, recorded))
    assert lineage[1]["rows"]["before"] == lineage[0]["rows"]["after"]
    assert lineage[1]["calibration"]["before"] == lineage[0]["calibration"]["after"]
    assert read_bundle(tmp_path / "v3").manifest["threshold"]["n_images"] == 6 + len(teach)
    assert read_bundle(tmp_path / "v3").name == p0.bundle.name  # the graphs' identity stays valid

    info = bundle_info(tmp_path / "v3")
    assert info["checksums_ok"] and len(info["lineage"]) == 2 and "calibration_scores" not in info["threshold"]
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(render(info))
    text = console.export_text()
    assert f"parent {p0.bundle.bundle_id}" in text and f"parent {p1.bundle.bundle_id}" in text
    assert f"+{lineage[1]['rows_added']} rows" in text


def test_an_updated_bundle_loaded_and_saved_again_keeps_its_history(tmp_path, parts):
    """What ``patchcore export --reuse`` does to an updated bundle: load it in PyTorch, write it again."""
    p0 = Predictor(parts["bundle"], device="cpu")
    update_bundle(parts["bundle"], _images(parts["root"] / "copper" / "teach")[:3], p0.embed, tmp_path / "v2")
    old = read_bundle(tmp_path / "v2")
    model = PatchCore.load(tmp_path / "v2", device="cpu")
    model.fit_info["calibration"] = {k: v for k, v in old.manifest["threshold"].items() if k not in ("value", "scale")}
    export_bundle(model, tmp_path / "again", fp16=False)
    new = read_bundle(tmp_path / "again")
    assert new.lineage == old.lineage and len(new.lineage) == 1
    for key in ("rows", "coverage_radius", "fit_radius", "projection_dim", "n_starts"):
        assert new.manifest["memory_bank"][key] == old.manifest["memory_bank"][key], key
    assert new.manifest["threshold"] == old.manifest["threshold"]
    assert np.array_equal(np.load(tmp_path / "again" / bundle_io.PROJECTION_FILE),
                          np.load(tmp_path / "v2" / bundle_io.PROJECTION_FILE))
    # a fresh fit of the loaded model's config starts a new history
    refit = PatchCore(model.config).fit(sorted((parts["root"] / "train" / "good").glob("*.png"))[:6])
    assert refit.lineage == [] and "lineage" not in refit.manifest("x")


def test_the_fit_records_its_greedy_radius_and_a_reload_reads_it_back(tmp_path, parts):
    """memory_bank.fit_radius: the largest distance of a training patch to the bank, in the
    projection the greedy ran in (= where update's continuation measures), when the fit's
    selection stopped."""
    model = parts["model"]
    train = sorted((parts["root"] / "train" / "good").glob("*.png"))[:6]  # under 10: none held out
    small = PatchCore(model.config).fit(train)
    export_bundle(small, tmp_path / "b", fp16=False)
    b = read_bundle(tmp_path / "b")
    w = b.coreset_projection()
    patches = small.embed_images([read_image(p) for p in train]).reshape(-1, small.embed_dim)
    left = float(distances_to_bank(project(b.memory_bank(), w), project(patches, w)).max())
    radius = b.manifest["memory_bank"]["fit_radius"]
    assert radius == small.fit_radius == pytest.approx(left, rel=1e-3)
    assert radius <= b.manifest["memory_bank"]["coverage_radius"] * 1.0001  # the last row's distance, or less
    assert PatchCore.load(tmp_path / "b", device="cpu").fit_radius == radius
    # the manifest check knows the field: a negative radius is a bad bundle
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    m["memory_bank"]["fit_radius"] = -1.0
    with pytest.raises(BundleError, match="memory_bank.fit_radius"):
        finalize_manifest(tmp_path / "b", {k: v for k, v in m.items() if k != bundle_io.DIGEST_FIELD}, list(m["files"]))


def test_rows_added_follow_the_distance_of_the_new_patches_and_add_caps_them(tmp_path, parts):
    """At the default, parts like the fitted ones add few rows, a new colour many; --add caps
    the count (and says so in the lineage), the radius still stops a smaller selection."""
    from runtime.cli.app import app

    p0 = Predictor(parts["bundle"], device="cpu")
    radius = p0.bundle.manifest["memory_bank"]["fit_radius"]
    near = update_bundle(p0.bundle, _images(parts["root"] / "test" / "good")[:N_TEACH], p0.embed, tmp_path / "near")
    far = update_bundle(p0.bundle, _images(parts["root"] / "copper" / "teach"), p0.embed, tmp_path / "far")
    print(f"\nrows added at the fit radius {radius:.2f}: steel {near.entry['rows_added']}, "
          f"copper {far.entry['rows_added']} (of {far.entry['patches']} patches each)")
    assert near.entry["stopped"] == far.entry["stopped"] == "covered"
    # measured: 64 and 347 rows of 2,048 patches (the 10% bank's ratio would give 204 to either)
    assert near.entry["rows_added"] < 0.05 * near.entry["patches"]
    assert far.entry["rows_added"] > 4 * max(1, near.entry["rows_added"])
    r = CliRunner().invoke(app, ["update", str(parts["bundle"]), "--good", str(parts["root"] / "copper" / "teach"),
                                 "--out", str(tmp_path / "capped"), "--add", "50", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    capped = json.loads(r.stdout.strip().splitlines()[-1])
    assert capped["rows_added"] == 50 and capped["stopped"] == "budget"
    # capped far short of the radius, the new parts stay far from the bank: the threshold rise warns
    assert [w.split(" by ")[0] for w in capped["warnings"]] == ["the threshold rose"]
    assert capped["stop"]["rule"] == "fit-radius" and capped["stop"]["cap"] == 50
    assert "at most 50 rows (--add)" in capped["stop"]["why"]
    assert read_bundle(tmp_path / "capped").memory_bank().shape[0] == len(p0.scorer.bank) + 50
    # the first 50 rows the cap kept are the uncapped selection's first 50
    np.testing.assert_array_equal(read_bundle(tmp_path / "capped").memory_bank()[-50:],
                                  far.bundle.memory_bank()[len(p0.scorer.bank):][:50])


def test_a_bundle_without_the_fit_radius_updates_with_the_row_budget_and_says_why(tmp_path, parts):
    """A bundle exported before the fit radius was recorded: the coreset ratio of the new patches
    as before, the reason in the lineage, a warning on stderr and in --json."""
    from runtime.cli.app import app

    old = tmp_path / "old"
    shutil.copytree(parts["bundle"], old)
    m = json.loads((old / "manifest.json").read_text())
    m["memory_bank"].pop("fit_radius")
    finalize_manifest(old, {k: v for k, v in m.items() if k != bundle_io.DIGEST_FIELD}, list(m["files"]))
    r = CliRunner().invoke(app, ["update", str(old), "--good", str(parts["root"] / "copper" / "teach"),
                                 "--out", str(tmp_path / "new"), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    budget = int(0.1 * N_TEACH * 16 * 16)
    entry = read_bundle(tmp_path / "new").lineage[-1]
    assert entry["budget"] == budget and summary["rows_added"] == budget and summary["stopped"] == "budget"
    assert entry["stop"]["rule"] == "row-budget" and entry["stop"]["radius"] == m["memory_bank"]["coverage_radius"]
    assert "records no fit radius" in entry["stop"]["why"] and "Re-export" in entry["stop"]["why"]
    assert summary["warnings"][0] == entry["stop"]["why"]
    assert "records no fit radius" in " ".join(r.stderr.split())
    assert "fit_radius" not in read_bundle(tmp_path / "new").manifest["memory_bank"]


def test_a_bundle_fitted_with_its_own_projection_loads_with_it(tmp_path, parts):
    cfg = dataclasses.replace(parts["model"].config, projection_dim=32, n_starts=3)
    model = PatchCore(cfg).fit(sorted((parts["root"] / "train" / "good").glob("*.png"))[:6])
    export_bundle(model, tmp_path / "b", fp16=False)
    loaded = PatchCore.load(tmp_path / "b", device="cpu")
    assert (loaded.config.projection_dim, loaded.config.n_starts) == (32, 3)
    assert np.array_equal(loaded.coreset_projection(), np.load(tmp_path / "b" / bundle_io.PROJECTION_FILE))


def test_update_refuses_an_existing_out_and_the_bundle_itself(tmp_path, parts):
    p = Predictor(parts["bundle"], device="cpu")
    teach = _images(parts["root"] / "copper" / "teach")[:1]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    for out in (tmp_path / "taken", parts["bundle"], parts["bundle"] / "v2"):
        with pytest.raises(UsageError, match="give a new folder"):
            update_bundle(parts["bundle"], teach, p.embed, out)
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


def test_scores_graphs_holding_the_old_bank_are_left_out(tmp_path, parts):
    """A ``scores_*`` graph carries the bank inside it: the updated bundle drops it and says so."""
    src = tmp_path / "with-scores"
    shutil.copytree(parts["bundle"], src)
    m = read_bundle(src).manifest
    shutil.copy(src / "features_fp32.onnx", src / "scores_fp32.onnx")  # stands in for a real scores graph
    m["graphs"]["scores_fp32"] = {**m["graphs"]["features_fp32"], "file": "scores_fp32.onnx", "kind": "scores"}
    m = {k: v for k, v in m.items() if k != bundle_io.DIGEST_FIELD}
    finalize_manifest(src, m, [*m["files"], "scores_fp32.onnx"])
    p = Predictor(src, device="cpu")
    res = update_bundle(src, _images(parts["root"] / "copper" / "teach")[:2], p.embed, tmp_path / "new")
    assert res.entry["graphs_dropped"] == ["scores_fp32"]
    new = read_bundle(tmp_path / "new")
    assert "scores_fp32" not in new.manifest["graphs"] and not (tmp_path / "new" / "scores_fp32.onnx").exists()
    assert sorted(new.manifest["files"]) == ["coreset_projection.npy", "features_fp32.onnx", "memory_bank.npy"]


# ============================================================================ Done means (3)
def test_torch_and_runtime_updates_choose_the_same_rows(tmp_path, parts):
    """``patchcore update`` (PyTorch features) and ``patchcore-rt update`` (ONNX features) on the
    same bundle and images: the same rows in the same order, equal to float32 precision."""
    from patchcore.cli import app as fit_app
    from runtime.cli.app import app as rt_app

    teach = str(parts["root"] / "copper" / "teach")
    args = [str(parts["bundle"]), "--good", teach, "--device", "cpu", "--json"]
    r_rt = CliRunner().invoke(rt_app, ["update", *args, "--out", str(tmp_path / "rt")])
    assert r_rt.exit_code == 0, r_rt.output
    r_pt = CliRunner().invoke(fit_app, ["update", *args, "--out", str(tmp_path / "pt")])
    assert r_pt.exit_code == 0, r_pt.output
    s_rt, s_pt = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (r_rt, r_pt))
    assert s_rt["rows_added"] == s_pt["rows_added"] > 0
    rt, pt = read_bundle(tmp_path / "rt"), read_bundle(tmp_path / "pt")
    assert [i["rows"] for i in rt.lineage[0]["images"]] == [i["rows"] for i in pt.lineage[0]["images"]]
    np.testing.assert_allclose(rt.memory_bank(), pt.memory_bank(), rtol=1e-4, atol=1e-4)
    assert rt.manifest["threshold"]["value"] == pytest.approx(pt.manifest["threshold"]["value"], rel=1e-4)
    assert rt.lineage[0]["tool"] == "patchcore-rt update" and pt.lineage[0]["tool"] == "patchcore update"
    # a variant that a few per cent more threshold covers is no cause for a warning
    assert s_rt["warnings"] == s_pt["warnings"] == [] and "warning" not in r_rt.stderr + r_pt.stderr


@pytest.mark.parametrize(("calibration", "expect"), [
    ({"recalibrated": True, "before": {"value": 10.0}, "after": {"value": 12.6}}, (10.0, 12.6)),
    ({"recalibrated": True, "before": {"value": 10.0}, "after": {"value": 12.5}}, None),
    ({"recalibrated": True, "before": {"value": 10.0}, "after": {"value": 4.0}}, None),
    ({"recalibrated": False, "before": {"value": 10.0}, "after": {"value": 50.0}}, None),  # kept (F1, fixed)
    ({"recalibrated": True, "before": {"value": None}, "after": {"value": 50.0}}, None),
])
def test_threshold_rise_is_reported_above_a_quarter(calibration, expect):
    assert threshold_rise({"calibration": calibration}) == expect


def test_teaching_parts_far_from_the_bank_warns_that_the_threshold_rose(tmp_path, parts):
    """Noise taught as "good" (what teaching defective parts looks like) doubles the threshold:
    both update commands say so on stderr and in their JSON, and still write the bundle."""
    from patchcore.cli import app as fit_app
    from runtime.cli.app import app as rt_app

    rng = np.random.default_rng(5)
    for i in range(6):
        _write(tmp_path / "noise" / f"{i}.png", rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    args = [str(parts["bundle"]), "--good", str(tmp_path / "noise"), "--device", "cpu", "--json"]
    for app, out in ((rt_app, "rt"), (fit_app, "pt")):
        r = CliRunner().invoke(app, ["update", *args, "--out", str(tmp_path / out)])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        before, after = summary["threshold"]["before"], summary["threshold"]["after"]
        assert after > 1.25 * before
        assert len(summary["warnings"]) == 1 and f"rose by {after / before - 1:.0%}" in summary["warnings"][0]
        assert "warning: the threshold rose by" in " ".join(r.stderr.split())
        assert read_bundle(tmp_path / out).manifest["threshold"]["value"] == after


# ============================================================================ Done means (2)
def covering_radius(points: np.ndarray, bank: np.ndarray) -> float:
    """max over points of the Euclidean distance to the nearest bank row (exact search)."""
    return float(distances_to_bank(bank, points).max())


@pytest.fixture(scope="module")
def patch_sets(parts):
    """A: the steel training parts' patch embeddings; B: the copper parts to teach (PyTorch)."""
    model, root = parts["model"], parts["root"]
    a = model.embed_images([read_image(f) for f in sorted((root / "train/good").glob("*.png"))])
    b = model.embed_images([read_image(p) for p, _ in _images(root / "copper" / "teach")])
    return a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])


@pytest.mark.parametrize("budget, tolerance", [("ratio", (1.08, 1.12)), ("radius", (1.05, 1.02))])
def test_update_covers_old_and_new_like_a_fresh_fit_of_the_same_size(patch_sets, budget, tolerance):
    """update(bank fitted on A, images B) against a fresh greedy fit on A + B with the same final
    number of rows: covering radius of A + B in the embedding space and in the projection space
    the greedy works in. With the default budget (10% of B's patches) the update's B rows are
    capped where a fresh fit would give B a few more (measured: 1.058 and 1.094 times the fresh
    fit's radius); run to the old bank's radius, it matches the fresh fit (1.042 and 1.002)."""
    a, b = patch_sets
    both = np.concatenate([a, b])
    w = projection_matrix(a.shape[1], 128, 0).numpy()
    bank_a = a[greedy_coreset(a, 0.1, seed=0, device="cpu")]
    radius = selection_radius(project(bank_a, w))
    ext = extend_coreset(project(bank_a, w), project(b, w), int(0.1 * len(b)) if budget == "ratio" else len(b), radius)
    assert ext.stopped == ("budget" if budget == "ratio" else "covered")
    updated = np.concatenate([bank_a, b[ext.selected]])
    n = len(updated)
    fresh = both[greedy_coreset(both, (n + 0.5) / len(both), seed=0, device="cpu")]
    assert len(fresh) == n
    r_upd, r_fresh = covering_radius(both, updated), covering_radius(both, fresh)
    p_upd = covering_radius(project(both, w), project(updated, w))
    p_fresh = covering_radius(project(both, w), project(fresh, w))
    print(f"\n{budget}: covering radius of A+B ({len(a)}+{len(b)} patches, {len(bank_a)}+{len(ext.selected)} rows): "
          f"update {r_upd:.2f} vs fresh fit {r_fresh:.2f} (ratio {r_upd / r_fresh:.3f}); projected {p_upd:.2f} vs "
          f"{p_fresh:.2f} (ratio {p_upd / p_fresh:.3f})")
    assert r_upd <= tolerance[0] * r_fresh
    assert p_upd <= tolerance[1] * p_fresh


# ============================================================================ the demo at the default bank
@pytest.mark.slow
def test_the_demo_taught_a_colour_variant_at_the_default_bank(tmp_path):
    """The demo's class (``patchcore synth``), the default preset (1% bank): 10 images of a colour
    variant (red and green swapped) taught; at most 1 of the 10 held-out variant images is still
    flagged and the test set's image AUROC is kept (within 0.005). benchmarks/update.py measures
    more draws and the earlier row budget beside it."""
    from patchcore.data import load_class
    from patchcore.config import preset_config
    from patchcore.synthetic import make_synthetic_class

    data = make_synthetic_class(tmp_path / "data")
    # the threshold at false-calls=1% (about the 0.99 quantile this bound was set for): the check is that
    # teaching brings the variants under the threshold, not where the default policy puts it
    model = PatchCore(preset_config("default", backbone="effnet-lite0", device="cpu",
                                    operating_point="false-calls=1%")).fit(load_class(data).train)
    assert model.config.coreset_ratio == 0.01
    export_bundle(model, tmp_path / "bundle", fp16=False)

    def green(path: Path) -> np.ndarray:
        return np.ascontiguousarray(read_image(path)[..., [1, 0, 2]])

    train = sorted((data / "train" / "good").glob("*.png"))
    for i in np.random.default_rng(0).permutation(len(train))[:10]:
        _write(tmp_path / "teach" / train[i].name, green(train[i]))
    held_out = [green(f) for f in sorted((data / "test" / "good").glob("*.png"))]
    test_images, labels = _test_set(data)
    p0 = Predictor(tmp_path / "bundle", device="cpu")
    assert p0.predict(held_out).verdicts.sum() == 10
    auroc0 = image_auroc(labels, p0.predict(test_images).image_scores)
    result = update_bundle(tmp_path / "bundle", _images(tmp_path / "teach"), p0.embed, tmp_path / "v2")
    p1 = Predictor(tmp_path / "v2", device="cpu")
    flagged = p1.predict(held_out)
    auroc1 = image_auroc(labels, p1.predict(test_images).image_scores)
    e = result.entry
    print(f"\ndemo, 1% bank: +{e['rows_added']} rows ({e['stopped']}, {e['covered']} of {e['patches']} patches "
          f"covered before); held-out variants flagged {int(flagged.verdicts.sum())} of 10; threshold "
          f"{p0.threshold:.1f} -> {p1.threshold:.1f}; AUROC {auroc0:.4f} -> {auroc1:.4f}")
    assert e["stop"]["rule"] == "fit-radius" and e["stopped"] == "covered"
    assert flagged.verdicts.sum() <= 1, (flagged.image_scores, p1.threshold)
    assert auroc1 >= auroc0 - 0.005
