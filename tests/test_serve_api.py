"""patchcore-rt serve's HTTP API through Starlette's test client: every status code README
documents, scores equal to ``patchcore-rt predict``, batching, limits, auth, hostile uploads."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the [serve] extra is not installed")
pytest.importorskip("prometheus_client", reason="the [serve] extra is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from runtime.errors import UsageError  # noqa: E402
from runtime.images import ImageLimits  # noqa: E402
from runtime.cli.app import app as cli_app  # noqa: E402
from runtime.predictor import Predictor  # noqa: E402
from runtime.serve.app import build_app  # noqa: E402
from runtime.serve.options import ServeOptions  # noqa: E402
from runtime.serve.service import Service  # noqa: E402

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://127.0.0.1"


def _open(path):
    return Predictor(path, device="cpu", search="numpy")


def make_client(bundle, tmp_path, **kw) -> TestClient:
    kw.setdefault("models", tmp_path / "models")
    (tmp_path / "models").mkdir(exist_ok=True)
    service = Service(ServeOptions(Path(bundle), **kw), _open, log=lambda m: None)
    return TestClient(build_app(service), base_url=BASE)


@pytest.fixture(scope="module")
def images(rt_bundle) -> dict[str, Path]:
    test = rt_bundle.parent / "data" / "brick" / "test"
    return {"good": sorted((test / "good").glob("*.png"))[0], "defect": sorted((test / "hole").glob("*.png"))[0],
            "defect2": sorted((test / "scratch").glob("*.png"))[0]}


def _predict_cli(paths: list[str], env: dict | None = None) -> list[dict]:
    r = CliRunner().invoke(cli_app, ["predict", *paths], env=env)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def _metrics(client) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_predict_equals_the_predict_command_raw_and_multipart(rt_bundle, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k in ("good", "defect"):
        shutil.copy(images[k], tmp_path / f"{k}.png")
    cli = {r["file"]: r for r in _predict_cli([str(rt_bundle), "good.png", "defect.png", "--device", "cpu",
                                                "--overlays", "ov"])}
    with make_client(rt_bundle, tmp_path) as c:
        for k in ("good", "defect"):
            data = (tmp_path / f"{k}.png").read_bytes()
            raw = c.post(f"/v1/predict?name={k}.png&overlay=1", content=data)
            form = c.post("/v1/predict", files={"file": (f"{k}.png", data, "image/png")})
            for r in (raw, form):
                assert r.status_code == 200, r.text
                got, want = r.json(), cli[f"{k}.png"]
                assert got["file"] == want["file"] and got["bundle"] == want["bundle"]
                assert abs(got["score"] - want["score"]) <= 1e-6 * abs(want["score"])
                assert abs(got["normalised"] - want["normalised"]) <= 1e-6
                assert got["verdict"] == want["verdict"] and got["location"] == want["location"]
                assert set(want) - {"overlay"} <= set(got)
            ov = c.get(raw.json()["overlay"])
            assert ov.status_code == 200 and ov.headers["content-type"] == "image/png"
            mine = cv2.imdecode(np.frombuffer(ov.content, np.uint8), cv2.IMREAD_COLOR)
            theirs = cv2.imread(str(tmp_path / "ov" / f"{k}.png"))
            assert np.array_equal(mine, theirs)  # the same overlay predict --overlays writes
            assert c.get(f"/v1/results/{raw.json()['id']}/thumb.jpg").headers["content-type"] == "image/jpeg"
        assert cli["defect.png"]["verdict"] == "ng" and cli["good.png"]["verdict"] == "ok"


def test_over_the_limits_is_413_and_not_an_image_422_with_predicts_error_text(rt_bundle, images, tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = images["good"].read_bytes()
    (tmp_path / "big.png").write_bytes(data)
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.png").write_bytes(b"this is a text file, not an image\n" * 4)
    (tmp_path / "empty.png").write_bytes(b"")
    few_pixels = _predict_cli([str(rt_bundle), "big.png", "--device", "cpu"], {"PATCHCORE_RT_MAX_PIXELS": "10000"})
    few_bytes = _predict_cli([str(rt_bundle), "big.png", "--device", "cpu"], {"PATCHCORE_RT_MAX_BYTES": "1000"})
    bad = {r["file"]: r for r in _predict_cli([str(rt_bundle), "broken.png", "notes.png", "empty.png"])}
    with make_client(rt_bundle, tmp_path, limits=ImageLimits(max_pixels=10000, max_bytes=1 << 20)) as c:
        r = c.post("/v1/predict?name=big.png", content=data)
        assert r.status_code == 413 and r.json()["error"] == few_pixels[0]["error"]
        assert r.json()["verdict"] == "error" and "10000-pixel limit" in r.json()["error"]
    with make_client(rt_bundle, tmp_path, limits=ImageLimits(max_bytes=1000)) as c:
        r = c.post("/v1/predict?name=big.png", content=data)  # refused from Content-Length, body unread
        assert r.status_code == 413 and r.json()["error"] == few_bytes[0]["error"]
        r = c.post("/v1/predict?name=big.png", content=(data[i : i + 500] for i in range(0, len(data), 500)))
        assert r.status_code == 413 and "over the 1000-byte limit per image" in r.json()["error"]  # chunked, no length
        r = c.post("/v1/predict", files={"file": ("big.png", data, "image/png")})
        assert r.status_code == 413 and r.json()["error"] == few_bytes[0]["error"]
    with make_client(rt_bundle, tmp_path) as c:
        for name in ("broken.png", "notes.png", "empty.png"):
            r = c.post(f"/v1/predict?name={name}", content=(tmp_path / name).read_bytes())
            assert r.status_code == 422 and r.json()["error"] == bad[name]["error"], name
        r = c.post("/v1/predict?name=../../etc/passwd", content=b"x")  # a name is a label, never a path
        assert r.status_code == 422 and r.json()["file"] == "passwd"
        tiny = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
        r = c.post("/v1/predict?name=tiny.png", content=tiny)
        assert r.status_code in (200, 422)  # a 1x1 image: scored or refused, never a 500
        assert r.status_code == 200 or r.json()["verdict"] == "error"
        r = c.post("/v1/predict", files={"note": (None, "no file here")})
        assert r.status_code == 400 and "no file part" in r.json()["error"]
        r = c.post("/v1/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 400
        r = c.post("/v1/predict", content=data, headers={"content-length": "abc"})
        assert r.status_code == 400
        assert c.get("/v1/predict").status_code == 405
        m = _metrics(c)
        assert sum(v for lab, v in m["patchcore_errors_total"] if lab["reason"] == "not_an_image") == 4
        assert sum(v for lab, v in m["patchcore_errors_total"] if lab["reason"] == "bad_request") == 3


def test_concurrent_requests_are_batched_into_one_model_call(rt_bundle, images, tmp_path):
    data = images["good"].read_bytes()
    with make_client(rt_bundle, tmp_path, max_batch=4, max_wait_ms=5000) as c:
        t0 = time.perf_counter()
        got: list = [None] * 4

        def one(i):
            got[i] = c.post(f"/v1/predict?name={i}.png", content=data)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.perf_counter() - t0 < 5.0  # closed by --max-batch, not by the 5 s wait
        assert [r.status_code for r in got] == [200] * 4
        assert len({round(r.json()["score"], 9) for r in got}) == 1
        m = _metrics(c)
        assert m["patchcore_batch_size_count"][0][1] == 1  # one model call
        assert m["patchcore_batch_size_sum"][0][1] == 4  # for the four requests


def test_a_full_queue_is_503_with_retry_after(rt_bundle, images, tmp_path):
    data = images["good"].read_bytes()
    service = Service(ServeOptions(rt_bundle, max_batch=1, max_queue=1, models=tmp_path), _open, log=lambda m: None)
    release, started = threading.Event(), threading.Event()
    score = service.score_jobs

    def slow(jobs):
        started.set()
        release.wait(30)
        return score(jobs)

    service.score_jobs = slow
    with TestClient(build_app(service), base_url=BASE) as c:
        first: list = []
        t = threading.Thread(target=lambda: first.append(c.post("/v1/predict", content=data)))
        t.start()
        assert started.wait(30)
        r = c.post("/v1/predict", content=data)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "--max-queue 1" in r.json()["error"]
        assert {s[0].get("reason"): s[1] for s in _metrics(c)["patchcore_errors_total"]}["queue_full"] == 1
        release.set()
        t.join()
        assert first[0].status_code == 200


def test_actions_are_off_without_a_token_and_need_the_right_one(rt_bundle, images, tmp_path):
    data = images["defect"].read_bytes()
    with make_client(rt_bundle, tmp_path) as c:
        rid = c.post("/v1/predict", content=data).json()["id"]
        for method, path in (("POST", f"/v1/results/{rid}/good"), ("POST", "/v1/teach"), ("POST", "/v1/switch"),
                             ("POST", "/v1/rollback"), ("DELETE", f"/v1/results/{rid}/good")):
            r = c.request(method, path, headers=AUTH)
            assert r.status_code == 403 and "without --token" in r.json()["error"]
        assert c.get("/v1/status").json()["actions"] is False
    with make_client(rt_bundle, tmp_path, token=TOKEN) as c:
        rid = c.post("/v1/predict", content=data).json()["id"]
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
            r = c.post(f"/v1/results/{rid}/good", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert c.post(f"/v1/results/{rid}/good", headers=AUTH).json()["marked"] is True
        assert c.delete(f"/v1/results/{rid}/good", headers=AUTH).json()["marked"] is False
        assert c.get("/v1/status").json()["actions"] is True
        r = c.get("/v1/status", headers={"host": "evil.example"})  # DNS rebinding: a foreign Host is refused
        assert r.status_code == 400


def test_binding_beyond_loopback_needs_a_token(rt_bundle, tmp_path):
    with pytest.raises(UsageError, match="--host 0.0.0.0 listens beyond this machine"):
        ServeOptions(rt_bundle, host="0.0.0.0")
    with pytest.raises(UsageError, match="at least 16 characters"):
        ServeOptions(rt_bundle, token="short")
    assert ServeOptions(rt_bundle, host="0.0.0.0", token=TOKEN).actions_enabled
    assert ServeOptions(rt_bundle, host="::1").token is None
    r = CliRunner().invoke(cli_app, ["serve", "--bundle", str(rt_bundle), "--host", "0.0.0.0"], env={"PATCHCORE_RT_TOKEN": ""})
    assert r.exit_code == 2 and "listens beyond this machine" in r.output


def test_mark_teach_switch_and_a_broken_bundle_is_refused(rt_bundle, images, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(rt_bundle, models / "line-v1")
    (models / "line").symlink_to("line-v1")
    defect = images["defect"].read_bytes()
    with make_client(models / "line", tmp_path, token=TOKEN, models=models) as c:
        v1 = c.get("/healthz").json()["bundle"]
        assert c.post("/v1/teach", headers=AUTH).status_code == 409  # nothing marked
        assert c.post("/v1/switch", headers=AUTH).status_code == 409  # nothing taught
        assert c.post("/v1/rollback", headers=AUTH).status_code == 409  # nothing switched
        assert c.post("/v1/results/nosuchid/good", headers=AUTH).status_code == 404
        assert c.get("/v1/results/nosuchid/thumb.jpg").status_code == 404
        assert c.get("/v1/results?after=-1").status_code == 400
        ok_id = c.post("/v1/predict", content=images["good"].read_bytes()).json()["id"]
        assert c.get(f"/v1/results/{ok_id}/overlay.png").status_code == 404  # not asked for with ?overlay=1
        assert c.get(f"/v1/results/{ok_id}").json()["record"]["verdict"] == "ok"
        assert c.post(f"/v1/results/{ok_id}/good", headers=AUTH).status_code == 409  # not a defective call
        first = c.post("/v1/predict?name=defect.png", content=defect).json()
        assert first["verdict"] == "ng"
        assert c.post(f"/v1/results/{first['id']}/good", headers=AUTH).status_code == 200
        r = c.post("/v1/teach", headers=AUTH)
        assert r.status_code == 202 and r.json()["state"] == "running"
        assert c.post("/v1/teach", headers=AUTH).status_code in (409, 202)  # running, or already done: never two
        for _ in range(300):
            job = c.get("/v1/teach").json()
            if job["state"] != "running":
                break
            time.sleep(0.1)
        assert job["state"] == "done", job
        taught = Path(job["result"]["bundle"])
        assert taught.parent == models and job["result"]["parent"] == v1
        # a switch to a bundle that broke meanwhile is refused and the old one keeps serving
        bank = taught / "memory_bank.npy"
        good_bank = bank.read_bytes()
        bank.write_bytes(good_bank[:-8] + b"\0" * 8)
        r = c.post("/v1/switch", headers=AUTH)
        assert r.status_code == 422 and "refused" in r.json()["error"] and r.json()["bundle"] == v1
        assert os.readlink(models / "line") == "line-v1"
        assert c.post("/v1/predict", content=defect).json()["bundle"] == v1
        bank.write_bytes(good_bank)
        assert c.post("/v1/switch", json={"bundle": "someone-else@0"}, headers=AUTH).status_code == 409
        assert c.post("/v1/switch", content=b"{not json", headers=AUTH).status_code == 400
        r = c.post("/v1/switch", headers=AUTH)
        assert r.status_code == 200 and r.json()["previous"] == v1 and r.json()["bundle"] == job["result"]["id"]
        assert os.readlink(models / "line") == taught.name  # the link flipped: a restart serves it too
        assert c.post(f"/v1/results/{first['id']}/good", headers=AUTH).status_code == 409  # in the served bundle
        assert c.get("/v1/status").json()["taught_ids"] == [first["id"]]
        again = c.post("/v1/predict?name=defect.png", content=defect).json()
        assert again["bundle"] == job["result"]["id"] and again["verdict"] == "ok"
        assert again["score"] < first["score"]
        info = c.get("/v1/bundle").json()
        assert info["bundle_id"] == again["bundle"] and info["lineage"][0]["parent"] == v1
        status = c.get("/v1/status").json()
        assert len(status["lineage"]) == 1 and v1 in status["lineage"][0]
        assert status["recent_scores"] == [again["score"]]  # the histogram: the served bundle's scores only
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["bundle"] == again["bundle"]
        m = _metrics(c)
        assert [lab["bundle_id"] for lab, _ in m["patchcore_bundle_info"]] == [again["bundle"]]
        r = c.post("/v1/rollback", headers=AUTH)  # the operator changes their mind
        assert r.status_code == 200 and r.json()["bundle"] == v1 and os.readlink(models / "line") == "line-v1"
        assert c.post("/v1/predict", content=defect).json()["verdict"] == "ng"
        assert c.get("/v1/status").json()["previous"] == taught.name
        assert c.get("/v1/status").json()["marked_ids"] == [first["id"]]  # marked again, not taught


def test_watch_inside_the_server_feeds_results_and_metrics_exactly_once(rt_bundle, images, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(images["defect"], folder / "part-1.png")
    shutil.copy(images["good"], folder / "part-2.png")
    kw = dict(watch=folder, watch_settle=0.0, watch_poll=0.05)

    def wait_for(c, n):
        for _ in range(300):
            got = c.get("/v1/results").json()["results"]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{n} results did not arrive")

    with make_client(rt_bundle, tmp_path, **kw) as c:
        got = {r["file"]: r for r in wait_for(c, 2)}
        assert got["part-1.png"]["verdict"] == "ng" and got["part-2.png"]["verdict"] == "ok"
        assert all(r["source"] == "watch" for r in got.values())
        assert c.get(got["part-1.png"]["thumb"]).headers["content-type"] == "image/jpeg"
        assert c.get(got["part-1.png"]["overlay"]).headers["content-type"] == "image/png"
        assert c.get("/healthz").json()["watch"] == "running"
        m = _metrics(c)
        by = {(lab["verdict"], lab["source"]): v for lab, v in m["patchcore_results_total"]}
        assert by == {("ng", "watch"): 1, ("ok", "watch"): 1}
        assert m["patchcore_drift_share"][0][1] in (0.0, 1.0)  # one good part: above the 95% quantile or not
    journal = folder / "_patchcore" / "results.jsonl"
    assert len(journal.read_text().splitlines()) == 2
    with make_client(rt_bundle, tmp_path, **kw) as c:  # a restart scores the new part, and nothing twice
        # dropped whole (copied beside the folder, then renamed into it): with --settle 0 a file still
        # being written may be read half-written, which is an error record and, once whole, a result
        shutil.copy(images["good"], tmp_path / "part-3.png")
        os.replace(tmp_path / "part-3.png", folder / "part-3.png")
        assert [r["file"] for r in wait_for(c, 1)] == ["part-3.png"]
        time.sleep(0.3)
        assert [r["file"] for r in c.get("/v1/results").json()["results"]] == ["part-3.png"]
    assert len(journal.read_text().splitlines()) == 3


def test_healthz_is_503_when_the_watcher_stopped(rt_bundle, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (tmp_path / "not-a-folder").write_text("a file where the output folder should be")
    with make_client(rt_bundle, tmp_path, watch=folder, watch_out=tmp_path / "not-a-folder" / "out") as c:
        for _ in range(100):
            r = c.get("/healthz")
            if r.status_code == 503:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["watch"].startswith("stopped")
        assert c.get("/").status_code == 200 and "patchcore-rt" in c.get("/").text
        assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/static/../../pyproject.toml").status_code == 404  # assets by exact name only


def test_a_bundle_folder_replaced_outside_is_served_with_its_health_and_metrics(rt_bundle, images, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(rt_bundle, models / "line-v1")
    (models / "line").symlink_to("line-v1")
    data = images["good"].read_bytes()
    with make_client(models / "line", tmp_path, token=TOKEN, models=models) as c:
        v1 = c.post("/v1/predict", content=data).json()["bundle"]
        rid = c.post("/v1/predict?name=d.png", content=images["defect"].read_bytes()).json()["id"]
        c.post(f"/v1/results/{rid}/good", headers=AUTH)
        c.post("/v1/teach", headers=AUTH)
        for _ in range(300):
            job = c.get("/v1/teach").json()
            if job["state"] != "running":
                break
            time.sleep(0.1)
        taught = Path(job["result"]["bundle"])
        (models / "line.new").symlink_to(taught.name)
        os.replace(models / "line.new", models / "line")  # the operator's loop's atomic flip, by hand
        v2 = c.post("/v1/predict", content=data).json()["bundle"]
        assert v2 == job["result"]["id"] != v1
        assert c.get("/healthz").json()["bundle"] == v2
        assert [lab["bundle_id"] for lab, _ in _metrics(c)["patchcore_bundle_info"]] == [v2]


def test_serve_without_the_extra_says_how_to_install_it(rt_bundle, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m.startswith("runtime.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    r = CliRunner().invoke(cli_app, ["serve", "--bundle", str(rt_bundle)])
    assert r.exit_code == 2 and "pip install 'patchcore-rt[serve]'" in r.output
