"""runtime.search: PatchScorer (on an index from build_index) against float64 brute force
(np.linalg.norm over all pairs), the paper's eq. 7 reweighting against a direct computation, float32
stability, and the index table.

faiss's flat L2 search switches to the BLAS form |q|^2 - 2 q.m + |m|^2 once
n_queries * dim >= 128000 (one 28x28 image at 256+ dims); the stability tests are sized to take
that path, as real scoring does.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.measure import RUNS
from runtime.search.build import build_index
from runtime.search.distances import exact_distances
from runtime.search.exact import NumpyIndex
from runtime.search.faiss_index import FaissIndex
from runtime.search.scorer import PatchScorer
from runtime.search.table import INDEXES

BACKENDS = ["numpy", "faiss"]


def make_scorer(bank: np.ndarray, n_reweight: int = 3, backend: str = "auto", **options) -> PatchScorer:
    """A scorer as its callers build one: the index first (build_index), then the scorer on it."""
    return PatchScorer(bank, build_index(bank, backend, **options)[0], n_reweight=n_reweight)


def brute_force(queries: np.ndarray, bank: np.ndarray, chunk: int = 32) -> np.ndarray:
    """(Q, M) float64 Euclidean distances, every pair, computed as norms of differences."""
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    out = np.empty((len(q), len(b)))
    for s in range(0, len(q), chunk):
        out[s : s + chunk] = np.linalg.norm(q[s : s + chunk, None, :] - b[None], axis=2)
    return out


def direct_image_scores(emb: np.ndarray, bank: np.ndarray, b: int) -> np.ndarray:
    """Paper eq. 7, straight from its definition, float64."""
    out = []
    bank64 = bank.astype(np.float64)
    for e in emb:
        d = brute_force(e, bank)  # (P, M)
        patch = d.min(1)
        w = int(np.argmax(patch))
        s_star = patch[w]
        if b == 0:
            out.append(s_star)
            continue
        m_star = int(np.argmin(d[w]))
        dm = np.linalg.norm(bank64 - bank64[m_star], axis=1)
        others = [j for j in np.argsort(dm, kind="stable") if j != m_star][: b - 1]
        support = [m_star] + others
        dist = d[w, support]
        softmax = np.exp(dist - dist.max()) / np.exp(dist - dist.max()).sum()
        out.append((1.0 - softmax[0]) * s_star)
    return np.array(out)


def float32_expansion(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    q, m = queries.astype(np.float32), bank.astype(np.float32)
    d2 = (q * q).sum(1)[:, None] - 2.0 * (q @ m.T) + (m * m).sum(1)[None]
    return np.sqrt(np.maximum(d2, 0))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, 32)).astype(np.float32)
    emb = rng.normal(size=(3, 40, 32)).astype(np.float32) * 1.1
    emb[1, 7] += 4.0  # one clearly anomalous patch
    return bank, emb


# ---------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_equals_brute_force(data, backend):
    bank, emb = data
    scorer = make_scorer(bank, n_reweight=0, backend=backend)
    assert scorer.backend.startswith(backend)
    s = scorer.score(emb)
    d = brute_force(emb.reshape(-1, 32), bank)
    assert s.patch_scores.shape == (3, 40) and s.patch_scores.dtype == np.float32
    assert s.nearest.shape == (3, 40)
    np.testing.assert_allclose(s.patch_scores.reshape(-1), d.min(1), rtol=1e-6)
    np.testing.assert_array_equal(s.nearest.reshape(-1), d.argmin(1))
    np.testing.assert_allclose(s.image_scores, d.min(1).reshape(3, 40).max(1), rtol=1e-6)
    dist, idx = scorer.nearest(emb.reshape(-1, 32))
    assert dist.dtype == np.float64
    np.testing.assert_allclose(dist, d.min(1), rtol=1e-6)
    np.testing.assert_array_equal(idx, d.argmin(1))


def test_backends_identical(data):
    bank, emb = data
    a = make_scorer(bank, n_reweight=3, backend="numpy").score(emb)
    b = make_scorer(bank, n_reweight=3, backend="faiss").score(emb)
    np.testing.assert_array_equal(a.patch_scores, b.patch_scores)
    np.testing.assert_array_equal(a.nearest, b.nearest)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)


def test_index_search_orders_nearest_first(data):
    bank, emb = data
    q = emb.reshape(-1, 32)
    order = np.argsort(brute_force(q, bank), axis=1)[:, :5]
    for index in (NumpyIndex(bank, chunk=7), FaissIndex(bank, device="cpu")):
        np.testing.assert_array_equal(index.search(q, 5), order)


def test_exact_distances(data):
    bank, emb = data
    q = emb[0]
    idx = np.random.default_rng(1).integers(0, len(bank), (len(q), 4))
    ref = np.linalg.norm(q.astype(np.float64)[:, None] - bank.astype(np.float64)[idx], axis=2)
    np.testing.assert_allclose(exact_distances(q, bank, idx), ref, rtol=1e-6)


# ---------------------------------------------------------------- eq. 7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [3, 9])
def test_reweighting_equals_direct_eq7(data, backend, b):
    bank, emb = data
    s = make_scorer(bank, n_reweight=b, backend=backend).score(emb)
    ref = direct_image_scores(emb, bank, b)
    assert s.image_scores.dtype == np.float64
    np.testing.assert_allclose(s.image_scores, ref, rtol=1e-6)
    # the weight is in (0, 1): reweighted scores are below the max patch score
    assert np.all(s.image_scores < s.patch_scores.max(1)) and np.all(s.image_scores > 0)


@pytest.mark.parametrize("backend", ["numpy", "int8"])
def test_m_star_neighbours_are_searched_once_per_scorer(data, backend):
    """eq. 7's neighbours of m* depend on the bank alone: a scorer keeps them, so the same images scored
    again search no m* again, and give the same image scores as the first time and as a fresh scorer
    (which still equal eq. 7 computed directly)."""
    bank, emb = data
    scorer = make_scorer(bank, n_reweight=3, backend=backend)
    first = scorer.score(emb)
    k, asked = scorer._reweight_k(), []
    search = scorer.exact.search
    scorer.exact.search = lambda q, n: (asked.append(n), search(q, n))[1]
    again = scorer.score(emb)
    assert k not in asked  # no m* searched the second time
    np.testing.assert_array_equal(again.image_scores, first.image_scores)
    np.testing.assert_array_equal(make_scorer(bank, n_reweight=3, backend=backend).score(emb).image_scores,
                                  first.image_scores)
    np.testing.assert_allclose(first.image_scores, direct_image_scores(emb, bank, 3), rtol=1e-6)
    assert set(scorer._neighbours) >= set(first.nearest[np.arange(3), first.patch_scores.argmax(axis=1)].tolist())


def test_reweighting_changes_with_b(data):
    bank, emb = data
    s3 = make_scorer(bank, n_reweight=3, backend="numpy").score(emb).image_scores
    s9 = make_scorer(bank, n_reweight=9, backend="numpy").score(emb).image_scores
    assert not np.allclose(s3, s9)


def test_reweighting_stable_for_large_distances():
    """exp(distance) overflows float64 above ~709: the softmax must subtract the maximum."""
    rng = np.random.default_rng(2)
    bank = (rng.normal(size=(200, 16)) * 400).astype(np.float32)
    emb = (rng.normal(size=(2, 30, 16)) * 400).astype(np.float32)
    s = make_scorer(bank, n_reweight=3, backend="numpy").score(emb)
    assert np.all(np.isfinite(s.image_scores))
    np.testing.assert_allclose(s.image_scores, direct_image_scores(emb, bank, 3), rtol=1e-6)


def test_n_reweight_zero_gives_max_patch_score(data):
    bank, emb = data
    s = make_scorer(bank, n_reweight=0).score(emb)
    np.testing.assert_allclose(s.image_scores, s.patch_scores.max(1), rtol=1e-6)
    np.testing.assert_allclose(s.image_scores, direct_image_scores(emb, bank, 0), rtol=1e-6)


@pytest.mark.parametrize("n", [1, -1])
def test_n_reweight_one_or_negative_refused(data, n):
    with pytest.raises(ValueError, match="n_reweight"):
        make_scorer(data[0], n_reweight=n)


def test_n_reweight_larger_than_bank_is_clipped():
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(4, 8)).astype(np.float32)
    emb = rng.normal(size=(2, 5, 8)).astype(np.float32)
    s = make_scorer(bank, n_reweight=9, backend="numpy").score(emb)
    np.testing.assert_allclose(s.image_scores, direct_image_scores(emb, bank, 4), rtol=1e-6)


def test_single_row_bank_with_reweighting_keeps_scores():
    """With one bank row N_b(m*) = {m*}: eq. 7's weight is 1 - 1 = 0 and every image would
    score 0. A scorer must not silently zero all scores; the reasonable result is no
    reweighting (the max patch score), as for n_reweight=1, which is refused for this reason."""
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(1, 8)).astype(np.float32)
    emb = rng.normal(size=(3, 5, 8)).astype(np.float32)
    s = make_scorer(bank, n_reweight=3, backend="numpy").score(emb)
    assert np.all(s.image_scores > 0), f"image scores collapsed to {s.image_scores}"
    np.testing.assert_allclose(s.image_scores, s.patch_scores.max(1), rtol=1e-6)


# ---------------------------------------------------------------- float32 stability


_OFFSET_CACHE: dict = {}


def _offset_data(offset: float, seed: int, m: int = 1000, q: int = 784, d: int = 256):
    """Features with a large common offset: |f| ~ offset * sqrt(d), neighbour distances ~ sqrt(2d).
    Returns bank, queries and their brute-force distances (cached: shared by both backends)."""
    key = (offset, seed, m, q, d)
    if key not in _OFFSET_CACHE:
        rng = np.random.default_rng(seed)
        centre = rng.normal(size=d) * offset
        bank = (centre + rng.normal(size=(m, d))).astype(np.float32)
        queries = (centre + rng.normal(size=(q, d))).astype(np.float32)
        _OFFSET_CACHE[key] = bank, queries, brute_force(queries, bank)
    return _OFFSET_CACHE[key]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescoring_fixes_moderate_float32_loss(backend):
    """Offset 100: float32 expansion is off by ~1e-3 relative and misranks some neighbours;
    exact re-scoring of the candidates gives float64 brute-force distances."""
    bank, queries, ref = _offset_data(100.0, seed=0)
    naive = float32_expansion(queries, bank).min(1)
    assert np.abs(naive - ref.min(1)).max() / ref.min(1).min() > 1e-4  # the regime is real
    dist, idx = make_scorer(bank, n_reweight=0, backend=backend).nearest(queries)
    np.testing.assert_allclose(dist, ref.min(1), rtol=1e-6)
    np.testing.assert_array_equal(idx, ref.argmin(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescoring_exact_for_large_norm_features(backend):
    """Offset 1e3 (|f| ~ 1.6e4, neighbour distances ~ 20): the float32 expansion's error exceeds
    the gaps between neighbours, so the true nearest row is often not among the few float32
    candidates. Scores must still equal float64 brute force (translation invariance: searching
    on bank-mean-centred features removes the offset before float32 ever sees it)."""
    bank, queries, ref = _offset_data(1e3, seed=1)
    naive = float32_expansion(queries, bank).min(1)
    assert np.abs(naive - ref.min(1)).max() / ref.min(1).min() > 1e-2  # float32 expansion fails
    scorer = make_scorer(bank, n_reweight=3, backend=backend)
    dist, idx = scorer.nearest(queries)
    np.testing.assert_allclose(dist, ref.min(1), rtol=1e-6)
    np.testing.assert_array_equal(idx, ref.argmin(1))
    # eq. 7 on the same data: m*'s bank neighbours must be found exactly too
    w = int(np.argmax(ref.min(1)))
    m_star = int(np.argmin(ref[w]))
    dm = np.linalg.norm(bank.astype(np.float64) - bank[m_star].astype(np.float64), axis=1)
    support = [m_star] + [j for j in np.argsort(dm, kind="stable") if j != m_star][:2]
    dist_w = ref[w, support]
    e = np.exp(dist_w - dist_w.max())
    expect = (1 - e[0] / e.sum()) * ref[w].min()
    got = scorer.score(queries.reshape(1, *queries.shape)).image_scores[0]
    assert got == pytest.approx(expect, rel=1e-6)


# ---------------------------------------------------------------- errors


def test_bad_inputs_refused(data):
    bank, emb = data
    with pytest.raises(ValueError, match="memory bank"):
        make_scorer(np.zeros((0, 32), np.float32))
    with pytest.raises(ValueError, match="memory bank"):
        make_scorer(np.zeros(32, np.float32))
    for bad in (np.zeros((0, 32), np.float32), np.zeros(32, np.float32)):  # the scorer checks the bank it is given
        with pytest.raises(ValueError, match="memory bank"):
            PatchScorer(bad, build_index(bank, "numpy")[0])
    scorer = make_scorer(bank, backend="numpy")
    with pytest.raises(ValueError, match=r"\(B, P, 32\)"):
        scorer.score(emb[..., :16])
    with pytest.raises(ValueError, match=r"\(B, P, 32\)"):
        scorer.score(emb[0])
    with pytest.raises(ValueError, match="unknown search backend"):
        build_index(bank, "annoy")


# ---------------------------------------------------------------- the index table


def test_index_rows_declare_what_their_classes_declare(data):
    """The table's capability columns and the classes' attributes (what the scorer reads) agree."""
    bank, _ = data
    assert INDEXES.keys() == ("faiss", "numpy", "bf16", "int8")
    for row in INDEXES:
        cls = row.load()
        assert cls.approximate is row.approximate, row.key
        assert cls.bounds is False  # a bound is a property of an index on principal components
    wide = np.random.default_rng(3).normal(size=(600, 64)).astype(np.float32)
    pruning, _ = build_index(wide, "int8", candidates=4, components=16)
    plain, _ = build_index(wide, "int8", candidates=4)
    assert INDEXES.get("int8").bounds and pruning.bounds is True and plain.bounds is False
    assert make_scorer(bank, 3, "int8", candidates=4).approximate is True
    assert make_scorer(bank, 3, "numpy").approximate is False


def test_auto_returns_the_index_and_the_facts_of_its_choice(data):
    """--search auto on a CPU times the int8 step against the exact float32 search by the one rule
    (runtime.measure) and says so; with ``exact`` it never takes a reduced step and measures nothing."""
    bank, emb = data
    index, facts = build_index(bank, "auto", device="cpu")
    assert facts["chose"] in ("int8", "exact") and facts["runs"] == RUNS and facts["queries"] == 256
    assert facts["int8_ms"] > 0 and facts["exact_ms"] > 0 and facts["min_speedup"] == 2.0
    assert index.approximate is (facts["chose"] == "int8")
    plain, none = build_index(bank, "auto", device="cpu", exact=True)
    assert none == {} and plain.name == "numpy"
    exact = make_scorer(bank, 3, "numpy").score(emb).image_scores
    np.testing.assert_allclose(PatchScorer(bank, index, 3).score(emb).image_scores, exact, rtol=1e-12)
