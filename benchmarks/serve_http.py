"""The cost of HTTP: ``/v1/predict`` of ``patchcore-rt serve`` against the in-process Predictor.

For 1, 4 and 16 concurrent clients, each sending one image at a time for ``--seconds``:
requests/s and latency percentiles (p50/p90/p99) of

* ``http``: the real server (``python -m runtime serve``, uvicorn, its batcher with the given
  ``--max-batch``/``--max-wait-ms``) on a free local port, driven by asyncio clients (httpx) in
  this process, raw PNG bytes per request; also the mean batch the server formed (from /metrics);
* ``in-process``: the same number of threads calling ``Predictor.predict([decode(bytes)])`` on
  the same bundle (decode included, as the server does; no batching, no HTTP).

Writes the "serve" section of BENCHMARKS.md (``--report``) and the raw figures to
``.bench/serve/result.json``. Server and clients share the machine's cores, as on an edge box
with the line's client on it.

    python benchmarks/serve_http.py --bundle models/demo --images datasets/synthetic/brick/test
    python benchmarks/serve_http.py            # builds the tests' small synthetic bundle in .bench/serve
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import replace_section  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99))}


async def _http_level(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        async def worker(k: int, t_end: float, record: bool) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                r = await c.post("/v1/predict", content=bodies[i % len(bodies)])
                if record:
                    lat.append(time.perf_counter() - t0) if r.status_code == 200 else None
                    errors += r.status_code != 200
                i += clients

        warm = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(worker(k, warm, False) for k in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k, t0 + seconds, True) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "wall": wall, "errors": errors}


def _inprocess_level(predictor, bodies: list[bytes], clients: int, seconds: float) -> dict:
    from runtime.images import decode_image

    lat: list[float] = []
    lock = threading.Lock()

    def worker(k: int, t_end: float, record: bool) -> None:
        i = k
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            predictor.predict([decode_image(bodies[i % len(bodies)], "bench")])
            if record:
                with lock:
                    lat.append(time.perf_counter() - t0)
            i += clients

    for t_end, record in ((time.perf_counter() + min(1.0, seconds / 4), False), (None, True)):
        t0 = time.perf_counter()
        end = t_end if t_end is not None else t0 + seconds
        threads = [threading.Thread(target=worker, args=(k, end, record)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    return {"lat": lat, "wall": wall, "errors": 0}


def _combine(runs: list[dict]) -> dict:
    """Rounds of one level as one figure: all latencies, requests over the summed wall time."""
    lat = [x for r in runs for x in r["lat"]]
    wall = sum(r["wall"] for r in runs)
    return {"requests": len(lat), "errors": sum(r["errors"] for r in runs), "rps": len(lat) / wall,
            **_percentiles(lat)}


def _batches(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(url + "/metrics").text
    get = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return get("patchcore_batch_size_sum"), get("patchcore_batch_size_count")


def _default_bundle() -> tuple[Path, Path]:
    from tests.conftest import _build_runtime_bundle

    bundle = _build_runtime_bundle(REPO / ".bench" / "serve")
    return bundle, bundle.parent / "data" / "brick" / "test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--images", type=Path, help="folder of images (recursive; default: the bundle's test images)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=12.0, help="timed seconds per level and side")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of in-process and HTTP per level")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    bundle, images = (args.bundle, args.images) if args.bundle else _default_bundle()
    images = images or bundle.parent / "data" / "brick" / "test"
    bodies = [p.read_bytes() for p in sorted(images.rglob("*.png"))[:64]]
    if not bodies:
        raise SystemExit(f"no PNG images under {images}")
    levels = [int(x) for x in args.clients.split(",")]
    load_before = os.getloadavg()[0]

    from runtime.predictor import Predictor

    predictor = Predictor(bundle, device="cpu")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), "--port", str(port), "--device", "cpu",
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "256"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    inproc, http = {}, {}
    try:
        import httpx

        for _ in range(240):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        else:
            raise SystemExit("serve did not start")
        for n in levels:  # side by side, in alternating rounds: both see the same load over time
            runs_i, runs_h, size, calls = [], [], 0.0, 0.0
            for _ in range(args.rounds):
                runs_i.append(_inprocess_level(predictor, bodies, n, args.seconds / args.rounds))
                s0, c0 = _batches(url)
                runs_h.append(asyncio.run(_http_level(url, bodies, n, args.seconds / args.rounds)))
                s1, c1 = _batches(url)
                size, calls = size + s1 - s0, calls + c1 - c0
            inproc[n], http[n] = _combine(runs_i), _combine(runs_h)
            http[n]["mean_batch"] = size / max(1.0, calls)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    ctx = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "bundle": str(bundle),
           "images": len(bodies), "image_size": _size(bodies[0]), "cpu": _cpu(), "cores": os.cpu_count(),
           "python": platform.python_version(), "seconds": args.seconds, "max_batch": args.max_batch,
           "max_wait_ms": args.max_wait_ms, "rounds": args.rounds, "load": [load_before, os.getloadavg()[0]], "command": " ".join(["python benchmarks/serve_http.py", *sys.argv[1:]]),
           "http": http, "inprocess": inproc}
    out = REPO / ".bench" / "serve" / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ctx, indent=1))
    replace_section(args.report, "serve", render(ctx))
    print(render(ctx))


def _size(data: bytes) -> str:
    import cv2

    h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
    return f"{w}x{h}"


def _cpu() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def render(ctx: dict) -> str:
    rows = ["| clients | in-process req/s | HTTP req/s | HTTP / in-process | in-process p50 / p90 / p99 ms | "
            "HTTP p50 / p90 / p99 ms | mean batch (HTTP) |", "|---|---|---|---|---|---|---|"]
    for n, h in ctx["http"].items():
        i = ctx["inprocess"][n]
        rows.append(f"| {n} | {i['rps']:.1f} | {h['rps']:.1f} | {h['rps'] / i['rps']:.2f} | "
                    f"{i['p50_ms']:.1f} / {i['p90_ms']:.1f} / {i['p99_ms']:.1f} | "
                    f"{h['p50_ms']:.1f} / {h['p90_ms']:.1f} / {h['p99_ms']:.1f} | {h['mean_batch']:.2f} |")
    return "\n".join([
        "## Serve: the cost of HTTP (`/v1/predict` vs the in-process Predictor)",
        "",
        "_Written by `benchmarks/serve_http.py`; `benchmarks/run.py` keeps this section._",
        "",
        f"- Command: `{ctx['command']}` ({ctx['date']}); {ctx['seconds']:.0f} s timed per level and side, in "
        f"{ctx['rounds']} alternating rounds of in-process then HTTP (each after a short warm-up), so both see the "
        "same load over time.",
        f"- Machine: {ctx['cores']} cores ({ctx['cpu']}), Python {ctx['python']}, onnxruntime CPU; the server and "
        f"its clients (asyncio + httpx, one process) share the cores; 1-minute load average {ctx['load'][0]:.1f} "
        f"before and {ctx['load'][1]:.1f} after the run (other jobs on the machine: compare within this table).",
        f"- Bundle: `{Path(ctx['bundle']).name}` ({ctx['images']} PNG images of {ctx['image_size']} px, sent as raw "
        f"bytes); server `--max-batch {ctx['max_batch']} --max-wait-ms {ctx['max_wait_ms']:g}`.",
        "- In-process: the same number of threads, each calling `Predictor.predict([decode(bytes)])` in turn "
        "(no HTTP, no batching). Latency: from sending a request to its answer (client side).",
        "",
        *rows,
        "",
        _reading(ctx),
    ])


def _reading(ctx: dict) -> str:
    """One sentence read off the table (computed, so it follows the figures)."""
    levels = list(ctx["http"])
    one, top = levels[0], levels[-1]
    h1, i1 = ctx["http"][one], ctx["inprocess"][one]
    ht, it = ctx["http"][top], ctx["inprocess"][top]
    return (f"With {one} client HTTP adds {h1['p50_ms'] - i1['p50_ms']:+.1f} ms at the median "
            f"({h1['rps'] / i1['rps']:.2f}x the in-process rate); with {top} clients the server's batches (mean "
            f"{ht['mean_batch']:.1f} requests per model call) give {ht['rps'] / it['rps']:.2f}x the rate of {top} "
            "threads calling the Predictor one image at a time.")


if __name__ == "__main__":
    main()
