"""A test that needs a system package skips with the reason on a bare machine, and fails under
CI=true (where .ci/run installs every such package), so CI cannot pass with those tests skipped."""

from __future__ import annotations

import pytest

from tests.capabilities import PACKAGES, require


def test_missing_capability_skips_with_what_to_install(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as e:
        require("genicam", "No module named 'gi'")
    assert str(e.value.msg).startswith("genicam unavailable: No module named 'gi'")
    assert "make install-genicam" in e.value.msg and "libcairo2-dev" in e.value.msg


def test_missing_capability_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and mosquitto unavailable"):
        require("mosquitto", "mosquitto not installed")


@pytest.mark.parametrize("capability", sorted(PACKAGES))
def test_present_capability_does_nothing(monkeypatch, capability):
    monkeypatch.setenv("CI", "true")
    assert require(capability, None) is None
