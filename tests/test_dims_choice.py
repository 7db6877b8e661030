"""``--target-dim auto``: the export chooses the bank's dimension per product by out-of-fold evidence
(patchcore.dims_choice), records it in the manifest, and refuses bad values in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export.cli import app
from patchcore import dims_choice
from patchcore.cli import app as patchcore_app
from patchcore.config import PatchCoreConfig
from patchcore.data import load_class
from patchcore.fit_options import parse_target_dim
from patchcore.recipe.validate import Settings
from patchcore.synthetic import make_synthetic_class
from runtime.bundle import read_bundle

SMALL = ["--resize", "112", "--crop", "112"]
FEW = Settings(folds=3, max_images=12, per_cell=1, families=("stain", "scratch"), sizes=(0.02,))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_class(tmp_path_factory.mktemp("data"), "gravel", n_train=12, n_test_good=2,
                                n_test_defect=1, size=128, defects=("hole",))


def _config(**kw) -> PatchCoreConfig:
    return PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=112, crop=112, device="cpu",
                           target_dim_auto=True, **kw)


def test_choice_is_deterministic_and_records_every_size(data):
    train = load_class(data).train
    a = dims_choice.choose_target_dim(_config(), train, settings=FEW)
    b = dims_choice.choose_target_dim(_config(), train, settings=FEW)
    assert a.record == {**b.record, "seconds": a.record["seconds"]}
    assert a.dim == a.record["chosen"] in (1024, *dims_choice.CANDIDATES)
    assert set(a.record["figures"]) == {"1024", "512", "256", "128"}
    for f in a.record["figures"].values():
        assert 0.0 <= f["image_auroc"] <= 1.0 and 0.0 <= f["pixel_auroc"] <= 1.0
    assert a.record["images"] == 12 and a.record["folds"] == 3 and a.record["synthetic_defects"] == 3 * 2


@pytest.mark.parametrize("planted,chosen", [
    ({1024: (0.90, 0.95), 512: (0.90, 0.95), 256: (0.896, 0.946), 128: (0.80, 0.95)}, 256),  # 128 loses image AUROC
    ({1024: (0.90, 0.95), 512: (0.91, 0.93), 256: (0.91, 0.90), 128: (0.95, 0.80)}, 1024),  # every size loses pixels
    ({1024: (0.90, 0.95), 512: (0.80, 0.95), 256: (0.90, 0.95), 128: (0.90, 0.949)}, 128),  # smallest within wins
])
def test_the_rule_takes_the_smallest_size_within_the_tolerance(data, monkeypatch, planted, chosen):
    def figures(model, good, defects, plans, masks, synth, folds, dim, side):
        return {"image_auroc": planted[dim][0], "pixel_auroc": planted[dim][1]}

    monkeypatch.setattr(dims_choice, "_figures", figures)
    c = dims_choice.choose_target_dim(_config(), load_class(data).train, settings=FEW)
    assert c.dim == c.record["chosen"] == chosen
    assert str(chosen) in c.record["reason"] or "no smaller size" in c.record["reason"]


def test_too_few_images_keep_the_full_dimension(data):
    c = dims_choice.choose_target_dim(_config(), load_class(data).train[:5], settings=FEW)
    assert c.dim == 1024 and "needs at least 12 good training images" in c.record["reason"]


def test_export_records_the_choice_and_fits_the_chosen_size(data, tmp_path, monkeypatch):
    monkeypatch.setattr(dims_choice, "Settings", lambda **kw: FEW)  # the export's evidence, kept small here
    out = tmp_path / "auto"
    res = CliRunner().invoke(app, ["export", "--data", str(data), "--out", str(out), "--coreset", "0.1",
                                   "--no-fp16", "--target-dim", "auto", *SMALL])
    assert res.exit_code == 0, res.output
    m = read_bundle(out).manifest
    choice = m["target_dim_choice"]
    assert choice["chosen"] == m["features"]["target_dim"] == m["memory_bank"]["dim"]
    assert np.load(out / "memory_bank.npy").shape[1] == choice["chosen"]
    assert "--target-dim auto" in res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["bundle"] == str(out)


@pytest.mark.parametrize("value", ["0", "-4", "abc", "1.5", "auto128"])
def test_a_bad_target_dim_is_one_line_exit_2(data, tmp_path, value):
    res = CliRunner().invoke(app, ["export", "--data", str(data), "--out", str(tmp_path / "x"), "--target-dim", value])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()
    assert "--target-dim must be a positive integer or auto" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("args,words", [
    (["--aggregation", "local-mean"], "keeps its own"),
    (["--preset", "auto"], "--preset auto chooses --target-dim itself"),
])
def test_auto_with_a_recipe_that_sizes_itself_is_exit_2(data, tmp_path, args, words):
    res = CliRunner().invoke(app, ["export", "--data", str(data), "--out", str(tmp_path / "x"), "--target-dim",
                                   "auto", *args])
    assert res.exit_code == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["fit", "eval"])
def test_fit_and_eval_leave_auto_to_export(data, tmp_path, command):
    res = CliRunner().invoke(patchcore_app, [command, "--data", str(data), "--out", str(tmp_path / "x"),
                                             "--target-dim", "auto"])
    assert res.exit_code == 2 and "chosen by `patchcore export`" in res.stderr


def test_parse_target_dim():
    assert parse_target_dim(None) is None and parse_target_dim("auto") == "auto"
    assert parse_target_dim("256") == 256 and parse_target_dim(" 64 ") == 64
