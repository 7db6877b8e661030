"""Writes the section "Bare machine" of BENCHMARKS.md from a run of ``scripts/bare_machine.sh``
(its ``timings.txt``): the machine, the commit, what was hidden, and each step's time and result.

    python3 scripts/bare_machine_report.py /tmp/patchcore-bare
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import replace_section  # noqa: E402  (standard library only)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"


def main(dest: Path) -> None:
    timings = [line for line in (dest / "timings.txt").read_text().splitlines() if line.strip()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=dest / "clone", capture_output=True,
                            text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Bare machine: `make demo` and `make test` with nothing but python3, git and make",
        "",
        f"- Command: `scripts/bare_machine.sh` then `python3 scripts/bare_machine_report.py DEST` "
        f"(written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit})",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}; "
        f"load average when written {load} (the machine was shared: times are upper bounds)",
        "- What was hidden: `pkg-config` (a failing stub first on the PATH), source builds (`PIP_ONLY_BINARY=:all:`), "
        "PyGObject (not installed, so no Aravis typelib is reachable); a clean `git clone` of the checkout. pip took "
        "torch from the machine's local wheel cache, not from the network.",
        "",
        *[f"- {line}" for line in timings],
    ]
    replace_section(REPO / "BENCHMARKS.md", "bare-machine", "\n".join(lines))
    print(f"wrote BENCHMARKS.md section bare-machine ({len(timings)} figures)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/patchcore-bare"))
