"""The line cell: changeover time (the first part of another product) with ``--load lazy`` and
``--load eager``, and the memory (RSS) each extra bundle costs.

Each round runs in a fresh process (so RSS and first-load costs are not shared between rounds):
open the products as ``watch``/``camera``/``serve`` do (:class:`runtime.line.products.Products`,
``RunOptions.load_predictor`` with ``--device cpu``, search and graph ``auto``), score parts of the first
product, then change over to each other product: the wall time of its first part (one
``score_by_product`` call, as the watcher makes it) against the median of its next parts.

    python benchmarks/cell.py --bundle a=DIR --images a=DIR --bundle b=DIR --images b=DIR [--rounds 3]

Prints a Markdown section for BENCHMARKS.md ("The line cell").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEADY = 5  # parts timed after the first, per product


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(bundles: dict[str, str], images: dict[str, str], load: str) -> dict:
    sys.path.insert(0, str(REPO))
    from runtime.line.run_options import RunOptions
    from runtime.line.products import Products, score_by_product
    from runtime.line.records import Item
    from runtime.line.reload import BundleSource

    quiet = lambda m: None  # noqa: E731
    base = rss_mib()
    t0 = time.perf_counter()
    products = Products({k: Path(v) for k, v in bundles.items()},
                        lambda p: BundleSource(p, RunOptions(device="cpu", graph="auto").load_predictor,
                                               log=quiet), load=load, log=quiet)
    out = {"load": load, "start_s": time.perf_counter() - t0, "rss_start": rss_mib() - base, "products": []}
    files = {k: sorted(Path(v).glob("*.png")) for k, v in images.items()}

    def part(name: str, i: int) -> float:
        f = files[name][i % len(files[name])]
        t = time.perf_counter()
        outcomes, _, _ = score_by_product(products, [Item(f.name, path=f)], lambda it: name, RunOptions())
        assert outcomes[0].error is None, outcomes[0].error
        return time.perf_counter() - t

    for name in bundles:
        first = part(name, 0)
        steady = [part(name, i) for i in range(1, STEADY + 1)]
        out["products"].append({"product": name, "first_s": first, "steady_s": statistics.median(steady),
                                "rss_after": rss_mib() - base})
    back = list(bundles)[0]
    out["back_first_s"] = part(back, STEADY + 1)  # back to the first product: already open
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", action="append", required=True, help="NAME=DIR, in changeover order")
    ap.add_argument("--images", action="append", required=True, help="NAME=DIR of PNG parts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    bundles = dict(v.split("=", 1) for v in a.bundle)
    images = dict(v.split("=", 1) for v in a.images)
    if a.child:
        print(json.dumps(child(bundles, images, a.child)))
        return
    runs = []
    for r in range(a.rounds):
        for load in ("lazy", "eager"):
            cmd = [sys.executable, __file__, *sum((["--bundle", v] for v in a.bundle), []),
                   *sum((["--images", v] for v in a.images), []), "--child", load]
            got = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if got.returncode:
                sys.exit(got.stderr[-3000:])
            runs.append(json.loads(got.stdout.strip().splitlines()[-1]))
    report(runs, a, bundles)


def report(runs: list[dict], a, bundles: dict[str, str]) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    load1 = os.getloadavg()[0]
    names = list(bundles)
    print("## The line cell: changeover and memory per bundle\n")
    print("_Written by `benchmarks/cell.py`._\n")
    print(f"- Command: `python benchmarks/cell.py {' '.join('--bundle ' + v for v in a.bundle)} "
          f"{' '.join('--images ' + v for v in a.images)} --rounds {a.rounds}` "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"- Machine: {cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, onnxruntime CPU "
          f"(`--device cpu`, search and graph auto); shared with other jobs (1-minute load {load1:.1f} at the end)")
    print(f"- Each round a fresh process per `--load`; medians of {a.rounds} rounds. \"first part\": wall time of the "
          f"product's first part (one `score_by_product` call, as `watch` makes it; lazy: its bundle opened then); "
          f"\"next parts\": median of the {STEADY} after it. RSS: growth over the process before any bundle.\n")
    print("| load | ready to score (s) | RSS at start (MiB) | product | first part (s) | next parts (s) | "
          "RSS after its parts (MiB) |")
    print("|---|---|---|---|---|---|---|")
    med = statistics.median
    for load in ("lazy", "eager"):
        rs = [r for r in runs if r["load"] == load]
        for i, name in enumerate(names):
            row = [x["products"][i] for x in rs]
            head = (f"{load} | {med(r['start_s'] for r in rs):.2f} | {med(r['rss_start'] for r in rs):.0f}"
                    if i == 0 else " | | ")
            print(f"| {head} | {name} | {med(r['first_s'] for r in row):.3f} | {med(r['steady_s'] for r in row):.3f} "
                  f"| {med(r['rss_after'] for r in row):.0f} |")
    lazy = [r for r in runs if r["load"] == "lazy"]
    per = [r["products"][i]["rss_after"] - r["products"][i - 1]["rss_after"] for r in lazy for i in range(1, len(names))]
    change = [r["products"][i]["first_s"] - r["products"][i]["steady_s"] for r in lazy for i in range(1, len(names))]
    eager = [r for r in runs if r["load"] == "eager"]
    change_e = [r["products"][i]["first_s"] - r["products"][i]["steady_s"] for r in eager for i in range(1, len(names))]
    print(f"\nChangeover (first part of another product minus its next parts, median): lazy +{med(change):.2f} s "
          f"(the bundle opened, search and graph timed), eager +{med(change_e):.3f} s. Each extra bundle adds "
          f"{med(per):.0f} MiB RSS (median over the lazy rounds; min {min(per):.0f}, max {max(per):.0f}). Back to the "
          f"first product: {med(r['back_first_s'] for r in runs):.3f} s for its next part.")


if __name__ == "__main__":
    main()
