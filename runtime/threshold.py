"""Moving a bundle's operating point without refitting: the trade-off a bundle's evidence allows,
and a new bundle version at another point (``patchcore-rt threshold``; serve's ``POST /v1/threshold``).

What a bundle's operating point rests on (:class:`Basis`): the evidence recorded at export in
``threshold.operating_point`` (good and defect images' scores and largest regions, the rule and
the policy; :mod:`runtime.operating_point`), or, for a bundle exported before operating points
existed, its ``threshold.calibration_scores`` (good images only: false calls can be counted, the
catch rate cannot). Real images scored on the line join it: good ones (``--good``) are added to
the good evidence, defective ones (``--ng``) replace the bundle's defect evidence (usually
synthetic defects: the line's own defects say more about the line than drawn ones).

A new version is never an edit: the parent's files are copied into a hidden folder beside the
target, the manifest gets the new ``threshold.value``, ``threshold.scale`` (the good evidence's
robust spread around the new value, :func:`runtime.postprocess.robust_scale`) and
``threshold.operating_point`` (policy, value, expected rates, the evidence), one more
``lineage`` entry (``kind`` "threshold": the parent, the threshold and policy before and after),
is sealed by :func:`runtime.bundle.finalize_manifest` (a new bundle id) and renamed into place,
so a watcher or hot reload never sees half of it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .bundle import DIGEST_FIELD, Bundle
from .errors import OutputError, UsageError
from .fileio import check_output_folder
from .operating_point import DEFAULT_DEFECT_RATE, Evidence, Policy, Rates, Rule, choose, rates, read, section
from .postprocess import robust_scale
from .versions import write_version

CHOSEN_BY = "patchcore-rt threshold"
FALSE_CALL_POINTS = (0.005, 0.01, 0.02, 0.05, 0.10)  # the table's rows, besides the current point
RECALL_POINTS = (0.80, 0.90, 0.95, 0.99)
KEPT_OP_KEYS = ("rule_choice",)
NEEDS_DEFECTS = "give --ng DIR (images of real defective parts) or re-export the bundle with an operating point"


@dataclass
class Basis:
    """What a bundle's operating point rests on, and where it stands."""

    evidence: Evidence | None  # None: no good scores at all (nothing to count on)
    rule: Rule
    policy: Policy | None  # None: exported before operating points existed
    threshold: float | None  # the bundle's threshold.value
    defect_rate: float = DEFAULT_DEFECT_RATE  # the F1 column's stated share of defective parts
    notes: list[str] = field(default_factory=list)

    @property
    def legacy(self) -> bool:
        return self.policy is None

    @property
    def has_defects(self) -> bool:
        return self.evidence is not None and len(self.evidence.defect_scores) > 0


def basis(manifest: dict[str, Any]) -> Basis:
    """The basis a bundle's manifest records (see the module docstring)."""
    thr = manifest["threshold"]
    value = thr.get("value")
    got = read(thr)
    if got is not None:
        evidence, rule, policy = got
        expected = thr["operating_point"].get("expected") or {}
        rate = policy.value if policy.kind == "f1" else expected.get("defect_rate", DEFAULT_DEFECT_RATE)
        return Basis(evidence, rule, policy, value, float(rate))
    scores = thr.get("calibration_scores") or []
    note = ("exported before operating points existed: false calls counted on its "
            f"{len(scores)} calibration scores ({thr.get('method', '?')}), catch rate unknown (give --ng DIR)")
    if not scores:
        return Basis(None, Rule(), None, value, notes=["exported before operating points existed and keeps no good "
                                                       "scores: give --good DIR (and --ng DIR), or re-export"])
    ev = Evidence(scores, [], good_source=f"the threshold's calibration scores ({thr.get('method', '?')})",
                  defect_source="none")
    return Basis(ev, Rule(), None, value, notes=[note])


