"""Shared fixtures: the real MVTec AD data beside the checkout (read-only, never copied in), and a
guard that fails any test that writes into the checkout (tests write only under their temporary
folders, so `make test` leaves `git status` and the ignored folders models/, results/, datasets/ as
they were)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("PATCHCORE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_class(name: str) -> Path:
    """``../shared/datasets/mvtec_ad/<name>``, or skip the test with the reason."""
    path = SHARED_DATASETS / "mvtec_ad" / name
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real data not found at {path} (the shared datasets folder beside the checkout)")
    return path


# not the checkout's content: the environment, git's own folder, caches Python and pytest write
_NOT_CHECKED = {".venv", ".git", "__pycache__", ".pytest_cache"}


def _tracked() -> frozenset[str]:
    """The files git tracks: left out of the guard, so that editing a source file while the suite
    runs is not taken for a test's write (a test that rewrote one would show in `git status`)."""
    import subprocess

    try:
        r = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(r.stdout.decode(errors="replace").split("\0")) if r.returncode == 0 else frozenset()


_TRACKED = _tracked()


def _checkout_files() -> dict[str, int]:
    """Every untracked or ignored file of the checkout (but :data:`_NOT_CHECKED`) -> its mtime in
    ns: a ~2 ms walk."""
    out = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _NOT_CHECKED and not d.endswith(".egg-info")]
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, REPO)
            if rel in _TRACKED:
                continue
            try:
                out[rel] = os.stat(path).st_mtime_ns
            except FileNotFoundError:  # removed while we walked
                pass
    return out


@pytest.fixture(autouse=True)
def _no_writes_into_the_checkout(request):
    before = _checkout_files()
    yield
    after = _checkout_files()
    written = sorted(p for p, mtime in after.items() if before.get(p) != mtime)
    if written:
        pytest.fail(f"{request.node.nodeid} wrote into the checkout: {', '.join(written[:8])}"
                    f"{' ...' if len(written) > 8 else ''} (tests write only under tmp_path)", pytrace=False)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


def _build_runtime_bundle(root: Path) -> Path:
    """A small real bundle (effnet-lite0 on a synthetic texture class at 128 px)."""
    bundle = root / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from export.onnx_export import export_bundle
    from patchcore.data import load_class
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore
    from patchcore.synthetic import make_synthetic_class

    data = make_synthetic_class(root / "data", n_train=30, n_test_good=10, n_test_defect=5, size=128)
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.05, resize=128, crop=128, holdout=0.2)
    export_bundle(PatchCore(cfg).fit(load_class(data).train), bundle)
    return bundle


@pytest.fixture(scope="session")
def rt_bundle(tmp_path_factory) -> Path:
    """The runtime tests' bundle, built once per session; its data lies in ``rt_bundle.parent / "data"``."""
    return _build_runtime_bundle(tmp_path_factory.getbasetemp() / "rt-shared")
