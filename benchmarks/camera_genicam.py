"""Industrial cameras: frames/s, dropped and missed frames of ``patchcore-rt camera genicam://``
reading Aravis' fake GigE Vision camera on loopback (``arv-fake-gv-camera-0.8``).

For each camera frame rate (``--rates``), the fake camera runs free at that rate (Mono8, 128x128,
20 ms exposure) for about ``--seconds`` and ``patchcore-rt camera`` scores it on the CPU. Reported:
the rate frames were scored at (the camera's own timestamps of the scored frames), the frames
dropped (newest kept when the model is slower), missed (never arrived) and incomplete, and the
median model latency. A rate above what the model sustains shows the dropping.

Writes the "cameras" section of BENCHMARKS.md (``--report``).

    python benchmarks/camera_genicam.py                      # the tests' small synthetic bundle
    python benchmarks/camera_genicam.py --bundle models/demo --rates 10,25
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import replace_section  # noqa: E402
from serve_http import _cpu  # noqa: E402

REGION = {"x": 0, "y": 0, "width": 128, "height": 128}


def run_rate(bundle: Path, rate: float, seconds: float, tmp: Path) -> dict:
    from tests.fake_gv_camera import URL, FakeGvCamera

    settings = tmp / f"cam-{rate:g}.json"
    settings.write_text(json.dumps({"exposure_us": 20000, "pixel_format": "Mono8", "region": REGION,
                                    "frame_rate": rate}))
    n = max(10, int(min(rate, 10) * seconds))  # the model scores ~10+ frames/s here: bounded runs
    cmd = [sys.executable, "-m", "runtime", "camera", URL, "--bundle", str(bundle), "--settings", str(settings),
           "--out", str(tmp / f"out-{rate:g}"), "--device", "cpu", "--max-frames", str(n)]
    with FakeGvCamera():
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds * 4 + 120)
    if r.returncode != 0:
        raise SystemExit(f"camera run failed ({r.returncode}): {r.stderr[-2000:]}")
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    scored = [x for x in recs if "score" in x]
    stamps = [x["camera"]["timestamp_ns"] for x in scored[1:]]  # after the first, which starts the stream
    return {"camera_fps": rate, "scored": len(scored), "scored_fps": (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9),
            "dropped": recs[-1]["dropped"], "missed": recs[-1]["camera"]["missed"],
            "incomplete": sum(1 for x in recs if "error" in x),
            "latency_ms_median": float(np.median([x["latency_ms"] for x in scored[1:]])),
            "command": " ".join(["patchcore-rt", *cmd[3:]]).replace(str(tmp), "<tmp>").replace(f"{REPO}/", "")}


def _aravis_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libaravis-0.8-0"], capture_output=True, text=True)
    return r.stdout.split("-")[0] if r.returncode == 0 and r.stdout else "0.8"


def render(ctx: dict) -> str:
    lines = [
        "## Industrial cameras",
        "",
        f"`patchcore-rt camera genicam://127.0.0.1` scoring Aravis' fake GigE Vision camera "
        f"(`arv-fake-gv-camera-0.8 -i 127.0.0.1`, Aravis {ctx['aravis']}) on loopback, free-running, Mono8 "
        f"128x128, with the tests' small synthetic bundle (effnet-lite0, 128 px) on the CPU, one frame per "
        f"model call.",
        "",
        f"- Machine: {ctx['cores']} cores ({ctx['cpu']}), Python {ctx['python']}, onnxruntime CPU; load average "
        f"{ctx['load_before']:.1f} before the run (a shared machine).",
        f"- Command: `python benchmarks/camera_genicam.py --rates {ctx['rates']} --seconds {ctx['seconds']:g}` "
        f"(each rate: `{ctx['results'][0]['command']}` with that rate in the settings); {ctx['date']}.",
        "",
        "| camera frames/s | frames scored | scored frames/s | dropped | missed | incomplete | median latency ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in ctx["results"]:
        lines.append(f"| {x['camera_fps']:g} | {x['scored']} | {x['scored_fps']:.1f} | {x['dropped']} | "
                     f"{x['missed']} | {x['incomplete']} | {x['latency_ms_median']:.1f} |")
    lines += ["", "Scored frames/s is measured on the camera's own clock (timestamps of the scored frames). Where "
              "the camera is faster than the model, the newest frame is kept and the others are dropped "
              "(counted), never queued; missed counts frames the camera sent that never arrived."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--rates", default="5,10,25,100")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    from tests.fake_gv_camera import missing

    why = missing()
    if why:
        raise SystemExit(why)
    if args.bundle is None:
        from tests.conftest import _build_runtime_bundle

        args.bundle = _build_runtime_bundle(REPO / ".bench" / "serve")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_rate(args.bundle, float(r), args.seconds, Path(tmp)) for r in args.rates.split(",")]
    ctx = {"results": results, "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
           "aravis": _aravis_version(),
           "rates": args.rates, "seconds": args.seconds, "load_before": load_before,
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    for x in results:
        print(json.dumps(x))
    replace_section(args.report, "cameras", render(ctx))


if __name__ == "__main__":
    main()
