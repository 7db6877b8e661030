"""``patchcore-rt score`` without Ray: a folder tree or a file list into JSON lines or Parquet,
records equal to ``predict``'s, and resuming after a kill without duplicates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.cli.app import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(rt_bundle, tmp_path_factory) -> Path:
    """The runtime bundle's test images in a two-level folder tree, plus one broken file."""
    src = rt_bundle.parent / "data" / "brick" / "test"
    root = tmp_path_factory.mktemp("archive") / "line-3"
    for i, p in enumerate(sorted(src.rglob("*.png"))):
        day = root / f"day{i % 2}" / p.parent.name
        day.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, day / p.name)
    (root / "day0" / "broken.png").write_bytes(b"not a png")
    return root


def _score(*args: str):
    r = CliRunner().invoke(app, ["score", *args])
    summary = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
    return r, summary


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_a_tree_like_predict_and_a_rerun_does_nothing(tmp_path, rt_bundle, archive):
    out = tmp_path / "results.jsonl"
    r, summary = _score(str(rt_bundle), str(archive), "--out", str(out), "--batch-size", "4")
    assert r.exit_code == 0, r.output
    n = len(list(archive.rglob("*.png")))
    assert summary == {"out": str(out), "total": n, "already_done": 0, "scored": n, "errors": 1}
    recs = _jsonl(out)
    assert sorted(x["file"] for x in recs) == sorted(str(p) for p in archive.rglob("*.png"))
    by_file = {x["file"]: x for x in recs}
    assert by_file[str(archive / "day0" / "broken.png")]["verdict"] == "error"
    pred = CliRunner().invoke(app, ["predict", str(rt_bundle), str(archive), "--recursive"])
    for line in pred.stdout.splitlines():
        p = json.loads(line)
        assert by_file[p["file"]]["verdict"] == p["verdict"]
        if p["score"] is not None:
            assert by_file[p["file"]]["score"] == pytest.approx(p["score"], rel=1e-6)
    r, summary = _score(str(rt_bundle), str(archive), "--out", str(out))
    assert r.exit_code == 0 and summary["scored"] == 0 and summary["already_done"] == n
    assert len(_jsonl(out)) == n


def test_file_list_parquet_and_a_changed_file_is_scored_again(tmp_path, rt_bundle, archive):
    pa = pytest.importorskip("pyarrow.parquet", reason="Parquet output needs pyarrow (the scale extra)")
    files = sorted(archive.rglob("*.png"))[:5]
    listing = tmp_path / "list.txt"
    listing.write_text("# five files\n" + "\n".join(str(p) for p in files) + "\n\n")
    out = tmp_path / "results.parquet"
    r, summary = _score(str(rt_bundle), "--list", str(listing), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert summary["scored"] == 5
    table = pa.read_table(out).to_pylist()
    assert sorted(t["file"] for t in table) == sorted(map(str, files))
    assert [p.name for p in out.iterdir()] == [p.name for p in out.glob("part-*.parquet")]
    os.utime(files[0], ns=(time.time_ns(), time.time_ns()))  # same name, new mtime: a new file
    r, summary = _score(str(rt_bundle), "--list", str(listing), "--out", str(out))
    assert summary["scored"] == 1 and summary["already_done"] == 4
    assert len(pa.read_table(out)) == 6


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, rt_bundle, archive):
    r, _ = _score(str(rt_bundle), str(archive), "--out", str(tmp_path / "results.csv"))
    assert r.exit_code == 2 and ".jsonl file or a .parquet folder" in r.output
    listing = tmp_path / "list.txt"
    listing.write_text(str(tmp_path / "gone.png") + "\n")
    r, _ = _score(str(rt_bundle), "--list", str(listing), "--out", str(tmp_path / "r.jsonl"))
    assert r.exit_code == 2 and "1 listed file(s) not found" in r.output
    r, _ = _score(str(rt_bundle), "--out", str(tmp_path / "r.jsonl"))
    assert r.exit_code == 2 and "nothing to score" in r.output


def test_results_of_another_bundle_are_not_mixed_in(tmp_path, rt_bundle, archive):
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps({"file": "x.png", "size": 1, "mtime_ns": 1, "bundle": "other@123"}) + "\n")
    r, _ = _score(str(rt_bundle), str(archive), "--out", str(out))
    assert r.exit_code == 2 and "holds results of bundle other@123" in r.output


def test_strict_exits_8_when_an_input_failed(tmp_path, rt_bundle, archive):
    r, summary = _score(str(rt_bundle), str(archive / "day0"), "--out", str(tmp_path / "r.jsonl"), "--strict")
    assert r.exit_code == 8 and summary["errors"] == 1


def test_resumes_after_a_kill_without_duplicates(tmp_path, rt_bundle, archive):
    """SIGKILL the command once a few batches are saved (a torn last line is possible), run it
    again: every image has exactly one record, with the score of an uninterrupted run."""
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "runtime", "score", str(rt_bundle), str(archive), "--out", str(out),
            "--batch-size", "1", "--threads", "1"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the first run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = out.read_bytes().count(b"\n")
    n = len(list(archive.rglob("*.png")))
    assert 3 <= done_before < n
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["already_done"] == done_before and summary["scored"] == n - done_before
    recs = _jsonl(out)
    files = [x["file"] for x in recs]
    assert len(files) == len(set(files)) == n
    clean = tmp_path / "clean.jsonl"
    assert CliRunner().invoke(app, ["score", str(rt_bundle), str(archive), "--out", str(clean)]).exit_code == 0
    ref = {x["file"]: x["score"] for x in _jsonl(clean)}
    got = {x["file"]: x["score"] for x in recs}
    assert got.keys() == ref.keys()
    for f, s in ref.items():
        assert (s is None and got[f] is None) or np.isclose(got[f], s, rtol=1e-5), f
