#!/usr/bin/env python
"""Check with pip's resolver that each GPU extra of pyproject.toml resolves to one CUDA major.

    python scripts/check_gpu_extras.py [--python-version 3.12]

Needs the package index (it is not part of the test suite). For each ``gpu-cuNN`` extra, pip
resolves the extra's requirements for CPython on manylinux x86_64 (``pip install --dry-run
--ignore-installed --report``, binary wheels only) and every CUDA-bound package of the
resolution is given the CUDA major it is built for:

- ``*-cu12`` / ``*-cu13`` names (nvidia-cudnn-cu13, faiss-gpu-cu12, ...): that major;
- unsuffixed ``nvidia-*`` library wheels (nvidia-cuda-runtime, nvidia-cublas, ...): 13, since
  NVIDIA dropped the suffix with CUDA 13 (CUDA 12's are all ``-cu12``);
- ``cuda-python`` / ``cuda-bindings``: their version's major;
- ``onnxruntime-gpu``: 12 up to 1.26, 13 from 1.27 (as its wheels' requirements say).

TensorRT's metapackages are sdists whose build downloads from NVIDIA's own index, so for
``tensorrt-cuNN`` only its metadata is resolved (``--no-deps``) and its requirements must all be
``tensorrt_cuNN_*``. Exit status 0 when every extra is one major, 1 else.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def cuda_major(name: str, version: str) -> int | None:
    """The CUDA major a resolved package is built for; None for CUDA-agnostic packages."""
    name = re.sub(r"[-_.]+", "-", name.lower())
    m = re.search(r"-cu(\d+)(?:-|$)", name)
    if m:
        return int(m.group(1))
    if name.startswith("nvidia-") and name not in ("nvidia-ml-py",):
        return 13
    if name in ("cuda-python", "cuda-bindings"):
        return int(version.split(".")[0])
    if name == "onnxruntime-gpu":
        minor = int(version.split(".")[1])
        return 12 if minor <= 26 else 13
    return None


def resolve(requirements: list[str], python_version: str, no_deps: bool = False) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), "--python-version", python_version,
               "--implementation", "cp", "--target", str(Path(tmp) / "t")]
        if no_deps:
            cmd.append("--no-deps")
        else:
            cmd.append("--only-binary=:all:")
            for p in PLATFORMS:
                cmd += ["--platform", p]
        res = subprocess.run(cmd + requirements, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pip could not resolve {requirements}: {res.stderr.strip().splitlines()[-1:]}")
        data = json.loads(report.read_text())
    return [(i["metadata"]["name"], i["metadata"]["version"], i["metadata"].get("requires_dist", []))
            for i in data["install"]]


def check_extra(extra: str, requirements: list[str], python_version: str) -> bool:
    want = int(extra.rsplit("cu", 1)[1])
    trt = [r for r in requirements if r.lower().startswith("tensorrt")]
    rest = [r for r in requirements if r not in trt]
    ok = True
    print(f"[{extra}] resolving {', '.join(rest)} for CPython {python_version}")
    for name, version, _ in sorted(resolve(rest, python_version)):
        major = cuda_major(name, version)
        if major is not None:
            mark = "ok" if major == want else "WRONG MAJOR"
            ok &= major == want
            print(f"  {name} {version}: CUDA {major}  {mark}")
    for r in trt:
        for name, version, requires in resolve([r], python_version, no_deps=True):
            deps = [d.split(";")[0].strip() for d in requires if "extra ==" not in d]
            bad = [d for d in deps if not re.match(rf"tensorrt[-_]cu{want}[-_]", d.lower())]
            ok &= not bad and cuda_major(name, version) == want
            print(f"  {name} {version} (metadata only): requires {', '.join(deps)}  {'ok' if not bad else 'WRONG: ' + str(bad)}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", default="3.12")
    args = ap.parse_args(argv)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    results = {name: check_extra(name, reqs, args.python_version) for name, reqs in extras.items()
               if re.fullmatch(r"gpu-cu\d+", name)}
    for name, ok in results.items():
        print(f"{name}: {'one CUDA major' if ok else 'MIXED CUDA majors'}")
    return 0 if results and all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
