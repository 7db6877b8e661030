"""``patchcore-rt threshold``: see and move a bundle's operating point without refitting.

The command function parses options, scores ``--good`` / ``--ng`` images with the runtime's
predictor (as ``predict`` does: a corrupt image is a warning line and is left out, never a
crash) and calls :mod:`runtime.threshold` for the table or the new bundle version. Registered on
the command line by :mod:`runtime.cli.app`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from ..bundle import read_bundle
from ..errors import UsageError
from ..images import ImageLimits
from ..operating_point import POLICY_HELP, Evidence, describe, parse_policy
from ..threshold import basis, check, check_target, new_version, render_table, trade_off, with_real
from ..line.image_files import collect_inputs
from ..line.messages import info, warn
from ..line.records import Item, score_items
from ..line.run_options import RunOptions
from .bundle_choice import resolve_bundle
from .console import known_errors
from .flags import BatchOpt, scoring_progress, with_run_options


def score_set(predictor, inputs: list[tuple[Path, str]], batch: int, limits: ImageLimits,
              what: str) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and largest regions (``area_px``, 0 where none) of ``inputs``; an input that
    cannot be scored is a warning line and left out."""
    scores, regions, failed = [], [], 0
    with scoring_progress(len(inputs)) as advance:
        for s in range(0, len(inputs), batch):
            chunk = inputs[s : s + batch]
            for o in score_items(predictor, [Item(name, path=path) for path, name in chunk], limits):
                if o.error is not None or o.score is None:
                    failed += 1
                    warn(f"{what}: left out, not scored: {o.error}")
                    continue
                scores.append(o.score)
                regions.append(float(o.regions[0]["area_px"]) if o.regions else 0.0)
            advance(len(chunk))
    if failed:
        info(f"{what}: {failed} of {len(inputs)} images could not be scored and were left out")
    return np.asarray(scores, np.float64), np.asarray(regions, np.float64)


def _label(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


@with_run_options(search=False, rule=False)
def threshold(
    bundle: str = typer.Argument(..., help="Bundle folder (or name under ./models); it is never modified."),
    set_: Optional[str] = typer.Option(None, "--set", metavar="POLICY", help="Write a new bundle version at this "
                                       f"operating point: {POLICY_HELP}. Without --set: show the trade-off table."),
    good: Optional[List[Path]] = typer.Option(None, "--good", help="Folder (or file) of images of good parts the "
                                              "bundle was not fitted on (repeatable): real false-call counts per "
                                              "row, and added to the good evidence (of the table and of --set)."),
    ng: Optional[List[Path]] = typer.Option(None, "--ng", help="Folder (or file) of images of defective parts "
                                            "(repeatable): real catch counts per row; they replace the bundle's "
                                            "defect evidence (of the table and of --set)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --set: the new version's folder (must not "
                                       "exist; default: beside the bundle, <folder>-op-<policy>)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take images in sub-folders of --good and "
                                   "--ng folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the table (or, with --set, the new version's summary) "
                                 "as one JSON object."),
    batch: int = BatchOpt,
    *, run: RunOptions,
) -> None:
    """Show a bundle's operating point and move it without refitting (a new bundle version).

    Without --set: the trade-off table (threshold, expected false calls and catch rate with 95%
    intervals, expected F1 at the stated share of defective parts) at the current point (*) and
    at false calls 0.5/1/2/5/10% and catch rates 80/90/95/99%, from the evidence the bundle
    records; with --good / --ng, real counts on those images too.

    With --set POLICY: a new bundle (a new id, its parent in the lineage) at the threshold the
    policy picks, written beside the bundle or to --out; the bundle itself is never modified.
    Point a running watch, camera or serve at it to switch.
    """
    with known_errors():
        policy = parse_policy(set_) if set_ is not None else None
        if out is not None and policy is None:
            raise UsageError("--out needs --set POLICY (without --set nothing is written)")
        good_in = collect_inputs(good, recursive) if good else []
        ng_in = collect_inputs(ng, recursive) if ng else []
        root = resolve_bundle(bundle)
        parent = read_bundle(root)
        b = basis(parent.manifest)
        if policy is not None:
            check(policy, _as_if(b, bool(ng_in)) if (good_in or ng_in) else b)  # exit 2 before any scoring
            if out is not None:
                check_target(parent, out)
        real_good = real_ng = None
        if good_in or ng_in:
            p = run.load_predictor(root)
            if good_in:
                real_good = score_set(p, good_in, batch, run.limits, "--good")
            if ng_in:
                real_ng = score_set(p, ng_in, batch, run.limits, "--ng")
            for what, real in (("--good", real_good), ("--ng", real_ng)):
                if real is not None and not len(real[0]):
                    warn(f"{what}: no image could be scored; the bundle's own evidence is used")
            real_good = real_good if real_good is not None and len(real_good[0]) else None
            real_ng = real_ng if real_ng is not None and len(real_ng[0]) else None
        b = with_real(b, good=None if real_good is None else (*real_good, f"real good images ({_label(good)})"),
                      ng=None if real_ng is None else (*real_ng, f"real NG images ({_label(ng)})"))
        if policy is None:
            _show(parent, b, real_good, real_ng, as_json)
            return
        made = new_version(parent, b, policy, out)
        op = made.bundle.manifest["threshold"]["operating_point"]
        info(f"{made.bundle.bundle_id}: new version of {parent.bundle_id} (never modified)")
        for line in describe(op):
            info(line)
        typer.echo(json.dumps(made.summary()) if as_json else str(made.bundle.root))


def _as_if(b, with_defects: bool):
    """``b`` as the --good / --ng images will make it (for checking a policy before scoring)."""
    ev = b.evidence if b.evidence is not None else Evidence([1.0], [])
    return replace(b, evidence=Evidence(ev.good_scores, [1.0] if with_defects else ev.defect_scores), notes=[])


def _show(parent, b, real_good, real_ng, as_json: bool) -> None:
    if b.evidence is None:  # no good scores at all: nothing to count on
        raise UsageError(b.notes[0])
    rows = trade_off(b, real_good, real_ng)
    if as_json:
        ev = b.evidence
        typer.echo(json.dumps({
            "bundle": parent.bundle_id, "path": str(parent.root), "rule": b.rule.to_dict(),
            "policy": None if b.policy is None else str(b.policy), "threshold": b.threshold,
            "evidence": {"good": len(ev.good_scores), "defects": len(ev.defect_scores), "good_source": ev.good_source,
                         "defect_source": ev.defect_source},
            "notes": b.notes, "rows": [r.to_dict(b.defect_rate) for r in rows]}))
        return
    typer.echo(f"bundle {parent.bundle_id}: threshold "
               f"{'none' if b.threshold is None else f'{b.threshold:.6g}'}"
               f"{'' if b.policy is None else f' ({b.policy})'}")
    typer.echo(render_table(b, rows, "--good" if real_good is not None else None,
                            "--ng" if real_ng is not None else None))
    typer.echo("move it: patchcore-rt threshold BUNDLE --set false-calls=2% (or recall=95%, f1@5%, value=X): a new "
               "bundle version, this one untouched")
