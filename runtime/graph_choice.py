"""``--graph auto``: run the fastest feature graph this machine offers among ``features_fp32`` and
the reduced-precision variants whose parity the export approved.

The export judges each reduced variant (int8, bf16) it ran against the float32 runtime on its check
images and records ``reduced_precision.<engine>:<graph>.approved`` with the criterion that judged
it. At load, ``auto`` opens ``features_fp32`` on the requested device and every approved variant
that device may run here, times one input through each (:func:`runtime.measure.median_ms`: a
warm-up, then rounds running each in turn; medians) and keeps the fastest; a reduced variant must
beat float32 by :data:`MIN_SPEEDUP` (a reduced precision is accepted for speed, not for noise). Which engines a device may use:

- ``auto``: onnxruntime's variants and, where OpenVINO is installed, OpenVINO's (the engine may
  change); when onnxruntime runs on a GPU, float32 only (the variants were judged on CPU engines);
- ``cpu``: onnxruntime's variants only; ``openvino``: OpenVINO's (its float32 the base);
- ``cuda``, ``tensorrt``: float32 only.

With nothing approved (no ``--int8`` export, or every variant refused) ``auto`` is
``features_fp32`` as before, and nothing is timed. The measurement is kept in the bundle's engine
cache (``<bundle>/engines/cache/graph_choice.json``, beside OpenVINO's compiled models, not part of
the sealed bundle), keyed by the bundle, its verdicts, the device, threads, CPU model and count and
the engines' versions (:class:`runtime.measure.MeasureCache`): a later load on the same machine opens
only the chosen variant. Deleting the file measures again.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .engines import DeviceUnavailableError, FeatureEngine, engine_for_device
from .engines.table import Variant, reduced_variants, resolve
from .measure import RUNS, MeasureCache, machine_facts, median_ms

AUTO = "auto"
EXACT = "features_fp32"
MIN_SPEEDUP = 1.1  # a reduced variant must be this much faster than float32 to be chosen
# the measurement kept for the next load, in the bundle's engine cache (<bundle>/engines/cache, not
# part of the sealed bundle, beside OpenVINO's compiled models), keyed by machine_key
GRAPH_CHOICE_CACHE = "graph_choice.json"
_DEVICE_ENGINES = {"auto": ("onnxruntime", "openvino"), "cpu": ("onnxruntime",), "openvino": ("openvino",)}


def variant_name(v: Variant) -> str:
    """``<engine>:<graph key>``: the name of a variant in the manifest's ``reduced_precision``."""
    return f"{v.engine}:{v.key}"


def approvals(manifest: dict) -> dict[str, dict[str, Any]]:
    """``{variant name: facts}`` of the reduced variants the export judged (approved or refused)."""
    section = manifest.get("reduced_precision") or {}
    return {k: f for k, f in section.items() if ":" in k and isinstance(f, dict) and "approved" in f}


def verdict_text(facts: dict[str, Any]) -> str:
    """One variant's parity verdict in words (``info``, the export's log)."""
    if "approved" not in facts:
        return "not judged (exported before parity verdicts: export again with --int8)"
    crit = facts.get("criterion")
    if crit == "auroc+verdicts":
        a = facts.get("image_auroc") if isinstance(facts.get("image_auroc"), dict) else {}
        figures = f"image AUROC {_fmt(a.get('variant'), '.4f')} vs fp32 {_fmt(a.get('fp32'), '.4f')}"
    else:
        figures = f"image scores within {_fmt(facts.get('image_unweighted_max_rel_error'), '.2%')}"
    v = facts.get("verdicts") if isinstance(facts.get("verdicts"), dict) else {}
    flips = ("verdicts not checked (no threshold)" if v.get("checked") is None else
             f"{v.get('disagree_outside', 0)} flips outside the band, {v.get('disagree_inside', 0)} inside")
    reasons = facts.get("reasons") if isinstance(facts.get("reasons"), list) else []
    head = "approved" if facts["approved"] else "refused: " + ("; ".join(map(str, reasons)) or "?")
    return f"{head} ({crit}: {figures}, {flips})"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


@dataclass
class GraphChoice:
    """What ``--graph auto`` ran and why: the candidates' median ms per input, those skipped."""

    chose: str
    ms: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    load_s: float = 0.0
    measured_at: str = ""
    cached: bool = False  # read from the bundle's cache (measured at an earlier load on this machine)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chose": self.chose, "ms": self.ms, "runs": RUNS, "min_speedup": MIN_SPEEDUP,
                               "load_s": round(self.load_s, 3), "measured_at": self.measured_at, "cached": self.cached}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.refused:
            out["refused"] = self.refused
        return out

    def line(self) -> str:
        timed = ", ".join(f"{k} {v} ms" for k, v in self.ms.items())
        extra = "".join(f"; {k} skipped ({why})" for k, why in self.skipped.items())
        how = (f"measured {self.measured_at}, cached" if self.cached else
               f"median of {RUNS}, {self.load_s:.2f} s to measure")
        return f"graph auto: {timed} per input ({how}){extra}: {self.chose}"


