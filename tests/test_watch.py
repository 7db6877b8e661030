"""``patchcore-rt watch``: complete files only, exactly once across SIGKILL and restart, moves that
never overwrite, error records for bad files, clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.errors import UsageError
from runtime.line.journal import Journal, Key
from runtime.line.outputs import move_new, write_new
from runtime.line.watch import RESULTS, Settler, Watcher, WatchOptions, _Lock, scan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def class_pngs(rt_bundle) -> list[bytes]:
    """PNG bytes of the synthetic class's test images (good and defective), 128 px."""
    files = sorted((rt_bundle.parent / "data" / "brick" / "test").rglob("*.png"))
    assert len(files) == 25
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="module")
def predictor(rt_bundle):
    from runtime.predictor import Predictor

    return Predictor(rt_bundle, device="cpu")


def _variants(pngs: list[bytes], n: int) -> list[bytes]:
    """``n`` distinct PNGs: flips and small brightness shifts of the test images."""
    out = []
    for i in range(n):
        img = cv2.imdecode(np.frombuffer(pngs[i % len(pngs)], np.uint8), cv2.IMREAD_COLOR)
        k = i // len(pngs)
        if k & 1:
            img = img[:, ::-1]
        if k & 2:
            img = img[::-1]
        img = np.clip(img.astype(np.int16) + (k // 4) * 3, 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".png", np.ascontiguousarray(img))[1].tobytes())
    assert len(set(out)) == n
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _start_watch(folder: Path, bundle: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runtime", "watch", str(folder), "--bundle", str(bundle), "--out", str(out),
           "--device", "cpu", *extra]
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=f)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited early ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text() if log else ''}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}\n{log.read_text() if log else ''}")
        time.sleep(0.02)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ============================================================================ the big one
