"""Exact where drawn, when drawn: a reduced search (``--search int8``) settles a map down to the
overlay's floor only for the images whose overlay is drawn (a camera frame saved as anomalous, a
``serve`` request with ``?overlay=1``); every other image's map, record and regions are exact at and
above the pixel threshold, and it pays only for that. Compared with the exact numpy search."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.images import read_image
from runtime.line.camera import CameraOptions, CameraRunner
from runtime.line.records import drawn_outcome, score_items, settles_for_overlays, Item
from runtime.line.run_options import RunOptions
from runtime.predictor import Predictor
from runtime.regions import Judge
from tests.test_camera import DEFECT_FRAMES, stream_bundle, video  # noqa: F401 - fixtures

# one int8 candidate per patch: the bounds of most patches are over-estimates, so what is settled shows
FAST = {"device": "cpu", "search": "int8", "candidates": 1}


class CountingPredictor(Predictor):
    """A predictor that notes, per model call, its images, the ``overlays`` it was given and the
    patches the reduced search settled per image."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[int, object, np.ndarray]] = []

    def predict_prepared(self, prepared, overlays=None):
        pred = super().predict_prepared(prepared, overlays)
        self.calls.append((len(prepared), overlays, self.settled.copy()))
        return pred


def _images(bundle: Path) -> list[np.ndarray]:
    test = bundle.parent / "data" / "brick" / "test"
    good = sorted((test / "good").glob("*.png"))[:3]
    bad = sorted(p for p in test.rglob("*.png") if p.parent.name != "good")[:3]
    return [read_image(p) for p in (good[0], bad[0], good[1], bad[1], good[2], bad[2])]


def _assert_exact_at(level: float, fast: np.ndarray, exact: np.ndarray) -> int:
    """Every pixel at or above ``level`` equal, bit for bit; below it an upper bound that stays below."""
    shown = exact >= level
    np.testing.assert_array_equal(fast >= level, shown)
    np.testing.assert_array_equal(fast[shown], exact[shown])
    assert np.all(fast >= exact - 1e-3)
    return int(shown.sum())


def test_a_mixed_batch_settles_the_overlay_band_only_for_the_images_drawn(rt_bundle):
    images = _images(rt_bundle)
    ref = Predictor(rt_bundle, device="cpu", search="numpy")
    fast = Predictor(rt_bundle, **FAST)
    assert fast.scorer.approximate and settles_for_overlays(fast)
    records_level, overlay_level = fast.level(False), fast.level(True)
    assert overlay_level < records_level == ref.bundle.manifest["threshold"]["pixel_value"]
    drawn = [False, True, False, False, True, False]  # a good and a defective image drawn, the others not
    a = ref.predict(images)
    b = fast.predict(images, overlays=drawn)
    mixed = fast.settled.copy()
    fast.predict(images, overlays=False)
    records_only = fast.settled.copy()
    fast.predict(images, overlays=True)
    all_drawn = fast.settled.copy()
    np.testing.assert_allclose(b.image_scores, a.image_scores, rtol=1e-9, atol=0)
    np.testing.assert_array_equal(b.verdicts, a.verdicts)
    judge = Judge.for_manifest(ref.bundle.manifest)
    band = 0
    for i, d in enumerate(drawn):
        _assert_exact_at(records_level, b.maps[i], a.maps[i])
        assert judge.regions(b.maps[i], a.plans[i])[:2] == judge.regions(a.maps[i], a.plans[i])[:2]
        if d:
            band += _assert_exact_at(overlay_level, b.maps[i], a.maps[i])
            assert mixed[i] == all_drawn[i]
        else:
            assert mixed[i] == records_only[i]  # it pays only the records' settling
    assert band > 0
    # the overlay band costs: an image not drawn settles fewer patches than drawn, a good one far fewer
    assert np.all(records_only <= all_drawn) and records_only[0] < all_drawn[0]
    assert records_only.sum() < all_drawn.sum()


