"""The GPU pack (scripts/gpu_pack.py) and its generated run.sh, on the CPU, without downloading.

Fake wheels stand in for the real ones (a real, installable wheel with a few hundred KB of
payload, and a tiny one); the pack is cut into calls of a fraction of a MiB so that the big wheel
travels in parts. The run.sh of each call then runs here exactly as on the box: it checks its
pieces, reassembles and sha256-checks the big wheel on the last call, installs with
``pip --no-deps --no-index --target`` and runs scripts/gpu_checks.py (every check skipped here).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
gpu_pack = importlib.import_module("gpu_pack")

MIB = 1 << 20


def fake_wheel(folder: Path, name: str, payload: int) -> gpu_pack.Wheel:
    """An installable pure-Python wheel ``name`` 1.0 with ``payload`` bytes of incompressible data."""
    filename = f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/__init__.py": f"VALUE = {payload}\n".encode(),
             f"{name}/blob.bin": os.urandom(payload),
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{name}-1.0.dist-info/RECORD"] = "".join(f"{k},,\n" for k in files).encode() + f"{name}-1.0.dist-info/RECORD,,\n".encode()
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / filename, "w", zipfile.ZIP_STORED) as z:
        for k, v in files.items():
            z.writestr(k, v)
    sha = hashlib.sha256((folder / filename).read_bytes()).hexdigest()
    return gpu_pack.Wheel(f"{name}==1.0", filename, sha, f"test wheel {name}")


@pytest.fixture
def wheels(tmp_path):
    cache = tmp_path / "cache"
    return cache, (fake_wheel(cache, "tinywheel", 1000), fake_wheel(cache, "bigwheel", 600_000))


@pytest.fixture
def no_download(monkeypatch):
    def refuse(wheel, cache):
        raise AssertionError(f"tried to download {wheel.requirement}")
    monkeypatch.setattr(gpu_pack, "download", refuse)


def test_plan_fills_calls_evenly_under_the_capacity():
    sizes = [22_649, 17_364_911, 255_569_273]  # the real wheels
    capacity = 60 * MIB - 700_000
    pieces = gpu_pack.plan_calls(sizes, capacity)
    calls = max(p.call for p in pieces)
    assert calls == 5  # 260 MiB over 59.3 MiB calls
    per_call = [sum(p.length for p in pieces if p.call == c) for c in range(1, calls + 1)]
    assert max(per_call) <= capacity and max(per_call) - min(per_call) <= 2
    for i, size in enumerate(sizes):  # every file covered exactly once, in order
        own = [p for p in pieces if p.wheel == i]
        assert own[0].offset == 0 and sum(p.length for p in own) == size
        assert all(a.offset + a.length == b.offset for a, b in zip(own, own[1:]))
    assert [p.call for p in pieces if p.wheel < 2] == [1, 1]  # the small wheels travel whole with call 1


def test_plan_refuses_a_tree_that_leaves_no_room():
    with pytest.raises(gpu_pack.PackError, match="working tree is too large"):
        gpu_pack.plan_calls([10], 0)


def test_pack_uses_the_cached_wheels_and_splits_the_big_one(tmp_path, wheels, no_download):
    cache, ws = wheels
    dest = tmp_path / ".gpu-pack"
    info = gpu_pack.build_pack(dest, ws, cache=cache, call_mib=0.25, tree_bytes=0, log=lambda s: None)
    assert info["calls"] == 3  # 0.6 MB in calls of 0.25 MiB
    big = info["wheels"][1]
    assert len(big["pieces"]) == 3 and big["pieces"][0]["file"].endswith(".part1of3")
    joined = b"".join((dest / p["file"]).read_bytes() for p in big["pieces"])
    assert hashlib.sha256(joined).hexdigest() == ws[1].sha256
    for k in (1, 2, 3):
        assert (dest / f"call{k}" / "run.sh").read_text() == (dest / "call1" / "run.sh").read_text()
        assert json.loads((dest / f"call{k}" / "pack.json").read_text())["calls"] == 3
        assert sum(f.stat().st_size for f in (dest / f"call{k}").iterdir()) < 0.25 * MIB + 20_000
    assert "carry `[\"" in (dest / "SEQUENCE.md").read_text()
    first = {f: f.stat().st_mtime_ns for f in dest.rglob("*.part*")}
    info2 = gpu_pack.build_pack(dest, ws, cache=cache, call_mib=0.5, tree_bytes=0, log=lambda s: None)
    assert info2["calls"] == 2 and not (dest / "call3").exists()  # a re-plan removes stale calls
    assert not any(f.exists() and f.stat().st_mtime_ns != t for f, t in first.items() if "call1" in str(f))


def test_missing_or_altered_wheels_are_clear_errors(tmp_path, wheels, no_download):
    cache, ws = wheels
    (cache / ws[0].filename).unlink()
    with pytest.raises(gpu_pack.PackError, match="missing and --no-download"):
        gpu_pack.ensure_wheels(ws, cache, allow_download=False)
    fake_wheel(cache, "tinywheel", 999)  # same name, other bytes
    with pytest.raises(gpu_pack.PackError, match="does not match the published"):
        gpu_pack.ensure_wheels(ws, cache, allow_download=False)


def test_cli_without_download_names_the_missing_wheel(tmp_path, capsys):
    assert gpu_pack.main(["--dest", str(tmp_path / "p"), "--no-download"]) == 2
    assert "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl is missing" in capsys.readouterr().err


def _run(dest: Path, call: int, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / f"out{call}"), "GPU_PACK_REPO": str(REPO)}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", str(dest / f"call{call}" / "run.sh"), "60"], capture_output=True, text=True,
                          env=env, timeout=300)


def test_run_sh_reassembles_verifies_installs_and_runs_the_checks(tmp_path, wheels, no_download):
    cache, ws = wheels
    dest = tmp_path / ".gpu-pack"
    gpu_pack.build_pack(dest, ws, cache=cache, call_mib=0.25, tree_bytes=0, log=lambda s: None)
    script = (dest / "call1" / "run.sh").read_text()
    assert "pip install --quiet --no-deps --no-index" in script and "--target" in script and "sha256sum -c" in script

    r1 = _run(dest, 1, tmp_path)
    assert r1.returncode == 0, r1.stderr
    site = dest / "box" / "site"
    assert (site / "tinywheel" / "tinywheel" / "__init__.py").is_file()
    assert not (site / "bigwheel").exists()  # its last parts come with calls 2 and 3
    report = json.loads((tmp_path / "out1" / "gpu_report.json").read_text())
    assert report["runs"][-1]["phase"] == "torch"
    assert report["checks"] and all(c["status"] == "skip" for c in report["checks"].values())

    r2 = _run(dest, 2, tmp_path)
    assert r2.returncode == 0 and "pieces of call 2 verified" in r2.stderr

    r3 = _run(dest, 3, tmp_path)
    assert r3.returncode == 0, r3.stderr
    assert "installed bigwheel-1.0-py3-none-any.whl" in r3.stderr
    check = subprocess.run([sys.executable, "-c", "import bigwheel; print(bigwheel.VALUE)"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(site / "bigwheel")})
    assert check.stdout.strip() == "600000"
    final = json.loads((tmp_path / "out3" / "gpu_report.json").read_text())
    assert [r["phase"] for r in final["runs"]] == ["torch", "all"]  # resumed from call 1's report
    assert set(final["checks"]) == set(final["order"])


def test_run_sh_reports_pieces_lost_between_calls_and_corrupt_ones(tmp_path, wheels, no_download):
    cache, ws = wheels
    dest = tmp_path / ".gpu-pack"
    gpu_pack.build_pack(dest, ws, cache=cache, call_mib=0.25, tree_bytes=0, log=lambda s: None)
    part3 = next((dest / "call3").glob("*.part3of3"))
    data = bytearray(part3.read_bytes())
    data[100] ^= 0xFF
    part3.write_bytes(bytes(data))
    r = _run(dest, 3, tmp_path)
    assert r.returncode == 3 and "missing or corrupt" in r.stderr
    part3.write_bytes(bytes(data[:100]) + bytes([data[100] ^ 0xFF]) + bytes(data[101:]))
    import shutil

    shutil.rmtree(dest / "call2")
    r = _run(dest, 3, tmp_path)
    assert r.returncode == 4
    assert "missing from earlier calls" in r.stderr and "call2/bigwheel-1.0-py3-none-any.whl.part2of3 (call 2)" in r.stderr
    assert (tmp_path / "out3" / "gpu_report.json").is_file()  # the checks still ran and reported
