"""Timing and memory helpers shared by both benchmark workers.

Imports only the standard library and numpy, because the anomalib worker runs in its own
virtual environment, where the project is not installed.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]  # the checkout
MVTEC = ROOT.parent / "shared" / "datasets" / "mvtec_ad"  # the shared MVTec AD classes


def use_checkout() -> None:
    """Import the project's packages (patchcore, runtime) from this checkout."""
    import sys

    sys.path.insert(0, str(ROOT))


def worker_parser():
    """The arguments both tools' workers take, so run.py drives them with one argument list."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--coreset", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-latency", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--no-inference", action="store_true", help="fit and accuracy only")
    ap.add_argument("--max-train", type=int, default=0, help="first N train images only (development)")
    ap.add_argument("--max-test", type=int, default=0, help="first N good + first N defect test images (development)")
    return ap


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def latency_ms(call: Callable[[object], object], items: Sequence[object], warmup: int = 2) -> dict:
    """Median and p90 milliseconds of ``call(item)`` over ``items`` after ``warmup`` untimed calls."""
    for i in range(warmup):
        call(items[i % len(items)])
    times = []
    for it in items:
        t0 = time.perf_counter()
        call(it)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "n": len(times)}


def throughput(call: Callable[[list], object], images: Sequence[object], batch: int, repeats: int) -> dict:
    """Images per second of ``call(batch_of_images)``: median over ``repeats`` timed calls after
    one warm-up call. Images are cycled when there are fewer than ``batch``."""
    chunk = [images[i % len(images)] for i in range(batch)]
    call(chunk)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(chunk)
        rates.append(batch / (time.perf_counter() - t0))
    return {"images_per_s": statistics.median(rates), "batch": batch, "repeats": repeats}


def dir_size_mb(path: Path) -> float:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def write_json(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=float))


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section {name}: begin -->", f"<!-- section {name}: end -->"


def replace_section(path: Path, name: str, text: str) -> None:
    """Write ``text`` as the section ``name`` of the Markdown file ``path`` (between HTML comment
    markers; appended when the file has none yet), leaving the rest of the file as it is."""
    begin, end = _markers(name)
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    path.write_text(new)


def keep_sections(new_text: str, path: Path) -> str:
    """``new_text`` with the marked sections of the file at ``path`` (written by other scripts)
    appended, so a script that rewrites the whole file does not drop them."""
    old = Path(path).read_text() if Path(path).is_file() else ""
    blocks = []
    while "<!-- section " in old:
        start = old.index("<!-- section ")
        name = old[start + len("<!-- section "):].split(":", 1)[0]
        end = _markers(name)[1]
        if end not in old[start:]:
            break
        stop = old.index(end, start) + len(end)
        blocks.append(old[start:stop])
        old = old[stop:]
    return new_text.rstrip("\n") + "".join(f"\n\n{b}" for b in blocks) + "\n"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for a benchmark section's machine line."""
    import platform

    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
