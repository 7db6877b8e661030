"""Hot reload: watch and camera switch bundles without a restart when the bundle folder is replaced
(a symlink flipped, a folder renamed into place) or on SIGHUP; a bad bundle is refused with a
warning and the old one stays in use; every record names the bundle that scored it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.line.camera import CameraOptions, CameraRunner
from runtime.line.reload import BundleSource, reload_on_sighup
from runtime.line.watch import RESULTS
from runtime.predictor import Predictor
from runtime.update import update_bundle

REPO = Path(__file__).resolve().parents[1]


def _open(path: Path) -> Predictor:
    return Predictor(path, device="cpu")


@pytest.fixture(scope="module")
def bundles(rt_bundle, tmp_path_factory) -> dict[str, Path]:
    """v1 (the runtime tests' bundle), v2 (v1 taught three colour-swapped images: another bank,
    another id) and bad (v2 with its memory bank corrupted, same size)."""
    root = tmp_path_factory.mktemp("bundles")
    swapped = root / "swapped"
    swapped.mkdir()
    for f in sorted((rt_bundle.parent / "data" / "brick" / "train" / "good").glob("*.png"))[:3]:
        cv2.imwrite(str(swapped / f.name), cv2.imread(str(f))[..., ::-1])
    v2 = root / "v2"
    update_bundle(rt_bundle, [(p, p.name) for p in sorted(swapped.glob("*.png"))], _open(rt_bundle).embed, v2)
    bad = root / "bad"
    shutil.copytree(v2, bad)
    bank = bytearray((bad / "memory_bank.npy").read_bytes())
    bank[-64:] = bytes(64)
    (bad / "memory_bank.npy").write_bytes(bytes(bank))
    return {"v1": rt_bundle, "v2": v2, "bad": bad}


def _point(link: Path, target: Path) -> None:
    """Flip the symlink ``link`` to ``target`` atomically (a new link renamed over the old)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _ids(bundles) -> dict[str, str]:
    return {k: _open(v).bundle.bundle_id for k, v in bundles.items() if k != "bad"}


def test_bundle_source_follows_a_flipped_symlink_and_refuses_a_bad_bundle(tmp_path, bundles):
    ids = _ids(bundles)
    link = tmp_path / "current"
    _point(link, bundles["v1"])
    log: list[str] = []
    src = BundleSource(link, _open, log=log.append)
    assert src.current().bundle.bundle_id == ids["v1"] and src.reloads == 0  # nothing changed: no reload
    _point(link, bundles["bad"])
    assert src.current().bundle.bundle_id == ids["v1"]  # refused: the old one stays
    assert src.refused == 1 and any("refused" in line and "memory_bank.npy" in line for line in log)
    assert src.current().bundle.bundle_id == ids["v1"] and src.refused == 1  # not retried until it changes
    _point(link, bundles["v2"])
    assert src.current().bundle.bundle_id == ids["v2"] and src.reloads == 1
    assert log[-1] == f"bundle reloaded: {ids['v1']} -> {ids['v2']}"
    link.unlink()  # between two renames: carry on with what is loaded, warn once
    assert src.current().bundle.bundle_id == ids["v2"] and src.current().bundle.bundle_id == ids["v2"]
    assert sum("missing" in line for line in log) == 1


def test_bundle_source_follows_a_folder_renamed_into_place_and_sighup(tmp_path, bundles):
    ids = _ids(bundles)
    live = tmp_path / "line"
    shutil.copytree(bundles["v1"], live)
    log: list[str] = []
    src = BundleSource(live, _open, log=log.append)
    shutil.copytree(bundles["v2"], tmp_path / ".line.new")
    os.rename(live, tmp_path / "line.old")
    os.rename(tmp_path / ".line.new", live)
    assert src.current().bundle.bundle_id == ids["v2"] and src.reloads == 1
    before = signal.getsignal(signal.SIGHUP)  # SIG_DFL, or SIG_IGN under nohup
    with reload_on_sighup(src):
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
    assert src.current().bundle.bundle_id == ids["v2"] and src.reloads == 2  # reopened on request
    assert any(line.startswith("SIGHUP") for line in log)
    assert signal.getsignal(signal.SIGHUP) == before  # handler restored


def test_bundle_source_refuses_a_bundle_without_threshold_where_verdicts_are_needed(tmp_path, bundles):
    from runtime.bundle import DIGEST_FIELD, finalize_manifest, read_bundle

    nothr = tmp_path / "nothr"
    shutil.copytree(bundles["v2"], nothr)
    m = {k: v for k, v in read_bundle(nothr).manifest.items() if k != DIGEST_FIELD}
    m["threshold"] = {"value": None, "scale": None}
    finalize_manifest(nothr, m, list(m["files"]))
    link = tmp_path / "current"
    _point(link, bundles["v1"])
    log: list[str] = []
    src = BundleSource(link, _open, require_threshold=True, log=log.append)
    _point(link, nothr)
    assert src.current().bundle.bundle_id == _ids(bundles)["v1"] and src.refused == 1
    assert "no threshold" in log[-1]


