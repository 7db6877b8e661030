"""``python -m export``: fit (or reuse) and write a bundle; check its parity; build engines.

Thin wrappers over library functions. stdout carries one JSON line per command (what a program
reads); progress, warnings and errors go to stderr. Known errors are one readable line and a
distinct exit code:

====  ======================================================================================
code  meaning
====  ======================================================================================
0     success (parity: every target within tolerance)
2     bad input: dataset folder, unknown backbone, bad option value
3     bad bundle: missing, corrupt, edited, or a newer schema version
4     device unavailable (a GPU engine was asked for explicitly and cannot run here)
5     backbone weights unavailable (the message gives the offline remedy)
6     parity: at least one target broke a tolerance (the table says which)
7     an exported graph failed the ONNX checker or could not be loaded back
====  ======================================================================================
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(
    "Export PatchCore bundles (ONNX, TensorRT) and check their parity with PyTorch. Exit codes: 2 bad input, "
    "3 bad bundle, 4 device unavailable, 5 weights unavailable, 6 parity broken, 7 graph check failed."))

EXIT_INPUT, EXIT_BUNDLE, EXIT_DEVICE, EXIT_WEIGHTS, EXIT_PARITY, EXIT_GRAPH = 2, 3, 4, 5, 6, 7
SYNTHETIC_DEST = Path("datasets/synthetic")


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(msg: str, code: int) -> None:
    _err(f"error: {msg}")
    raise typer.Exit(code)


def _guard(fn):
    """Run ``fn`` with the ``patchcore`` CLI's error mapping plus the export-only errors."""
    from patchcore.cli import guard
    from runtime.engines import DeviceUnavailableError

    from .onnx_export import ExportError

    return guard(fn, ((DeviceUnavailableError, EXIT_DEVICE), (ExportError, EXIT_GRAPH)))


