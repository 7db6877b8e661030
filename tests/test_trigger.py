"""``camera --trigger``: the PLC handshake end to end against an asyncua "PLC" in the test process.

The test is the PLC: it sets a part id, raises the trigger, and waits for "result ready" with the
trigger cleared; then it reads the result the runtime wrote into its nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

pytest.importorskip("asyncua")

from runtime.cli.app import app  # noqa: E402

from .line_servers import OpcUaPlc, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _video(path: Path, rt_bundle: Path, seconds: float = 60, fps: int = 25) -> Path:
    frames = [cv2.imread(str(p)) for p in sorted((rt_bundle.parent / "data" / "brick" / "test").rglob("*.png"))]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (128, 128))
    for i in range(int(seconds * fps)):
        w.write(frames[(i // fps) % len(frames)])
    w.release()
    return path


def _mapping(path: Path, plc: OpcUaPlc) -> Path:
    path.write_text(json.dumps({"nodes": {"ready": plc.node("Ready"), "part_in": plc.node("PartIn"),
                                          "part_id": plc.node("PartId"), "verdict": plc.node("Verdict"),
                                          "score": plc.node("Score"), "counter": plc.node("Counter"),
                                          "result_id": plc.node("ResultId")}}))
    return path


def test_trigger_handshake_end_to_end(tmp_path, rt_bundle):
    video = _video(tmp_path / "line.avi", rt_bundle)
    parts = 5
    with OpcUaPlc() as plc:
        url = f"{plc.url}?map={_mapping(tmp_path / 'nodes.json', plc)}#{plc.node('Trigger')}"
        cmd = [sys.executable, "-m", "runtime", "camera", str(video), "--bundle", str(rt_bundle), "--realtime",
               "--device", "cpu", "--out", str(tmp_path / "ng"), "--max-frames", str(parts), "--trigger", url]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        seen = []
        try:
            time.sleep(0.5)
            for i in range(parts):
                plc.set("PartIn", f"P-{i:04d}")
                t0 = time.monotonic()
                plc.set("Trigger", True)
                end = t0 + 60
                while not (plc.get("Ready") and not plc.get("Trigger")):
                    assert time.monotonic() < end and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
                    time.sleep(0.002)
                seen.append((1000 * (time.monotonic() - t0), plc.get("PartId"), plc.get("Counter"),
                             plc.get("Verdict"), plc.get("ResultId")))
                time.sleep(0.2)  # the next part comes later: 5 frames at 25 fps go by unscored
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, err
    recs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert [s[1] for s in seen] == [f"P-{i:04d}" for i in range(parts)]  # the PLC's part id came back
    assert [s[2] for s in seen] == list(range(1, parts + 1))
    assert [r["part_id"] for r in recs] == [s[1] for s in seen]
    assert [r["id"] for r in recs] == [s[4] for s in seen]
    assert [r["verdict"] for r in recs] == [s[3] for s in seen] and all(s[3] in ("ok", "ng") for s in seen)
    assert all(0 < r["trigger_ms"] < 10_000 for r in recs)
    assert f"{parts} triggers, round trip median" in err
    # between triggers the camera's frames are not scored
    assert recs[-1]["dropped"] > 0


def test_trigger_node_that_does_not_exist_is_exit_2_before_any_frame(tmp_path, rt_bundle):
    video = _video(tmp_path / "line.avi", rt_bundle, seconds=1)
    with OpcUaPlc() as plc:
        url = f"{plc.url}?map={_mapping(tmp_path / 'nodes.json', plc)}#ns=2;s=Cell.NoTrigger"
        res = CliRunner().invoke(app, ["camera", str(video), "--bundle", str(rt_bundle), "--device", "cpu",
                                       "--out", str(tmp_path / "ng"), "--trigger", url])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "ns=2;s=Cell.NoTrigger (trigger) does not exist" in errors[0], res.output
    assert '"frame"' not in res.output


@pytest.mark.parametrize("url,says", [
    ("modbus://127.0.0.1:502#coil=1", "--trigger modbus://127.0.0.1:502#coil=1: unexpected '#coil=1'"),
    ("ftp://127.0.0.1:502", "give opc.tcp://"),
    (f"opc.tcp://127.0.0.1:{free_port()}?map=x.json", "give opc.tcp://plc:4840?map=nodes.json#"),
])
def test_bad_trigger_urls(tmp_path, url, says):
    res = CliRunner().invoke(app, ["camera", "0", "--bundle", str(tmp_path / "none"), "--trigger", url])
    assert res.exit_code == 2 and says in res.output, res.output
