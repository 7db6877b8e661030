"""patchcore-rt against anomalib's PatchCore on one MVTec AD class; rewrites BENCHMARKS.md.

    python benchmarks/run.py                 # everything (~70 min on 2 cores: anomalib's 10% coresets
                                             # take ~20 min per backbone)
    python benchmarks/run.py --no-anomalib-10  # without anomalib at 10% (~25 min)
    python benchmarks/run.py --quick         # development: 30 train / 20 test images, few repeats

Backbones and runs: ``plan.py``. anomalib is installed into its own virtual environment
(``.bench/anomalib-venv``, git-ignored) and driven by ``anomalib_worker.py`` in a subprocess;
patchcore-rt runs in ``ours_worker.py``, also in a subprocess, so each tool's peak RSS is its
own. Both tools load the same weights per backbone (checked on a probe input). Workers write JSON
and prediction arrays; this script computes every accuracy figure with ``patchcore.metrics`` on
both tools' outputs and rewrites the report (``report.py``) after each run, so an interrupted run
still leaves a truthful, partial report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from common import keep_sections  # noqa: E402

BENCH = ROOT / ".bench"
VENV = BENCH / "anomalib-venv"
VPY = VENV / "bin" / "python"
WEIGHTS = BENCH / "wrn50_random.pt"
ANOMALIB_PINS = ["torch==2.14.1", "torchvision==0.29.1", "anomalib==2.7.0", "onnx==1.23.2", "onnxscript==0.7.2"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- setup
def ensure_anomalib_venv() -> None:
    """Create .bench/anomalib-venv with anomalib (and onnx export deps) unless it already imports; the venv
    sees this one's packages, so torch (pinned to this venv's version) is not downloaded a second time."""
    if VPY.exists() and subprocess.run([str(VPY), "-c", "import anomalib, onnxscript, onnxruntime"],
                                       capture_output=True).returncode == 0:
        return
    import onnxruntime

    log(f"installing anomalib into {VENV} (one-off, a few minutes)")
    if not VPY.exists():
        import sysconfig

        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        # layered on this venv (a .pth line): its torch, onnxruntime and openvino are reused, not downloaded
        # again; what anomalib needs in other versions goes into the anomalib venv, which comes first
        site = Path(subprocess.run([str(VPY), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        (site / "project-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pins = ANOMALIB_PINS + [f"onnxruntime=={onnxruntime.__version__}"]
    subprocess.run([str(VPY), "-m", "pip", "install", "--quiet", *pins], check=True)


def ensure_weights() -> None:
    if WEIGHTS.is_file():
        return
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.wide_resnet50_2(weights=None)
    BENCH.mkdir(exist_ok=True)
    torch.save(net.state_dict(), WEIGHTS)
    log(f"wrote {WEIGHTS}")


def ensure_probe(backbone: str) -> Path:
    """Our trunk's outputs for a fixed random input, for the anomalib worker to compare against."""
    import torch
    from plan import ours_weights

    from patchcore.backbones import create_trunk

    path = BENCH / f"probe_{backbone}.npz"
    trunk, _, _ = create_trunk(backbone, None, ours_weights(backbone, BENCH), 0)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        feats = trunk.eval()(x)
    np.savez(path, x=x.numpy(), **{f"f{i}": f.numpy() for i, f in enumerate(feats)})
    return path


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "os": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    import cv2
    import onnxruntime
    import torch

    import runtime

    ours = {"patchcore-rt": runtime.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__}
    code = ("import json, anomalib, torch, timm, lightning, onnxruntime, numpy; print(json.dumps({'anomalib': "
            "anomalib.__version__, 'torch': torch.__version__, 'timm': timm.__version__, 'lightning': "
            "lightning.__version__, 'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__}))")
    r = subprocess.run([str(VPY), "-c", code], capture_output=True, text=True)
    theirs = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-300:]}
    return {"patchcore-rt venv": ours, "anomalib venv": theirs}


# ---------------------------------------------------------------------------------- running
def run_worker(python: Path | str, script: str, args: list[str], out: Path, logfile: Path,
               env: dict | None = None) -> dict | None:
    cmd = [str(python), str(HERE / script), *args, "--out", str(out)]
    log("running " + " ".join(shlex.quote(c) for c in cmd) + (f" with {env}" if env else ""))
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}).returncode
    log(f"{script} finished rc={rc} in {time.perf_counter() - t0:.0f}s (log {logfile})")
    res_file = out / "result.json"
    if rc != 0 or not res_file.is_file():
        tail = logfile.read_text()[-1500:] if logfile.is_file() else ""
        return {"failed": True, "rc": rc, "log_tail": tail}
    return json.loads(res_file.read_text())