# ------------------------------------------------------------------------------ the watcher, live
def _pngs(rt_bundle: Path, n: int) -> list[bytes]:
    """``n`` distinct PNGs: the class's test images, flipped and shifted in brightness."""
    files = sorted((rt_bundle.parent / "data" / "brick" / "test").rglob("*.png"))
    out = []
    for i in range(n):
        img = cv2.imread(str(files[i % len(files)]))
        k = i // len(files)
        img = np.clip(img[:, ::-1] if k & 1 else img, 0, 255).astype(np.int16) + 3 * (k // 2)
        out.append(cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))[1].tobytes())
    assert len(set(out)) == n
    return out


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.02)


def _records(out: Path) -> list[dict]:
    path = out / RESULTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_watch_switches_bundles_between_batches_without_losing_or_repeating_a_file(tmp_path, bundles):
    """A stream of files across a refused (corrupt) bundle, a symlink flip to a good one and a
    SIGHUP: every file gets exactly one record, scored by the bundle that was live for it."""
    ids = _ids(bundles)
    models, inc, out, log = tmp_path / "models", tmp_path / "incoming", tmp_path / "out", tmp_path / "watch.log"
    models.mkdir()
    inc.mkdir()
    link = models / "current"
    _point(link, bundles["v1"])
    pngs = _pngs(bundles["v1"], 44)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "runtime", "watch", str(inc), "--bundle", str(link), "--out", str(out),
           "--device", "cpu", "--poll", "0.05", "--settle", "0.2", "--batch-size", "4"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=f)
    expected: dict[str, str] = {}

    def drop(names: range, bundle: str) -> None:
        for i in names:
            (inc / f"part_{i:03d}.png").write_bytes(pngs[i])
            expected[f"part_{i:03d}.png"] = ids[bundle]
            time.sleep(0.01)

    try:
        _wait(lambda: "watching" in log.read_text(), 120, "the watcher to start", proc, log)
        drop(range(0, 6), "v1")
        _point(link, bundles["bad"])  # while files arrive: refused, v1 stays
        drop(range(6, 20), "v1")
        _wait(lambda: "refused" in log.read_text(), 60, "the corrupt bundle to be refused", proc, log)
        _wait(lambda: len(_records(out)) == 20, 120, "20 records", proc, log)
        _point(link, bundles["v2"])  # every file dropped from now on is scored by v2
        drop(range(20, 34), "v2")
        _wait(lambda: len(_records(out)) == 34, 120, "34 records", proc, log)
        proc.send_signal(signal.SIGHUP)  # reopen v2 on request
        _wait(lambda: "SIGHUP" in log.read_text(), 60, "the SIGHUP reload", proc, log)
        drop(range(34, 44), "v2")
        _wait(lambda: len(_records(out)) == 44, 120, "44 records", proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    records = _records(out)
    assert sorted(r["file"] for r in records) == sorted(expected)  # each file exactly once
    assert {r["file"]: r["bundle"] for r in records} == expected
    text = log.read_text()
    assert text.count("warning: new bundle") == 1 and text.count("bundle reloaded:") == 2
    assert "bundle reloaded 2 time(s), 1 refused" in text, text


# ------------------------------------------------------------------------------ the camera
def test_camera_switches_bundles_between_batches(tmp_path, bundles):
    ids = _ids(bundles)
    video = tmp_path / "line.avi"
    files = sorted((bundles["v1"].parent / "data" / "brick" / "test" / "good").glob("*.png"))
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
    for i in range(20):
        w.write(cv2.imread(str(files[i % len(files)])))
    w.release()
    link = tmp_path / "current"
    _point(link, bundles["v1"])
    src = BundleSource(link, _open, require_threshold=True, log=lambda s: None)
    records: list[dict] = []

    def emit(rec: dict) -> None:
        records.append(rec)
        if rec["frame"] == 9:  # mid-batch (frames 8-11): the flip takes effect from frame 12
            _point(link, bundles["v2"])

    runner = CameraRunner(src.predictor, CameraOptions(str(video), tmp_path / "anomalies", batch=4), emit=emit,
                          source=src)
    runner.run()
    assert [r["frame"] for r in records] == list(range(20))
    assert [r["bundle"] for r in records] == [ids["v1"]] * 12 + [ids["v2"]] * 8
