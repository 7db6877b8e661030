"""The operating point: where a bundle calls a part NG, chosen by a declared policy over evidence.

The evidence is two sets of scored images, each image as (image score, largest region in
original pixels at the pixel threshold): good parts (out of fold: images the scoring bank did not
see) and defects (synthetic defects drawn on out-of-fold good images, or real NG parts the user
named with ``--ng``). A rule turns a threshold into verdicts; the policy picks the threshold:

- ``false-calls=R``: the lowest threshold whose expected false-call rate on good parts is at most R;
- ``recall=R``: the highest threshold that still catches a share R of the defects;
- ``f1`` / ``f1@D``: the threshold of the best expected F1 on a line where a share D of the parts
  is defective (D defaults to :data:`DEFAULT_DEFECT_RATE`);
- ``value=X``: the threshold X, as given.

Rates are counted on the evidence and given with 95% Wilson intervals: a promise of "1% false
calls" resting on 40 good images is an interval, and the interval is what the manifest states.
The manifest's ``threshold.operating_point`` keeps the evidence itself (scores and region sizes),
so the operating point moves later (``patchcore-rt threshold``) without refitting, with the same
arithmetic as at export. This module is the one place that arithmetic lives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import UsageError

DEFAULT_DEFECT_RATE = 0.1  # f1's stated share of defective parts when the policy names none
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
CURVE_POINTS = 64  # rows of the manifest's display curve (the evidence itself is kept whole)
RULES = ("image-score", "either")
POLICY_HELP = ("false-calls=R (at most R of good parts called NG), recall=R (catch at least R of defects), f1 or "
               "f1@D (best expected F1 when a share D of parts is defective), value=X (this threshold); R and D as "
               "0.02 or 2%")

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")


def parse_rate(text: str, what: str) -> float:
    """``2%`` or ``0.02`` -> 0.02; a rate outside (0, 1) is a UsageError naming ``what``."""
    m = _RATE.match(text)
    if not m:
        raise UsageError(f"{what}: {text!r} is not a rate (write 0.02 or 2%)")
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not 0.0 < value < 1.0:
        raise UsageError(f"{what}: {text.strip()} is not between 0 and 100%")
    return value


@dataclass(frozen=True)
class Policy:
    """A declared operating point: ``kind`` is false-calls, recall, f1 or value."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "value":
            return f"value={self.value:.9g}"
        if self.kind == "f1":
            return f"f1@{_pct(self.value)}"
        return f"{self.kind}={_pct(self.value)}"


def _pct(r: float) -> str:
    """A rate as the policy spells it (read back exactly)."""
    return f"{100.0 * r:.6g}%"


def _shown(r: float) -> str:
    """A rate for people: three significant digits (an interval of 40 images is not known to six)."""
    return f"{100.0 * r:.3g}%"


def parse_policy(text: str) -> Policy:
    """The command line's ``--operating-point`` / ``--set``: see :data:`POLICY_HELP`. A bad policy
    is a UsageError (exit 2) with one line that lists the accepted forms."""
    raw = (text or "").strip()
    low = raw.lower()
    try:
        if low == "f1":
            return Policy("f1", DEFAULT_DEFECT_RATE)
        if low.startswith("f1@"):
            return Policy("f1", parse_rate(raw[3:], "f1@D"))
        key, sep, rest = raw.partition("=")
        key = key.strip().lower()
        if sep and key in ("false-calls", "recall"):
            return Policy(key, parse_rate(rest, key))
        if sep and key == "value":
            v = float(rest)
            if not math.isfinite(v):
                raise ValueError(rest)
            return Policy("value", v)
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"operating point {raw!r}: value=X needs a finite number") from None
    raise UsageError(f"operating point {raw!r} is not one of: {POLICY_HELP}")


@dataclass(frozen=True)
class Rule:
    """How a threshold becomes a verdict: ``image-score`` (score >= threshold) or ``either`` (that,
    or a region of at least ``min_area_px`` original pixels above the pixel threshold)."""

    kind: str = "image-score"
    min_area_px: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.kind!r}")
        if self.kind == "either" and not (self.min_area_px is not None and self.min_area_px > 0):
            raise ValueError("the either rule needs min_area_px > 0")

    def called_ng(self, scores: np.ndarray, region_px: np.ndarray, threshold: float) -> np.ndarray:
        """Verdicts (True = NG) of images with these scores and largest regions at ``threshold``."""
        ng = np.asarray(scores, np.float64) >= threshold
        if self.kind == "either":
            ng |= np.asarray(region_px, np.float64) >= self.min_area_px
        return ng

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"min_area_px": self.min_area_px} if self.kind == "either" else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Rule":
        d = d or {}
        return cls(str(d.get("kind", "image-score")), d.get("min_area_px"))

    def __str__(self) -> str:
        return "image-score" if self.kind == "image-score" else f"image-score or region >= {self.min_area_px:g} px"


