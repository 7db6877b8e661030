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