def test_samples(data: Path, max_test: int):
    from patchcore.data import load_class

    ds = load_class(data)
    test = ds.test
    if max_test:
        test = [s for s in test if s.label == 0][:max_test] + [s for s in test if s.label == 1][:max_test]
    return test


def ground_truth(test):
    """Labels and 224x224 masks: shorter side resized to 256 (nearest), center crop 224, the
    geometry both tools feed their networks (bottle images are square, so anomalib's
    Resize((256, 256)) and our shorter-side 256 agree)."""
    from patchcore.data import load_mask
    from runtime.images import read_image
    from runtime.preprocess import PreprocessSpec, preprocess_mask

    spec = PreprocessSpec(resize=256, crop=224)
    labels = np.array([s.label for s in test])
    masks = np.stack([preprocess_mask(load_mask(s, read_image(s.path).shape), spec) for s in test])
    return labels, masks


def accuracy(pred_file: Path, labels, masks) -> dict | None:
    from patchcore.metrics import evaluate

    if not pred_file.is_file():
        return None
    p = np.load(pred_file)
    maps = p["maps"]
    if maps.shape != masks.shape:
        raise RuntimeError(f"{pred_file}: maps {maps.shape} do not match masks {masks.shape}")
    m = evaluate(labels, p["image_scores"], masks, maps)
    return {"image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc, "pro": m.pro}



def paired_stage(ctx: dict, work: Path, data: Path, n_latency: int, max_test: int, ours_key: str, theirs_key: str) -> None:
    """Time our runtime and anomalib's ONNX alternately in this process (see paired.py)."""
    from paired import paired_latency

    bundle = work / ours_key / "bundle"
    onnx = work / theirs_key / "export" / "weights" / "onnx" / "model.onnx"
    if not (bundle / "manifest.json").is_file() or not onnx.is_file():
        log(f"paired latency {ours_key} vs {theirs_key} skipped: bundle or anomalib ONNX missing")
        return
    paths = [s.path for s in test_samples(data, max_test)][:n_latency]
    try:
        r = paired_latency(bundle, onnx, paths)
        ctx.setdefault("paired", {})[f"{ours_key}|{theirs_key}"] = r
        log(f"paired latency {ours_key} vs {theirs_key}: {r}")
    except Exception as e:  # report, keep the rest
        log(f"paired latency failed: {type(e).__name__}: {e}")


def main(argv=None) -> int:
    from plan import BACKBONES, Run, runs_for
    from report import render

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "mvtec_ad" / "bottle"))
    ap.add_argument("--quick", action="store_true", help="30 train / 10+10 test images, 4 latency images, 1 repeat")
    ap.add_argument("--no-anomalib-10", action="store_true", help="skip anomalib at its default 10%% (~20 min per backbone)")
    ap.add_argument("--backbone", action="append", choices=sorted(BACKBONES), help="only this backbone (repeatable)")
    ap.add_argument("--out", default=None, help="report path (default BENCHMARKS.md; .bench/BENCHMARKS.quick.md with --quick)")
    ap.add_argument("--work", default=str(BENCH / "run"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the results in --work")
    ap.add_argument("--rerun", action="append", metavar="RUN", help="run these runs (keys as in --work) again into the "
                    "existing context, with the paired timings that use them; recorded in the report (repeatable)")
    a = ap.parse_args(argv)
    data = Path(a.data)
    if not (data / "train").is_dir():
        raise SystemExit(f"benchmark data not found: {data} (expected an MVTec AD class folder)")
    out_md = Path(a.out) if a.out else (BENCH / "BENCHMARKS.quick.md" if a.quick else ROOT / "BENCHMARKS.md")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    n_latency, repeats = (4, 1) if a.quick else (20, 3)
    max_train, max_test = (30, 10) if a.quick else (0, 0)
    ctx_file = work / "context.json"
    if a.report_only:
        ctx = json.loads(ctx_file.read_text())
        out_md.write_text(keep_sections(render(ctx), out_md))
        log(f"wrote {out_md}")
        return 0

    ensure_anomalib_venv()
    ensure_weights()
    if a.rerun:
        ctx = json.loads(ctx_file.read_text())
        known = {r["key"]: Run(**r) for r in ctx["runs"]}
        unknown = [k for k in a.rerun if k not in known]
        if unknown:
            raise SystemExit(f"--rerun: no run {unknown} in {ctx_file} (runs: {', '.join(known)})")
        max_train, max_test = (30, 10) if ctx["quick"] else (0, 0)
        ctx.setdefault("notes", []).append(
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}: `python benchmarks/run.py --rerun {' --rerun '.join(a.rerun)}` ran "
            f"{', '.join(a.rerun)} again (and the paired timings that use them)")
        ctx["complete"] = False
        execute(ctx, [known[k] for k in a.rerun], work, data, ctx["n_latency"], ctx["repeats"], max_train, max_test,
                out_md, render, paired_for=list(known.values()))
        return 0

    test = test_samples(data, max_test)
    from patchcore.data import load_class

    n_train = len(load_class(data).train)
    backbones = a.backbone or list(BACKBONES)
    # the target_dim study on the backbone with real weights (random weights would say little)
    runs: list[Run] = [r for bb in backbones
                       for r in runs_for(bb, anomalib_10=not a.no_anomalib_10, study=bb == "effnet-lite0" and not a.quick)]
    ctx = {"command": " ".join(["python benchmarks/run.py", *(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "versions": versions(),
           "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()), "data": str(data),
           "n_train": min(n_train, max_train) if max_train else n_train, "n_test": len(test), "quick": a.quick,
           "n_latency": n_latency, "repeats": repeats, "backbones": backbones, "runs": [r.as_dict() for r in runs],
           "results": {}, "accuracy": {}, "paired": {}, "complete": False}
    execute(ctx, runs, work, data, n_latency, repeats, max_train, max_test, out_md, render)
    return 0


def execute(ctx: dict, runs: list, work: Path, data: Path, n_latency: int, repeats: int, max_train: int, max_test: int,
            out_md: Path, render, paired_for: list | None = None) -> None:
    """Run each worker, score its outputs, time the paired sessions, rewrite the report after each.
    ``paired_for``: every run of the context (a rerun of our deployment run redoes its pairs)."""
    from plan import anomalib_weights, ours_weights

    ctx_file = work / "context.json"
    labels, masks = ground_truth(test_samples(data, max_test))
    common = ["--data", str(data), "--n-latency", str(n_latency), "--repeats", str(repeats)]
    if max_train:
        common += ["--max-train", str(max_train), "--max-test", str(max_test)]
    probes = {}
    for run in runs:
        wdir = work / run.key
        args = [*common, "--coreset", str(run.ratio), "--batches", "8,32" if run.throughput else ""]
        if run.tool == "ours":
            args += ["--backbone", run.backbone, "--target-dim", str(run.target_dim),
                     "--weights", ours_weights(run.backbone, BENCH)]
            res = run_worker(sys.executable, "ours_worker.py", args, wdir, work / f"{run.key}.log")
        else:
            if run.backbone not in probes:
                probes[run.backbone] = ensure_probe(run.backbone)
            args += ["--backbone", run.backbone, "--weights", str(anomalib_weights(run.backbone, BENCH)),
                     "--probe", str(probes[run.backbone])]
            # --quick only: with a small embedding, anomalib's per-iteration coreset temporaries (~23 MB)
            # fall under glibc's dynamic mmap threshold (raised by loading the weights), the heap
            # fragments and the worker grows ~15 MB per iteration until the OOM killer stops it. A fixed
            # threshold keeps them mmapped. Full runs allocate ~190 MB per iteration, mmapped anyway.
            env = {"MALLOC_MMAP_THRESHOLD_": "1048576"} if ctx["quick"] else None
            res = run_worker(VPY, "anomalib_worker.py", args, wdir, work / f"{run.key}.log", env=env)
        ctx["results"][run.key] = res
        for kind in ("torch", "runtime"):
            try:
                acc = accuracy(wdir / f"preds_{kind}.npz", labels, masks)
            except Exception as e:  # report it, keep going
                acc = None
                log(f"accuracy of {run.key} {kind} failed: {e}")
            if acc:
                ctx["accuracy"][f"{run.key}_{kind}"] = acc
                log(f"{run.key} {kind}: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if v is not None))
        if run.tool == "anomalib":
            paired_stage(ctx, work, data, n_latency, max_test, f"{run.backbone}_ours-fast", run.key)
        elif run.key.endswith("_ours-fast"):
            for other in paired_for or []:
                if other.tool == "anomalib" and other.backbone == run.backbone:
                    paired_stage(ctx, work, data, n_latency, max_test, run.key, other.key)
        ctx_file.write_text(json.dumps(ctx, indent=1, default=float))
        out_md.write_text(keep_sections(render(ctx), out_md))
        log(f"wrote {out_md}")
    ctx["complete"] = True
    ctx_file.write_text(json.dumps(ctx, indent=1, default=float))
    out_md.write_text(keep_sections(render(ctx), out_md))
    log(f"done: {out_md}")


if __name__ == "__main__":
    raise SystemExit(main())
