"""``patchcore export``, ``patchcore parity`` and ``patchcore engine``: the export floor's commands.

They join the fit-side commands of :mod:`patchcore.cli` in one app, which is what the
``patchcore`` script, ``python -m patchcore`` and ``python -m export`` run (``bundle`` is the old
name of ``export`` and still works, with a warning). The command functions only parse and
print: the work is :func:`export.pipeline.export_model`, :func:`export.parity.run_parity` and
:func:`export.tensorrt_build.build_bundle_engine`. stdout carries one JSON line per command;
progress, warnings and errors go to stderr; exit codes are the shared table of
:mod:`runtime.errors`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from patchcore import fit_options as opt
from patchcore.fit_options import FitOptions
from patchcore.cli import DEPRECATED as FIT_DEPRECATED
from patchcore.cli import PROG, app
from runtime.engines import DeviceUnavailableError
from runtime.errors import UsageError
from runtime.fileio import check_output_folder
from runtime.cli.console import known_errors
from runtime.cli.options import COMMANDS, EXIT_CODES_HELP, run

DEPRECATED = {
    **FIT_DEPRECATED,
    COMMANDS: {"bundle": "export"},
    "parity": {"--torch-device": "--device"},
    "engine": {"--batch": "--profile"},
}


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def export_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="class folder in MVTec AD layout "
                                        "(default: the embedded synthetic class, written to datasets/synthetic/brick)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="bundle folder (default models/<backbone>)"),
    backbone: str = opt.BACKBONE, options: FitOptions = FitOptions(),
    mm_per_px: Optional[float] = typer.Option(None, "--mm-per-px", help="millimetres per original image pixel, "
                                              "recorded in the bundle: the runtime then gives region areas in mm²"),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="also export the float16 feature graph"),
    reuse: bool = typer.Option(False, "--reuse", help="reuse the bundle at --out when its fit settings match"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="labelled folder (MVTec layout, test/...): "
                                             "F1-optimal threshold instead of the out-of-fold quantile"),
    scoring_graph: bool = typer.Option(False, "--scoring-graph", help="also export scores_* graphs (search in ONNX)"),
    bank_dtype: str = typer.Option("float32", "--bank-dtype", help="float32 | float16 memory bank"),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="also build TensorRT engines (skipped without a GPU)"),
    name: Optional[str] = typer.Option(None, "--name", help="bundle name (default: the --out folder name)"),
    int8: bool = typer.Option(False, "--int8", help="also export features_int8: a calibrated int8 QDQ graph "
                              "(onnxruntime, OpenVINO, TensorRT explicit quantization)"),
    int8_images: int = typer.Option(16, "--int8-images", min=1, help="good training images that calibrate --int8"),
    int8_method: str = typer.Option("minmax", "--int8-method", help="int8 calibration: minmax, entropy, percentile"),
    int8_keep_float: str = typer.Option("first+depthwise", "--int8-keep-float",
                                        help="layers left in float32: none, first (first conv), last, first+last, "
                                        "first+depthwise (and the depthwise convs)"),
):
    """Fit PatchCore on DATA/train/good (or reuse a fitted bundle) and write the bundle with its graphs."""
    from .pipeline import ExportRequest, export_model  # torch: loaded when the command runs

    with known_errors():
        cfg = options.config(backbone)
        if mm_per_px is not None and not (mm_per_px > 0 and math.isfinite(mm_per_px)):
            raise UsageError(f"--mm-per-px must be a finite number > 0, got {mm_per_px}")
        req = ExportRequest(cfg, out or Path("models") / backbone, data, name, fp16, scoring_graph, bank_dtype,
                            tensorrt, calibrate, reuse, mm_per_px=mm_per_px)
        if int8:
            from .quantize import Int8Settings

            req.int8 = Int8Settings(method=int8_method, images=int8_images, keep_float=int8_keep_float)
        check_output_folder(req.out, "--out")
        typer.echo(json.dumps(export_model(req, log=_err).summary()))


def parity_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    data: Path = typer.Argument(..., help="class folder in MVTec AD layout (its test images are used; without "
                                "test images, its train/good images)"),
    report: Optional[Path] = typer.Option(None, "--report", help="write the full report as JSON here"),
    engines: str = typer.Option("ort-cpu,ort-cuda,openvino,tensorrt", "--engines",
                                help="comma-separated: ort-cpu, ort-cuda, openvino, tensorrt (missing ones are "
                                "skipped); every graph x precision of the engines table the bundle offers is judged"),
    graphs: Optional[str] = typer.Option(None, "--graphs", help="comma-separated graph keys (default: all)"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="use this many test images, spread evenly"),
    device: str = typer.Option("cpu", "--device", help="torch device of the PyTorch reference"),
    batch_size: int = opt.BATCH_SIZE,
):
    """Compare PyTorch with every runtime engine and graph of BUNDLE on DATA's test images (or, with
    only train/good, its training images).

    Features, patch and image scores, anomaly maps, AUROC and verdicts; the result is kept as
    BUNDLE/parity.json, which `patchcore-rt info` shows. Exit 6 when a tolerance breaks, 4 when no
    runtime target can run here."""
    from .parity import ParityBroken, run_parity

    with known_errors():
        if report:
            check_output_folder(report.parent, "--report")
        rep = run_parity(bundle, data, engines=[e.strip() for e in engines.split(",") if e.strip()],
                         graphs=[g.strip() for g in graphs.split(",")] if graphs else None, max_images=max_images,
                         batch_size=batch_size, torch_device=device, log=_err)
        _err(rep.format())
        _record(bundle, rep)
        if report:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
            _err(f"report written: {report}")
        typer.echo(json.dumps({"ok": rep.ok, "bundle": str(bundle), "n_images": rep.n_images,
                               "targets": {r.name: {"ok": r.ok, **r.errors} for r in rep.results},
                               "skipped": [s["name"] for s in rep.skipped],
                               "broken": [b["name"] for b in rep.broken]}))
        if not rep.results and not rep.broken:
            raise DeviceUnavailableError("no runtime target could run on this machine")
        if not rep.ok:
            raise ParityBroken("parity broken (see the table above)")


def _record(bundle: Path, rep) -> None:
    """Keep the result beside the bundle's manifest, for ``info`` (a read-only bundle: a warning)."""
    from datetime import datetime, timezone

    from runtime.bundle import read_bundle
    from runtime.parity_record import write_parity_record

    from .parity import parity_record

    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        write_parity_record(bundle, parity_record(rep, read_bundle(bundle, verify=False).bundle_id, created))
    except OSError as e:
        _err(f"warning: parity result not recorded in {bundle} ({e.strerror or e}); `info` will not show it")


