"""Industrial cameras: ``patchcore-rt camera genicam://...`` against Aravis' fake GigE Vision camera
on loopback (a real GigE Vision device double, not a mock): free-running and software-triggered
capture scoring exactly what ``predict`` scores on the same frames, the settings file applied and
read back, bad settings refused with exit 2, incomplete frames as error records, the camera killed
and restarted mid-run, throughput at the camera's frame rate. Pixel conversions are checked on
synthetic mosaics. Skipped with the reason where PyGObject/Aravis or the fake camera are absent (a failure under CI=true)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.cli.app import app
from runtime.line.sources import KINDS, SourceError, kind_for, open_source
from runtime.line.sources.genicam import id_gap
from runtime.line.sources.pixels import BAYER, to_bgr
from tests.capabilities import require
from tests.fake_gv_camera import URL, FakeGvCamera, missing

REPO = Path(__file__).resolve().parents[1]
REGION = {"x": 64, "y": 32, "width": 128, "height": 128}
FREE = {"exposure_us": 20000, "gain": 2.0, "pixel_format": "Mono8", "region": REGION, "frame_rate": 10}
SOFTWARE = {**FREE, "trigger_mode": "On", "trigger_source": "Software"}


@pytest.fixture
def fake_camera():
    require("genicam", missing())
    with FakeGvCamera() as cam:
        yield cam


def _settings(tmp_path: Path, settings: dict, name: str = "cam.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(settings))
    return path


def _run(*args: str):
    r = CliRunner().invoke(app, list(args))
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def _camera(tmp_path, bundle, settings: dict, *extra: str):
    return _run("camera", URL, "--bundle", str(bundle), "--settings", str(_settings(tmp_path, settings)),
                "--out", str(tmp_path / "out"), "--device", "cpu", *extra)


def _assert_equal_to_predict(bundle, records) -> None:
    """Every frame was anomalous (the fake camera's test pattern is nothing like the bundle's
    texture), so each was saved losslessly: predict on those files gives the same results."""
    assert all("saved" in rec for rec in records)
    r, pred = _run("predict", str(bundle), *[rec["saved"] for rec in records], "--device", "cpu", "--batch-size", "1")
    assert r.exit_code == 0, r.output
    assert len(pred) == len(records)
    for rec, p in zip(records, pred):
        assert rec["score"] == pytest.approx(p["score"], rel=1e-5)
        assert (rec["normalised"], rec["verdict"]) == (pytest.approx(p["normalised"], rel=1e-5), p["verdict"])


def _read_back(settings: dict) -> dict:
    out = {k: settings[k] for k in ("pixel_format", "region")}
    out.update({k: float(settings[k]) for k in ("exposure_us", "gain", "frame_rate")})
    return out


# ------------------------------------------------------------------------------------ the table
def test_source_table_routes_by_scheme():
    assert kind_for("genicam://127.0.0.1").key == "genicam"
    assert {kind_for(s).key for s in ("0", "line.mp4", "rtsp://cam/1", "http://x/y.mjpg")} == {"opencv"}
    assert [k.key for k in KINDS] == ["opencv", "genicam"]
    with pytest.raises(SourceError, match="--settings applies to industrial cameras"):
        open_source("0", {"gain": 1.0})


def test_pixel_formats_to_bgr():
    h, w = 6, 8
    for fmt, code in BAYER.items():  # a red-only mosaic: red at the pattern's R site
        mosaic = np.zeros((h, w), np.uint8)
        r_at = {"BayerRG8": (0, 0), "BayerGR8": (0, 1), "BayerGB8": (1, 0), "BayerBG8": (1, 1)}[fmt]
        mosaic[r_at[0]::2, r_at[1]::2] = 200
        bgr = to_bgr(mosaic.tobytes(), fmt, w, h)
        assert tuple(bgr[3, 4]) == (0, 0, 200), fmt
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = 10
    rgb[..., 2] = 30
    assert tuple(to_bgr(rgb.tobytes(), "RGB8", w, h)[0, 0]) == (30, 0, 10)
    assert tuple(to_bgr(rgb.tobytes(), "BGR8", w, h)[0, 0]) == (10, 0, 30)
    mono16 = np.full((h, w), 0xAB12, "<u2")
    assert tuple(to_bgr(mono16.tobytes(), "Mono16", w, h)[0, 0]) == (0xAB, 0xAB, 0xAB)
    with pytest.raises(ValueError, match="needs 48 bytes"):
        to_bgr(b"\0" * 10, "Mono8", w, h)


def test_frame_id_gaps():
    assert [id_gap(5, 6), id_gap(5, 9), id_gap(65534, 2), id_gap(9, 9), id_gap(40000, 3)] == [0, 3, 2, 0, 0]


# ------------------------------------------------------------------------------- with the fake camera
def test_free_running_capture_is_scored_like_predict(tmp_path, rt_bundle, fake_camera):
    r, records = _camera(tmp_path, rt_bundle, FREE, "--max-frames", "4")
    assert r.exit_code == 0, r.output
    assert [rec["frame"] for rec in records] == sorted({rec["frame"] for rec in records}) and len(records) == 4
    ids = [rec["camera"]["frame_id"] for rec in records]
    assert ids == sorted(set(ids))
    stamps = [rec["camera"]["timestamp_ns"] for rec in records]
    # the camera's clock: 0.1 s a frame id at 10 frames/s (after the first, which starts the stream)
    assert (stamps[-1] - stamps[1]) / 1e9 == pytest.approx(0.1 * (ids[-1] - ids[1]), rel=0.2)  # a busy machine delays the fake camera
    for rec in records:  # the settings, read back from the camera, in every record
        cam = rec["camera"]
        assert {k: cam[k] for k in ("pixel_format", "region", "exposure_us", "gain", "frame_rate")} == _read_back(FREE)
        assert (cam["trigger_mode"], cam["vendor"], cam["model"], cam["missed"]) == ("Off", "Aravis", "Fake", 0)
        assert cv2.imread(rec["saved"]).shape == (128, 128, 3)
    _assert_equal_to_predict(rt_bundle, records)
    assert "0 missed, 0 incomplete" in r.stderr


def test_software_trigger_one_frame_per_trigger(fake_camera):
    src = open_source(URL, SOFTWARE)
    try:
        assert (src.camera["trigger_mode"], src.camera["trigger_source"], src.fps) == ("On", "Software", None)
        t = time.monotonic()
        while time.monotonic() - t < 1.0:  # untriggered: nothing comes
            assert src.read() == (True, None)
        src.trigger()
        frames, t = [], time.monotonic()
        while time.monotonic() - t < 1.5:
            ok, f = src.read()
            if f is not None:
                frames.append(f)
        assert len(frames) == 1 and frames[0].bgr.shape == (128, 128, 3) and frames[0].error is None
    finally:
        src.close()


def test_software_triggered_capture_through_the_command(tmp_path, rt_bundle, fake_camera):
    r, records = _camera(tmp_path, rt_bundle, SOFTWARE, "--max-frames", "3", "--fire-trigger-every", "0.3")
    assert r.exit_code == 0, r.output
    assert len(records) == 3
    ids = [rec["camera"]["frame_id"] for rec in records]
    assert ids == list(range(ids[0], ids[0] + 3))  # one frame per trigger, none lost
    gaps = np.diff([rec["camera"]["timestamp_ns"] for rec in records]) / 1e9
    assert all(0.2 < g < 0.6 for g in gaps), gaps  # paced by the triggers (0.3 s), not the free-run rate
    assert all(rec["camera"]["trigger_source"] == "Software" and rec["dropped"] == 0 for rec in records)
    _assert_equal_to_predict(rt_bundle, records)
    r, _ = _camera(tmp_path, rt_bundle, FREE, "--max-frames", "1", "--fire-trigger-every", "0.3")
    assert r.exit_code == 2 and "needs a camera set to trigger_mode On" in r.stderr


def test_hardware_trigger_configuration_is_read_back(fake_camera):
    src = open_source(URL, {**FREE, "trigger_mode": "On", "trigger_source": "Line0",
                            "trigger_activation": "RisingEdge"})
    try:
        assert {k: src.camera[k] for k in ("trigger_mode", "trigger_source", "trigger_activation")} == \
            {"trigger_mode": "On", "trigger_source": "Line0", "trigger_activation": "RisingEdge"}
    finally:
        src.close()


@pytest.mark.parametrize("settings, message", [
    ({"exposure_us": 1e9}, "exposure_us 1e+09 is out of the camera's range 10..1e+07 (feature ExposureTime)"),
    ({"gain": 11}, "gain 11 is out of the camera's range 0..10 (feature Gain)"),
    ({"frame_rate": 5000}, "frame_rate 5000 is out of the camera's range 0.1..1000"),
    ({"region": {**REGION, "width": 100000}}, "region width 100000 is out of the camera's range 1..2048"),
    ({"trigger_source": "Line7"}, "trigger_source 'Line7' is not one the camera offers (feature TriggerSource: "
                                  "Line0, Software)"),
    ({"features": {"NoSuchFeature": 1}}, "the camera has no feature NoSuchFeature"),
    ({"pixel_format": "YUV422Packed"}, "pixel format YUV422Packed cannot be taken"),
])
def test_bad_settings_name_the_feature_and_its_range(fake_camera, settings, message):
    with pytest.raises(SourceError) as e:
        open_source(URL, settings).close()
    assert message in str(e.value)


def test_bad_settings_exit_2_with_one_line(tmp_path, rt_bundle, fake_camera):
    r, records = _camera(tmp_path, rt_bundle, {**FREE, "gain": 99})
    assert r.exit_code == 2 and records == []
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: genicam://127.0.0.1: gain 99 is out of the camera's range 0..10 (feature Gain)"]
    assert "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("exposure: 20000\n")
    r, _ = _run("camera", URL, "--bundle", str(rt_bundle), "--settings", str(bad), "--device", "cpu")
    assert r.exit_code == 2 and "unknown setting exposure (known: exposure_us" in r.stderr


def test_settings_file_yaml_applied_and_features_read_back(tmp_path, fake_camera):
    from runtime.line.sources.settings import load_settings

    path = tmp_path / "cam.yaml"
    path.write_text("exposure_us: 15000\npixel_format: BayerRG8\ntrigger_mode: Off\n"
                    "region: {x: 0, y: 0, width: 64, height: 48}\nfeatures: {GainRaw: 3}\n")
    settings = load_settings(path)
    assert settings["trigger_mode"] == "Off"  # YAML's unquoted Off (a boolean) taken as the name
    src = open_source(URL, settings)
    try:
        assert (src.camera["exposure_us"], src.camera["pixel_format"], src.camera["features"]) == \
            (15000.0, "BayerRG8", {"GainRaw": 3})
        frame = next(f for ok, f in iter(src.read, None) if f is not None)
        assert frame.bgr.shape == (48, 64, 3) and frame.bgr.dtype == np.uint8
    finally:
        src.close()


@pytest.mark.parametrize("fmt", ["Mono8", "Mono16", "BayerGB8", "RGB8"])
def test_pixel_formats_from_the_camera(fake_camera, fmt):
    src = open_source(URL, {**FREE, "pixel_format": fmt, "frame_rate": 25})
    try:
        frame = next(f for ok, f in iter(src.read, None) if f is not None)
    finally:
        src.close()
    assert frame.error is None and frame.bgr.shape == (128, 128, 3) and frame.bgr.dtype == np.uint8
    assert frame.bgr.std() > 5  # the fake camera's pattern, not a black frame
    if fmt.startswith("Mono"):
        assert (frame.bgr[..., 0] == frame.bgr[..., 2]).all()


def test_incomplete_frames_are_error_records(tmp_path, rt_bundle):
    require("genicam", missing())
    with FakeGvCamera(lost_per_thousand=20):  # 2% of stream packets lost: many frames arrive incomplete
        r, records = _camera(tmp_path, rt_bundle, {**FREE, "region": {"x": 0, "y": 0, "width": 256, "height": 256}},
                             "--max-frames", "6")
    assert r.exit_code == 0, r.output
    broken = [rec for rec in records if "error" in rec]
    scored = [rec for rec in records if "score" in rec]
    assert len(scored) == 6 and broken
    for rec in broken:
        assert rec["error"].startswith("incomplete frame from the camera (") and "verdict" not in rec
        assert rec["camera"]["frame_id"] is not None
    assert f"{len(broken)} incomplete" in r.stderr


def test_throughput_at_the_camera_frame_rate_drops_nothing(tmp_path, rt_bundle, fake_camera):
    rate, n = 8, 16  # well under the test bundle's speed on 2 busy cores
    r, records = _camera(tmp_path, rt_bundle, {**FREE, "frame_rate": rate}, "--max-frames", str(n))
    assert r.exit_code == 0, r.output
    assert len(records) == n
    assert [rec["dropped"] for rec in records] == [0] * n and records[-1]["camera"]["missed"] == 0
    ids = [rec["camera"]["frame_id"] for rec in records]
    assert ids == list(range(ids[0], ids[0] + n))  # every frame the camera sent was scored
    seconds = (records[-1]["camera"]["timestamp_ns"] - records[1]["camera"]["timestamp_ns"]) / 1e9
    assert (n - 2) / seconds == pytest.approx(rate, rel=0.15)  # after the first frame, which starts the stream


def _lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)


def test_camera_killed_and_restarted_reconnects_and_counts_missed(tmp_path, rt_bundle, fake_camera):
    settings = _settings(tmp_path, FREE)
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "camera", URL, "--bundle", str(rt_bundle),
                             "--settings", str(settings), "--out", str(tmp_path / "out"), "--device", "cpu"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    records: list[dict] = []

    def until(cond, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end and proc.poll() is None:
            try:
                records.append(json.loads(out.get(timeout=0.2)))
            except queue.Empty:
                pass
            if cond():
                return True
        return False

    try:
        assert until(lambda: len(records) >= 3, 60), "no frames before the fault"
        fake_camera.kill()
        time.sleep(2.0)
        fake_camera.start()
        assert until(lambda: records[-1]["camera"]["missed"] > 0, 60), "no frames after the camera came back"
        assert until(lambda: len(records) >= 3 + 3, 20)
        fake_camera.kill()  # the camera stops answering: shutdown must not hang on it
        time.sleep(0.5)
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert time.monotonic() - t < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert "camera lost (the camera stopped answering); reconnecting" in stderr
    assert "camera back after" in stderr
    missed = records[-1]["camera"]["missed"]
    assert 15 <= missed <= 150  # ~2 s away plus detection and backoff, at 10 frames/s
    frames = [rec["frame"] for rec in records]
    assert frames == sorted(set(frames))
    assert f"{missed} missed" in stderr.splitlines()[-1]


def test_without_pygobject_genicam_is_exit_2_and_info_says_so(tmp_path, rt_bundle, monkeypatch):
    """The base install (no genicam extra): the runtime runs, the kind is listed as not installed,
    and a genicam:// source is one line and exit 2 saying what to install."""
    from runtime.line.sources import describe

    monkeypatch.setitem(sys.modules, "gi", None)  # import gi fails, as without PyGObject
    row = next(k for k in describe() if k["kind"] == "genicam")
    assert row["available"] is False and "pip install 'patchcore-rt[genicam]'" in row["missing"]
    r, records = _run("camera", URL, "--bundle", str(rt_bundle), "--out", str(tmp_path / "o"), "--device", "cpu")
    assert r.exit_code == 2 and records == []
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "genicam:// sources need PyGObject and Aravis 0.8" in lines[0]
    for what in ("pip install 'patchcore-rt[genicam]'", "make install-genicam", "gir1.2-aravis-0.8",
                 "libgirepository1.0-dev", "libcairo2-dev"):
        assert what in lines[0], what