def with_real(b: Basis, good: tuple[np.ndarray, np.ndarray, str] | None = None,
              ng: tuple[np.ndarray, np.ndarray, str] | None = None) -> Basis:
    """``b`` with real images scored on the line: ``good`` (scores, largest regions, where from)
    added to the good evidence, ``ng`` replacing the defect evidence."""
    if good is None and ng is None:
        return b
    ev = b.evidence
    if ev is None and good is None:
        raise UsageError("this bundle keeps no good images' scores: give --good DIR (images of good parts the bundle "
                         "was not fitted on) or re-export it")
    facts = dict(ev.facts) if ev is not None else {}
    if good is not None:
        if ev is None:
            gs, gr, gsrc = good
        else:
            gs, gr = np.concatenate([ev.good_scores, good[0]]), np.concatenate([ev.good_region_px, good[1]])
            gsrc = f"{ev.good_source} + {len(good[0])} {good[2]}"
            facts["good_added"] = {"images": len(good[0]), "source": good[2]}
    else:
        gs, gr, gsrc = ev.good_scores, ev.good_region_px, ev.good_source
    if ng is not None:
        ds, dr, dsrc = ng
        if ev is not None and len(ev.defect_scores):
            facts["defects_replaced"] = {"images": len(ev.defect_scores), "source": ev.defect_source}
    elif ev is not None:
        ds, dr, dsrc = ev.defect_scores, ev.defect_region_px, ev.defect_source
    else:
        ds, dr, dsrc = np.zeros(0), np.zeros(0), "none"
    if not len(gs):
        raise UsageError("no good images' scores to count false calls on: give --good DIR with images that score")
    return replace(b, evidence=Evidence(gs, ds, gr, dr, gsrc, dsrc, facts), notes=[])


def check(policy: Policy, b: Basis) -> None:
    """A policy ``b`` cannot apply is a UsageError (exit 2) in one line."""
    if b.evidence is None:
        raise UsageError(b.notes[0] if b.notes else "this bundle records no evidence to choose a threshold on")
    if policy.kind in ("recall", "f1") and not b.has_defects:
        raise UsageError(f"{policy} needs defect evidence and this bundle has none: {NEEDS_DEFECTS}")
    if policy.kind == "value" and policy.value <= 0:
        raise UsageError(f"value={policy.value:g}: anomaly scores are distances (>= 0); a threshold at or below 0 "
                         "calls every part NG")


@dataclass(frozen=True)
class Row:
    """One line of the trade-off table."""

    points: tuple[str, ...]  # the policies that pick this threshold ("current" for the bundle's own)
    rates: Rates
    current: bool
    real_good: tuple[int, int] | None = None  # --good images called NG / scored
    real_ng: tuple[int, int] | None = None  # --ng images caught / scored

    def to_dict(self, defect_rate: float) -> dict[str, Any]:
        d = {"points": list(self.points), "current": self.current, **self.rates.to_dict(),
             "f1": self.rates.f1(defect_rate), "defect_rate": defect_rate}
        if self.real_good is not None:
            d["good_called_ng"] = {"k": self.real_good[0], "n": self.real_good[1]}
        if self.real_ng is not None:
            d["ng_caught"] = {"k": self.real_ng[0], "n": self.real_ng[1]}
        return d


def trade_off(b: Basis, real_good: tuple[np.ndarray, np.ndarray] | None = None,
              real_ng: tuple[np.ndarray, np.ndarray] | None = None) -> list[Row]:
    """The table's rows, threshold ascending: the current point, then the points of false calls
    at most 0.5/1/2/5/10% and (with defect evidence) of catch rates 80/90/95/99%, each threshold
    once (with every policy that picks it), and real counts on ``real_good`` / ``real_ng``."""
    if b.evidence is None:
        return []
    picks: dict[float, list[str]] = {}
    if b.threshold is not None:
        picks[float(b.threshold)] = [f"current ({b.policy})" if b.policy else "current"]
    wanted = [Policy("false-calls", r) for r in FALSE_CALL_POINTS]
    if b.has_defects:
        wanted += [Policy("recall", r) for r in RECALL_POINTS]
    for p in wanted:
        try:
            t = choose(b.evidence, b.rule, p)
        except UsageError:  # the either rule's regions alone call more good parts NG than p allows
            continue
        same = next((k for k in picks if math.isclose(k, t, rel_tol=1e-12, abs_tol=1e-12)), t)
        picks.setdefault(same, []).append(str(p))
    rows = []
    for t in sorted(picks):
        rg = _count(b.rule, real_good, t)
        rn = _count(b.rule, real_ng, t)
        current = b.threshold is not None and math.isclose(t, b.threshold, rel_tol=1e-12, abs_tol=1e-12)
        rows.append(Row(tuple(picks[t]), rates(b.evidence, b.rule, t), current, rg, rn))
    return rows