def engine_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    graph: Optional[str] = typer.Option(None, "--graph", help="graph key (default features_fp16 with --fp16, "
                                        "else features_fp32)"),
    fp16: bool = typer.Option(True, "--fp16/--fp32"),
    profile: str = typer.Option("1,8,32", "--profile", help="min,opt,max batch of the optimization profile"),
):
    """Build a TensorRT engine for this machine's GPU into BUNDLE (exit 4 without TensorRT/GPU)."""
    from .tensorrt_build import build_bundle_engine

    with known_errors():
        try:
            lo, mid, hi = (int(v) for v in profile.split(","))
        except ValueError:
            raise ValueError(f"--profile must be three integers min,opt,max, got {profile!r}") from None
        b = build_bundle_engine(bundle, graph=graph, fp16=fp16, batch=(lo, mid, hi), log=_err)
        typer.echo(json.dumps({"bundle": str(bundle), "engines": b.manifest["engines"]}))


app.command("export", epilog=EXIT_CODES_HELP)(opt.fit_command(export_cmd))
app.command("parity", epilog=EXIT_CODES_HELP)(parity_cmd)
app.command("engine", epilog=EXIT_CODES_HELP)(engine_cmd)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``patchcore``, ``python -m patchcore`` and ``python -m export``."""
    run(app, PROG, DEPRECATED, argv)
