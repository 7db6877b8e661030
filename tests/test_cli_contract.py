"""One contract for the three command lines: ``patchcore``, ``python -m export`` and
``patchcore-rt`` give the same bad input the same exit code from the one table in
``runtime.errors``, print that table in their help, take ``-h`` and ``--version``, and accept
the old option spellings for one release with a warning.

Each CLI runs in a subprocess (real exit codes, real streams). Inputs a command line does not
take are not forced on it: ``patchcore-rt`` has no backbone option, and a corrupt image given
to ``patchcore-rt predict`` is an error record by design (exit 0, or 8 with ``--strict``), so
the runtime's corrupt-image case is ``bench --images`` (which must decode every image).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import __version__, errors

REPO = Path(__file__).resolve().parents[1]
CLIS = {"patchcore": ["-m", "patchcore"], "export": ["-m", "export"], "patchcore-rt": ["-m", "runtime"]}


def _run(cli: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHCORE_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *CLIS[cli], *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(rt_bundle) -> Path:
    return rt_bundle.parent / "data" / "brick"


@pytest.fixture(scope="module")
def corrupt_data(tmp_path_factory, data) -> Path:
    """The small class with one training image replaced by bytes that are not an image."""
    import shutil

    root = tmp_path_factory.mktemp("corrupt") / "brick"
    shutil.copytree(data, root)
    first = sorted((root / "train" / "good").iterdir())[0]
    first.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="module")
def bad_bundle(tmp_path_factory, rt_bundle) -> Path:
    """A copy of the runtime bundle whose memory bank was truncated."""
    import shutil

    root = tmp_path_factory.mktemp("bad") / "bundle"
    shutil.copytree(rt_bundle, root)
    bank = root / "memory_bank.npy"
    bank.write_bytes(bank.read_bytes()[:-100])
    return root


def test_missing_folder_is_exit_2_everywhere(tmp_path, rt_bundle):
    missing = str(tmp_path / "nope")
    runs = {
        "patchcore": _run("patchcore", "fit", "--data", missing, "--out", str(tmp_path / "m")),
        "export": _run("export", "export", "--data", missing, "--out", str(tmp_path / "e")),
        "patchcore-rt": _run("patchcore-rt", "predict", str(rt_bundle), missing),
    }
    for cli, r in runs.items():
        assert r.returncode == errors.USAGE, (cli, r.stderr)
        assert "nope" in _one_error_line(r), cli


def test_corrupt_image_is_exit_2_everywhere(tmp_path, corrupt_data, rt_bundle):
    bad_dir = tmp_path / "imgs"
    bad_dir.mkdir()
    (bad_dir / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    args = ["--data", str(corrupt_data), "--coreset", "0.05", "--resize", "128", "--crop", "128", "--device", "cpu"]
    runs = {
        "patchcore": _run("patchcore", "fit", *args, "--out", str(tmp_path / "m")),
        "export": _run("export", "export", *args, "--out", str(tmp_path / "e"), "--no-fp16"),
        "patchcore-rt": _run("patchcore-rt", "bench", str(rt_bundle), "--images", str(bad_dir), "--device", "cpu",
                             "--batch-sizes", "1", "--repeat", "1", "--warmup", "0"),
    }
    for cli, r in runs.items():
        assert r.returncode == errors.USAGE, (cli, r.stderr)
        assert "cannot decode" in _one_error_line(r), cli


def test_bad_bundle_is_exit_3_everywhere(tmp_path, bad_bundle, data):
    img = next((data / "test" / "good").iterdir())
    runs = {
        "patchcore": _run("patchcore", "eval", "--data", str(data), "--bundle", str(bad_bundle), "--out",
                          str(tmp_path / "r")),
        "export": _run("export", "parity", str(bad_bundle), str(data), "--engines", "ort-cpu"),
        "patchcore-rt": _run("patchcore-rt", "predict", str(bad_bundle), str(img)),
    }
    for cli, r in runs.items():
        assert r.returncode == errors.BAD_BUNDLE, (cli, r.stderr)
        assert "memory_bank.npy" in _one_error_line(r), cli


def test_unknown_backbone_is_exit_2_where_a_backbone_is_taken(tmp_path, data):
    for cli, cmd in (("patchcore", "fit"), ("export", "export")):
        r = _run(cli, cmd, "--data", str(data), "--backbone", "wrn5O", "--out", str(tmp_path / cli))
        assert r.returncode == errors.USAGE, (cli, r.stderr)
        line = _one_error_line(r)
        assert "unknown backbone 'wrn5O'" in line and "did you mean" in line, cli


def test_unavailable_device_is_exit_4_everywhere(tmp_path, data, rt_bundle):
    img = next((data / "test" / "good").iterdir())
    args = ["--data", str(data), "--device", "cuda", "--coreset", "0.05"]
    runs = {
        "patchcore": _run("patchcore", "fit", *args, "--out", str(tmp_path / "m")),
        "export": _run("export", "export", *args, "--out", str(tmp_path / "e")),
        "patchcore-rt": _run("patchcore-rt", "predict", str(rt_bundle), str(img), "--device", "cuda"),
    }
    for cli, r in runs.items():
        assert r.returncode == errors.DEVICE, (cli, r.stderr)
        assert "cuda" in _one_error_line(r).lower(), cli


def test_bad_option_value_is_exit_2_not_a_traceback(tmp_path, data):
    """A ValueError raised by the library for a value it cannot take is bad input in every CLI."""
    runs = {
        "patchcore": _run("patchcore", "fit", "--data", str(data), "--coreset", "1.5", "--out", str(tmp_path / "m")),
        "export": _run("export", "export", "--data", str(data), "--bank-dtype", "int8", "--out", str(tmp_path / "e")),
        "patchcore-rt": _run("patchcore-rt", "watch", str(tmp_path), "--poll", "0", "--bundle", str(tmp_path)),
    }
    for cli, r in runs.items():
        assert r.returncode == errors.USAGE, (cli, r.stderr)
        _one_error_line(r)


def test_an_output_folder_that_cannot_be_written_is_exit_9_before_any_work(tmp_path, data, rt_bundle):
    """A file where the output folder (or one of its parents) should be: one line, exit 9, from
    every command that writes a folder, before it fits or downloads anything."""
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    fit = ["--data", str(data), "--weights", "random"]
    runs = {
        "fit": _run("patchcore", "fit", *fit, "--out", str(blocker)),
        "eval": _run("patchcore", "eval", *fit, "--out", str(blocker / "results")),
        "export": _run("export", "export", *fit, "--out", str(blocker)),
        "synth": _run("patchcore", "synth", "--dest", str(blocker)),
        "download": _run("patchcore", "download", "bottle", "--dest", str(blocker / "mvtec")),
        "watch": _run("patchcore-rt", "watch", str(data), "--out", str(blocker), "--once", "--bundle", str(rt_bundle)),
        "update": _run("patchcore-rt", "update", str(rt_bundle), "--good", str(data / "train" / "good"),
                       "--out", str(blocker / "v2")),
        "threshold": _run("patchcore-rt", "threshold", str(rt_bundle), "--set", "false-calls=5%",
                          "--out", str(blocker / "v2")),
    }
    for command, r in runs.items():
        assert r.returncode == errors.OUTPUT, (command, r.stderr)
        assert str(blocker) in _one_error_line(r), command
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_version_and_exit_table(cli):
    for flag in ("-h", "--help"):
        r = _run(cli, flag)
        assert r.returncode == 0
        text = " ".join(r.stdout.split())
        assert errors.exit_codes_help() in text
    r = _run(cli, "--version")
    assert r.returncode == 0 and r.stdout.split()[-1] == __version__


def test_every_code_means_one_thing_and_readme_names_each():
    codes = [c.code for c in errors.EXIT_CODES]
    assert len(codes) == len(set(codes))
    readme = " ".join((REPO / "README.md").read_text().split())
    for c in errors.EXIT_CODES:
        assert f"{c.code} {c.label}" in readme, c
    # no other exit-code list left in the command lines' sources
    for src in [*REPO.glob("runtime/**/*.py"), *REPO.glob("patchcore/*.py"), *REPO.glob("export/*.py")]:
        if src.name == "errors.py":
            continue
        assert not re.search(r"\bEXIT_[A-Z]+\s*=\s*\d", src.read_text()), src


def test_deprecated_spellings_still_work_with_a_warning(tmp_path, rt_bundle, data):
    img = next((data / "test" / "good").iterdir())
    r = _run("patchcore-rt", "predict", str(rt_bundle), str(img), "-b", "2", "-d", "cpu")
    assert r.returncode == 0, r.stderr
    assert "-b is deprecated" in r.stderr and "--batch-size" in r.stderr
    assert "-d is deprecated" in r.stderr and "--device" in r.stderr
    assert r.stdout.count("\n") == 1
    r = _run("export", "bundle", "--help")
    assert r.returncode == 0 and "command bundle is deprecated: use export" in r.stderr
    assert "--bank-dtype" in r.stdout
    r = _run("patchcore", "parity", "-h")
    assert "--device" in r.stdout and "--torch-device" not in r.stdout


@pytest.mark.parametrize("args,says", [
    (["--geometry", "paper", "--input-size", "224x560"], "--geometry paper picks its own input size"),
    (["--geometry", "resize"], "--geometry resize needs --input-size"),
    (["--tile-scale", "0.5"], "--tile-scale needs --tile"),
    (["--tile", "256", "--tile-overlap", "300"], "--tile-overlap must be >= 0 and smaller than the tile"),
    (["--input-size", "224x"], "--input-size must be HEIGHTxWIDTH"),
    (["--geometry", "crop", "--input-size", "224x560", "--tile", "300"], "tile 300x300 is larger than the canvas"),
    (["--tile", "8"], "a 8x8 network input is too small for effnet-lite0"),
])
def test_impossible_geometry_options_are_one_line_and_exit_2(args, says, data):
    r = _run("patchcore", "fit", "--data", str(data), "--weights", "random", *args)
    assert r.returncode == errors.USAGE, r.stderr
    assert says in _one_error_line(r)


@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_take_the_same_geometry_options(command, data):
    r = _run("patchcore", command, "--data", str(data), "--weights", "random", "--geometry", "auto", "--tile", "64")
    assert r.returncode == errors.USAGE, r.stderr
    assert "--geometry auto cannot tile" in _one_error_line(r)