def _files_digest(root: Path, paths) -> str:
    """Digest of a file list (relative names and sizes): changes when the images change."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def fit_settings(cfg, data_root: Path, train: list[Path], calibrate: Path | None) -> dict:
    """Everything that determines the fitted memory bank and threshold: what ``--reuse`` compares."""
    from dataclasses import asdict

    from patchcore.weights import sha256_file

    from patchcore.registry import WeightsUnavailableError

    if cfg.weights not in ("default", "random") and not Path(cfg.weights).is_file():
        raise WeightsUnavailableError(f"weights file not found: {cfg.weights} (use default, random or a file path)")
    s = {k: v for k, v in asdict(cfg).items() if k not in ("device", "search_backend", "batch_size")}
    s["layers"] = list(s["layers"]) if s["layers"] else None
    if cfg.weights not in ("default", "random"):
        s["weights"] = str(Path(cfg.weights).resolve())
        s["weights_sha256"] = sha256_file(Path(cfg.weights))
    s["data"] = {"root": str(data_root.resolve()), "train": _files_digest(data_root, train)}
    s["calibrate"] = None if calibrate is None else str(calibrate.resolve())
    return s


def _reusable(out: Path, settings: dict) -> tuple[bool, str]:
    from runtime.bundle import BundleError, read_bundle

    if not (out / "manifest.json").is_file():
        return False, f"no bundle at {out}"
    try:
        old = read_bundle(out).manifest
    except BundleError as e:
        return False, f"existing bundle unusable ({e})"
    have = old.get("export", {}).get("settings")
    if have == settings:
        return True, "fit settings match"
    if not isinstance(have, dict):
        return False, "existing bundle does not record its fit settings"
    diff = sorted(k for k in set(have) | set(settings) if have.get(k) != settings.get(k))
    return False, f"fit settings differ ({', '.join(diff)})"


def _calibrate(model, folder: Path) -> None:
    import numpy as np

    from .parity import _load_test_set

    ds = _load_test_set(folder)
    labels = np.array([s.label for s in ds.test])
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"{folder}: --calibrate needs good and defective test images (test/good and test/<defect>)")
    scores = model.predict_paths([s.path for s in ds.test], desc="calibrate").image_scores
    model.calibrate_f1(labels, scores)
    model.fit_info["calibration"]["folder"] = str(folder.resolve())


@app.command("bundle")
def bundle_cmd(
    backbone: str = typer.Option("effnet-lite0", "--backbone", "-b", help="registry name (python -m patchcore backbones)"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="class folder in MVTec AD layout "
                                        "(default: the embedded synthetic class, written to datasets/synthetic/brick)"),
    weights: str = typer.Option("default", "--weights", help="default | random | PATH to a checkpoint"),
    coreset: float = typer.Option(0.1, "--coreset", help="fraction of patches kept in the memory bank"),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="also export the float16 feature graph"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="bundle folder (default models/<backbone>)"),
    reuse: bool = typer.Option(False, "--reuse", help="reuse the bundle at --out when its fit settings match"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="labelled folder (MVTec layout, test/...): "
                                             "F1-optimal threshold instead of the held-out quantile"),
    scoring_graph: bool = typer.Option(False, "--scoring-graph", help="also export scores_* graphs (search in ONNX)"),
    bank_dtype: str = typer.Option("float32", "--bank-dtype", help="float32 | float16 memory bank"),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="also build TensorRT engines (skipped without a GPU)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated feature layers"),
    seed: int = typer.Option(0, "--seed"),
    holdout: float = typer.Option(0.1, "--holdout", help="fraction of good training images kept for the threshold"),
    resize: Optional[int] = typer.Option(None, "--resize", help="override the backbone's resize (shorter side)"),
    crop: Optional[int] = typer.Option(None, "--crop", help="override the backbone's center crop"),
    device: str = typer.Option("auto", "--device", help="torch device for fitting: auto | cpu | cuda"),
    batch_size: int = typer.Option(8, "--batch-size"),
    target_dim: int = typer.Option(1024, "--target-dim", min=1, help="patch embedding dimension (the paper's 1024)"),
    name: Optional[str] = typer.Option(None, "--name", help="bundle name (default: the --out folder name)"),
):
    """Fit PatchCore on DATA/train/good (or reuse a fitted bundle) and write the bundle."""

    def run():
        from patchcore.data import load_class
        from patchcore.model import PatchCore, PatchCoreConfig
        from patchcore.synthetic import make_synthetic_class

        from .onnx_export import export_bundle

        if bank_dtype not in ("float32", "float16"):
            raise ValueError(f"--bank-dtype must be float32 or float16, got {bank_dtype!r}")
        data_dir = data
        if data_dir is None:
            data_dir = make_synthetic_class(SYNTHETIC_DEST)
            _err(f"no --data: using the embedded synthetic class {data_dir}")
        ds = load_class(data_dir, image_level_only=True)
        cfg = PatchCoreConfig(backbone=backbone, weights=weights, coreset_ratio=coreset, seed=seed,
                              layers=tuple(layers.split(",")) if layers else None, holdout=holdout,
                              resize=resize, crop=crop, device=device, batch_size=batch_size, target_dim=target_dim)
        target = out or Path("models") / backbone
        settings = fit_settings(cfg, Path(data_dir), ds.train, calibrate)
        reused = False
        if reuse:
            reused, why = _reusable(target, settings)
            _err(f"--reuse: {'reusing' if reused else 'fitting again'}: {why}")
        if reused:
            from runtime.bundle import read_bundle

            old = read_bundle(target).manifest
            model = PatchCore.load(target, device=device)
            model.fit_info = dict(old.get("fit", {}))
            model.fit_info["calibration"] = {k: v for k, v in old["threshold"].items() if k not in ("value", "scale")}
        else:
            model = PatchCore(cfg).fit(ds.train)
            if calibrate is not None:
                if data is not None and calibrate.resolve() == Path(data_dir).resolve():
                    _err("warning: --calibrate uses the same folder's test images that evaluation uses: "
                         "metrics on them will be optimistic")
                _calibrate(model, calibrate)
        b = export_bundle(model, target, name=name, fp16=fp16, scoring=scoring_graph, bank_dtype=bank_dtype,
                          extra={"export": {"settings": settings, "tool": "python -m export bundle"}})
        engines_note = None
        if tensorrt:
            from .tensorrt_build import TensorRTUnavailableError, build_bundle_engine

            try:
                for g in ("features_fp32", "features_fp16") if fp16 else ("features_fp32",):
                    b = build_bundle_engine(target, graph=g, fp16=g.endswith("fp16"), log=_err)
            except TensorRTUnavailableError as e:
                engines_note = str(e)
                _err(f"skipped: {e}")
        m = b.manifest
        _err(f"bundle written: {target} ({', '.join(sorted(m['graphs']))}; threshold {m['threshold']['value']})")
        summary = {"bundle": str(target), "id": b.bundle_id, "reused": reused, "graphs": sorted(m["graphs"]),
                   "engines": sorted(m.get("engines", {})), "files": {k: v["bytes"] for k, v in m["files"].items()},
                   "threshold": m["threshold"]["value"], "data": str(data_dir)}
        if engines_note:
            summary["tensorrt_skipped"] = engines_note
        typer.echo(json.dumps(summary))

    _guard(run)


@app.command("parity")
def parity_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    data: Path = typer.Argument(..., help="class folder in MVTec AD layout (its test images are used)"),
    report: Optional[Path] = typer.Option(None, "--report", help="write the full report as JSON here"),
    engines: str = typer.Option("ort-cpu,ort-cuda,tensorrt", "--engines",
                                help="comma-separated: ort-cpu, ort-cuda, tensorrt (missing ones are skipped)"),
    graphs: Optional[str] = typer.Option(None, "--graphs", help="comma-separated graph keys (default: all)"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="use this many test images, spread evenly"),
    torch_device: str = typer.Option("cpu", "--torch-device", help="device of the PyTorch reference"),
    batch_size: int = typer.Option(8, "--batch-size"),
):
    """Compare PyTorch with every runtime engine and graph of BUNDLE on DATA's test images.

    Features, patch and image scores, anomaly maps, AUROC and verdicts; exit 6 when a tolerance
    breaks."""

    def run():
        from .parity import run_parity

        rep = run_parity(bundle, data, engines=[e.strip() for e in engines.split(",") if e.strip()],
                         graphs=[g.strip() for g in graphs.split(",")] if graphs else None, max_images=max_images,
                         batch_size=batch_size, torch_device=torch_device, log=_err)
        _err(rep.format())
        if report:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
            _err(f"report written: {report}")
        typer.echo(json.dumps({"ok": rep.ok, "bundle": str(bundle), "n_images": rep.n_images,
                               "targets": {r.name: {"ok": r.ok, **r.errors} for r in rep.results},
                               "skipped": [s["name"] for s in rep.skipped],
                               "broken": [b["name"] for b in rep.broken]}))
        return rep

    rep = _guard(run)
    if not rep.results and not rep.broken:
        _fail("no runtime target could run on this machine", EXIT_DEVICE)
    if not rep.ok:
        raise typer.Exit(EXIT_PARITY)


@app.command("engine")
def engine_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    graph: Optional[str] = typer.Option(None, "--graph", help="graph key (default features_fp16 with --fp16, else features_fp32)"),
    fp16: bool = typer.Option(True, "--fp16/--fp32"),
    batch: str = typer.Option("1,8,32", "--batch", help="min,opt,max batch of the optimization profile"),
):
    """Build a TensorRT engine for this machine's GPU into BUNDLE (exit 4 without TensorRT/GPU)."""

    def run():
        from .tensorrt_build import build_bundle_engine

        try:
            lo, opt, hi = (int(v) for v in batch.split(","))
        except ValueError:
            raise ValueError(f"--batch must be three integers min,opt,max, got {batch!r}") from None
        b = build_bundle_engine(bundle, graph=graph, fp16=fp16, batch=(lo, opt, hi), log=_err)
        typer.echo(json.dumps({"bundle": str(bundle), "engines": b.manifest["engines"]}))

    _guard(run)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
