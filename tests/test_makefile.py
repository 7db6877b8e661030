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