def test_watch_200_files_exactly_once_across_sigkill_and_restart(tmp_path, rt_bundle, class_pngs):
    stage, inc, out, log = tmp_path / "stage", tmp_path / "incoming", tmp_path / "out", tmp_path / "watch.log"
    for d in (stage, inc):
        d.mkdir()
    valid = _variants(class_pngs, 195)

    # drops: (name in incoming, stage name, content, kind); mtimes are set to unique known values
    drops: list[dict] = []

    def add(name: str, content: bytes, kind: str, stage_name: str | None = None) -> None:
        stage_name = stage_name or name.replace("/", "__")
        (stage / stage_name).write_bytes(content)
        drops.append({"name": name, "stage": stage_name, "data": content, "kind": kind,
                      "mtime_ns": 1_600_000_000_000_000_000 + len(drops) * 1_000_000})

    normal = valid[:185]
    for i, content in enumerate(normal):
        add(f"line{i % 3}/img_{i:03d}.png" if i % 10 == 9 else f"img_{i:03d}.png", content, "normal")
    good_png = valid[0]
    add("bad_truncated.png", good_png[: len(good_png) // 3], "corrupt")
    add("bad_header.png", good_png[:40], "corrupt")
    add("bad_random.png", np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "corrupt")
    add("bad_text.jpg", b"this is not an image\n" * 20, "corrupt")
    add("bad_empty.png", b"", "corrupt")
    for k in range(5):
        add(f"slow_{k}.png", valid[185 + k], "slow")
    # collisions: 3 names that already exist in out/ok, out/ng and out/error ...
    for k in range(3):
        add(f"collide_{k}.png", valid[190 + k], "collide-preexisting")
        for v in ("ok", "ng", "error"):
            (out / v).mkdir(parents=True, exist_ok=True)
            (out / v / f"collide_{k}.png").write_bytes(b"pre-existing file, must survive " + bytes([k]))
    # ... and 2 files dropped again under the same name after the first one was moved away
    for k, orig in enumerate(("img_000.png", "img_001.png")):
        add(orig, normal[k], "redrop", stage_name=f"redrop_{k}.png")
    assert len(drops) == 200

    # expected verdicts: predict on the staged copies, before anything moves
    r = subprocess.run([sys.executable, "-m", "runtime", "predict", str(rt_bundle), str(stage), "--device", "cpu",
                        "--batch-size", "16"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = {Path(rec["file"]).name: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert len(expected) == 200
    assert sum(rec["verdict"] == "error" for rec in expected.values()) == 5
    assert {rec["verdict"] for rec in expected.values()} >= {"ok", "ng"}  # both verdicts are exercised

    def drop_file(d: dict, chunks: int = 1, pause: float = 0.0, temp_name: str | None = None) -> None:
        dst = inc / d["name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        target = dst.with_name(temp_name) if temp_name else dst
        data = d["data"]
        with open(target, "wb") as f:
            step = max(1, len(data) // chunks)
            for s in range(0, len(data), step):
                f.write(data[s : s + step])
                f.flush()
                if pause:
                    time.sleep(pause)
        os.utime(target, ns=(d["mtime_ns"], d["mtime_ns"]))
        if temp_name:
            os.rename(target, dst)

    errors: list[BaseException] = []

    def guarded(fn, *a) -> None:
        try:
            fn(*a)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def dropper() -> None:
        (inc / ".hidden.png").write_bytes(valid[0])  # never read: dot-file
        (inc / "upload.png.tmp").write_bytes(valid[1])  # never read: temporary name
        slow = [d for d in drops if d["kind"] == "slow"]
        rest = [d for d in drops if d["kind"] in ("normal", "corrupt", "collide-preexisting")]
        for d in rest[:100]:
            drop_file(d)
            time.sleep(0.004)
        # once the watcher is up and busy: files written in chunks with pauses shorter than
        # --settle, and one under a temporary name with pauses longer than --settle
        _wait(lambda: len(_lines(out / RESULTS)) >= 8, 120, "the watcher to start")
        threads = [threading.Thread(target=guarded, args=(drop_file, d, 5, 0.15)) for d in slow[:2]]
        threads.append(threading.Thread(target=guarded, args=(drop_file, slow[2], 3, 0.45, slow[2]["name"] + ".part")))
        for t in threads:
            t.start()
        for d in rest[100:]:
            drop_file(d)
            time.sleep(0.015)
        for t in threads:
            t.join()
        for d in (d for d in drops if d["kind"] == "redrop"):
            _wait(lambda: not (inc / d["name"]).exists(), 120, f"{d['name']} to be moved before dropping it again")
            drop_file(d)
        # and the same again while the (restarted) watcher is idle, polling every 50 ms
        _wait(lambda: not [p for p in inc.rglob("*.png") if not p.name.startswith(".")], 120, "an idle watcher")
        drop_file(slow[3], 6, 0.2)
        drop_file(slow[4], 3, 0.45, slow[4]["name"] + ".part")

    args = ("--move", "--poll", "0.05", "--settle", "0.3", "--batch-size", "8")
    t0 = time.monotonic()
    first = _start_watch(inc, rt_bundle, out, log, *args)
    feeder = threading.Thread(target=guarded, args=(dropper,))
    feeder.start()
    results = out / RESULTS
    _wait(lambda: len(_lines(results)) >= 60, 120, "60 records before the kill", first, log)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    n_before_restart = len(_lines(results))
    assert first.returncode == -signal.SIGKILL
    assert n_before_restart < 200

    time.sleep(0.3)
    second = _start_watch(inc, rt_bundle, out, log, *args)
    try:
        feeder.join(180)
        assert not errors, errors
        remaining = lambda: [p for p in inc.rglob("*") if p.is_file() and p.name not in (".hidden.png", "upload.png.tmp")]
        _wait(lambda: not remaining() and len(_lines(results)) >= 200, 120, "all 200 files", second, log)
        time.sleep(0.5)  # a duplicate, if there were one, would have time to appear
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
    elapsed = time.monotonic() - t0
    print(f"killed after {n_before_restart} records; {elapsed:.1f} s; log:\n{log.read_text()[-1500:]}")

    lines = _lines(results)
    assert all(line.endswith(b"\n") for line in lines)
    records = [json.loads(line) for line in lines]
    assert len(records) == 200, f"{len(records)} records (killed after {n_before_restart})"
    keys = [(r["file"], r["mtime_ns"]) for r in records]
    assert len(set(keys)) == 200  # no duplicates
    assert set(keys) == {(d["name"], d["mtime_ns"]) for d in drops}  # one per dropped file
    by_key = {(r["file"], r["mtime_ns"]): r for r in records}

    assert sum(r["verdict"] == "error" for r in records) == 5
    for d in drops:
        rec = by_key[(d["name"], d["mtime_ns"])]
        exp = expected[d["stage"]]
        assert rec["verdict"] == exp["verdict"], (d["name"], rec, exp)
        assert rec["size"] == len(d["data"])
        if exp["verdict"] == "error":
            assert d["kind"] == "corrupt" and "error" in rec and rec["score"] is None
        else:
            assert rec["score"] == pytest.approx(exp["score"], rel=1e-4)
            assert rec["normalised"] == pytest.approx(exp["normalised"], rel=1e-4, abs=1e-6)
        assert set(rec) >= {"file", "score", "normalised", "verdict", "latency_ms", "bundle", "time"}
        assert rec["bundle"].startswith("bundle@")
        # moved after the record, to the verdict's folder, content intact, nothing overwritten
        moved = out / rec["moved_to"]
        assert rec["moved_to"].split("/")[0] == rec["verdict"]
        assert _sha(moved.read_bytes()) == _sha(d["data"]), d["name"]
        if d["kind"] in ("collide-preexisting", "redrop"):
            assert moved.name.endswith("-1.png"), rec["moved_to"]
        if "/" in d["name"]:
            assert rec["moved_to"] == f"{rec['verdict']}/{d['name']}"  # sub-folders are kept
    for k in range(3):
        for v in ("ok", "ng", "error"):
            assert (out / v / f"collide_{k}.png").read_bytes() == b"pre-existing file, must survive " + bytes([k])
    moved_files = [p for v in ("ok", "ng", "error") for p in (out / v).rglob("*") if p.is_file()]
    assert len(moved_files) == 200 + 9
    assert sorted(p.name for p in inc.rglob("*") if p.is_file()) == [".hidden.png", "upload.png.tmp"]
    assert not any(".part" in r["file"] or r["file"].startswith(".") for r in records)
    assert elapsed < 240


def test_restart_without_move_skips_every_recorded_file(tmp_path, rt_bundle, class_pngs):
    """Without --move every scored file is still there after the kill: the journal alone must
    keep the restarted watcher from scoring any of them again."""
    inc, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "log"
    inc.mkdir()
    for i, content in enumerate(_variants(class_pngs, 60)):
        (inc / f"{i:02d}.png").write_bytes(content)
    args = ("--settle", "0", "--poll", "0.05", "--batch-size", "4")
    first = _start_watch(inc, rt_bundle, out, log, *args)
    try:
        _wait(lambda: len(_lines(out / RESULTS)) >= 12, 120, "12 records", first, log)
    finally:
        first.kill()
        first.wait(10)
    n_killed = len(_lines(out / RESULTS))
    assert n_killed < 60
    second = _start_watch(inc, rt_bundle, out, log, *args, "--once")
    assert second.wait(120) == 0, log.read_text()
    records = [json.loads(line) for line in _lines(out / RESULTS)]
    assert len(records) == 60 and len({r["file"] for r in records}) == 60
    assert f"{n_killed} were already recorded" in log.read_text()


# ============================================================================ clean stop
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_batch_and_exits_0(tmp_path, rt_bundle, class_pngs, sig):
    inc, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "log"
    inc.mkdir()
    for i, content in enumerate(_variants(class_pngs, 48)):
        (inc / f"{i:02d}.png").write_bytes(content)
    proc = _start_watch(inc, rt_bundle, out, log, "--move", "--settle", "0", "--poll", "0.05", "--batch-size", "8")
    try:
        _wait(lambda: len(_lines(out / RESULTS)) >= 1, 120, "the first record", proc, log)
        proc.send_signal(sig)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = _lines(out / RESULTS)
    assert all(line.endswith(b"\n") for line in lines)  # no torn line
    records = [json.loads(line) for line in lines]
    # all 48 were ready at once, so they went in batches of 8: the batch under way was finished
    assert 0 < len(records) < 48 and len(records) % 8 == 0, len(records)
    # every recorded file was moved, no unrecorded file was
    assert all((out / r["moved_to"]).is_file() for r in records)
    assert len(list(inc.glob("*.png"))) == 48 - len(records)
    assert "finishing the current batch" in log.read_text()


# ============================================================================ in-process pieces
def _watch_once(predictor, inc: Path, out: Path, **kw) -> Watcher:
    opts = WatchOptions(inc, out, settle=0, poll=0.02, once=True, **kw)
    w = Watcher(predictor, opts)
    w.run()
    return w


def test_journal_cuts_a_torn_tail_and_dedupes(tmp_path):
    path = tmp_path / RESULTS
    good = [{"file": f"{i}.png", "size": 10 + i, "mtime_ns": 5, "verdict": "ok"} for i in range(3)]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good) + b'{"file": "3.png", "si')
    with Journal(path) as j:
        assert j.torn_bytes == len(b'{"file": "3.png", "si')
        assert len(j) == 3 and Key("1.png", 11, 5) in j and Key("3.png", 13, 5) not in j
        j.append([{"file": "3.png", "size": 13, "mtime_ns": 5, "verdict": "ng"}])
        with pytest.raises(ValueError):
            j.append([{"file": "x.png"}])  # a record without its key is refused
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4 and all(line.endswith(b"\n") for line in lines)
    assert [json.loads(line)["file"] for line in lines] == ["0.png", "1.png", "2.png", "3.png"]
    with Journal(path) as j:
        assert j.torn_bytes == 0 and len(j) == 4


def test_restart_finishes_an_interrupted_move_without_rescoring(tmp_path, predictor, class_pngs):
    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    (inc / "a.png").write_bytes(class_pngs[0])
    (inc / "b.png").write_bytes(class_pngs[1])
    st_a, st_b = (inc / "a.png").stat(), (inc / "b.png").stat()
    # a previous run recorded both and was killed before moving them; for b.png it had already
    # linked the target but not removed the source
    (out / "ok").mkdir(parents=True)
    os.link(inc / "b.png", out / "ok" / "b.png")
    recs = [{"file": "a.png", "size": st_a.st_size, "mtime_ns": st_a.st_mtime_ns, "verdict": "ng", "moved_to": "ng/a.png"},
            {"file": "b.png", "size": st_b.st_size, "mtime_ns": st_b.st_mtime_ns, "verdict": "ok", "moved_to": "ok/b.png"}]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in recs))
    w = _watch_once(predictor, inc, out, move=True)
    assert w.summary.scored == 0 and w.summary.moves_completed == 2
    assert (out / "ng" / "a.png").read_bytes() == class_pngs[0]
    assert (out / "ok" / "b.png").read_bytes() == class_pngs[1]
    assert list(inc.iterdir()) == []
    assert len(_lines(out / RESULTS)) == 2


def test_recorded_name_with_other_content_at_the_target_is_left_alone(tmp_path, predictor, class_pngs):
    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    (inc / "a.png").write_bytes(class_pngs[0])
    st = (inc / "a.png").stat()
    (out / "ok").mkdir(parents=True)
    (out / "ok" / "a.png").write_bytes(b"something else")
    (out / RESULTS).write_text(json.dumps({"file": "a.png", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                           "verdict": "ok", "moved_to": "ok/a.png"}) + "\n")
    w = _watch_once(predictor, inc, out, move=True)
    assert w.summary.scored == 0 and w.summary.moves_completed == 0
    assert (inc / "a.png").read_bytes() == class_pngs[0]
    assert (out / "ok" / "a.png").read_bytes() == b"something else"


def test_a_file_replaced_under_the_same_name_is_scored_again(tmp_path, predictor, class_pngs):
    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    (inc / "a.png").write_bytes(class_pngs[0])
    assert _watch_once(predictor, inc, out).summary.scored == 1
    assert _watch_once(predictor, inc, out).summary.scored == 0  # same file: already recorded
    (inc / "a.png").write_bytes(class_pngs[12])
    assert _watch_once(predictor, inc, out).summary.scored == 1
    recs = [json.loads(line) for line in _lines(out / RESULTS)]
    assert [r["file"] for r in recs] == ["a.png", "a.png"] and recs[0]["size"] != recs[1]["size"]


def test_overlays_and_error_records_in_process(tmp_path, predictor, class_pngs):
    inc, out = tmp_path / "in", tmp_path / "out"
    (inc / "sub").mkdir(parents=True)
    (inc / "sub" / "a.png").write_bytes(class_pngs[0])
    (inc / "b.png").write_bytes(class_pngs[20])
    (inc / "tiny.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    (inc / "notes.txt").write_text("not an image")
    w = _watch_once(predictor, inc, out, overlays=True)
    recs = {r["file"]: r for r in map(json.loads, _lines(out / RESULTS))}
    assert set(recs) == {"sub/a.png", "b.png", "tiny.png", "notes.txt"}
    assert recs["tiny.png"]["verdict"] in ("ok", "ng")  # upscaled by the bundle's resize, like any image
    assert recs["notes.txt"]["verdict"] == "error" and "cannot decode" in recs["notes.txt"]["error"]
    assert recs["sub/a.png"]["overlay"] == "overlays/sub/a.png"
    ov = cv2.imread(str(out / recs["b.png"]["overlay"]))
    assert ov.shape == (128, 128, 3)
    assert w.summary.counts["error"] == 1 and w.summary.scored == 4


def test_no_existing_ignores_files_present_at_start(tmp_path, predictor, class_pngs):
    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    (inc / "old.png").write_bytes(class_pngs[0])
    stop = threading.Event()
    w = Watcher(predictor, WatchOptions(inc, out, existing=False, settle=0.05, poll=0.02), stop=stop)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        time.sleep(0.3)
        (inc / "new.png").write_bytes(class_pngs[1])
        _wait(lambda: len(_lines(out / RESULTS)) >= 1, 60, "the new file's record")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(30)
    assert [json.loads(line)["file"] for line in _lines(out / RESULTS)] == ["new.png"]


def test_settler_waits_for_size_and_mtime_to_be_stable():
    now = [0.0]
    s = Settler(1.0, clock=lambda: now[0])
    assert s.update({"a": (1, 1)}) == []
    now[0] = 0.6
    assert s.update({"a": (2, 2)}) == []  # grew: the clock restarts
    now[0] = 1.5
    assert s.update({"a": (2, 2)}) == []
    now[0] = 1.6
    assert s.update({"a": (2, 2)}) == ["a"]
    assert s.update({}) == [] and s.state == {}  # gone files are forgotten


def test_scan_skips_temporary_names_dot_folders_and_the_output(tmp_path):
    for rel in ("a.png", "sub/b.jpg", "c.png.part", "d.tmp", "e.crdownload", ".f.png", ".cache/g.png",
                "_patchcore/ok/h.png", "x.png~"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = scan(tmp_path, Path(os.path.realpath(tmp_path / "_patchcore")))
    assert sorted(found) == ["a.png", "sub/b.jpg"]
    assert sorted(scan(tmp_path, None, recursive=False)) == ["a.png"]


def test_moves_and_new_files_never_overwrite(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "x.png").write_bytes(b"first")
    (tmp_path / "ok" / "x-1.png").write_bytes(b"second")
    src = tmp_path / "x.png"
    src.write_bytes(b"third")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    dst = move_new(src, tmp_path / "ok" / "x.png")
    assert dst.name == "x-2.png" and dst.read_bytes() == b"third" and not src.exists()
    assert dst.stat().st_mtime_ns == 1_000_000_000  # mtime kept
    assert (tmp_path / "ok" / "x.png").read_bytes() == b"first"
    assert (tmp_path / "ok" / "x-1.png").read_bytes() == b"second"
    assert write_new(tmp_path / "ok" / "x.png", b"fourth").name == "x-3.png"
    assert not [p for p in (tmp_path / "ok").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_second_watcher_on_the_same_output_is_refused(tmp_path):
    with _Lock(tmp_path, True, "is writing results here"):
        with pytest.raises(UsageError, match="another patchcore-rt watch is writing results here"):
            with _Lock(tmp_path, True, "is writing results here"):
                pass
    with _Lock(tmp_path, True, "x"):  # released again
        pass


def test_watchers_that_only_read_share_a_folder_but_a_mover_is_alone(tmp_path):
    with _Lock(tmp_path, False, "moves files"), _Lock(tmp_path, False, "moves files"):
        with pytest.raises(UsageError, match="another patchcore-rt watch moves files"):
            with _Lock(tmp_path, True, "moves files"):
                pass
