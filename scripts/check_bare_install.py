"""Proves the README's `make demo` / `make test` path on a bare machine (python3 and git only),
without installing anything: run by `.ci/run` and `make check-bare-install`.

1. `make install` installs no extra that needs system packages: the extras it names (read from
   `make -n -B install`, so the Makefile is what is checked) exclude every extra of
   :data:`NEEDS_SYSTEM` (`genicam`: PyGObject builds from source against Debian/Ubuntu packages).
2. pip's resolver, with `--only-binary=:all:` (nothing may be built from source), finds a wheel for
   every package those extras pull: `pip install --dry-run --ignore-installed --report`, and every
   entry of the report but the project itself is a `.whl`.

What it does not prove: that the wheels import and run on this machine (the suite does that after
`make install`), nor that a machine without the lead's pip settings reaches the same wheels.
Exit 0 when both hold, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# extra -> the Debian/Ubuntu packages it needs (what `make install-genicam` asks for first)
NEEDS_SYSTEM = {"genicam": "gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config gcc"}


def make_install_extras() -> list[str]:
    """The extras `make install` installs, from its recipe as make would run it."""
    r = subprocess.run(["make", "--no-print-directory", "-n", "-B", "install"], cwd=REPO, capture_output=True,
                       text=True, timeout=60, check=True)
    found = re.findall(r"pip install .*-e '\.\[([^\]]*)\]'", r.stdout)
    if len(found) != 1:
        raise SystemExit(f"check_bare_install: expected one `pip install -e '.[...]'` in `make -n install`, got "
                         f"{r.stdout!r}")
    return [e.strip() for e in found[0].split(",") if e.strip()]


def resolve_wheels_only(extras: list[str], python: str = sys.executable) -> list[dict]:
    """pip's install report for the project with ``extras``, wheels only (raises on a failed resolution)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--report", str(report), f".[{','.join(extras)}]"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
            raise RuntimeError("; ".join(errors) or r.stderr.strip()[-500:])
        return json.loads(report.read_text())["install"]


def problems(extras: list[str], installs: list[dict]) -> list[str]:
    out = [f"`make install` installs the {e} extra, which needs system packages ({NEEDS_SYSTEM[e]}): move it to "
           f"`make install-{e}`" for e in extras if e in NEEDS_SYSTEM]
    for item in installs:
        name, url = item["metadata"]["name"], item["download_info"]["url"]
        if name != "patchcore-rt" and not url.endswith(".whl"):
            out.append(f"{name} {item['metadata']['version']} would be built from source ({url})")
    return out


def main() -> int:
    extras = make_install_extras()
    try:
        installs = resolve_wheels_only([e for e in extras if e not in NEEDS_SYSTEM])
    except RuntimeError as e:
        print(f"check_bare_install: pip finds no wheels-only install of .[{','.join(extras)}]: {e}", file=sys.stderr)
        return 1
    found = problems(extras, installs)
    for line in found:
        print(f"check_bare_install: {line}", file=sys.stderr)
    if not found:
        print(f"check_bare_install: ok: `make install` (.[{','.join(extras)}]) resolves to {len(installs) - 1} "
              "wheels with --only-binary=:all:, none built from source; no extra needing system packages")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
