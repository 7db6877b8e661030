"""The reduced-precision candidate steps of the bank search (runtime/search/reduced.py) and the exact
settling of each image's worst patch (PatchScorer): image scores equal to the exact search's
whatever the candidate step misses, the int8 step's recall, and its graph file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.search.build import build_index
from runtime.search.distances import bound_slack
from runtime.search.scorer import PatchScorer

REPO = Path(__file__).resolve().parents[1]


def make_scorer(bank: np.ndarray, n_reweight: int = 3, backend: str = "auto", **options) -> PatchScorer:
    """A scorer as its callers build one: the index first (build_index), then the scorer on it."""
    return PatchScorer(bank, build_index(bank, backend, **options)[0], n_reweight=n_reweight)


def _bank_and_patches(seed: int = 0, rows: int = 3000, dim: int = 256, images: int = 3, patches: int = 200):
    rng = np.random.default_rng(seed)
    bank = (rng.normal(size=(rows, dim)) + 4.0).astype(np.float32)  # an offset: centring matters
    emb = bank[rng.integers(0, rows, size=(images, patches))] + rng.normal(scale=0.3, size=(images, patches, dim))
    emb[:, :5] += rng.normal(scale=3.0, size=(images, 5, dim))  # a few anomalous patches per image
    return bank, emb.astype(np.float32)


def test_int8_candidates_hold_the_true_neighbour_and_scores_are_exact():
    bank, emb = _bank_and_patches()
    exact = make_scorer(bank, 3, "numpy").score(emb)
    fast = make_scorer(bank, 3, "int8", candidates=8)
    assert fast.backend == "int8-onnxruntime+exact(c=8)" and fast.margin == 8 and fast.approximate
    raw = fast.index.search(emb.reshape(-1, 256), 8)
    assert raw.shape == (600, 8) and raw.dtype == np.int64
    recall = np.mean((raw == exact.nearest.reshape(-1, 1)).any(axis=1))
    print(f"int8 recall at 8 candidates: {recall:.4f}")
    assert recall == 1.0
    got = fast.score(emb)
    np.testing.assert_array_equal(got.nearest, exact.nearest)
    # settled patches (each image's worst) are the exact search's; the others are float32 bounds of
    # their candidate's exact distance: never below it, within bound_slack above it
    assert got.exact.any(axis=1).all()
    np.testing.assert_array_equal(got.patch_scores[got.exact], exact.patch_scores[got.exact])
    assert (got.patch_scores >= exact.patch_scores).all()
    assert (got.patch_scores <= exact.patch_scores * (1 + bound_slack(256))).all()
    np.testing.assert_allclose(got.image_scores, exact.image_scores, rtol=1e-12)
    assert fast.index.search(emb[0, :3], 1).shape == (3, 8)  # never fewer than its candidate count


class _WrongIndex:
    """A candidate step that is wrong on purpose: random bank rows, never the nearest."""

    name = "wrong"

    approximate = True  # declared as every index declares it: the scorer reads it, never probes
    bounds = False

    def __init__(self, rows: int, candidates: int, seed: int = 1):
        self.candidates, self.rows, self.rng = candidates, rows, np.random.default_rng(seed)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.rng.integers(0, self.rows, size=(len(queries), max(k, self.candidates)))


def test_image_scores_stay_exact_when_the_candidate_step_misses():
    """A candidate distance bounds the true one from above, so searching the worst patches exactly
    until the bound falls below the best exact score gives the exact image score, its patch and m*
    (hence the same eq. 7 reweighting) even from useless candidates; only map pixels keep bounds."""
    bank, emb = _bank_and_patches(seed=3)
    exact = make_scorer(bank, 3, "numpy").score(emb)
    fast = PatchScorer(bank, _WrongIndex(len(bank), 2), 3)  # the scorer takes any ready index
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
    import runtime.search.reduced as cand

    bank, emb = _bank_and_patches(rows=500, images=1, patches=50)
    monkeypatch.setattr(cand, "u8s8_saturates", lambda: True)
    idx = cand.Int8Index(bank, 8)
    assert idx.levels == 63 and int(np.abs(idx._feed["bank8"]).max()) == 63
    monkeypatch.setattr(cand, "u8s8_saturates", lambda: False)
    assert cand.Int8Index(bank, 8).levels == 127
    exact = make_scorer(bank, 3, "numpy").score(emb)
    s = make_scorer(bank, 3, "int8", candidates=8).score(emb)
    np.testing.assert_allclose(s.image_scores, exact.image_scores, rtol=1e-12)


def test_unknown_search_names_the_choices():
    with pytest.raises(ValueError, match="choose auto, faiss, numpy, bf16, int8"):
        make_scorer(np.ones((4, 2), np.float32), 3, "int4")


def test_graph_files_are_what_the_script_builds():
    """runtime/search/graphs/*.onnx are committed (the runtime has no onnx package): each must be the graph
    scripts/make_candidate_graph.py builds."""
    import onnx

    spec = importlib.util.spec_from_file_location("make_candidate_graph", REPO / "scripts" / "make_candidate_graph.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_candidate_graph"] = mod
    spec.loader.exec_module(mod)
    assert set(mod.BUILDERS) == {p.name for p in (REPO / "runtime" / "search" / "graphs").glob("*.onnx")}
    for name, build in mod.BUILDERS.items():
        committed = onnx.load(str(REPO / "runtime" / "search" / "graphs" / name))
        assert committed.graph.SerializeToString() == build().graph.SerializeToString(), name
    ops = [n.op_type for n in onnx.load(str(REPO / "runtime" / "search" / "graphs" / "bank_candidates_int8.onnx")).graph.node]
    assert ops[0] == "DynamicQuantizeMatMul" and ops.count("TopK") == 2


@pytest.mark.parametrize("rows", [3000, 37, 5])
def test_two_stage_top_k_equals_one_top_k_over_all_rows(rows):
    """The int8 graph's top k in blocks of 32 rows (the k blocks with the largest maxima, then the
    top k of their rows) gives the same candidates, in the same order, as one TopK over every row
    (block 1); banks that are not a multiple of the block, or hold fewer than k blocks, included."""
    import runtime.search.reduced as cand

    bank, emb = _bank_and_patches(seed=5, rows=rows, images=1, patches=300)
    idx = cand.Int8Index(bank, 8)
    q = np.ascontiguousarray(emb[0] - idx.mean)
    k = min(8, rows)
    feed = {**idx._feed, "queries": q, "k": np.array([k], np.int64)}
    one = idx._session.run(["candidates"], {**feed, "block": np.array([1], np.int64)})[0]
    got = idx.search(emb[0], k)
    assert got.shape == (300, k) and got.max() < rows  # never a padding row
    np.testing.assert_array_equal(got, one)
    if rows >= 8 * 32:  # the blocked path really ran
        two = idx._session.run(["candidates"], {**feed, "block": np.array([32], np.int64)})[0]
        np.testing.assert_array_equal(two, one)


def test_exact_index_beside_reduced_steps_matches_numpy():
    """The onnxruntime float32 search that settles the worst patches finds the neighbours numpy's
    exact search finds, and the blocked rescoring of candidates gives exact_distances' values."""
    from runtime.search.distances import exact_distances, nearest_candidate
    from runtime.search.exact import NumpyIndex, OnnxExactIndex

    bank, emb = _bank_and_patches(seed=7)
    q = emb.reshape(-1, 256)
    got, ref = OnnxExactIndex(bank).search(q, 2), NumpyIndex(bank).search(q, 2)
    assert got.shape == (600, 2) and np.mean(got[:, 0] == ref[:, 0]) == 1.0
    assert OnnxExactIndex(bank).search(q[:0], 2).shape == (0, 2)
    cand = np.random.default_rng(0).integers(0, len(bank), size=(600, 6))
    dist, nn = nearest_candidate(q, bank, cand, chunk=7)
    full = exact_distances(q, bank, cand)
    np.testing.assert_array_equal(nn, cand[np.arange(600), full.argmin(axis=1)])
    np.testing.assert_array_equal(dist, full.min(axis=1))


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_candidate_bounds_never_fall_below_the_exact_distance(scale):
    """The float32 bound of each patch's nearest candidate: at or above exact_distances' value of the
    row it names (whatever the norms: a sum of 256 float32 squares), within bound_slack of it, and
    that row the nearest candidate wherever the candidates' distances are not within the slack."""
    from runtime.search.distances import candidate_bounds, exact_distances

    bank, emb = _bank_and_patches(seed=3)
    bank, q = bank * scale, emb.reshape(-1, 256) * scale
    cand = np.random.default_rng(1).integers(0, len(bank), size=(600, 3))
    bound, row = candidate_bounds(q, bank, cand, chunk=64)
    full = exact_distances(q, bank, cand)
    mine = exact_distances(q, bank, row[:, None])[:, 0]
    assert (bound >= mine).all() and (bound <= mine * (1 + bound_slack(256))).all()
    assert (row[:, None] == cand).any(axis=1).all()
    assert (mine <= full.min(axis=1) * (1 + bound_slack(256))).all()
    clear = np.sort(full, axis=1)[:, 1] > full.min(axis=1) * (1 + 1e-4)
    np.testing.assert_array_equal(row[clear], cand[np.arange(600), full.argmin(axis=1)][clear])


def test_int8_on_principal_components_keeps_recall_and_exact_scores():
    """The int8 product on r < D principal components (turned by a fixed rotation): orthonormal
    projection, the same ranking term with the full norms, image scores still the exact search's,
    and the candidates still hold the true neighbours of features that vary in few directions."""
    from runtime.search.base import centre_bank
    from runtime.search.reduced import Int8Index, principal_components

    rng = np.random.default_rng(11)
    basis = np.linalg.qr(rng.normal(size=(256, 24)))[0]  # a bank that varies in 24 of 256 directions
    bank = (rng.normal(size=(3000, 24)) @ basis.T * 3.0 + 4.0 + rng.normal(scale=0.01, size=(3000, 256)))
    bank = bank.astype(np.float32)
    emb = (bank[rng.integers(0, 3000, size=(2, 300))] + rng.normal(scale=0.2, size=(2, 300, 24)) @ basis.T)
    emb = emb.astype(np.float32)
    p = principal_components(centre_bank(bank)[1], 32)
    assert p.shape == (256, 32)
    np.testing.assert_allclose(p.T @ p, np.eye(32), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p.T @ basis, axis=0), 1.0, atol=1e-3)  # holds the bank's directions
    idx = Int8Index(bank, 4, components=32)
    assert idx.components == 32 and idx._feed["bank8"].shape == (32, 3008)
    assert idx.name == "int8-onnxruntime+exact(c=4, 32 of 256 components)"
    assert Int8Index(bank, 4, components=256).components is None  # all of them: the unprojected graph
    exact = make_scorer(bank, 3, "numpy").score(emb)
    raw = idx.search(emb.reshape(-1, 256), 4)
    assert np.mean((raw == exact.nearest.reshape(-1, 1)).any(axis=1)) >= 0.999
    got = make_scorer(bank, 3, "int8", candidates=4, components=32).score(emb)
    np.testing.assert_allclose(got.image_scores, exact.image_scores, rtol=1e-12)


def test_int8_index_runs_fewer_queries_at_a_time_for_a_large_bank():
    """The (queries x bank rows) closeness values of one graph run stay within 64 MB: a 100,000-row
    bank takes 167 queries a run instead of 1024, and still finds the nearest rows."""
    from runtime.search.reduced import Int8Index

    rng = np.random.default_rng(2)
    bank = rng.normal(size=(100_000, 16)).astype(np.float32)
    big = Int8Index(bank, 4)
    assert big.chunk == 167  # 2**24 values / 100,000 rows (already a multiple of 32)
    assert Int8Index(bank[:3000], 4).chunk == 1024
    src = rng.integers(0, 100_000, 400)
    q = bank[src] + rng.normal(scale=0.01, size=(400, 16)).astype(np.float32)
    got = big.search(q, 4)
    assert got.shape == (400, 4) and np.all((got == src[:, None]).any(axis=1))  # each query's own row
    # (queries are quantized per run, so the order of far candidates may differ between chunkings)


@pytest.mark.parametrize("tiles", [1, 4])
def test_settling_the_patches_a_visible_pixel_reads_makes_maps_exact_at_and_above_the_level(tiles):
    """Upper bounds of patch scores (true scores plus over-estimates): once the patches that
    exact_maps marks are replaced by their true scores, every map pixel whose true value reaches the
    level is exact (bit for bit) and no other pixel reaches it; on one canvas and on 2 x 2 tiles."""
    from runtime.exact_maps import patches_to_settle
    from runtime.geometry import TileLayout
    from runtime.postprocess import anomaly_maps

    rng = np.random.default_rng(5)
    if tiles == 1:
        layout = TileLayout((40, 40), (320, 320), (320, 320), ((0, 0),))
    else:
        layout = TileLayout((20, 20), (320, 320), (160, 160), ((0, 0), (0, 160), (160, 0), (160, 160)))
    true = rng.normal(10.0, 1.0, size=(3, 1600)).astype(np.float32)
    true[0, 50:60] += 8.0  # a defect
    true[1, :] -= 20.0  # an image far below the level
    bounds = true + np.where(rng.random(true.shape) < 0.2, rng.exponential(2.0, true.shape), 0.0).astype(np.float32)
    level = 13.0
    marked = patches_to_settle(bounds, layout, 4.0, level)
    assert 0 < marked.sum() < marked.size and not marked[1].any()
    settled = np.where(marked, true, bounds)
    exact = anomaly_maps(layout.stitch(true), (320, 320), 4.0)
    got = anomaly_maps(layout.stitch(settled), (320, 320), 4.0)
    shown = exact >= level
    assert shown[0].any()
    np.testing.assert_array_equal(got >= level, shown)
    np.testing.assert_array_equal(got[shown], exact[shown])
    # and on an original image the map is resized to (bilinear, 2 x 2 canvas pixels per pixel)
    import cv2

    for i in range(3):
        on_exact, on_got = (cv2.resize(m[i], (900, 700), interpolation=cv2.INTER_LINEAR) for m in (exact, got))
        seen = on_exact >= level
        np.testing.assert_array_equal(on_got >= level, seen)
        np.testing.assert_array_equal(on_got[seen], on_exact[seen])


@pytest.mark.parametrize("sigma", [2.0, 0.0])
def test_settled_patches_cover_every_cell_the_neighbours_of_a_visible_pixel_read(sigma):
    """The map on the original image reads 2 x 2 canvas pixels per pixel, so a pixel there reaching the
    level may read a canvas pixel just below it: exact_maps settles every cell read by a pixel at or
    above the level *or next to one*. Checked against an independent oracle: the pixels each cell
    changes when poked (the map is linear in the cells), on a blob whose edge crosses every
    alignment of pixels to cells."""
    import cv2

    from runtime.exact_maps import patches_to_settle
    from runtime.geometry import TileLayout
    from runtime.postprocess import anomaly_maps

    n, size = 16, 128
    layout = TileLayout((n, n), (size, size), (size, size), ((0, 0),))
    yy, xx = np.mgrid[:n, :n]
    bounds = (10.0 + 8.0 * np.exp(-((yy - 7.3) ** 2 + (xx - 8.6) ** 2) / 6.0)).astype(np.float32).reshape(1, -1)
    level = 14.0
    marked = patches_to_settle(bounds, layout, sigma, level).reshape(n, n)
    hot = anomaly_maps(bounds.reshape(1, n, n), (size, size), sigma)[0] >= level
    near = cv2.dilate(hot.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
    assert hot.any() and (near & ~hot).any()
    base = anomaly_maps(np.zeros((1, n, n), np.float32), (size, size), sigma)[0]
    poked = np.zeros((n * n, n, n), np.float32)
    poked[np.arange(n * n), *np.divmod(np.arange(n * n), n)] = 1000.0
    reads = (anomaly_maps(poked, (size, size), sigma) != base).reshape(n, n, size, size)  # cell -> its pixels
    needed = (reads & near).any(axis=(2, 3))
    read_by_hot = (reads & hot).any(axis=(2, 3))
    assert (needed & ~read_by_hot).any()  # the neighbours do reach further cells: the case is real
    assert not (needed & ~marked).any(), "a cell a neighbour of a visible pixel reads was left unsettled"
    assert not (marked & ~needed & (bounds.reshape(n, n) < level)).any()  # and no cell beyond those


@pytest.mark.parametrize("n_src, n_out, sigma", [(40, 320, 4.0), (37, 300, 4.0), (40, 320, 0.0), (20, 330, 2.5)])
def test_the_pixels_that_read_a_cell_are_its_window_and_no_more(n_src, n_out, sigma):
    """exact_maps settles a cell when a pixel at or above the level lies in its window: every pixel whose
    map value changes when the cell changes lies in it (the guarantee), and the window's first and last
    rows and columns do change (no slack: the 7 x 7 cells of a blur radius plus neighbours, which it
    replaces, settled 6% more patches of bottle's maps)."""
    from runtime.exact_maps import _windows
    from runtime.postprocess import anomaly_maps

    radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
    start, stop = _windows(n_src, n_out, radius)
    base = np.zeros((1, n_src, n_src), np.float32)
    for c in sorted({0, 1, n_src // 2, n_src - 2, n_src - 1}):
        poked = base.copy()
        poked[0, c, c] = 1000.0
        changed = anomaly_maps(poked, (n_out, n_out), sigma)[0] != anomaly_maps(base, (n_out, n_out), sigma)[0]
        ys, xs = np.nonzero(changed)
        assert ys.min() >= start[c] and ys.max() < stop[c] and xs.min() >= start[c] and xs.max() < stop[c]
        assert ys.min() == start[c] and ys.max() == stop[c] - 1  # tight along each axis


def test_nearest_of_pairs_with_a_known_row_is_the_exact_nearest_among_them():
    """The settling's last step: each query's nearest among its pairs and its candidate row (measured
    already, not measured again), as exact_distances gives it, the lowest row of equal distances; on
    random pairs (queries whose known row is not the nearest, is not among the pairs, or is all they
    have, duplicate bank rows for ties) against brute force over the same rows."""
    from runtime.search.distances import exact_distances, nearest_of_pairs

    rng = np.random.default_rng(21)
    bank = rng.normal(size=(400, 64)).astype(np.float32)
    bank[200:220] = bank[180:200]  # exact duplicates: ties broken by the lower row
    q = (bank[rng.integers(0, 400, 300)] + rng.normal(scale=0.5, size=(300, 64))).astype(np.float32)
    known_row = rng.integers(0, 400, 300)
    known_dist = exact_distances(q, bank, known_row[:, None])[:, 0]
    counts = rng.integers(0, 12, 300)
    counts[:20] = 1
    counts[20:40] = np.maximum(counts[20:40], 1)
    qi = np.repeat(np.arange(300), counts)
    mi = rng.integers(0, 400, len(qi))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    mi[starts[20:40]] = known_row[20:40]  # the known row among the pairs too (it is not measured again)
    # ties: the first 20 queries sit on a duplicated row; the known row is the higher copy, a pair the lower
    q[:20] = bank[200 + np.arange(20)]
    known_row[:20] = 200 + np.arange(20)
    known_dist[:20] = exact_distances(q[:20], bank, known_row[:20, None])[:, 0]
    mi[starts[:20]] = 180 + np.arange(20)
    dist, row = nearest_of_pairs(q, bank, qi, mi, known=(known_dist, known_row))
    for i in range(300):
        rows = np.unique(np.r_[known_row[i], mi[qi == i]])
        d = exact_distances(q[i : i + 1], bank, rows[None])[0]
        assert dist[i] == d.min() and row[i] == rows[np.flatnonzero(d == d.min())[0]]
    assert np.mean(row != known_row) > 0.5  # the pairs did change most answers: the test can fail
    np.testing.assert_array_equal(row[:20], 180 + np.arange(20))  # of equal distances the lowest row
    assert np.all(dist[:20] == 0.0)
