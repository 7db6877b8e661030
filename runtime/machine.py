"""What this machine is: the CPU's model name and feature flags, and the installed version of a
package. The one reader of ``/proc/cpuinfo`` in the runtime: the choices measured at load key their
caches by the CPU (:mod:`runtime.measure`), and the int8 search reads the flags."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path


def _cpuinfo() -> str | None:
    """``/proc/cpuinfo``'s text; None where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    names = [row.split(":", 1)[1].strip() for row in (_cpuinfo() or "").splitlines() if row.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (``flags`` rows of ``/proc/cpuinfo``); None where they cannot be read."""
    text = _cpuinfo()
    if text is None:
        return None
    return {flag for row in text.splitlines() if row.startswith("flags") for flag in row.split(":", 1)[1].split()}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "x86", "i686")


def package_version(package: str) -> str | None:
    """The installed version of ``package``; None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