def _count(rule: Rule, real: tuple[np.ndarray, np.ndarray] | None, t: float) -> tuple[int, int] | None:
    if real is None:
        return None
    return int(rule.called_ng(real[0], real[1], t).sum()), len(real[0])


def _pct(r: float | None) -> str:
    return "?" if r is None else f"{100.0 * r:.3g}%"


def render_table(b: Basis, rows: Sequence[Row], good_label: str | None = None, ng_label: str | None = None) -> str:
    """The table as text (``*`` marks the current point)."""
    ev = b.evidence
    head = [f"rule: {b.rule}; evidence: {len(ev.good_scores)} good ({ev.good_source}), "
            f"{len(ev.defect_scores)} defects ({ev.defect_source})"] + b.notes
    cols = ["", "threshold", "false calls (95%)", "catch rate (95%)", f"F1@{_pct(b.defect_rate)}"]
    if good_label:
        cols.append(f"{good_label}: NG")
    if ng_label:
        cols.append(f"{ng_label}: caught")
    cols.append("policies")
    table = [cols]
    for r in rows:
        x = r.rates
        fc = f"{_pct(x.false_calls)} ({_pct(x.false_calls_interval[0])}-{_pct(x.false_calls_interval[1])})"
        catch = ("unknown" if x.catch_rate is None else
                 f"{_pct(x.catch_rate)} ({_pct(x.catch_rate_interval[0])}-{_pct(x.catch_rate_interval[1])})")
        f1 = r.rates.f1(b.defect_rate)
        line = ["*" if r.current else "", f"{x.threshold:.6g}", fc, catch, "-" if f1 is None else f"{f1:.3f}"]
        if good_label:
            line.append(f"{r.real_good[0]}/{r.real_good[1]}")
        if ng_label:
            line.append(f"{r.real_ng[0]}/{r.real_ng[1]}")
        line.append(", ".join(r.points))
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(head + body)


# ------------------------------------------------------------------------------------ new version
def default_out(parent_root: Path, policy: Policy, where: Path | None = None) -> Path:
    """``<parent folder>-op-<policy>`` beside the parent, or in ``where`` (a previous ``-op-...``
    suffix replaced; ``-2``, ``-3``... when taken)."""
    real = Path(os.path.realpath(parent_root))
    folder = real.parent if where is None else Path(where)
    base = re.sub(r"-op-[A-Za-z0-9.+\-]+$", "", real.name)
    slug = re.sub(r"[^A-Za-z0-9.+\-]+", "-", str(policy).replace("%", "pct").replace("@", "-")).strip("-")
    out = folder / f"{base}-op-{slug}"
    n = 2
    while os.path.lexists(out):
        out, n = folder / f"{base}-op-{slug}-{n}", n + 1
    return out


