"""The line cell: several bundles in one process (serve, watch, camera), reviews both ways with a
trail that survives restarts and reaches the results database, a teach refused when it would
call a part reviewed NG good, and the per-product drift alarm (a brightness ramp fires it,
unchanged good parts do not)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the [serve] extra is not installed")
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from runtime.bundle import read_bundle  # noqa: E402
from runtime.errors import UsageError  # noqa: E402
from runtime.cli.app import app as cli_app  # noqa: E402
from runtime.line.products import parse_bundles  # noqa: E402
from runtime.operating_point import parse_policy  # noqa: E402
from runtime.predictor import Predictor  # noqa: E402
from runtime.serve.app import build_app  # noqa: E402
from runtime.serve.options import ServeOptions  # noqa: E402
from runtime.serve.service import Service  # noqa: E402
from runtime.threshold import basis, new_version  # noqa: E402

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _open(path):
    return Predictor(path, device="cpu", search="numpy")


@pytest.fixture(scope="session")
def two_bundles(rt_bundle, tmp_path_factory) -> tuple[Path, Path]:
    """Product a: the test bundle; product b: the same fit at another operating point (its own
    bundle id and threshold), written torch-free in a second."""
    b = tmp_path_factory.mktemp("cell") / "bundle-b"
    parent = read_bundle(rt_bundle)
    new_version(parent, basis(parent.manifest), parse_policy("false-calls=20%"), b)
    return rt_bundle, b


@pytest.fixture(scope="module")
def parts(rt_bundle) -> dict[str, list[Path]]:
    test = rt_bundle.parent / "data" / "brick" / "test"
    return {"good": sorted((test / "good").glob("*.png")), "defect": sorted((test / "hole").glob("*.png"))}


def _client(bundles: dict, tmp_path: Path, **kw) -> TestClient:
    (tmp_path / "models").mkdir(exist_ok=True)
    first = next(iter(bundles.values()))
    opts = ServeOptions(first, bundles=bundles, models=tmp_path / "models", token=TOKEN, **kw)
    service = Service(opts, _open, log=lambda m: None)
    service.open_sinks()
    return TestClient(build_app(service), base_url="http://127.0.0.1")


def test_bundle_values_name_products_and_refuse_what_is_ambiguous(tmp_path):
    assert parse_bundles(["a=/x", "b=/y"]) == {"a": "/x", "b": "/y"}
    assert parse_bundles(["/x"]) == {None: "/x"}
    odd = tmp_path / "odd=name"
    odd.mkdir()
    assert parse_bundles([str(odd)]) == {None: str(odd)}  # an existing path with '=' is a plain bundle
    for bad in (["a=/x", "a=/y"], ["/x", "/y"], ["bad name=/x"], ["a="]):
        with pytest.raises(UsageError):
            parse_bundles(bad)


def test_serve_scores_each_product_with_its_own_bundle_and_refuses_an_unknown_one(two_bundles, parts, tmp_path):
    a, b = two_bundles
    data = parts["defect"][0].read_bytes()
    want = {k: _open(p).predict([cv2.cvtColor(cv2.imread(str(parts["defect"][0])), cv2.COLOR_BGR2RGB)])
            for k, p in (("a", a), ("b", b))}
    with _client({"a": a, "b": b}, tmp_path, load="lazy") as c:
        st = c.get("/v1/status").json()
        assert [(p["product"], p["loaded"]) for p in st["products"]] == [("a", True), ("b", False)]  # lazy
        got = {k: c.post(f"/v1/predict?product={k}&name=d.png", content=data).json() for k in ("a", "b")}
        for k, p in (("a", a), ("b", b)):
            assert got[k]["product"] == k and got[k]["bundle"] == read_bundle(p).bundle_id
            assert got[k]["score"] == pytest.approx(float(want[k].image_scores[0]), rel=1e-5)
            assert got[k]["normalised"] == pytest.approx(float(want[k].normalised[0]), abs=1e-6)
        prods = c.get("/v1/status").json()["products"]
        assert prods[1]["loaded"] is True and prods[0]["threshold"] != pytest.approx(prods[1]["threshold"])
        r = c.post("/v1/predict?product=zz&name=d.png", content=data)
        assert r.status_code == 404 and r.json()["verdict"] == "error" and "unknown product 'zz'" in r.json()["error"]
        assert c.post("/v1/predict?name=d.png", content=data).status_code == 404  # no product: never a guess
        assert {r["product"] for r in c.get("/v1/results").json()["results"]} == {"a", "b"}


def test_one_plain_bundle_keeps_records_without_product(rt_bundle, parts, tmp_path):
    with _client({None: rt_bundle}, tmp_path) as c:
        r = c.post("/v1/predict?name=g.png", content=parts["good"][0].read_bytes())
        assert r.status_code == 200 and "product" not in r.json()


def test_reviews_both_ways_are_kept_with_reviewer_and_time_and_reach_the_database(rt_bundle, parts, tmp_path):
    out, db = tmp_path / "out", tmp_path / "results.sqlite"
    kw = {"watch_out": out, "publish": (f"sqlite:///{db}",)}
    with _client({None: rt_bundle}, tmp_path, **kw) as c:
        ng = c.post("/v1/predict?name=false-call.png", content=parts["defect"][0].read_bytes()).json()
        ok = c.post("/v1/predict?name=missed.png", content=parts["good"][0].read_bytes()).json()
        assert (ng["verdict"], ok["verdict"]) == ("ng", "ok")
        body = {"review": "ng", "reviewer": "ann"}
        assert c.post(f"/v1/results/{ok['id']}/review", json=body).status_code == 401  # no token
        assert c.post(f"/v1/results/{ok['id']}/review", json={"review": "ng"}, headers=AUTH).status_code == 400
        assert c.post(f"/v1/results/{ng['id']}/review", json=body, headers=AUTH).status_code == 400  # ng of an ng call
        missed = c.post(f"/v1/results/{ok['id']}/review", json=body, headers=AUTH).json()
        false = c.post(f"/v1/results/{ng['id']}/review", json={"review": "good"}, headers={**AUTH, "X-Reviewer": "bob"})
        assert false.status_code == 200 and false.json()["marked_total"] == 1  # "good" also marks it for a teach
        assert (missed["truth"], missed["reviewer"], false.json()["truth"], false.json()["reviewer"]) == \
            ("ng", "ann", "ok", "bob")
        assert c.get(f"/v1/results/{ok['id']}").json()["review"] == "ng"
    with _client({None: rt_bundle}, tmp_path, **kw) as c:  # a restart: the trail is still there
        got = c.get("/v1/reviews").json()["reviews"]
        assert [(r["file"], r["call"], r["review"], r["truth"], r["reviewer"]) for r in got] == \
            [("missed.png", "ok", "ng", "ng", "ann"), ("false-call.png", "ng", "good", "ok", "bob")]
        assert all(r["time"].endswith("Z") for r in got)
        assert c.get("/v1/status").json()["reviews"] == {"total": 2, "ng": 1, "good": 1}
    ng_dir = out / "reviews" / "default" / "ng"
    assert [p.name for p in ng_dir.iterdir()] == [f"{ok['id']}.png"]
    assert ng_dir.joinpath(f"{ok['id']}.png").read_bytes() == parts["good"][0].read_bytes()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as con:
            rows = [json.loads(r[0]) for r in con.execute("SELECT record FROM results")]
        if sum(r.get("kind") == "review" for r in rows) == 2:
            break
        time.sleep(0.2)
    reviews = sorted((r for r in rows if r.get("kind") == "review"), key=lambda r: r["time"])
    assert [(r["review"], r["reviewer"]) for r in reviews] == [("ng", "ann"), ("good", "bob")]
    # the folder of real defects is --ng input as it is
    r = CliRunner().invoke(cli_app, ["threshold", str(rt_bundle), "--ng", str(ng_dir), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    ev = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])["evidence"]
    assert ev["defects"] == 1 and "real NG" in ev["defect_source"]
    # and as `patchcore export --ng` reads it (the product's folder, recursively, masks left out)
    from patchcore.operating_evidence import ng_images

    with pytest.raises(UsageError, match="at least 2 NG images"):  # export splits them: half set, half check
        ng_images(ng_dir.parent)
    shutil.copy(ng_dir / f"{ok['id']}.png", ng_dir / "second-review.png")  # a second part reviewed NG
    assert ng_images(ng_dir.parent) == sorted([ng_dir / f"{ok['id']}.png", ng_dir / "second-review.png"])


def test_a_teach_that_would_call_a_part_reviewed_ng_good_is_refused(rt_bundle, parts, tmp_path):
    data = parts["defect"][0].read_bytes()
    with _client({None: rt_bundle}, tmp_path, watch_out=tmp_path / "out") as c:
        first = c.post("/v1/predict?name=d.png", content=data).json()
        second = c.post("/v1/predict?name=d-again.png", content=data).json()
        assert first["verdict"] == second["verdict"] == "ng"
        c.post(f"/v1/results/{first['id']}/review", json={"review": "good", "reviewer": "ann"}, headers=AUTH)
        c.post(f"/v1/results/{second['id']}/review", json={"review": "confirm", "reviewer": "bob"}, headers=AUTH)
        assert c.post("/v1/teach", headers=AUTH).status_code == 202
        for _ in range(600):
            job = c.get("/v1/teach").json()
            if job["state"] != "running":
                break
            time.sleep(0.1)
        assert job["state"] == "done", job
        check = job["check"]  # shown before the switch: the marked part turns ok, the NG one would too
        assert [v["verdict"] for v in check["marked"]] == ["ok"]
        assert check["turned_ok"] == [second["id"]] and check["known_ng"][0]["score"] < check["threshold"]
        r = c.post("/v1/switch", headers=AUTH)
        assert r.status_code == 409 and "reviewed NG" in r.json()["error"]
        assert c.get("/v1/status").json()["bundle"] == read_bundle(rt_bundle).bundle_id  # still serving the old one


def _bright(path: Path, k: int) -> bytes:
    img = cv2.imread(str(path))
    ok, buf = cv2.imencode(".png", np.clip(img.astype(np.int16) + k, 0, 255).astype(np.uint8))
    return buf.tobytes()


@pytest.mark.parametrize("ramp", [False, True])
def test_drift_alarm_fires_on_a_brightness_ramp_and_not_on_unchanged_good_parts(two_bundles, parts, tmp_path, ramp):
    a, b = two_bundles
    db = tmp_path / "events.sqlite"
    n = 100
    with _client({"a": a, "b": b}, tmp_path, watch_out=tmp_path / "out", publish=(f"sqlite:///{db}",)) as c:
        for i in range(n):
            k = round(60 * i / (n - 1)) if ramp else 0  # +0 .. +60 grey levels on good parts
            good = parts["good"][i % len(parts["good"])]
            assert c.post(f"/v1/predict?product=a&name=g{i}.png", content=_bright(good, k)).status_code == 200
            c.post(f"/v1/predict?product=b&name=g{i}.png", content=good.read_bytes())  # b never drifts
        drift = c.get("/v1/status").json()["drift"]
    assert drift["a"]["alarm"] is ramp and drift["b"]["alarm"] is False
    assert drift["b"]["share"] <= 0.10
    deadline = time.monotonic() + (20 if ramp else 2)
    events = []
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as con:
            events = [json.loads(r[0]) for r in con.execute("SELECT record FROM results")
                      if json.loads(r[0]).get("kind") == "drift"]
        if events:
            break
        time.sleep(0.2)
    if ramp:
        assert [(e["product"], e["state"]) for e in events] == [("a", "alarm")]
        assert events[0]["share"] >= 0.25 and events[0]["parts"] == 50
    else:
        assert events == []


def _records(output: str) -> list[dict]:
    return [json.loads(ln) for ln in output.splitlines() if ln.startswith("{")]


def test_watch_routes_each_product_sub_folder_to_its_bundle(two_bundles, parts, tmp_path):
    a, b = two_bundles
    inc = tmp_path / "incoming"
    for sub in ("a", "b", "zz"):
        (inc / sub).mkdir(parents=True)
        shutil.copy(parts["defect"][0], inc / sub / "part.png")
    r = CliRunner().invoke(cli_app, ["watch", str(inc), "--bundle", f"a={a}", "--bundle", f"b={b}", "--load", "eager",
                                     "--once", "--settle", "0", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    got = {rec["file"]: rec for rec in _records(r.stdout)}
    assert got["a/part.png"]["product"] == "a" and got["a/part.png"]["bundle"] == read_bundle(a).bundle_id
    assert got["b/part.png"]["product"] == "b" and got["b/part.png"]["bundle"] == read_bundle(b).bundle_id
    assert got["zz/part.png"]["verdict"] == "error" and "unknown product 'zz'" in got["zz/part.png"]["error"]
    journal = _records((tmp_path / "out" / "results.jsonl").read_text())
    assert sorted(rec["product"] for rec in journal) == ["a", "b", "zz"]


def test_camera_scores_the_product_it_is_given(two_bundles, rt_bundle, tmp_path):
    a, b = two_bundles
    video = tmp_path / "line.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
    for p in sorted((rt_bundle.parent / "data" / "brick" / "test" / "good").glob("*.png"))[:3]:
        w.write(cv2.imread(str(p)))
    w.release()
    base = ["camera", str(video), "--bundle", f"a={a}", "--bundle", f"b={b}", "--device", "cpu",
            "--out", str(tmp_path / "anomalies")]
    r = CliRunner().invoke(cli_app, [*base, "--product", "b"])
    assert r.exit_code == 0, r.output
    recs = _records(r.stdout)
    assert len(recs) == 3 and {(x["product"], x["bundle"]) for x in recs} == {("b", read_bundle(b).bundle_id)}
    r = CliRunner().invoke(cli_app, [*base, "--product", "zz"])
    assert r.exit_code == 2 and "unknown product 'zz'" in r.output
    r = CliRunner().invoke(cli_app, base)  # no product named: error records, never a guess
    assert r.exit_code == 0 and all(x.get("error") and x["bundle"] is None for x in _records(r.stdout))


def test_serve_watch_routes_product_sub_folders(two_bundles, parts, tmp_path):
    a, b = two_bundles
    inc = tmp_path / "incoming"
    for sub in ("a", "b"):
        (inc / sub).mkdir(parents=True)
        shutil.copy(parts["good"][0], inc / sub / "part.png")
    with _client({"a": a, "b": b}, tmp_path, watch=inc, watch_out=tmp_path / "out", watch_settle=0.0) as c:
        for _ in range(300):
            got = c.get("/v1/results").json()["results"]
            if len(got) == 2:
                break
            time.sleep(0.1)
    assert {(r["file"], r["product"], r["bundle"]) for r in got} == \
        {("a/part.png", "a", read_bundle(a).bundle_id), ("b/part.png", "b", read_bundle(b).bundle_id)}


def test_watch_raises_the_drift_alarm_on_its_status_line_and_to_the_sinks(two_bundles, parts, tmp_path):
    a, b = two_bundles
    inc, db = tmp_path / "incoming", tmp_path / "events.sqlite"
    (inc / "a").mkdir(parents=True)
    n = 100
    for i in range(n):  # a brightness ramp on good parts of product a, in arrival order
        (inc / "a" / f"g{i:03d}.png").write_bytes(_bright(parts["good"][i % len(parts["good"])], round(60 * i / (n - 1))))
    r = CliRunner().invoke(cli_app, ["watch", str(inc), "--bundle", f"a={a}", "--bundle", f"b={b}", "--once",
                                     "--settle", "0", "--device", "cpu", "--out", str(tmp_path / "out"),
                                     "--publish", f"sqlite:///{db}"])
    assert r.exit_code == 0, r.output
    assert "drift alarm for product a" in r.stderr and "DRIFT a " in r.stderr  # the log line, the status line
    with sqlite3.connect(db) as con:
        events = [json.loads(x[0]) for x in con.execute("SELECT record FROM results") if '"kind":"drift"' in x[0]]
    assert [(e["product"], e["state"], e["parts"]) for e in events] == [("a", "alarm", 50)]


def test_each_product_bundle_reloads_on_its_own(two_bundles, parts, tmp_path):
    a, b = two_bundles
    (tmp_path / "b").symlink_to(b)
    data = parts["good"][0].read_bytes()
    with _client({"a": a, "b": tmp_path / "b"}, tmp_path) as c:
        assert c.post("/v1/predict?product=b", content=data).json()["bundle"] == read_bundle(b).bundle_id
        (tmp_path / "b.new").symlink_to(a)
        (tmp_path / "b.new").rename(tmp_path / "b")  # the line's atomic flip
        assert c.post("/v1/predict?product=b", content=data).json()["bundle"] == read_bundle(a).bundle_id
        assert c.post("/v1/predict?product=a", content=data).json()["bundle"] == read_bundle(a).bundle_id
        assert [p["bundle"] for p in c.get("/v1/status").json()["products"]] == [read_bundle(a).bundle_id] * 2


def test_a_lazy_bundle_that_cannot_open_gives_error_records_and_the_others_go_on(rt_bundle, parts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(rt_bundle, broken)
    (broken / "memory_bank.npy").write_bytes(b"not the bank")  # its checksum fails at open
    data = parts["good"][0].read_bytes()
    with _client({"a": rt_bundle, "c": broken}, tmp_path, load="lazy") as c:
        r = c.post("/v1/predict?product=c&name=p.png", content=data)
        assert r.status_code == 422 and r.json()["verdict"] == "error" and "product 'c'" in r.json()["error"]
        assert r.json()["product"] == "c" and r.json()["bundle"] is None
        assert c.post("/v1/predict?product=a", content=data).status_code == 200


def test_a_plc_product_number_selects_the_nth_named_bundle_and_an_unknown_number_is_refused(tmp_path):
    """Modbus carries a product as a register value: 1 is the first named --bundle, 2 the second;
    a number beyond them is refused, never guessed; a product named by a number keeps its name."""
    from types import SimpleNamespace

    from runtime.line.products import Products, UnknownProduct

    def opened(path):  # resolving a product never reads its bundle; the first one is opened at start
        return SimpleNamespace(predictor=SimpleNamespace(bundle=SimpleNamespace(bundle_id=path.name)))

    paths = {"a": tmp_path / "a", "b": tmp_path / "b"}
    products = Products(paths, open_source=opened, load="lazy", log=lambda s: None)
    assert [products.resolve(v) for v in ("1", "2", "a", " 2 ")] == ["a", "b", "a", "b"]
    for bad in ("0", "3", "-1"):
        with pytest.raises(UnknownProduct):
            products.resolve(bad)
    numbered = Products({"7": tmp_path / "x", "z": tmp_path / "z"}, open_source=opened, log=lambda s: None)
    assert numbered.resolve("7") == "7" and numbered.resolve("2") == "z"
