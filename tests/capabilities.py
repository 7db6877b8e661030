"""Capabilities that need system packages (Debian/Ubuntu), not wheels: the tests that need one skip
with a one-line reason where it is absent (a bare machine after `make install`), and fail where
``CI=true`` (`.ci/run` installs every one of them, so a skip there would hide a broken install step)."""

from __future__ import annotations

import os

import pytest

# capability -> the system packages behind it (named in each reason, and in README / docs)
PACKAGES = {
    "genicam": "make install-genicam after apt-get install gir1.2-aravis-0.8 aravis-tools libgirepository1.0-dev "
               "libcairo2-dev pkg-config gcc",
    "mosquitto": "apt-get install mosquitto",
    "postgresql": "apt-get install postgresql",
    "chromium": "apt-get install chromium",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require(capability: str, why: str | None) -> None:
    """Skip (fail under ``CI=true``) when ``why`` says what is missing; nothing when ``why`` is None."""
    if why is None:
        return
    reason = f"{capability} unavailable: {why} ({PACKAGES[capability]})"
    if in_ci():
        pytest.fail(f"CI=true and {reason}: .ci/run installs it, so this test must run", pytrace=False)
    pytest.skip(reason)
