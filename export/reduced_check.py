"""The parity an export measures for each reduced-precision variant (int8, bf16) it can run here,
recorded in the manifest's ``reduced_precision`` section so that a box running one knows what
was verified: against the bundle's float32 runtime on the same images, the relative feature
error (``|a - b| / |a|`` over all features), the largest relative error of the image scores
before eq. 7 reweighting and after it, the images used, and the parity verdict
(:mod:`export.reduced_verdict`: ``approved``, by which criterion) that ``--graph auto`` reads.
``patchcore parity`` judges the same variants against PyTorch with the README's criteria.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime import bundle as bundle_io
from runtime.engines import DeviceUnavailableError
from runtime.engines.table import reduced_variants
from runtime.graph_choice import verdict_text
from runtime.images import read_image
from runtime.predictor import Predictor

from .quantize import calibration_indices, relative_error
from .reduced_verdict import image_labels, judge_reduced

_DEVICE = {"onnxruntime": "cpu", "openvino": "openvino"}
SEARCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
SEARCH_KINDS = ("bf16", "int8")  # the reduced-precision candidate steps of runtime.search.reduced
# Check images: every test image of the class up to CHECK_IMAGES (spread evenly), so that an image
# AUROC can be compared to half a point; the search studies read the first SEARCH_IMAGES of them
# spread evenly (their recall is per patch: 16 images give ~25,000 patches at 320 px)
CHECK_IMAGES = 64
SEARCH_IMAGES = 16
# Share of check patches whose true nearest bank patch must be among the candidates. Image scores and
# the maps at and above the map level are the exact search's whatever the count (the scorer settles
# those patches exactly), so it is chosen for speed: a miss costs only a higher bound below the level,
# or a little more settling near it, while each candidate is a bank row read per patch, so a higher
# recall costs more search time than the settling it saves (benchmarks/candidate_count.py;
# BENCHMARKS.md, "Candidate count of the int8 search").
SEARCH_RECALL = 0.85
# int8 on fewer principal components only while this many candidates reach SEARCH_RECALL: the exact
# rescoring of each candidate reads a bank row from memory, and past this many candidates those reads
# cost more than dropping components saves in the integer product over the bank (BENCHMARKS.md,
# "int8 candidate search with exact rescoring")
PROJECTED_MAX_CANDIDATES = 8


def _max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref) / np.maximum(np.abs(ref), 1e-30)))


def measure_reduced(root: str | Path, paths: Sequence[Path], source: str, log: Callable[[str], None] = lambda s: None
                    ) -> dict[str, Any]:
    """``{"<engine>:<graph key>": facts}`` for every reduced variant of the bundle at ``root``
    that runs on this machine's CPU (onnxruntime, OpenVINO), measured on ``paths``."""
    b = bundle_io.read_bundle(root)
    images = [read_image(p) for p in paths]
    labels = image_labels(paths)
    threshold = b.manifest["threshold"]["value"]
    ref_p = Predictor(b, device="cpu", graph="features_fp32", search="numpy")
    ref_emb = ref_p.embed(images)
    ref = ref_p.scorer.score(ref_emb)
    out: dict[str, Any] = {}
    for v in reduced_variants(set(b.manifest["graphs"]), engines=("onnxruntime", "openvino")):
        name = f"{v.engine}:{v.key}"
        try:
            p = Predictor(b, device=_DEVICE[v.engine], graph=v.key, search="numpy")
        except DeviceUnavailableError as e:
            out[name] = {"measured": False, "reason": str(e)}
            log(f"reduced precision {name}: not measured here ({e})")
            continue
        emb = p.embed(images)
        got = p.scorer.score(emb)
        n = len(images)
        facts = {"measured": True, "precision_run": p.engine.precision, "images": n, "source": source,
                 "feature_rel_error": round(relative_error(ref_emb, emb), 6),
                 "image_unweighted_max_rel_error": round(_max_rel(ref.patch_scores.reshape(n, -1).max(1),
                                                                  got.patch_scores.reshape(n, -1).max(1)), 6),
                 "image_max_rel_error": round(_max_rel(ref.image_scores, got.image_scores), 6),
                 "reference": "features_fp32 on onnxruntime CPU",
                 "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        facts.update(judge_reduced(labels, ref.image_scores, got.image_scores,
                                   facts["image_unweighted_max_rel_error"], threshold))
        out[name] = facts
        log(f"reduced precision {name}: features {facts['feature_rel_error']:.2%}, image scores before "
            f"reweighting {facts['image_unweighted_max_rel_error']:.2%} (max, {n} images); "
            + verdict_text(facts))
    sub = np.unique(np.linspace(0, len(images) - 1, min(SEARCH_IMAGES, len(images))).round().astype(int))
    for kind in SEARCH_KINDS if b.manifest["features"].get("parts") is None else ():  # fused: exact search only
        search = search_study(kind, ref_p.scorer.bank, ref_emb[sub], ref_p.scorer.score(ref_emb[sub]),
                              ref_p.scorer.n_reweight)
        if search is not None:
            out[f"{kind}_search"] = search
            on = f" on {search['components']} of {search['dims']} principal components" if search.get("components") else ""
            log(f"{kind} search: {search['candidates']} candidates per patch{on} (recall {search['recall']})")
    return out


