"""The runtime installs and runs without torch and without Ray: every runtime module and every CLI
command is run in a fresh interpreter where importing torch (or patchcore/export), Ray or the
Parquet/DataFrame libraries that only the ``scale`` extra brings raises, and none of them may
appear in sys.modules; pyproject's runtime dependencies name none of them. ``score --ray`` there
is a usage error that says how to install Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "open_clip", "timm", "patchcore", "export", "ray", "pyarrow", "pandas")


# Runs in the child: a meta path finder refusing the blocked packages, then the given code.
_PRELUDE = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
ATTEMPTS = []
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ImportError(f"{{name}} is blocked: the runtime must not import it")
        return None
sys.meta_path.insert(0, _Refuse())
"""

_RUN_CLI = """
import runpy, json
def cli(*args):
    sys.argv = ["patchcore-rt", *args]
    try:
        runpy.run_module("runtime", run_name="__main__", alter_sys=False)
    except SystemExit as e:
        return e.code or 0
    return 0
"""


def _child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(_PRELUDE + _RUN_CLI + textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=180, env=env)


def test_blocker_really_blocks(tmp_path):
    """The harness must be able to fail: importing torch in the child raises."""
    r = _child("""
        try:
            import torch
        except ImportError as e:
            print("BLOCKED", e)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "BLOCKED torch is blocked" in r.stdout


def test_every_runtime_module_imports_without_torch(tmp_path):
    r = _child("""
        import importlib, pkgutil
        import runtime
        names = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")
                       if not m.name.endswith("__main__"))
        for n in names:
            importlib.import_module(n)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({"modules": names, "leaked": leaked, "attempts": ATTEMPTS}))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["leaked"] == []
    assert out["attempts"] == []  # not even a guarded ``try: import torch``
    for needed in ("cli.app", "line.watch", "line.journal", "line.camera", "line.bench", "line.outputs",
                   "line.reload", "predictor", "engines", "search", "errors", "update", "coreset_update",
                   "line.score", "line.score_ray", "line.ray_cluster", "threshold", "cli.threshold",
                   "operating_point", "cli.flags", "line.run_options"):
        assert f"runtime.{needed}" in out["modules"]


def test_every_command_runs_without_torch(tmp_path, rt_bundle):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    for i in range(3):
        cv2.imwrite(str(img_dir / f"{i}.png"), rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
        cv2.imwrite(str(good_dir / f"{i}.png"), rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    (img_dir / "broken.png").write_bytes(b"not a png")
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
    for i in range(3):
        w.write(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    w.release()
    b, d, new = str(rt_bundle), str(img_dir), str(tmp_path / "updated")
    r = _child(f"""
        codes = {{
            "help": cli("--help"),
            "watch-help": cli("watch", "--help"),
            "info": cli("info", {b!r}),
            "predict": cli("predict", {b!r}, {d!r}),
            "watch": cli("watch", {d!r}, "--bundle", {b!r}, "--once", "--settle", "0", "--poll", "0.05"),
            "camera": cli("camera", {str(video)!r}, "--bundle", {b!r}, "--out", {str(tmp_path / "cam")!r}),
            "bench": cli("bench", {b!r}, "--batch-sizes", "1", "--repeat", "1", "--warmup", "0"),
            "update": cli("update", {b!r}, "--good", {str(good_dir)!r}, "--out", {new!r}, "--device", "cpu"),
            "info-updated": cli("info", {new!r}, "--json"),
            "threshold": cli("threshold", {b!r}, "--good", {str(good_dir)!r}, "--device", "cpu"),
            "threshold-set": cli("threshold", {b!r}, "--set", "false-calls=5%", "--out", {str(tmp_path / "moved")!r}),
            "score": cli("score", {b!r}, {d!r}, "--out", {str(tmp_path / "score.jsonl")!r}),
        }}
        ray_code = cli("score", {b!r}, {d!r}, "--out", {str(tmp_path / "ray.jsonl")!r}, "--ray")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({{"codes": codes, "ray_code": ray_code, "leaked": leaked, "attempts": ATTEMPTS,
                          "ort": "onnxruntime" in sys.modules}}))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["codes"] == {k: 0 for k in out["codes"]}, r.stderr
    assert out["leaked"] == [] and out["attempts"] == ["ray"]  # only score --ray tried, and said so
    assert out["ray_code"] == 2 and "--ray needs Ray, which is not installed here" in r.stderr
    assert out["ort"]  # the commands really ran the model
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"file"')]
    assert sum(rec["verdict"] == "error" for rec in records) == 2  # broken.png: once by predict, once by watch
    assert sum(rec["score"] is not None for rec in records) == 6
    info = json.loads(next(line for line in r.stdout.splitlines() if line.startswith('{"path"')))
    assert len(info["lineage"]) == 1 and len(info["lineage"][0]["images"]) == 3  # update ran, torch-free
    scored = [json.loads(line) for line in (tmp_path / "score.jsonl").read_text().splitlines()]
    assert sorted(rec["verdict"] == "error" for rec in scored) == [False, False, False, True]


def test_pyproject_runtime_dependencies_exclude_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [dep.split(";")[0].strip().lower() for dep in project["dependencies"]]
    heavy = [n for n in names if any(n.startswith(p) for p in ("torch", "torchvision", "open_clip", "timm", "tensorrt",
                                                               "ray", "pyarrow", "pandas"))]
    assert heavy == [], f"runtime dependencies must not pull the training stack: {heavy}"
    assert any(n.startswith("onnxruntime") for n in names)
    assert project["scripts"]["patchcore-rt"] == "runtime.cli.app:main"
    assert any(dep.startswith("ray[data]") for dep in project["optional-dependencies"]["scale"])