@dataclass
class Evidence:
    """Scored images the operating point rests on: good parts and defects, each an image score and
    its largest region (original pixels; 0 where none), with where each set came from."""

    good_scores: np.ndarray
    defect_scores: np.ndarray
    good_region_px: np.ndarray | None = None
    defect_region_px: np.ndarray | None = None
    good_source: str = "out-of-fold good training images"
    defect_source: str = "synthetic defects on out-of-fold good images"
    facts: dict[str, Any] = field(default_factory=dict)  # e.g. the fold-bias correction, families, seeds

    def __post_init__(self) -> None:
        self.good_scores = np.asarray(self.good_scores, np.float64).ravel()
        self.defect_scores = np.asarray(self.defect_scores, np.float64).ravel()
        for name, scores in (("good_region_px", self.good_scores), ("defect_region_px", self.defect_scores)):
            v = getattr(self, name)
            v = np.zeros(len(scores)) if v is None else np.asarray(v, np.float64).ravel()
            if len(v) != len(scores):
                raise ValueError(f"{name} has {len(v)} values for {len(scores)} scores")
            setattr(self, name, v)
        if not len(self.good_scores):
            raise ValueError("an operating point needs good images' scores")
        if not (np.isfinite(self.good_scores).all() and np.isfinite(self.defect_scores).all()):
            raise ValueError("evidence scores must be finite")

    def to_dict(self) -> dict[str, Any]:
        def floats(a: np.ndarray) -> list[float]:
            return [float(v) for v in a]

        return {"good": {"scores": floats(self.good_scores), "region_px": floats(self.good_region_px),
                         "source": self.good_source},
                "defects": {"scores": floats(self.defect_scores), "region_px": floats(self.defect_region_px),
                            "source": self.defect_source},
                **({"facts": self.facts} if self.facts else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Evidence":
        g, b = d["good"], d.get("defects") or {"scores": []}
        return cls(g["scores"], b["scores"], g.get("region_px"), b.get("region_px"),
                   g.get("source", ""), b.get("source", ""), dict(d.get("facts") or {}))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k <= 0 else max(0.0, centre - half)), (1.0 if k >= n else min(1.0, centre + half))


def expected_f1(catch: float, false_calls: float, defect_rate: float) -> float:
    """F1 of a line where a share ``defect_rate`` of parts is defective: 2TP / (2TP + FP + FN)."""
    tp = defect_rate * catch
    denom = tp + (1.0 - defect_rate) * false_calls + defect_rate
    return 2.0 * tp / denom if denom > 0 else 0.0


@dataclass(frozen=True)
class Rates:
    """What a threshold is expected to do, counted on the evidence."""

    threshold: float
    false_calls: float
    false_calls_interval: tuple[float, float]
    catch_rate: float | None  # None: no defect evidence
    catch_rate_interval: tuple[float, float] | None
    n_good: int
    n_defects: int

    def f1(self, defect_rate: float) -> float | None:
        return None if self.catch_rate is None else expected_f1(self.catch_rate, self.false_calls, defect_rate)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "false_calls": self.false_calls,
                "false_calls_interval": list(self.false_calls_interval), "catch_rate": self.catch_rate,
                "catch_rate_interval": None if self.catch_rate_interval is None else list(self.catch_rate_interval),
                "n_good": self.n_good, "n_defects": self.n_defects}


def rates(evidence: Evidence, rule: Rule, threshold: float) -> Rates:
    """False calls and catch rate of ``rule`` at ``threshold`` on ``evidence``, with intervals."""
    ng_good = int(rule.called_ng(evidence.good_scores, evidence.good_region_px, threshold).sum())
    n_good, n_def = len(evidence.good_scores), len(evidence.defect_scores)
    if n_def:
        caught = int(rule.called_ng(evidence.defect_scores, evidence.defect_region_px, threshold).sum())
        catch, catch_iv = caught / n_def, wilson(caught, n_def)
    else:
        catch, catch_iv = None, None
    return Rates(float(threshold), ng_good / n_good, wilson(ng_good, n_good), catch, catch_iv, n_good, n_def)


def candidates(evidence: Evidence) -> np.ndarray:
    """Thresholds worth choosing among, ascending: midway between consecutive distinct scores of
    both sets (so no threshold sits on an evidence score), below the lowest and above the highest.
    Above the highest, the margin is half the gap between the two highest good scores (a few of
    the good scores' own spacing), so a threshold that must clear every good part still has room."""
    s = np.unique(np.concatenate([evidence.good_scores, evidence.defect_scores]))
    g = np.sort(evidence.good_scores)
    gap = (g[-1] - g[-2]) / 2.0 if len(g) > 1 and g[-1] > g[-2] else max(abs(g[-1]) * 1e-3, 1e-9)
    inner = (s[:-1] + s[1:]) / 2.0
    return np.concatenate([[s[0] - gap], inner, [s[-1] + gap]])


