"""The Makefile's fit targets pass on only what the user set, so the preset's own values hold."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def _dry_run(*args: str) -> str:
    r = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return next(line for line in r.stdout.splitlines() if " -m patchcore " in line)


@pytest.mark.parametrize("target", ["export", "eval"])
def test_no_bank_ratio_or_weights_unless_set(target):
    line = _dry_run(target, "BACKBONE=wrn50", "DATA=somewhere")
    assert "--coreset" not in line and "--weights" not in line and "--preset" not in line
    assert "--backbone wrn50" in line


@pytest.mark.parametrize("target", ["export", "eval"])
def test_what_the_user_sets_is_passed_on(target):
    line = _dry_run(target, "CORESET=0.1", "WEIGHTS=random", "PRESET=paper")
    assert "--coreset 0.1" in line and "--weights random" in line and "--preset paper" in line


def _recipe(*args: str) -> str:
    r = subprocess.run(["make", "-n", "-B", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_install_takes_only_extras_that_come_as_wheels():
    """A bare machine (python3, git, make): `make install` must not build PyGObject (genicam)."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from check_bare_install import NEEDS_SYSTEM, make_install_extras

    extras = make_install_extras()
    assert {"fit", "test", "line", "serve"} <= set(extras) and not set(extras) & set(NEEDS_SYSTEM)
    assert "genicam" not in _recipe("install")
    assert "pip install --quiet -e '.[genicam]'" in _recipe("install-genicam")


def test_check_bare_install_names_an_sdist_and_a_system_extra():
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from check_bare_install import problems

    def item(name: str, url: str) -> dict:
        return {"metadata": {"name": name, "version": "1.0"}, "download_info": {"url": url}}

    report = [item("patchcore-rt", "file:///repo"), item("numpy", "https://x/numpy-2.0-cp311-manylinux.whl"),
              item("pygobject", "https://x/pygobject-3.50.0.tar.gz")]
    found = problems(["fit", "genicam"], report)
    assert len(found) == 2
    assert "genicam extra, which needs system packages" in found[0] and "make install-genicam" in found[0]
    assert found[1].startswith("pygobject 1.0 would be built from source")
    assert problems(["fit"], report[:2]) == []
