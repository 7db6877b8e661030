"""Result sinks and the trigger handshake: what ``--publish`` costs and how fast the PLC gets an answer.

For each sink kind, against a real server on loopback (mosquitto, a throwaway PostgreSQL cluster,
a pymodbus server and asyncua servers in this process standing in for PLCs, as the tests use):

* **added per result**: the time ``Publisher.publish`` takes in the scoring thread (the outbox
  insert; what a result waits for), median over ``--results`` results;
* **send**: the sender thread's time per result (``Sink.send``, the round trip to the server), median;
* **results/s**: ``--results`` results published at once, until the sink has taken the last one.

Then the trigger handshake: ``patchcore-rt camera --trigger`` on a video (``--realtime``) against an
asyncua PLC; the PLC raises the trigger ``--triggers`` times and measures until it sees "result
ready" (and the runtime's own ``trigger_ms``), including scoring one frame with the tests' small
bundle (effnet-lite0, 128 px).

Writes the "sinks" section of BENCHMARKS.md and ``.bench/sinks/result.json``.

    python benchmarks/sinks.py [--results 500] [--triggers 30]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name, replace_section  # noqa: E402

from runtime.line.sinks.delivery import Publisher  # noqa: E402
from tests import line_servers as ls  # noqa: E402


def _record(i: int) -> dict:
    return {"file": f"part{i:06d}.png", "score": 1.0 + i % 7, "normalised": 0.1 * (i % 9), "verdict": "ok" if i % 5
            else "ng", "latency_ms": 12.3, "bundle": "bench-bundle", "time": "2026-01-01T00:00:00.000Z",
            "size": 1234, "mtime_ns": i}


def measure(url: str, n: int, folder: Path) -> dict:
    with Publisher([url], folder, lambda m: None) as pub:
        sink = pub.deliveries[0].sink
        sends = []
        orig = sink.send

        def timed(rec, rid):
            t = time.perf_counter()
            orig(rec, rid)
            sends.append(time.perf_counter() - t)

        sink.send = timed
        for i in range(20):  # warm-up (connections, prepared statements)
            pub.publish(_record(-1 - i))
        end = time.monotonic() + 30
        while pub.stats()[0].delivered < 20 and time.monotonic() < end:
            time.sleep(0.005)
        sends.clear()
        adds = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            pub.publish(_record(i))
            adds.append(time.perf_counter() - t)
        end = time.monotonic() + 300
        while pub.stats()[0].delivered < 20 + n and time.monotonic() < end:
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        delivered = pub.stats()[0].delivered - 20
    return {"added_ms": 1000 * statistics.median(adds), "send_ms": 1000 * statistics.median(sends),
            "results_per_s": delivered / elapsed, "delivered": delivered}


def sinks(n: int, root: Path) -> dict:
    out = {}
    db = root / "results.db"
    out["sqlite"] = measure(f"sqlite:///{db}", n, root / "o-sqlite")
    with ls.Mosquitto(root / "broker") as b:
        out["mqtt"] = measure(f"mqtt://127.0.0.1:{b.port}/bench", n, root / "o-mqtt")
    pg = ls.Postgres().start()
    try:
        out["postgresql"] = measure(pg.url, n, root / "o-pg")
    finally:
        pg.stop()
    plc = ls.ModbusPlc().start()
    try:
        out["modbus"] = measure(f"modbus://127.0.0.1:{plc.port}?unit=1", n, root / "o-modbus")
    finally:
        plc.close()
    out["opc.tcp (server)"] = measure(f"opc.tcp://127.0.0.1:{ls.free_port()}?serve", n, root / "o-opcs")
    with ls.OpcUaPlc() as p:
        m = root / "nodes.json"
        m.write_text(json.dumps({"nodes": {"verdict": p.node("Verdict"), "normalised": p.node("Normalised"),
                                           "part_id": p.node("PartId"), "counter": p.node("Counter")}}))
        out["opc.tcp (client, 4 nodes)"] = measure(f"{p.url}?map={m}", n, root / "o-opcc")
    return out


def trigger(triggers: int, root: Path) -> dict:
    import cv2

    from tests.conftest import _build_runtime_bundle

    bundle = _build_runtime_bundle(REPO / ".bench" / "sinks")
    frames = [cv2.imread(str(p)) for p in sorted((bundle.parent / "data" / "brick" / "test").rglob("*.png"))]
    video = root / "line.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (128, 128))
    for i in range(25 * 120):
        w.write(frames[(i // 25) % len(frames)])
    w.release()
    with ls.OpcUaPlc() as plc:
        m = root / "handshake.json"
        m.write_text(json.dumps({"nodes": {"ready": plc.node("Ready"), "part_in": plc.node("PartIn"),
                                           "part_id": plc.node("PartId"), "verdict": plc.node("Verdict"),
                                           "counter": plc.node("Counter")}}))
        cmd = [sys.executable, "-m", "runtime", "camera", str(video), "--bundle", str(bundle), "--realtime",
               "--device", "cpu", "--out", str(root / "ng"), "--max-frames", str(triggers + 3), "--trigger",
               f"{plc.url}?map={m}#{plc.node('Trigger')}"]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        plc_ms = []
        for i in range(triggers + 3):  # 3 warm-up triggers
            plc.set("PartIn", f"P{i}")
            t0 = time.perf_counter()
            plc.set("Trigger", True)
            while not (plc.get("Ready") and not plc.get("Trigger")):
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read())
                time.sleep(0.001)
            plc_ms.append(1000 * (time.perf_counter() - t0))
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    recs = [json.loads(x) for x in out.splitlines() if x.startswith("{")][3:]
    q = lambda v, p: sorted(v)[max(0, round(p * len(v)) - 1)]  # noqa: E731
    rt = [r["trigger_ms"] for r in recs]
    lat = [r["latency_ms"] for r in recs]
    plc_ms = plc_ms[3:]
    return {"triggers": len(rt), "runtime_ms_median": statistics.median(rt), "runtime_ms_p95": q(rt, 0.95),
            "plc_ms_median": statistics.median(plc_ms), "plc_ms_p95": q(plc_ms, 0.95),
            "scoring_ms_median": statistics.median(lat)}


def render(ctx: dict) -> str:
    rows = ["| sink | added per result (scoring thread), median ms | send per result (sender thread), median ms | "
            "results/s through it |", "|---|---|---|---|"]
    for k, v in ctx["sinks"].items():
        rows.append(f"| `{k}` | {v['added_ms']:.3f} | {v['send_ms']:.2f} | {v['results_per_s']:.0f} |")
    t = ctx["trigger"]
    return "\n".join([
        "## Result sinks (`--publish`) and the trigger handshake",
        "",
        "_Written by `benchmarks/sinks.py`; `benchmarks/run.py` keeps this section._",
        "",
        f"- Command: `{ctx['command']}` ({ctx['date']}); machine: {ctx['cores']} cores ({ctx['cpu']}), Python "
        f"{ctx['python']}; every server on loopback on the same machine (mosquitto, PostgreSQL "
        f"{ctx['postgres']}, pymodbus and asyncua servers in the benchmark's process standing in for PLCs), "
        "shared with other jobs: compare within the table.",
        f"- {ctx['results']} results per sink, published as fast as possible after 20 warm-up results. "
        "*Added per result*: what `publish` costs the scoring thread (the outbox insert, SQLite WAL without "
        "fsync), the only cost scoring sees whatever the sink; *send*: the sender thread's round trip to the "
        "server per result (MQTT: until the broker's PUBACK); *results/s*: until the sink took the last one.",
        "",
        *rows,
        "",
        f"Trigger handshake (`camera --trigger`, OPC UA, {t['triggers']} triggers after 3 warm-up ones; a 128 px "
        "video frame scored by the tests' small effnet-lite0 bundle, onnxruntime CPU): from the PLC raising the "
        f"trigger to it seeing \"result ready\" **{t['plc_ms_median']:.1f} ms median, {t['plc_ms_p95']:.1f} ms p95** "
        f"(the runtime's own `trigger_ms`, from seeing the trigger to raising ready: {t['runtime_ms_median']:.1f} ms "
        f"median, {t['runtime_ms_p95']:.1f} ms p95; of which scoring the frame {t['scoring_ms_median']:.1f} ms "
        f"median). The remaining {t['runtime_ms_median'] - t['scoring_ms_median']:.1f} ms of the runtime's median "
        "are the handshake's 8 OPC UA calls (ready low, the part id read, 5 result nodes, ready high, the trigger "
        f"cleared; the client row above measures {ctx['sinks']['opc.tcp (client, 4 nodes)']['send_ms'] / 4:.2f} ms "
        "per node written) and, for a defective part, saving its frame and overlay; the PLC's side adds its own 1 ms "
        "poll and the 2 ms trigger poll. The p95 is the shared 2-core machine's (other jobs ran beside it).",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=int, default=500)
    ap.add_argument("--triggers", type=int, default=30)
    ap.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--report-only", action="store_true", help="Re-render from .bench/sinks/result.json.")
    args = ap.parse_args()
    if args.report_only:
        ctx = json.loads((REPO / ".bench" / "sinks" / "result.json").read_text())
        replace_section(args.report, "sinks", render(ctx))
        return
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        ctx = {"sinks": sinks(args.results, root), "trigger": trigger(args.triggers, root)}
    pg = subprocess.run([ls._pg_bin("initdb") or "initdb", "--version"], capture_output=True, text=True).stdout
    ctx.update({"command": "python benchmarks/sinks.py " + " ".join(sys.argv[1:]), "results": args.results,
                "date": _dt.date.today().isoformat(), "cpu": cpu_name(), "cores": os.cpu_count(),
                "python": platform.python_version(), "postgres": (re.findall(r"\d+\.\d+", pg) or ["?"])[0]})
    (REPO / ".bench" / "sinks").mkdir(parents=True, exist_ok=True)
    (REPO / ".bench" / "sinks" / "result.json").write_text(json.dumps(ctx, indent=2))
    replace_section(args.report, "sinks", render(ctx))
    print(render(ctx))


if __name__ == "__main__":
    main()