def choose(evidence: Evidence, rule: Rule, policy: Policy) -> float:
    """The threshold ``policy`` picks on ``evidence`` under ``rule``. A policy the evidence cannot
    meet is a UsageError naming the closest it can do."""
    if policy.kind == "value":
        return float(policy.value)
    cands = candidates(evidence)
    table = [rates(evidence, rule, t) for t in cands]
    if policy.kind == "false-calls":
        ok = [r for r in table if r.false_calls <= policy.value]
        if not ok:  # the either rule's regions alone call more good parts NG than allowed
            best = min(table, key=lambda r: r.false_calls)
            raise UsageError(f"false-calls={_pct(policy.value)} cannot be met under the rule {rule}: at best "
                             f"{_pct(best.false_calls)} of the good evidence is called NG")
        return min(r.threshold for r in ok)
    if not len(evidence.defect_scores):
        raise UsageError(f"{policy} needs defect evidence and this bundle has none (use false-calls=R or value=X)")
    if policy.kind == "recall":
        ok = [r for r in table if r.catch_rate >= policy.value]
        return max(r.threshold for r in ok)  # the lowest candidate catches every defect, so ok is never empty
    if policy.kind == "f1":
        f1s = np.array([r.f1(policy.value) for r in table])
        best = np.flatnonzero(f1s >= f1s.max() - 1e-12)
        return float(cands[best[-1]])  # among equals, the fewest false calls
    raise UsageError(f"unknown operating point kind {policy.kind!r}")


def curve(evidence: Evidence, rule: Rule, points: int = CURVE_POINTS) -> dict[str, list]:
    """The trade-off as columns (threshold ascending), at most ``points`` rows spread evenly over
    the candidates: what ``patchcore-rt threshold`` and ``info`` show."""
    cands = candidates(evidence)
    if len(cands) > points:
        cands = cands[np.unique(np.round(np.linspace(0, len(cands) - 1, points)).astype(int))]
    rows = [rates(evidence, rule, t) for t in cands]
    return {"threshold": [r.threshold for r in rows],
            "false_calls": [r.false_calls for r in rows],
            "false_calls_lo": [r.false_calls_interval[0] for r in rows],
            "false_calls_hi": [r.false_calls_interval[1] for r in rows],
            "catch_rate": [r.catch_rate for r in rows],
            "catch_rate_lo": [None if r.catch_rate_interval is None else r.catch_rate_interval[0] for r in rows],
            "catch_rate_hi": [None if r.catch_rate_interval is None else r.catch_rate_interval[1] for r in rows]}


def section(evidence: Evidence, rule: Rule, policy: Policy, chosen_by: str,
            threshold: float | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``threshold.operating_point``: the policy, the rule, the threshold it picks
    (or ``threshold`` when given), what it is expected to do, the display curve and the evidence."""
    t = choose(evidence, rule, policy) if threshold is None else float(threshold)
    r = rates(evidence, rule, t)
    expected = r.to_dict()
    if policy.kind == "f1" or r.catch_rate is not None:
        d = policy.value if policy.kind == "f1" else DEFAULT_DEFECT_RATE
        expected.update(defect_rate=d, f1=r.f1(d))
    return {"policy": str(policy), "rule": rule.to_dict(), "value": t, "chosen_by": chosen_by,
            "expected": expected, "curve": curve(evidence, rule), "evidence": evidence.to_dict(),
            **dict(extra or {})}


def read(threshold_section: Mapping[str, Any]) -> tuple[Evidence, Rule, Policy] | None:
    """The evidence, rule and policy a bundle's ``threshold`` section records (None: exported
    before operating points existed)."""
    op = threshold_section.get("operating_point")
    if not isinstance(op, Mapping):
        return None
    return Evidence.from_dict(op["evidence"]), Rule.from_dict(op.get("rule")), parse_policy(op["policy"])


def describe(op: Mapping[str, Any]) -> list[str]:
    """The operating point in words: policy, rule, expected false calls and catch rate with their
    intervals, and what the evidence was (``export`` prints it, ``info`` shows it)."""
    e = op["expected"]
    lo, hi = e["false_calls_interval"]
    lines = [f"operating point: {op['policy']} (rule: {Rule.from_dict(op.get('rule'))}) -> threshold {op['value']:.6g}",
             f"  expected false calls: {_shown(e['false_calls'])} of good parts (95% interval {_shown(lo)}-{_shown(hi)}, "
             f"{e['n_good']} good images)"]
    ev = op.get("evidence", {})
    if e.get("catch_rate") is not None:
        clo, chi = e["catch_rate_interval"]
        lines.append(f"  expected catch rate: {_shown(e['catch_rate'])} of defects (95% interval {_shown(clo)}-{_shown(chi)}, "
                     f"{e['n_defects']} {ev.get('defects', {}).get('source', 'defects')})")
        if e.get("f1") is not None:
            lines.append(f"  expected F1 at {_shown(e['defect_rate'])} defective parts: {e['f1']:.3f}")
    else:
        lines.append("  catch rate: unknown (no defect evidence)")
    return lines


def table_rows(evidence: Evidence, rule: Rule, thresholds: Sequence[float]) -> list[Rates]:
    """Rates at each of ``thresholds`` (for a trade-off table at chosen points)."""
    return [rates(evidence, rule, float(t)) for t in thresholds]
