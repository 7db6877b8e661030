"""Result sinks (``--publish``): the table, URL errors (exit 2, one line, before any image), the
SQLite sink, and delivery through the outbox against a real mosquitto broker: nothing lost,
nothing twice, in order, across a broker restart and a SIGKILL of the runtime, and scoring never
waits on a sink that is away."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.cli.app import app
from runtime.line.sinks.base import SinkError, redact
from runtime.line.sinks.delivery import Publisher
from runtime.line.sinks.table import SINKS, kind_of, make_sink

from tests.capabilities import require

from .line_servers import Mosquitto, Subscriber, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]




# ------------------------------------------------------------------------------------ the table, URLs
def test_table_schemes_each_have_a_module_and_an_example_that_parses():
    for k in SINKS:
        assert kind_of(k.example) is k
        if k.key == "sqlite":
            continue  # its example names a folder this machine lacks
        sink = make_sink(k.example)  # parses without opening (no server needed)
        assert sink.url == redact(k.example)


def test_password_never_shown():
    url = "mqtt://line:s3cret@127.0.0.1:1/x"
    assert "s3cret" not in redact(url) and redact(url) == "mqtt://line:***@127.0.0.1:1/x"
    assert "s3cret" not in make_sink(url + "?allow_plaintext=1").url
    with pytest.raises(SinkError, match="refusing to send a password unencrypted") as e:
        make_sink(url)
    assert "s3cret" not in str(e.value)
    with pytest.raises(SinkError) as e:
        make_sink("mqtt://line:s3cret@127.0.0.1:1/x?nope=1")
    assert "s3cret" not in str(e.value)


BAD_URLS = [
    ("mqqt://127.0.0.1:1883/line1", "did you mean mqtt://"),
    ("sqlit:///r.db", "did you mean sqlite://"),
    ("ftp://host/x", "unknown scheme 'ftp'"),
    ("results.db", "not a URL"),
    ("mqtt://127.0.0.1:notaport/line1", "malformed URL"),
    ("mqtt://127.0.0.1:99999/line1", "malformed URL"),
    ("mqtt:///line1", "no host"),
    ("mqtt://127.0.0.1:1883/line/#", "unexpected '#'"),
    ("mqtt://127.0.0.1:1883/line/+", "wildcards"),
    ("mqtt://127.0.0.1:1883/line1?qos=2", "unknown parameter 'qos'"),
    ("sqlite://host/r.db", "sqlite:///relative"),
    ("sqlite:///no/such/folder/r.db", "does not exist; create it first"),
    ("sqlite:///tmp/r.db", "folder tmp does not exist; for the absolute path /tmp/r.db write four slashes: "
                           "sqlite:////tmp/r.db"),
]


@pytest.mark.parametrize("url,says", BAD_URLS)
def test_bad_url_is_exit_2_with_one_line_before_the_bundle_loads(tmp_path, url, says):
    (tmp_path / "in").mkdir()
    # no bundle exists at all: the URL is refused before one is looked for
    res = CliRunner().invoke(app, ["watch", str(tmp_path / "in"), "--bundle", str(tmp_path / "none"),
                                   "--publish", f"sqlite:///{tmp_path}/ok.db", "--publish", url])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "ok.db").exists()  # nothing was opened


def test_same_url_twice_is_refused(tmp_path):
    with pytest.raises(SinkError, match="given twice"):
        Publisher([f"sqlite:///{tmp_path}/r.db"] * 2, tmp_path, print)


def test_mqtt_wrong_credentials_is_exit_2_at_start(tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text("")
    require("mosquitto", None if shutil.which("mosquitto_passwd") else "mosquitto_passwd not found")
    assert subprocess.run(["mosquitto_passwd", "-b", str(pw), "line", "right"], capture_output=True).returncode == 0
    with Mosquitto(tmp_path / "broker", password_file=pw) as broker:
        url = f"mqtt://line:wrong@127.0.0.1:{broker.port}/line1"
        with pytest.raises(SinkError, match="refusing to send a password unencrypted") as e:
            Publisher([url], tmp_path / "out", print)
        assert "wrong" not in str(e.value) and e.value.exit_code == 2
        url += "?allow_plaintext=1"  # this test's broker has no TLS listener
        pub = Publisher([url], tmp_path / "out", print)
        with pytest.raises(SinkError) as e:
            pub.open()
        assert "refused" in str(e.value) and "wrong" not in str(e.value) and e.value.exit_code == 2
        os.environ["PATCHCORE_RT_MQTT_PASSWORD"] = "right"
        try:
            with Publisher([url], tmp_path / "out", print) as ok:
                assert ok.stats()[0].state != "down"
        finally:
            del os.environ["PATCHCORE_RT_MQTT_PASSWORD"]


# ------------------------------------------------------------------------------------ sqlite
def test_sqlite_sink_wal_indexes_and_repeats_dropped(tmp_path):
    db = tmp_path / "results.db"
    recs = [{"id": f"r{i}", "file": f"{i}.png", "score": 0.1 * i, "normalised": 0.05 * i,
             "verdict": "ng" if i % 3 == 0 else "ok", "bundle": "b1", "time": f"2026-01-01T00:00:0{i}Z"}
            for i in range(6)]
    with Publisher([f"sqlite:///{db}"], tmp_path / "out", print) as pub:
        for r in recs + recs[:2]:  # two repeats
            pub.publish(dict(r))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute("SELECT id, part, verdict, score FROM results ORDER BY time").fetchall()
    assert [r[0] for r in rows] == [f"r{i}" for i in range(6)]
    assert rows[3] == ("r3", "3.png", "ng", pytest.approx(0.3))
    idx = {r[1] for r in con.execute("PRAGMA index_list(results)")}
    assert {"results_time", "results_verdict"} <= idx
    assert json.loads(con.execute("SELECT record FROM results WHERE id='r4'").fetchone()[0])["file"] == "4.png"
    # delivered: nothing left waiting in the outbox
    outbox = next((tmp_path / "out" / "outbox").glob("sqlite-*.db"))
    assert sqlite3.connect(outbox).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


# ------------------------------------------------------------------------------------ delivery
def test_broker_away_never_blocks_and_everything_arrives_in_order_later(tmp_path):
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}/cell"
    logs: list[str] = []
    pub = Publisher([url], tmp_path / "out", logs.append).open()  # broker not there yet: waits, no error
    try:
        t0 = time.perf_counter()
        for i in range(200):
            pub.publish({"file": f"{i}.png", "verdict": "ok", "score": float(i)})
        per_result_ms = 1000 * (time.perf_counter() - t0) / 200
        assert per_result_ms < 20, per_result_ms  # an outbox insert, never a wait on the broker
        wait_for(lambda: pub.stats()[0].state == "down", 10, "the sink to report down")
        assert pub.stats()[0].pending == 200
        assert any("down" in m for m in logs)
        with Mosquitto(tmp_path / "broker", port=port):
            sub = Subscriber(port, "cell/#")
            try:
                wait_for(lambda: pub.stats()[0].pending == 0, 40, "the outbox to drain")
                wait_for(lambda: len([m for m in sub.messages if m[0] == "cell/result"]) >= 200, 10, "200 messages")
                got = [json.loads(p) for t, p, _ in sub.messages if t == "cell/result"]
                files = list(dict.fromkeys(g["file"] for g in got))  # first arrival, repeats dropped by id
                assert files == [f"{i}.png" for i in range(200)]
                assert len({g["id"] for g in got}) == 200
                assert any("back" in m for m in logs)
                status = [p for t, p, r in sub.messages if t == "cell/status"]
                assert status and status[-1] == b"online"
            finally:
                sub.close()
    finally:
        pub.close()


def test_outbox_overflow_is_counted_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCORE_RT_OUTBOX_MAX", "5")
    pub = Publisher([f"mqtt://127.0.0.1:{free_port()}/x"], tmp_path / "out", print).open()
    try:
        for i in range(12):
            pub.publish({"file": f"{i}.png"})
        st = pub.stats()[0]
        assert st.overflow == 7 and st.pending <= 5
        assert "overflow" in pub.status_text()
    finally:
        pub.close(flush_s=0)


# ------------------------------------------------------------------------------------ watch, end to end
def _pngs(rt_bundle: Path, n: int) -> list[bytes]:
    files = sorted((rt_bundle.parent / "data" / "brick" / "test").rglob("*.png"))
    out = []
    for i in range(n):
        img = cv2.imread(str(files[i % len(files)]))
        img = np.clip(img.astype(np.int16) + i // len(files), 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".png", img)[1].tobytes())
    return out


def _watch(folder: Path, out: Path, bundle: Path, urls: list[str], once: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "runtime", "watch", str(folder), "--bundle", str(bundle), "--out", str(out),
           "--settle", "0.2", "--poll", "0.1", "--device", "cpu", "--batch-size", "2"]
    for u in urls:
        cmd += ["--publish", u]
    if once:
        cmd.append("--once")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _journal(out: Path) -> list[dict]:
    p = out / "results.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_watch_delivers_each_record_once_to_mqtt_and_sqlite_across_broker_restart_and_sigkill(tmp_path, rt_bundle):
    incoming, out, db = tmp_path / "incoming", tmp_path / "inspected", tmp_path / "results.db"
    incoming.mkdir()
    pngs = _pngs(rt_bundle, 12)
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "line1/#")
    urls = [f"mqtt://127.0.0.1:{broker.port}/line1", f"sqlite:///{db}"]
    proc = _watch(incoming, out, rt_bundle, urls, once=False)
    try:
        def drop(lo, hi):
            for i in range(lo, hi):
                (incoming / f"part{i:02d}.png").write_bytes(pngs[i])

        def mqtt_ids():
            return list(dict.fromkeys(json.loads(p)["id"] for t, p, _ in sub.messages if t == "line1/result"))

        drop(0, 4)
        wait_for(lambda: len(mqtt_ids()) == 4, 60, "4 results over MQTT")
        # the broker restarts: scoring goes on, the results wait and arrive when it is back
        broker.stop()
        drop(4, 8)
        wait_for(lambda: len(_journal(out)) == 8, 30, "8 results scored while the broker is away")
        assert len(mqtt_ids()) == 4
        broker.start()
        wait_for(lambda: len(mqtt_ids()) == 8, 40, "8 results over MQTT after the broker came back")
        # the runtime is killed while results wait for the broker: they go out after its restart
        broker.stop()
        drop(8, 12)
        wait_for(lambda: len(_journal(out)) == 12, 30, "12 results scored")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        broker.start()
        proc = _watch(incoming, out, rt_bundle, urls, once=True)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "still to deliver" in err
        wait_for(lambda: len(mqtt_ids()) == 12, 20, "12 results over MQTT")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.close()
        broker.stop()
    journal_ids = [r["id"] for r in _journal(out)]
    assert len(journal_ids) == 12 == len(set(journal_ids))
    assert mqtt_ids() == journal_ids  # each once (repeats dropped by id), in the order scored
    rows = sqlite3.connect(db).execute("SELECT id, part FROM results").fetchall()
    assert sorted(r[0] for r in rows) == sorted(journal_ids)
    assert {r[1] for r in rows} == {f"part{i:02d}.png" for i in range(12)}
    retained = [p for t, p, r in sub.messages if t == "line1/status"]
    assert retained[-1] == b"offline"  # the clean stop of the second run said goodbye


# ------------------------------------------------------------------------------------ PostgreSQL
def test_postgresql_same_table_and_repeats_dropped(tmp_path):
    from .line_servers import Postgres

    pg = Postgres()
    pg.start()
    try:
        url = pg.url + "?table=inspections"
        with Publisher([url], tmp_path / "out", print) as pub:
            for i in range(5):
                pub.publish({"id": f"p{i}", "file": f"{i}.png", "verdict": "ok" if i else "ng", "score": float(i),
                             "normalised": i / 10, "bundle": "b", "time": "2026-01-02T03:04:05.000Z"})
            pub.publish({"id": "p1", "file": "1.png"})  # a repeat
            wait_for(lambda: pub.stats()[0].pending == 0, 20, "delivery")
        import psycopg

        with psycopg.connect(pg.url) as con:
            rows = con.execute("SELECT id, verdict, part, record->>'file' FROM inspections ORDER BY id").fetchall()
            idx = {r[0] for r in con.execute("SELECT indexname FROM pg_indexes WHERE tablename='inspections'")}
        assert rows == [(f"p{i}", "ok" if i else "ng", f"{i}.png", f"{i}.png") for i in range(5)]
        assert {"inspections_time", "inspections_verdict"} <= idx
        bad = pg.url.replace("/postgres", "/no_such_db")
        with pytest.raises(SinkError, match="does not exist"):
            Publisher([bad], tmp_path / "out2", print).open()
    finally:
        pg.stop()


# ------------------------------------------------------------------------------------ Modbus TCP
def test_modbus_coils_registers_counter_and_a_plc_that_restarts(tmp_path):
    from .line_servers import ModbusPlc

    plc = ModbusPlc().start()
    try:
        url = f"modbus://127.0.0.1:{plc.port}?unit=1&coil=10&register=20"
        recs = [{"id": "a", "verdict": "ok", "normalised": 0.2}, {"id": "b", "verdict": "ng", "normalised": 0.734},
                {"id": "c", "verdict": "error", "normalised": None}]
        with Publisher([url], tmp_path / "out", print) as pub:
            pub.publish(recs[0])
            wait_for(lambda: pub.stats()[0].delivered == 1, 10, "the first result")
            assert plc.read(coil=10, register=20) == ([True, False], [200, 1, 0, 1])
            pub.publish(recs[1])
            wait_for(lambda: pub.stats()[0].delivered == 2, 10, "the second result")
            assert plc.read(coil=10, register=20) == ([False, True], [734, 2, 0, 2])
            plc.stop()  # the PLC goes away: the third result waits, then arrives
            pub.publish(recs[2])
            wait_for(lambda: pub.stats()[0].state == "down", 10, "down")
            plc.start()
            wait_for(lambda: pub.stats()[0].delivered == 3, 20, "the third result after the PLC came back")
            assert plc.read(coil=10, register=20) == ([False, False], [0, 3, 0, 3])
        # a restart of the runtime continues the PLC's counter
        with Publisher([url], tmp_path / "out", print) as pub:
            pub.publish({"id": "d", "verdict": "ok", "normalised": 0.1})
            wait_for(lambda: pub.stats()[0].delivered == 1, 10, "a result after a restart")
        assert plc.read(coil=10, register=20)[1] == [100, 1, 0, 4]
        # addresses the PLC does not have: exit 2 at start
        with pytest.raises(SinkError, match="refuses"):
            Publisher([f"modbus://127.0.0.1:{plc.port}?register=99"], tmp_path / "o2", print).open()
    finally:
        plc.close()


@pytest.mark.parametrize("url,says", [("modbus://127.0.0.1:502?unit=300", "unit must be"),
                                      ("modbus://127.0.0.1:502?coil=x", "coil must be"),
                                      ("modbus://127.0.0.1:502/x", "no path"),
                                      ("modbus://127.0.0.1:502?slave=1", "unknown parameter")])
def test_modbus_bad_urls(url, says):
    with pytest.raises(SinkError, match=says):
        make_sink(url)


# ------------------------------------------------------------------------------------ serve
def test_serve_publishes_api_results_and_reports_sinks_in_metrics(tmp_path, rt_bundle):
    pytest.importorskip("starlette")
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from runtime.predictor import Predictor
    from runtime.serve.app import build_app
    from runtime.serve.options import ServeOptions
    from runtime.serve.service import Service

    db, down = tmp_path / "r.db", f"mqtt://127.0.0.1:{free_port()}/cell"
    opts = ServeOptions(rt_bundle, models=tmp_path, watch_out=tmp_path / "state",
                        publish=(f"sqlite:///{db}", down))
    service = Service(opts, lambda p: Predictor(p, device="cpu", search="numpy"), log=lambda m: None)
    service.open_sinks()
    png = sorted((rt_bundle.parent / "data" / "brick" / "test" / "good").glob("*.png"))[0].read_bytes()
    with TestClient(build_app(service), base_url="http://127.0.0.1") as c:
        ids = [c.post("/v1/predict", content=png, headers={"Content-Type": "image/png"}).json()["id"]
               for _ in range(3)]
        wait_for(lambda: service.publisher.stats()[0].delivered == 3, 10, "3 results in SQLite")
        wait_for(lambda: service.publisher.stats()[1].state == "down", 10, "the broker reported down")
        samples = {(s.name, s.labels.get("sink")): s.value
                   for fam in text_string_to_metric_families(c.get("/metrics").text) for s in fam.samples}
    got = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM results")]
    assert len(got) == 3 == len(set(got)) and len(set(ids)) == 3
    assert samples[("patchcore_sink_delivered_total", f"sqlite:///{db}")] == 3
    assert samples[("patchcore_sink_up", down)] == 0
    assert samples[("patchcore_sink_pending", down)] == 3
    assert list((tmp_path / "state" / "outbox").glob("mqtt-*.db"))  # kept for the next start


def test_info_lists_the_sink_kinds_from_the_table(rt_bundle):
    from runtime.line.info import bundle_info, render

    kinds = bundle_info(rt_bundle)["result_sinks"]
    assert [k["scheme"] for k in kinds] == list(SINKS.keys())
    assert all(k["installed"] for k in kinds)  # the [line] extra is installed for the tests
    from rich.console import Console

    con = Console(record=True, width=200)
    con.print(render(bundle_info(rt_bundle)))
    text = con.export_text()
    assert "--publish here" in text and "opc.tcp://" in text
