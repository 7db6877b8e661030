"""Shared fixtures: the real MVTec AD data beside the checkout (read-only, never copied in)."""

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
    from patchcore.model import PatchCore, PatchCoreConfig
    from patchcore.synthetic import make_synthetic_class

    data = make_synthetic_class(root / "data", n_train=30, n_test_good=10, n_test_defect=5, size=128)
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.05, resize=128, crop=128, holdout=0.2)
    export_bundle(PatchCore(cfg).fit(load_class(data).train), bundle)
    return bundle


@pytest.fixture(scope="session")
def rt_bundle(tmp_path_factory) -> Path:
    """The runtime tests' bundle, built once per session; its data lies in ``rt_bundle.parent / "data"``."""
    return _build_runtime_bundle(tmp_path_factory.getbasetemp() / "rt-shared")
