"""What selection reports: the manifest's ``selection`` record, its table, a picture per family."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .recipe_candidates import Candidate
from .ranking import Ranking
from .validate import Settings, eval_mask


def _r(v, digits: int = 4):
    return None if v is None else round(float(v), digits)


def _tests(t: dict, live: Sequence[Candidate]) -> dict:
    """One group's challenger and its lead over the default, as the manifest keeps them."""
    per_draw = t["lead_per_draw"]
    return {"challenger": live[t["challenger"]].label, "lead": _r(t["lead"]), "folds_won": t["folds_won"],
            "folds": t["folds"], "interval": [_r(v) for v in t["interval"]],
            "lead_without_family": {f: _r(v) for f, v in t["lead_without_family"].items()},
            "lead_per_draw": [_r(v) for v in per_draw],
            "lead_spread": _r(max(per_draw) - min(per_draw)) if len(per_draw) > 1 else None,
            "synthetic_lead": _r(t["synthetic_lead"]), "real_lead": _r(t["real_lead"]), "failed": t["failed"]}


def record(cands: Sequence[Candidate], live: Sequence[Candidate], dropped: Sequence[Candidate], results: dict,
           ranking: Ranking, settings: Settings, n_images: int, seconds: float, families: Sequence[str],
           facts: dict) -> dict:
    """The manifest's ``selection``: the verdict, why, what decided, the chosen settings, each
    aggregation's lead over the default and every candidate's figures."""
    chosen = live[ranking.chosen]
    rows = []
    for c in cands:
        row = {"label": c.label, **c.settings(), "latency_ms": _r(results[c.group].latency_ms, 1),
               # the exported graph in onnxruntime where a budget is set (what it is checked on), else torch
               "latency_on": results[c.group].latency_on if settings.latency_budget_ms is not None else "torch",
               "real": {k: _r(v) for k, v in results[c.group].real[c.n_reweight].items()}
               if c.n_reweight in results[c.group].real else None}
        if c in live:
            i = live.index(c)
            row.update(place=ranking.order.index(i) + 1, figure=_r(ranking.mean[i]), recall=_r(ranking.recall[i]),
                       aupro=_r(ranking.aupro[i]), families={f: _r(ranking.family_mean[i, j])
                                                             for j, f in enumerate(families)})
        else:
            row["dropped"] = f"over the latency budget of {settings.latency_budget_ms:g} ms"
        rows.append(row)
    lead = next((t for t in ranking.groups.values() if t["challenger"] == ranking.challenger), None)
    return {
        "verdict": ranking.verdict,
        "reason": ranking.reason,
        "decided_by": ranking.decided_by,
        "chosen": chosen.label,
        "settings": chosen.settings(),
        "default": cands[0].label,
        "challenger": live[ranking.challenger].label,
        "tests": {"folds_won": ranking.folds_won, "folds": settings.folds * facts["draws"],
                  "interval": None if ranking.interval is None else [_r(v) for v in ranking.interval],
                  "lead": None if lead is None else _r(lead["lead"]),
                  "lead_spread": None if lead is None else _tests(lead, live)["lead_spread"]},
        "groups": {str(g): _tests(t, live) for g, t in ranking.groups.items()},
        "validation": {"good_images": n_images, "folds": settings.folds, "draws": facts["draws"],
                       "defects_per_cell": settings.per_cell, "families": list(families),
                       "sizes": list(settings.sizes), "fp_rate": settings.fp_rate, "eval_side": settings.eval_side,
                       "real_ng": facts["ng"]},
        "latency_budget_ms": settings.latency_budget_ms,
        "seconds": _r(seconds, 1),
        "check_seconds": _r(facts["check_seconds"], 1),
        "candidates": rows,
    }


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(rec: dict) -> str:
    """The selection table as Markdown: candidates x synthetic figures per family x latency x verdict."""
    fams = rec["validation"]["families"]
    head = ["candidate", "place", "figure", *fams, "recall", "AU-PRO", "ms / image", "real image / pixel / PRO",
            "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(rec["candidates"], key=lambda r: r.get("place", 99)):
        verdict = ""
        if row["label"] == rec["chosen"]:
            verdict = rec["verdict"]
        elif row["label"] == rec["challenger"] and rec["verdict"] == "uncertain":
            verdict = "challenger (not taken)"
        real = row.get("real")
        real_s = "–" if not real else " / ".join(_f(real.get(k)) for k in ("image_auroc", "pixel_auroc", "pro"))
        if "dropped" in row:
            cells = ["dropped", "–", *["–"] * len(fams), "–", "–"]
        else:
            cells = [str(row["place"]), _f(row["figure"]), *[_f(row["families"][f]) for f in fams],
                     _f(row["recall"]), _f(row["aupro"])]
        lines.append("| " + " | ".join([row["label"], *cells, _f(row["latency_ms"], 0), real_s, verdict]) + " |")
    v = rec["validation"]
    lines += ["", f"{rec['verdict']}: {rec['chosen']} ({rec['reason']}); decided by {rec['decided_by']}; "
              f"{v['good_images']} good images in {v['folds']} folds x {v['draws']} draw(s), {rec['seconds']:.0f} s."]
    for g, gt in rec["groups"].items():
        spread = "" if gt["lead_spread"] is None else f", spread over draws {gt['lead_spread']:.3f}"
        real = "" if gt["real_lead"] is None else f", on real NG {gt['real_lead']:+.3f}"
        lines.append(f"- {g}: {gt['challenger']} leads the default by {gt['lead']:+.3f} "
                     f"[{gt['interval'][0]:+.3f}, {gt['interval'][1]:+.3f}], {gt['folds_won']} of {gt['folds']} "
                     f"folds{real}{spread}")
    return "\n".join(lines)


def _heat(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    u8 = np.clip(255 * (m - lo) / max(hi - lo, 1e-9), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)[..., ::-1]


def pictures(sel, side: int) -> dict[str, np.ndarray]:
    """Per family: the first defect of fold 0, its mask and the chosen recipe's map, side by side (RGB)."""
    chosen = sel.candidates[sel.ranking.chosen]
    r = sel.results[chosen.group]
    out = {}
    for fam, amap in r.examples.items():
        first = [s for s in sel.synthetic if s.fold == 0 and s.family == fam][-1]
        h, w = amap.shape
        img = cv2.resize(first.image, (w, h), interpolation=cv2.INTER_AREA)
        mask = np.repeat(eval_mask(first.mask, side)[..., None] * 255, 3, axis=2).astype(np.uint8)
        heat = _heat(amap, float(np.percentile(amap, 1)), float(amap.max()))
        gap = np.full((h, 4, 3), 255, np.uint8)
        out[fam] = np.concatenate([img, gap, mask, gap, heat], axis=1)
    return out


def write_outputs(folder: Path, sel) -> list[Path]:
    """``folder/selection.md`` (the table) and ``folder/selection_<family>.png`` (defect, mask, map)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "selection.md"]
    paths[0].write_text("# Recipe selection\n\n" + table(sel.record) + "\n")
    for fam, panel in pictures(sel, sel.record["validation"]["eval_side"]).items():
        p = folder / f"selection_{fam}.png"
        ok, buf = cv2.imencode(".png", panel[..., ::-1])
        if ok:
            p.write_bytes(buf.tobytes())
            paths.append(p)
    return paths