def check_target(parent: Bundle, out: Path) -> None:
    """``out`` must be a new (or empty) folder outside the parent, and writable (exit 9 otherwise)."""
    if out.resolve().is_relative_to(parent.root.resolve()):
        raise UsageError(f"--out {out} is (inside) the parent bundle: a new version goes in a new folder (the parent "
                         "is never modified)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not out.is_dir():
            raise OutputError(f"--out {out}: a file is there, not a folder")
        raise UsageError(f"--out {out} already exists: give a new folder")
    check_output_folder(out, "--out")


@dataclass
class NewVersion:
    bundle: Bundle
    parent: Bundle
    entry: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        op = self.bundle.manifest["threshold"]["operating_point"]
        return {"bundle": str(self.bundle.root), "id": self.bundle.bundle_id, "parent": self.parent.bundle_id,
                "threshold": self.entry["threshold"], "expected": op["expected"], "rule": op["rule"]}


def new_version(parent: Bundle, b: Basis, policy: Policy, out: Path | None = None, chosen_by: str = CHOSEN_BY,
                extra: dict[str, Any] | None = None) -> NewVersion:
    """Write ``parent`` at the operating point ``policy`` picks on ``b`` as a new bundle (see the
    module docstring); ``out`` defaults to :func:`default_out`."""
    check(policy, b)
    out = Path(out) if out is not None else default_out(parent.root, policy)
    check_target(parent, out)
    m = parent.manifest
    old = m["threshold"].get("operating_point") or {}
    # export's facts that stay true (why the rule was chosen; the rule is kept); a check of real NG
    # images at the old threshold, timings and the like do not
    kept = {k: old[k] for k in KEPT_OP_KEYS if k in old}
    op = section(b.evidence, b.rule, policy, chosen_by, extra={**kept, **(extra or {})})
    value = float(op["value"])
    before = m["threshold"]
    manifest = copy.deepcopy(m)
    manifest.pop(DIGEST_FIELD, None)
    thr = manifest["threshold"]
    thr.update(value=value, scale=robust_scale(value, b.evidence.good_scores), operating_point=op)
    entry = {"kind": "threshold", "parent": parent.bundle_id, "parent_manifest_sha256": m.get(DIGEST_FIELD),
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "tool": chosen_by,
             "version": __version__,
             "threshold": {"before": {"value": before.get("value"), "scale": before.get("scale"),
                                      "policy": (before.get("operating_point") or {}).get("policy")},
                           "after": {"value": value, "scale": thr["scale"], "policy": str(policy)}},
             "evidence": {"good": len(b.evidence.good_scores), "defects": len(b.evidence.defect_scores),
                          "good_source": b.evidence.good_source, "defect_source": b.evidence.defect_source}}
    manifest["created"] = entry["created"]
    manifest["lineage"] = [*parent.lineage, entry]
    return NewVersion(write_copy(parent, manifest, out), parent, entry)


def write_copy(parent: Bundle, manifest: dict[str, Any], out: Path) -> Bundle:
    """The parent's files and ``manifest`` at ``out``, as a new version (:mod:`runtime.versions`)."""
    return write_version(parent, out, manifest, parent.manifest["files"], kind="threshold",
                         what="the new bundle version")


def preview(b: Basis, policy: Policy | None, recent: Sequence[tuple[str, float, float]],
            current: float | None) -> dict[str, Any]:
    """What ``policy`` would do, for serve's page: its threshold and expected rates on ``b``, and
    how it would have called ``recent`` parts ((result id, score, largest region px)) against how
    the current threshold calls them, both under the bundle's rule."""
    scores = np.array([s for _, s, _ in recent], np.float64)
    regions = np.array([a for _, _, a in recent], np.float64)

    def calls(t: float | None) -> np.ndarray:
        return np.zeros(len(scores), bool) if t is None else b.rule.called_ng(scores, regions, t)

    now = calls(current)
    out: dict[str, Any] = {"threshold": current, "policy": None if b.policy is None else str(b.policy),
                           "rule": b.rule.to_dict(), "rule_text": str(b.rule), "notes": b.notes,
                           "recent": {"parts": len(scores), "ng": int(now.sum())}}
    if b.evidence is not None and current is not None:
        out["expected"] = rates(b.evidence, b.rule, current).to_dict()
    if policy is None:
        return out
    check(policy, b)
    t = choose(b.evidence, b.rule, policy)
    then = calls(t)
    out["proposed"] = {"policy": str(policy), "threshold": t, "expected": rates(b.evidence, b.rule, t).to_dict(),
                       "recent": {"parts": len(scores), "ng": int(then.sum()),
                                  "changed": [{"id": rid, "score": s, "now": "ng" if a else "ok",
                                               "proposed": "ng" if c else "ok"}
                                              for (rid, s, _), a, c in zip(recent, now, then) if a != c]}}
    return out


def describe_version(entry: dict[str, Any]) -> str:
    """One line for a ``kind`` "threshold" lineage entry (``info``'s history)."""
    t = entry.get("threshold", {})
    b, a = t.get("before", {}), t.get("after", {})

    def fmt(v: Any) -> str:
        return "none" if v is None else f"{v:.6g}"

    ev = entry.get("evidence", {})
    return (f"{entry.get('created', '?')} {entry.get('tool', CHOSEN_BY)}: threshold {fmt(b.get('value'))} "
            f"({b.get('policy') or 'no policy'}) -> {fmt(a.get('value'))} ({a.get('policy')}), on {ev.get('good')} good "
            f"and {ev.get('defects')} defect images; parent {entry.get('parent')}")

