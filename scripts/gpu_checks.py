#!/usr/bin/env python
"""Every GPU check of patchcore-rt in one run, within a time budget, with a report.

    python scripts/gpu_checks.py [--phase torch|ort|all] [--budget-s 420] [--out DIR] [--work DIR]
                                 [--only A,B] [--skip A,B] [--resume] [--dry-run] [--strict] [--rehearse]

Checks (``gpu_suite.CHECKS``, in this order, the most valuable figures first per phase):
torch-features, fit, coreset (phase torch: PyTorch on CUDA); ort-provider, parity-effnet-lite0,
throughput-wrn50, parity-wrn50, throughput-effnet-lite0, gpu-search, faiss-gpu, tensorrt (phase
ort: onnxruntime's CUDA provider, faiss, TensorRT). Each is ok, fail or skip with the reason; one
that would not finish inside the budget is skipped as such. The data and bundles are made in
``--work`` (the synthetic class at bottle's size; nothing needs ../shared).

``OUT/gpu_report.json`` and ``OUT/gpu_report.md`` (OUT: ``--out``, else ``$OUT``, else
results/gpu_checks) are rewritten after every check, so a run cut short still leaves a report;
with ``--resume`` the report kept in ``--work`` by an earlier run is continued (checks already ok
or failed are not run again). Exit status 0 when nothing failed (skips are fine; with
``--strict`` a skip fails too), 1 else, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gpu_suite import CHECKS, PROBES, Context, Skip, needed_seconds  # noqa: E402

REPORT = "gpu_report"
PHASES = ("torch", "ort", "all")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment(ctx: Context) -> dict:
    """What the box is: GPU, driver, CPU, Python and the GPU stacks (no probe that loads a GPU library)."""
    env: dict = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine()}
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = res.stdout.strip() or res.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"failed: {e}"
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, torch_sees_gpu=torch.cuda.is_available())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        env["torch"] = None
    except Exception as e:  # a driver that torch finds but cannot use: the checks will say so
        env["torch_error"] = f"{type(e).__name__}: {e}"
    ld = os.environ.get("LD_LIBRARY_PATH", "")
    env["ld_library_path_nvidia_dirs"] = [p for p in ld.split(":") if "nvidia" in p]
    return env


def _markdown(report: dict) -> str:
    from gpu_report_md import render

    return render(report)


def write_report(report: dict, out: Path, work: Path | None) -> None:
    from runtime.fileio import atomic_write

    report["updated"] = _now()
    text = json.dumps(report, indent=1, default=str) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{REPORT}.json", text.encode())
    atomic_write(out / f"{REPORT}.md", _markdown(report).encode())
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write(work / f"{REPORT}.json", text.encode())


def _short_traceback() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return "\n".join(lines[-12:])


def selected(phase: str, only: set[str] | None, skip: set[str]):
    return [c for c in CHECKS if (phase == "all" or c.phase == phase) and (not only or c.name in only)
            and c.name not in skip]


def unmet(ctx: Context, requires) -> str | None:
    for name in requires:
        reason = PROBES[name](ctx)
        if reason:
            return reason
    return None


def run_one(ctx: Context, check) -> dict:
    reason = unmet(ctx, check.requires)
    if reason:
        return {"status": "skip", "reason": reason}
    need = needed_seconds(ctx, check)
    if ctx.left() < need:
        return {"status": "skip", "reason": f"time budget: needs about {need:.0f} s, {max(ctx.left(), 0):.0f} s left"}
    t0 = time.perf_counter()
    try:
        res = check.fn(ctx)
    except Skip as e:
        res = {"status": "skip", "reason": str(e)}
    except Exception as e:  # a check that crashes is a failure, with where it crashed
        res = {"status": "fail", "error": f"{type(e).__name__}: {e}", "traceback": _short_traceback()}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def dry_run(ctx: Context, checks) -> str:
    lines = [f"{'check':24} {'phase':6} {'~s':>5}  plan"]
    for c in checks:
        reason = unmet(ctx, c.requires)
        plan = f"skip: {reason}" if reason else "run"
        lines.append(f"{c.name:24} {c.phase:6} {c.estimate_s:5.0f}  {plan}")
        lines.append(f"{'':37}{c.proves}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=PHASES, default="all")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting checks that would end after this")
    ap.add_argument("--out", type=Path, help="report folder (default $OUT, else results/gpu_checks)")
    ap.add_argument("--work", type=Path, help="data and bundles (default: a temporary folder)")
    ap.add_argument("--only", help="comma-separated checks to run: " + ", ".join(c.name for c in CHECKS))
    ap.add_argument("--skip", default="", help="comma-separated checks not to run")
    ap.add_argument("--resume", action="store_true", help="continue the report kept in --work")
    ap.add_argument("--dry-run", action="store_true", help="list what would run and what would be skipped, and why")
    ap.add_argument("--strict", action="store_true", help="a skipped check fails too (for a GPU runner)")
    ap.add_argument("--rehearse", action="store_true",
                    help="run every check on the CPU with tiny data (tests this script; its figures mean nothing)")
    args = ap.parse_args(argv)
    names = {c.name for c in CHECKS}
    only = {s for s in (args.only or "").split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    unknown = sorted((only | skip) - names)
    if unknown:
        ap.error(f"unknown check(s) {', '.join(unknown)}; checks: {', '.join(c.name for c in CHECKS)}")
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")
    if args.resume and not args.work:
        ap.error("--resume needs --work (where the earlier report is kept)")
    start = time.perf_counter()
    checks = selected(args.phase, only, skip)
    temp = None if args.work else Path(tempfile.mkdtemp(prefix="gpu-checks-"))
    work = args.work or temp
    ctx = Context(work=work, deadline=start + args.budget_s, rehearse=args.rehearse,
                  log=lambda s: print(s, file=sys.stderr))
    if args.dry_run:
        print(dry_run(ctx, checks))
        return 0
    out = args.out or Path(os.environ.get("OUT") or "results/gpu_checks")
    report: dict = {}
    if args.resume and (work / f"{REPORT}.json").is_file():
        report = json.loads((work / f"{REPORT}.json").read_text())
    report.setdefault("started", _now())
    report.setdefault("checks", {})
    report["rehearsal"] = args.rehearse
    report["environment"] = environment(ctx)
    report.setdefault("runs", []).append({"phase": args.phase, "budget_s": args.budget_s, "started": _now()})
    report["order"] = [c.name for c in CHECKS]
    try:
        write_report(report, out, args.work)
        for check in checks:
            done = report["checks"].get(check.name, {}).get("status") in ("ok", "fail")
            if args.resume and done:
                continue
            print(f"== {check.name}", file=sys.stderr)
            report["checks"][check.name] = {"phase": check.phase, "proves": check.proves, **run_one(ctx, check)}
            if "ort" in ctx.probes:
                report["environment"]["onnxruntime"] = ctx.probes["ort"]
            report["runs"][-1]["seconds"] = round(time.perf_counter() - start, 1)
            write_report(report, out, args.work)
            res = report["checks"][check.name]
            print(f"   {res['status']}" + (f": {res.get('reason') or res.get('error')}" if res["status"] != "ok" else ""),
                  file=sys.stderr)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    print(_markdown(report))
    print(f"report: {out / REPORT}.json and .md", file=sys.stderr)
    bad = ("fail", "skip") if args.strict else ("fail",)
    return 1 if any(report["checks"].get(c.name, {}).get("status") in bad for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