def candidates(manifest: dict, device: str) -> tuple[Variant, list[Variant], list[str]]:
    """The float32 base for ``device``, the approved reduced variants it may run, and the refused ones."""
    base = resolve(engine_for_device(device), EXACT)
    judged = approvals(manifest)
    allowed = _DEVICE_ENGINES.get(device, ())
    offered = [v for v in reduced_variants(set(manifest.get("graphs", {})), engines=allowed)
               if variant_name(v) in judged]
    return (base, [v for v in offered if judged[variant_name(v)]["approved"]],
            [variant_name(v) for v in offered if not judged[variant_name(v)]["approved"]])


def machine_key(manifest: dict, bundle_id: str, device: str, threads: int | None) -> dict[str, Any]:
    """What a cached choice holds for: the bundle, its verdicts, the device and threads asked for,
    this CPU (model, count) and the engines' versions. Any change measures again."""
    verdicts = {k: f["approved"] for k, f in approvals(manifest).items()}
    return {"bundle": bundle_id, "verdicts": verdicts, "device": device, "threads": threads, **machine_facts(),
            "runs": RUNS, "min_speedup": MIN_SPEEDUP}


def _kept(cache: MeasureCache | None) -> dict[str, Any]:
    """The choice kept in ``cache`` ({} when none, or not of a choice's shape)."""
    kept = cache.read() if cache is not None else {}
    ok = (isinstance(kept.get("chose"), str) and isinstance(kept.get("ms"), dict)
          and isinstance(kept.get("skipped", {}), dict))
    return kept if ok else {}


def choose(open_variant: Callable[[Variant], FeatureEngine], manifest: dict, device: str,
           log: Callable[[str], None] = lambda s: None, cache: MeasureCache | None = None
           ) -> tuple[FeatureEngine, Variant, GraphChoice | None]:
    """The engine ``--graph auto`` runs, its variant, and the choice's record (None: nothing to choose
    from, ``features_fp32`` as before). ``open_variant`` opens (and checks) one variant's engine;
    a variant this machine cannot run (e.g. no bf16 here) is skipped with its reason. With ``cache``
    (keyed by :func:`machine_key`), a choice measured at an earlier load of the same
    bundle on the same machine and engines is reused: only the chosen variant is opened."""
    base, approved, refused = candidates(manifest, device)
    engine = open_variant(base)
    if not approved or getattr(engine, "provider", "CPUExecutionProvider") != "CPUExecutionProvider":
        return engine, base, None
    t0 = time.perf_counter()
    by_name = {variant_name(v): v for v in [base, *approved]}
    kept = _kept(cache)
    if kept.get("chose") in by_name:
        chosen = by_name[kept["chose"]]
        try:
            engine = engine if chosen is base else open_variant(chosen)
        except DeviceUnavailableError:
            kept = {}
        if kept:
            choice = GraphChoice(chose=kept["chose"], ms=dict(kept.get("ms", {})), skipped=dict(kept.get("skipped", {})),
                                 refused=refused, measured_at=str(kept.get("measured_at", "")), cached=True,
                                 load_s=time.perf_counter() - t0)
            log(choice.line())
            return engine, chosen, choice
    choice = GraphChoice(chose=variant_name(base), refused=refused)
    opened: list[tuple[Variant, FeatureEngine]] = [(base, engine)]
    for v in approved:
        try:
            opened.append((v, open_variant(v)))
        except DeviceUnavailableError as e:
            choice.skipped[variant_name(v)] = str(e)
    h, w = manifest["features"]["input_size"]
    x = np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)
    ms = median_ms([lambda e=e: e.run(x) for _, e in opened])
    choice.ms = {variant_name(v): m for (v, _), m in zip(opened, ms)}
    best = min(range(len(opened)), key=ms.__getitem__)
    if best and ms[best] * MIN_SPEEDUP > ms[0]:  # faster than float32, but not by enough
        best = 0
    variant, engine = opened[best]
    choice.chose = variant_name(variant)
    choice.load_s = time.perf_counter() - t0
    choice.measured_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if cache is not None:
        cache.keep(choice.as_dict())
    log(choice.line())
    return engine, variant, choice
