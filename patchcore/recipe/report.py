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


def record(cands: Sequence[Candidate], live: Sequence[Candidate], dropped: Sequence[Candidate], results: dict,
           ranking: Ranking, settings: Settings, n_images: int, seconds: float) -> dict:
    """The manifest's ``selection``: the verdict, why, the chosen settings and every candidate's figures."""
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
            row.update(place=ranking.order.index(i) + 1, median_rank=_r(ranking.median_rank[i], 2),
                       figure=_r(ranking.mean[i]), recall=_r(ranking.recall[i]), aupro=_r(ranking.aupro[i]),
                       families={f: _r(ranking.family_mean[i, j]) for j, f in enumerate(settings.families)})
        else:
            row["dropped"] = f"over the latency budget of {settings.latency_budget_ms:g} ms"
        rows.append(row)
    return {
        "verdict": ranking.verdict,
        "reason": ranking.reason,
        "chosen": chosen.label,
        "settings": chosen.settings(),
        "default": cands[0].label,
        "challenger": live[ranking.challenger].label,
        "tests": {"folds_won": ranking.folds_won, "folds": settings.folds,
                  "interval": None if ranking.interval is None else [_r(v) for v in ranking.interval],
                  "place_without_family": ranking.top_two_without},
        "validation": {"good_images": n_images, "folds": settings.folds, "defects_per_cell": settings.per_cell,
                       "families": list(settings.families), "sizes": list(settings.sizes),
                       "fp_rate": settings.fp_rate, "eval_side": settings.eval_side},
        "latency_budget_ms": settings.latency_budget_ms,
        "seconds": _r(seconds, 1),
        "candidates": rows,
    }


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(rec: dict) -> str:
    """The selection table as Markdown: candidates x synthetic figures per family x latency x verdict."""
    fams = rec["validation"]["families"]
    head = ["candidate", "place", "median rank", *fams, "recall", "AU-PRO", "ms / image", "real image / pixel / PRO",
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
            cells = [str(row["place"]), _f(row["median_rank"], 1), *[_f(row["families"][f]) for f in fams],
                     _f(row["recall"]), _f(row["aupro"])]
        lines.append("| " + " | ".join([row["label"], *cells, _f(row["latency_ms"], 0), real_s, verdict]) + " |")
    t = rec["tests"]
    lines += ["", f"{rec['verdict']}: {rec['chosen']} ({rec['reason']}); {rec['validation']['good_images']} good "
              f"images in {t['folds']} folds, {rec['seconds']:.0f} s."]
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
