"""``camera --trigger`` over Modbus TCP (a pymodbus server as the PLC) and MQTT (mosquitto, a
client as the PLC): the same handshake as over OPC UA (trigger -> newest frame -> result ->
ready -> trigger cleared), with the part id and product the PLC hands over coming back in the
record. The test is the PLC (tests/plc_side.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime.cli.app import app
from runtime.line.triggers import TRIGGERS, make_trigger
from runtime.line.triggers.mqtt import event_of

from .line_servers import ModbusPlc, Mosquitto, free_port
from .plc_side import ModbusSide, MqttSide
from .test_trigger import _video

REPO = Path(__file__).resolve().parents[1]
PARTS = 5


def _camera(video, rt_bundle, tmp_path, url):
    cmd = [sys.executable, "-m", "runtime", "camera", str(video), "--bundle", str(rt_bundle), "--realtime",
           "--device", "cpu", "--out", str(tmp_path / "ng"), "--max-frames", str(PARTS), "--trigger", url]
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")], err


def test_modbus_coil_trigger_round_trip(tmp_path, rt_bundle):
    pytest.importorskip("pymodbus")
    video = _video(tmp_path / "line.avi", rt_bundle)
    plc = ModbusPlc().start()
    try:
        side = ModbusSide(plc.port)
        side.c.write_registers(2, [0, 41], device_id=1)  # the PLC's counter: continued
        proc = _camera(video, rt_bundle, tmp_path, f"modbus://127.0.0.1:{plc.port}?{ModbusSide.url_query}")
        time.sleep(0.5)
        seen = []
        try:
            for i in range(PARTS):
                seen.append(side.part(1000 + i, 7))
                time.sleep(0.2)
        finally:
            recs, err = _finish(proc)
            side.close()
    finally:
        plc.close()
    assert [s["counter"] for s in seen] == list(range(42, 42 + PARTS))
    assert [r["part_id"] for r in recs] == [str(1000 + i) for i in range(PARTS)]
    assert [r["product"] for r in recs] == ["7"] * PARTS
    codes = {"ok": 1, "ng": 2}
    assert [codes[r["verdict"]] for r in recs] == [s["verdict_code"] for s in seen]
    assert all(s["ok"] == (r["verdict"] == "ok") and s["ng"] == (r["verdict"] == "ng") for s, r in zip(seen, recs))
    assert [s["score_x1000"] for s in seen] == [min(65535, round(r["normalised"] * 1000)) for r in recs]
    assert all(0 < r["trigger_ms"] < 10_000 for r in recs) and f"{PARTS} triggers, round trip median" in err
    assert recs[-1]["dropped"] > 0


def test_mqtt_message_trigger_round_trip(tmp_path, rt_bundle):
    pytest.importorskip("paho.mqtt")
    video = _video(tmp_path / "line.avi", rt_bundle)
    with Mosquitto(tmp_path / "broker") as broker:
        side = MqttSide(broker.port, "cell1")
        proc = _camera(video, rt_bundle, tmp_path, f"mqtt://127.0.0.1:{broker.port}/cell1")
        seen = []
        try:
            side.wait_online()
            for i in range(PARTS):
                seen.append(side.part(f"P-{i:04d}", "cap-red"))
                time.sleep(0.2)
        finally:
            recs, err = _finish(proc)
            side.close()
    got = [s["results"] for s in seen]
    assert all(len(g) == 1 for g in got), got  # one result per trigger, before its ready
    assert [g[0]["part_id"] for g in got] == [r["part_id"] for r in recs] == [f"P-{i:04d}" for i in range(PARTS)]
    assert [g[0]["id"] for g in got] == [r["id"] for r in recs]
    assert all(r["product"] == "cap-red" and r["verdict"] in ("ok", "ng") for r in recs)
    assert all(0 < r["trigger_ms"] < 10_000 for r in recs) and f"{PARTS} triggers, round trip median" in err
    status = [p for _, t, p, _ in side.msgs if t == "status"]
    assert status[-1] == b"offline"  # a clean stop says goodbye


def test_trigger_table_and_payloads():
    assert {k.key for k in TRIGGERS} == {"opc.tcp", "modbus", "mqtt", "mqtts"}
    assert event_of(b"P-1") == event_of(b'{"part_id": "P-1"}') and event_of(b"P-1").part_id == "P-1"
    assert event_of(b'{"part_id": 17, "product": "a"}').product == "a"
    assert event_of(b"{not json").part_id == "{not json"


@pytest.mark.parametrize("url,says", [
    ("modbus://127.0.0.1:{port}?trigger=0", "must be four different coils"),
    ("modbus://127.0.0.1:{port}?trigger=x", "trigger must be an integer"),
    ("modbus://127.0.0.1:{port}/x", "no path here"),
    ("mqtt://line:s3cret@127.0.0.1:{port}/cell", "refusing to send a password unencrypted"),
    ("mqtt://127.0.0.1:{port}/cell/#", "unexpected '#"),
    ("opc.tcp://line:s3cret@127.0.0.1:{port}?map=x.json#ns=2;s=T", "refusing to send a password unencrypted"),
])
def test_bad_trigger_urls_are_one_line_exit_2(tmp_path, url, says):
    url = url.format(port=free_port())
    res = CliRunner().invoke(app, ["camera", "0", "--bundle", str(tmp_path / "none"), "--trigger", url])
    assert res.exit_code == 2 and says in res.output, res.output
    assert "s3cret" not in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("url,says", [("modbus://127.0.0.1:{port}?unit=1", "cannot connect to the PLC"),
                                      ("mqtt://127.0.0.1:{port}/cell", "cannot connect to the broker")])
def test_a_plc_not_there_at_start_is_exit_2(url, says):
    from runtime.line.sinks.base import SinkError

    with pytest.raises(SinkError, match=says) as e:
        make_trigger(url.format(port=free_port())).open()
    assert e.value.exit_code == 2


def test_modbus_trigger_addresses_the_plc_lacks_are_exit_2(tmp_path):
    pytest.importorskip("pymodbus")
    plc = ModbusPlc().start()
    try:
        from runtime.line.sinks.base import SinkError

        with pytest.raises(SinkError, match="refuses"):
            make_trigger(f"modbus://127.0.0.1:{plc.port}?trigger=500&ready=501").open()
    finally:
        plc.close()
