"""The reduced-precision candidate steps of the bank search (runtime/candidates.py) and the exact
settling of each image's worst patch (PatchScorer): image scores equal to the exact search's
whatever the candidate step misses, the int8 step's recall, and its graph file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.search import PatchScorer

REPO = Path(__file__).resolve().parents[1]


def _bank_and_patches(seed: int = 0, rows: int = 3000, dim: int = 256, images: int = 3, patches: int = 200):
    rng = np.random.default_rng(seed)
    bank = (rng.normal(size=(rows, dim)) + 4.0).astype(np.float32)  # an offset: centring matters
    emb = bank[rng.integers(0, rows, size=(images, patches))] + rng.normal(scale=0.3, size=(images, patches, dim))
    emb[:, :5] += rng.normal(scale=3.0, size=(images, 5, dim))  # a few anomalous patches per image
    return bank, emb.astype(np.float32)


def test_int8_candidates_hold_the_true_neighbour_and_scores_are_exact():
    bank, emb = _bank_and_patches()
    exact = PatchScorer(bank, 3, "numpy").score(emb)
    fast = PatchScorer(bank, 3, "int8", candidates=8)
    assert fast.backend == "int8-onnxruntime+exact(c=8)" and fast.margin == 8 and fast.approximate
    raw = fast.index.search(emb.reshape(-1, 256), 8)
    assert raw.shape == (600, 8) and raw.dtype == np.int64
    recall = np.mean((raw == exact.nearest.reshape(-1, 1)).any(axis=1))
    print(f"int8 recall at 8 candidates: {recall:.4f}")
    assert recall == 1.0
    got = fast.score(emb)
    np.testing.assert_array_equal(got.nearest, exact.nearest)
    np.testing.assert_array_equal(got.patch_scores, exact.patch_scores)
    np.testing.assert_allclose(got.image_scores, exact.image_scores, rtol=1e-12)
    assert fast.index.search(emb[0, :3], 1).shape == (3, 8)  # never fewer than its candidate count


class _WrongIndex:
    """A candidate step that is wrong on purpose: random bank rows, never the nearest."""

    name = "wrong"

    def __init__(self, rows: int, candidates: int, seed: int = 1):
        self.candidates, self.rows, self.rng = candidates, rows, np.random.default_rng(seed)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.rng.integers(0, self.rows, size=(len(queries), max(k, self.candidates)))


def test_image_scores_stay_exact_when_the_candidate_step_misses():
    """A candidate distance bounds the true one from above, so searching the worst patches exactly
    until the bound falls below the best exact score gives the exact image score, its patch and m*
    (hence the same eq. 7 reweighting) even from useless candidates; only map pixels keep bounds."""
    bank, emb = _bank_and_patches(seed=3)
    exact = PatchScorer(bank, 3, "numpy").score(emb)
    fast = PatchScorer(bank, 3, "int8", candidates=2)
    fast.index = _WrongIndex(len(bank), 2)
    got = fast.score(emb)
    np.testing.assert_allclose(got.image_scores, exact.image_scores, rtol=1e-12)
    rows = np.arange(len(emb))
    worst = exact.patch_scores.argmax(axis=1)
    np.testing.assert_array_equal(got.nearest[rows, worst], exact.nearest[rows, worst])
    assert np.all(got.patch_scores >= exact.patch_scores - 1e-5)  # the rest: upper bounds
    assert np.mean(got.patch_scores > exact.patch_scores + 1e-3) > 0.5  # ... which this index really missed
    # without the settling step the worst patch would be a wrong one: the test can fail
    unsettled = fast.nearest(emb.reshape(-1, 256))[0].reshape(emb.shape[:2]).max(axis=1)
    assert np.all(unsettled > exact.patch_scores.max(axis=1) + 1e-3)


def test_int8_bank_keeps_seven_bits_where_u8s8_products_saturate(monkeypatch):
    import runtime.candidates as cand

    bank, emb = _bank_and_patches(rows=500, images=1, patches=50)
    monkeypatch.setattr(cand, "u8s8_saturates", lambda: True)
    idx = cand.Int8Index(bank, 8)
    assert idx.levels == 63 and int(np.abs(idx._feed["bank8"]).max()) == 63
    monkeypatch.setattr(cand, "u8s8_saturates", lambda: False)
    assert cand.Int8Index(bank, 8).levels == 127
    exact = PatchScorer(bank, 3, "numpy").score(emb)
    s = PatchScorer(bank, 3, "int8", candidates=8).score(emb)
    np.testing.assert_allclose(s.image_scores, exact.image_scores, rtol=1e-12)


def test_unknown_search_names_the_choices():
    with pytest.raises(ValueError, match="choose auto, faiss, numpy, bf16, int8"):
        PatchScorer(np.ones((4, 2), np.float32), 3, "int4")


def test_candidate_graph_file_is_what_the_script_builds():
    """runtime/graphs/bank_candidates_int8.onnx is committed (the runtime has no onnx package):
    it must be the graph scripts/make_candidate_graph.py builds."""
    import onnx

    spec = importlib.util.spec_from_file_location("make_candidate_graph", REPO / "scripts" / "make_candidate_graph.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_candidate_graph"] = mod
    spec.loader.exec_module(mod)
    committed = onnx.load(str(REPO / "runtime" / "graphs" / "bank_candidates_int8.onnx"))
    assert committed.graph.SerializeToString() == mod.build().graph.SerializeToString()
    assert [n.op_type for n in committed.graph.node] == ["DynamicQuantizeLinear", "MatMulInteger", "Mul", "Cast",
                                                        "Mul", "Sub", "TopK"]