def search_study(kind: str, bank: np.ndarray, emb: np.ndarray, exact, n_reweight: int) -> dict[str, Any] | None:
    """What ``--search <kind>`` (bf16, int8) uses for this bundle (None where that search cannot run
    here): the smallest of :data:`SEARCH_CANDIDATES` whose candidates hold the true nearest bank
    patch of at least :data:`SEARCH_RECALL` of the check patches, and for int8 the fewest principal
    components (D/8, D/4, D/2 of the bank's, else all) at which at most
    :data:`PROJECTED_MAX_CANDIDATES` candidates reach that: fewer components make the integer
    product cheaper, more candidates the exact rescoring dearer. Image scores are exact whatever
    the choice (the scorer settles the worst patches exactly, which this checks); the recall decides
    how often an anomaly-map pixel keeps an over-estimate. What is needed depends on the features:
    a reduced product loses digits of ``q . m``, which matters when nearest-neighbour distances are
    small against the norms (wide_resnet50_2 with random weights on bottle: 32 candidates in bf16,
    8 in int8; effnet-lite0: 2-4)."""
    from runtime.search.build import build_index
    from runtime.search.scorer import PatchScorer

    queries, truth = emb.reshape(-1, emb.shape[-1]), exact.nearest.reshape(-1, 1)
    dims = bank.shape[1]
    options: list[int | None] = [None]
    if kind == "int8":
        options = [r for r in (dims // 8, dims // 4, dims // 2) if r >= 16] + [None]
    by_components: dict[str, dict[str, float]] = {}
    components, chosen = None, None
    for r in options:
        try:
            index, _ = build_index(bank, kind, candidates=1, components=r)
        except DeviceUnavailableError:
            return None
        raw = index.search(queries, SEARCH_CANDIDATES[-1])  # nearest first: each count is a prefix
        recall = {str(c): round(float(np.mean((raw[:, :c] == truth).any(axis=1))), 6) for c in SEARCH_CANDIDATES}
        by_components[str(r or dims)] = recall
        enough = [c for c in SEARCH_CANDIDATES if recall[str(c)] >= SEARCH_RECALL]
        components, chosen = r, (enough[0] if enough else SEARCH_CANDIDATES[-1])
        if r is not None and enough and enough[0] <= PROJECTED_MAX_CANDIDATES:
            break
    r = PatchScorer(bank, build_index(bank, kind, candidates=chosen, components=components)[0], n_reweight)
    exact_scores = bool(np.allclose(r.score(emb).image_scores, exact.image_scores, rtol=1e-9, atol=0))
    facts = {"candidates": chosen, "recall": by_components[str(components or dims)], "recall_target": SEARCH_RECALL,
             "image_scores_exact": exact_scores, "patches": int(queries.shape[0])}
    if kind == "int8":
        facts.update({"components": components, "dims": dims, "recall_by_components": by_components})
    return facts


def record_reduced(root: str | Path, facts: dict[str, Any]) -> bundle_io.Bundle:
    """Write ``facts`` as the manifest's ``reduced_precision`` section (the manifest is re-sealed)."""
    b = bundle_io.read_bundle(root)
    manifest = dict(b.manifest)
    manifest["reduced_precision"] = facts
    return bundle_io.finalize_manifest(root, manifest, b.files)


def check_images(data: Path, train: Sequence[Path], calibration_count: int, n: int = CHECK_IMAGES
                 ) -> tuple[list[Path], str]:
    """The images the export measures on: up to ``n`` test images of ``data`` (good and defective,
    spread evenly over the sorted paths) when it has a test folder, else good training images past
    the int8 calibration ones (held out from the quantizer)."""
    test = sorted(p for p in (Path(data) / "test").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if test:
        pick = np.unique(np.linspace(0, len(test) - 1, min(n, len(test))).round().astype(int))
        return [test[i] for i in pick], f"{len(pick)} of {len(test)} test images of {Path(data).name}, spread evenly"
    used = set(calibration_indices(len(train), calibration_count)) if calibration_count else set()
    rest = [p for i, p in enumerate(train) if i not in used] or list(train)
    return rest[:n], f"{min(n, len(rest))} good training images not used to calibrate int8"