def test_camera_settles_only_the_frames_it_saves_with_an_overlay(tmp_path, stream_bundle, video):  # noqa: F811
    run_fast, run_ref = RunOptions(device="cpu", search="int8"), RunOptions(device="cpu", search="numpy")
    fast = CountingPredictor(stream_bundle, **FAST)
    ref = Predictor(stream_bundle, device="cpu", search="numpy")
    got, want = [], []
    CameraRunner(fast, CameraOptions(str(video), tmp_path / "fast", batch=1), emit=got.append, run=run_fast).run()
    CameraRunner(ref, CameraOptions(str(video), tmp_path / "ref", batch=1), emit=want.append, run=run_ref).run()
    assert [r["frame"] for r in got] == [r["frame"] for r in want] and len(got) > 20
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], rel=1e-9, abs=0)
        assert (g["verdict"], g["normalised"], g["location"]) == (w["verdict"], w["normalised"], w["location"])
        assert (g["regions"], g["regions_total"]) == (w["regions"], w["regions_total"])
    saved = [g for g in got if "overlay" in g]
    assert {g["frame"] for g in saved} >= DEFECT_FRAMES
    for g, w in zip(got, want):
        if "overlay" in g:  # the overlay drawn from the map exact down to its floor: the exact search's picture
            np.testing.assert_array_equal(cv2.imread(g["overlay"]), cv2.imread(w["overlay"]))
    # one model call per frame for the records (the predictor's own setting: no overlay band), and one
    # more, with the overlay band, per saved frame only
    plain = [c for c in fast.calls if c[1] is None]
    again = [c for c in fast.calls if c[1] is not None]
    assert len(plain) == len(got) and all(n == 1 for n, _, _ in fast.calls)
    assert len(again) == len(saved) and all(list(o) == [True] for _, o, _ in again)
    assert not fast.overlays
    # which the records-only settling does not pay: fewer patches than the saved frames' second pass
    first = {g["frame"]: c[2][0] for g, c in zip(got, plain)}
    assert sum(first[g["frame"]] for g in saved) < sum(int(c[2][0]) for c in again)


def test_drawn_outcome_is_the_outcome_itself_where_nothing_is_left_to_settle(rt_bundle):
    image = _images(rt_bundle)[1]
    for p in (Predictor(rt_bundle, device="cpu", search="numpy"), Predictor(rt_bundle, overlays=True, **FAST)):
        assert not settles_for_overlays(p)
        o = score_items(p, [Item("x", image=image)])[0]
        assert drawn_outcome(p, o) is o


def test_serve_settles_the_overlay_band_only_for_requests_that_ask_for_an_overlay(rt_bundle, tmp_path):
    pytest.importorskip("starlette", reason="the [serve] extra is not installed")
    from starlette.testclient import TestClient

    from runtime.serve.app import build_app
    from runtime.serve.options import ServeOptions
    from runtime.serve.service import Service

    test = rt_bundle.parent / "data" / "brick" / "test"
    files = {"good": sorted((test / "good").glob("*.png"))[0], "defect": sorted((test / "hole").glob("*.png"))[0]}
    opened: dict[str, Predictor] = {}

    def client(name: str, **kw) -> TestClient:
        (tmp_path / name).mkdir()
        opts = ServeOptions(Path(rt_bundle), models=tmp_path / name / "models", max_batch=1)
        service = Service(opts, lambda path: opened.setdefault(name, Predictor(path, **kw)), log=lambda m: None)
        return TestClient(build_app(service), base_url="http://127.0.0.1")

    with client("fast", **FAST) as fast, client("ref", device="cpu", search="numpy") as ref:
        p = opened["fast"]
        for k, path in files.items():
            data = path.read_bytes()
            plain = fast.post(f"/v1/predict?name={k}.png", content=data).json()
            plain_settled = int(p.settled[0])
            drawn = fast.post(f"/v1/predict?name={k}.png&overlay=1", content=data).json()
            drawn_settled = int(p.settled[0])
            want = ref.post(f"/v1/predict?name={k}.png&overlay=1", content=data).json()
            for got in (plain, drawn):
                assert got["score"] == pytest.approx(want["score"], rel=1e-9, abs=0)
                assert (got["verdict"], got["location"], got["regions"]) == (want["verdict"], want["location"],
                                                                             want["regions"])
            mine = cv2.imdecode(np.frombuffer(fast.get(drawn["overlay"]).content, np.uint8), cv2.IMREAD_COLOR)
            theirs = cv2.imdecode(np.frombuffer(ref.get(want["overlay"]).content, np.uint8), cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(mine, theirs)  # the overlay the exact search draws
            # the request without an overlay settled what a records-only predictor settles, and less than drawn
            p.predict([read_image(path)], overlays=False)
            assert plain_settled == int(p.settled[0]) < drawn_settled
