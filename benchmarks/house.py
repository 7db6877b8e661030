"""The "One house" section of BENCHMARKS.md: the code's plan measured on two revisions side by side
(issue 40): import circles, imports from a lower layer up, the largest module, and what a command
costs to start (the layers decide what ``patchcore-rt --help`` and ``import runtime`` load).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/house.py --before 3a5b302 [--repeats 9]

``--before`` is checked out into a temporary git worktree; both trees run with this checkout's
interpreter, each with its own tree first on ``sys.path``. Start-up times are the median of
``--repeats`` fresh interpreters, the two revisions alternating, so a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_name, replace_section  # noqa: E402

SECTION = "one-house"
STARTS = {
    "import runtime": "import runtime",
    "patchcore-rt --help": "import sys; sys.argv = ['patchcore-rt', '--help']\n"
                           "try:\n    import runtime.__main__\nexcept SystemExit:\n    pass",
}


def plan_facts(tree: Path) -> dict:
    """Circles, arrows up and sizes, read with tests/test_layers.py's reader from ``tree``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import importlib

    layers = importlib.import_module("test_layers")
    old_root, old_mods = layers.ROOT, layers.MODULES
    try:
        layers.ROOT = tree
        layers.MODULES = layers._modules()
        graph = {m: layers.imports_of(m) for m in layers.MODULES}
        circles = layers.circles(graph)
        up = [(m, t) for m in graph if not m.endswith("__main__") for t in graph[m]
              if layers.layer_of(t) > layers.layer_of(m)]
        sizes = {str(p.relative_to(tree)): p.read_text().count("\n") for p in layers.MODULES.values()}
    finally:
        layers.ROOT, layers.MODULES = old_root, old_mods
    big = max(sizes, key=sizes.get)
    return {"modules": len(sizes), "lines": sum(sizes.values()), "circles": len(circles),
            "in_circles": sum(len(c) for c in circles), "arrows_up": len(up),
            "over_500": sum(n > 500 for n in sizes.values()), "largest": f"{big} ({sizes[big]})"}


def start_ms(tree: Path, code: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True)
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the revision to compare with (a commit)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    before_rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
    after_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), before_rev], cwd=ROOT, check=True)
        try:
            trees = {"before": before, "after": ROOT}
            facts = {k: plan_facts(t) for k, t in trees.items()}
            times = {(k, s): [] for k in trees for s in STARTS}
            for _ in range(args.repeats):
                for s, code in STARTS.items():
                    for k, t in trees.items():
                        times[(k, s)].append(start_ms(t, code))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    med = {key: statistics.median(v) for key, v in times.items()}
    rows = [("modules in runtime/, patchcore/, export/", "modules"), ("lines", "lines"),
            ("import circles (modules in them)", None), ("imports from a lower layer up", "arrows_up"),
            ("modules over 500 lines", "over_500"), ("largest module (lines)", "largest")]
    lines = ["## One house: the code's plan, before and after (issue 40)", "",
             f"Written by `python benchmarks/house.py --before {args.before} --repeats {args.repeats}` on "
             f"{_dt.date.today().isoformat()} ({cpu_name()}); before = {before_rev}, after = {after_rev}. Circles and "
             "arrows are read by `tests/test_layers.py`'s reader (the layers: runtime core < line < serve < cli < "
             "patchcore < export) on each tree; start-up = median of fresh interpreters, the revisions alternating.", "",
             "| | before | after |", "|---|---|---|"]
    for label, key in rows:
        if key is None:
            cells = [f"{facts[k]['circles']} ({facts[k]['in_circles']})" for k in ("before", "after")]
        else:
            cells = [str(facts[k][key]) for k in ("before", "after")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for s in STARTS:
        b, a = med[("before", s)], med[("after", s)]
        lines.append(f"| `{s}`, ms (median) | {b:.0f} | {a:.0f} ({a / b:.2f}x) |")
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
