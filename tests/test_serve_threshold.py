"""Serve's operating point: ``GET /v1/threshold`` (the served bundle's point and how a proposed
policy would have called the recent parts) and ``POST /v1/threshold`` (a new bundle version at
that point, switched to like a taught bundle; the token needed as for teach and switch)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the [serve] extra is not installed")
from tests.test_serve_api import AUTH, TOKEN, make_client  # noqa: E402
from tests.test_threshold import hashes, with_operating_point  # noqa: E402

from runtime.bundle import read_bundle  # noqa: E402
from runtime.operating_point import Evidence, Policy, Rule  # noqa: E402


@pytest.fixture()
def line(rt_bundle, tmp_path):
    """models/line -> line-v1: the runtime bundle with an operating point (false-calls=10%)."""
    models = tmp_path / "models"
    models.mkdir()
    cal = read_bundle(rt_bundle).manifest["threshold"]["calibration_scores"]
    ev = Evidence(cal, np.array(cal) + 50.0, defect_source="made-up defects: good scores + 50")
    with_operating_point(rt_bundle, models / "line-v1", ev, Rule(), Policy("false-calls", 0.10))
    (models / "line").symlink_to("line-v1")
    return models


def _parts(rt_bundle) -> list[bytes]:
    test = rt_bundle.parent / "data" / "brick" / "test"
    return [p.read_bytes() for k in ("good", "hole") for p in sorted((test / k).glob("*.png"))[:4]]


def test_moving_the_threshold_needs_the_token(rt_bundle, line, tmp_path):
    with make_client(line / "line", tmp_path, models=line) as c:
        r = c.post("/v1/threshold", json={"policy": "false-calls=5%"}, headers=AUTH)
        assert r.status_code == 403 and "without --token" in r.json()["error"]
        assert c.get("/v1/threshold").status_code == 200  # looking needs no token
    with make_client(line / "line", tmp_path, token=TOKEN, models=line) as c:
        r = c.post("/v1/threshold", json={"policy": "false-calls=5%"})
        assert r.status_code == 401
    assert sorted(p.name for p in line.iterdir()) == ["line", "line-v1"]


def test_preview_then_apply_a_threshold_and_roll_back(rt_bundle, line, tmp_path):
    before = hashes(line / "line-v1")
    with make_client(line / "line", tmp_path, token=TOKEN, models=line) as c:
        v1 = c.get("/healthz").json()["bundle"]
        recs = [c.post(f"/v1/predict?name=p{i}.png", content=d).json() for i, d in enumerate(_parts(rt_bundle))]
        scores = sorted(r["score"] for r in recs)
        x = (scores[2] + scores[3]) / 2
        now = c.get("/v1/threshold").json()
        m = read_bundle(line / "line-v1").manifest["threshold"]
        assert now["bundle"] == v1 and now["threshold"] == pytest.approx(m["value"]) and now["policy"] == "false-calls=10%"
        assert now["recent"] == {"parts": len(recs), "ng": sum(r["verdict"] == "ng" for r in recs)}
        assert now["expected"]["false_calls"] == pytest.approx(m["operating_point"]["expected"]["false_calls"])
        view = c.get("/v1/threshold", params={"policy": f"value={x!r}"}).json()
        p = view["proposed"]
        assert p["threshold"] == pytest.approx(x) and p["recent"]["ng"] == len(scores) - 3
        changed = {ch["id"] for ch in p["recent"]["changed"]}
        assert changed == {r["id"] for r in recs if (r["score"] >= x) != (r["verdict"] == "ng")}
        for bad in ("sensitivity=3", "value=-2", "recall=200%"):
            r = c.get("/v1/threshold", params={"policy": bad})
            assert r.status_code == 400 and "\n" not in r.json()["error"]
            r = c.post("/v1/threshold", json={"policy": bad}, headers=AUTH)
            assert r.status_code == 400
        assert c.post("/v1/threshold", content=b"{nope", headers=AUTH).status_code == 400
        assert sorted(q.name for q in line.iterdir()) == ["line", "line-v1"]  # nothing written by a refusal
        r = c.post("/v1/threshold", json={"policy": f"value={x!r}"}, headers=AUTH)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["previous"] == v1 and got["bundle"] != v1 and got["threshold"]["after"]["value"] == pytest.approx(x)
        assert os.readlink(line / "line") == got["path"] and (line / got["path"]).is_dir()
        new = read_bundle(line / got["path"])
        assert new.lineage[-1]["parent"] == v1 and new.manifest["threshold"]["operating_point"]["chosen_by"] == \
            "patchcore-rt serve"
        again = [c.post("/v1/predict", content=d).json() for d in _parts(rt_bundle)]
        assert all(r["bundle"] == got["bundle"] and (r["verdict"] == "ng") == (r["score"] >= x) for r in again)
        assert c.get("/v1/status").json()["threshold"] == pytest.approx(x)
        r = c.post("/v1/rollback", headers=AUTH)
        assert r.status_code == 200 and r.json()["bundle"] == v1 and os.readlink(line / "line") == "line-v1"
    assert hashes(line / "line-v1") == before
