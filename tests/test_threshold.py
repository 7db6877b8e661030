"""The operating point on the runtime side: the Judge applies the bundle's rule, the manifest
validator checks the section, ``patchcore-rt threshold`` shows the trade-off and writes new
bundle versions (runtime.regions, runtime.manifest, runtime.threshold, runtime.cli.threshold),
and ``info`` says it in words; on the runtime tests' real bundle.

Until export writes ``threshold.operating_point``, the bundles here get one added with
:func:`runtime.operating_point.section` from the bundle's own out-of-fold scores and the scores
of its class's real defect images, and re-sealed (:func:`with_operating_point`)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.bundle import BundleError, finalize_manifest, read_bundle
from runtime.calibration import PixelLevel
from runtime.cli.app import app
from runtime.line.records import Item, score_items
from runtime.operating_point import Evidence, Policy, Rule, choose, rates, section
from runtime.postprocess import robust_scale
from runtime.predictor import Predictor
from runtime.regions import Judge, MinArea
from runtime.threshold import basis, default_out, trade_off

DEFECT_KINDS = ("hole", "scratch", "stain")


def with_operating_point(src: Path, dst: Path, evidence: Evidence, rule: Rule, policy: Policy,
                         threshold: float | None = None) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose manifest carries ``threshold.operating_point``
    (as export will write it), with threshold.value and scale following it, re-sealed."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    op = section(evidence, rule, policy, "test", threshold=threshold)
    m["threshold"].update(value=op["value"], scale=robust_scale(op["value"], evidence.good_scores),
                          operating_point=op)
    m.pop("manifest_sha256")
    finalize_manifest(dst, m, sorted(m["files"]))
    return dst


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _images(rt_bundle: Path, kind: str) -> list[Path]:
    return sorted((rt_bundle.parent / "data" / "brick" / "test" / kind).glob("*.png"))


def _scored(p: Predictor, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    out = score_items(p, [Item(x.name, path=x) for x in paths])
    return (np.array([o.score for o in out]),
            np.array([float(o.regions[0]["area_px"]) if o.regions else 0.0 for o in out]))


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error(r, says: str) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and says in errors[0], r.stderr


@pytest.fixture(scope="module")
def scored(rt_bundle) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scores and largest regions of the class's test images, by the runtime."""
    p = Predictor(rt_bundle, device="cpu")
    ng = [x for k in DEFECT_KINDS for x in _images(rt_bundle, k)]
    return {"good": _scored(p, _images(rt_bundle, "good")), "ng": _scored(p, ng)}


@pytest.fixture(scope="module")
def evidence(rt_bundle, scored) -> Evidence:
    """The bundle's out-of-fold good scores and the real defects' scores and regions."""
    good = read_bundle(rt_bundle).manifest["threshold"]["calibration_scores"]
    return Evidence(good, scored["ng"][0], None, scored["ng"][1], defect_source="real defects (test)")


@pytest.fixture(scope="module")
def legacy_bundle(rt_bundle, tmp_path_factory) -> Path:
    """``rt_bundle`` as exported before operating points existed: the 0.99 quantile of its
    out-of-fold scores (method oof-quantile), no ``operating_point`` section, re-sealed."""
    dst = tmp_path_factory.mktemp("legacy") / "brick"
    shutil.copytree(rt_bundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    thr = m["threshold"]
    thr.pop("operating_point", None)
    value = float(np.quantile(thr["calibration_scores"], 0.99))
    thr.update(method="oof-quantile", quantile=0.99, value=value, scale=robust_scale(value, thr["calibration_scores"]))
    m.pop("manifest_sha256")
    finalize_manifest(dst, m, sorted(m["files"]))
    return dst


@pytest.fixture(scope="module")
def op_bundle(rt_bundle, evidence, tmp_path_factory) -> Path:
    """The bundle at false-calls=10% under the image-score rule."""
    return with_operating_point(rt_bundle, tmp_path_factory.mktemp("op") / "brick", evidence, Rule(),
                                Policy("false-calls", 0.10))


# ------------------------------------------------------------------------------------- the Judge
def test_judge_either_rule_a_region_alone_turns_a_part_ng():
    level = PixelLevel(1.0, "test")
    either = Judge(level, bundle_rule=Rule("either", 50))
    assert either.decide(False, [{"area_px": 50}]) == (True, "region")
    assert either.decide(False, [{"area_px": 49}]) == (False, "image-score")
    assert either.decide(False, []) == (False, "image-score")
    assert either.decide(True, []) == (True, "image-score")
    assert either.rule == "image-score or region >= 50 px"
    # --min-area replaces the bundle's rule: the AND rule, a region alone never calls NG
    anded = Judge(level, min_area=MinArea(50, "px"), bundle_rule=Rule("either", 50))
    assert anded.decide(False, [{"area_px": 500}]) == (False, "image-score")
    assert anded.decide(True, [{"area_px": 10}]) == (False, "min-area")
    assert anded.rule == "image-score and min-area 50 px"
    assert Judge(level).decide(False, [{"area_px": 10_000}]) == (False, "image-score")


def test_records_of_an_either_bundle_say_region_decided(rt_bundle, evidence, scored, tmp_path):
    """A threshold no image reaches and the either rule at a region size the defects' regions
    pass: the parts with such a region are NG by "region", the others OK; the same bundle
    without the section (image-score) calls them all OK."""
    ng_areas = scored["ng"][1]
    min_px = float(np.median(ng_areas[ng_areas > 0]))
    top = float(max(evidence.good_scores.max(), evidence.defect_scores.max())) * 10
    b = with_operating_point(rt_bundle, tmp_path / "either", evidence, Rule("either", min_px),
                             Policy("value", top))
    paths = [x for k in DEFECT_KINDS for x in _images(rt_bundle, k)]
    r = _run("predict", b, *paths, "--device", "cpu")
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    region_ng = [rec for rec in recs if rec["decided_by"] == "region"]
    assert region_ng and all(rec["verdict"] == "ng" for rec in region_ng)
    assert all(rec["regions"][0]["area_px"] >= min_px for rec in region_ng)
    assert all(rec["verdict"] == "ok" for rec in recs if rec["decided_by"] == "image-score")
    assert len(region_ng) == int((ng_areas >= min_px).sum())
    assert {rec["rule"] for rec in recs} == {f"image-score or region >= {min_px:g} px"}
    # --min-area on the command line replaces the bundle's rule: the AND rule, nothing is NG
    r = _run("predict", b, *paths, "--device", "cpu", "--min-area", "1")
    assert {json.loads(line)["verdict"] for line in r.stdout.splitlines()} == {"ok"}


def test_a_bundle_without_the_section_keeps_the_image_score_rule(rt_bundle, legacy_bundle):
    m = read_bundle(legacy_bundle).manifest
    assert "operating_point" not in m["threshold"]
    judge = Judge.for_manifest(m)
    assert judge.bundle_rule == Rule() and judge.rule == "image-score"
    r = _run("predict", legacy_bundle, *_images(rt_bundle, "hole"), "--device", "cpu")
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {(rec["rule"], rec["decided_by"]) for rec in recs} == {("image-score", "image-score")}
    assert all((rec["verdict"] == "ng") == (rec["score"] >= m["threshold"]["value"]) for rec in recs)


# ------------------------------------------------------------------------------ manifest validator
@pytest.mark.parametrize("edit,says", [
    (lambda op: op.update(rule={"kind": "bogus"}), "rule.kind"),
    (lambda op: op.update(rule={"kind": "either"}), "min_area_px"),
    (lambda op: op.update(policy="most"), "policy"),
    (lambda op: op.update(value="high"), "'value'"),
    (lambda op: op["evidence"]["good"].update(scores=[]), "evidence.good.scores"),
    (lambda op: op["evidence"]["defects"].update(region_px=[1.0]), "evidence.defects.region_px"),
    (lambda op: op.pop("evidence"), "'evidence'"),
    (lambda op: op["expected"].pop("n_good"), "'n_good'"),
    (lambda op: op["expected"].update(false_calls_interval=[0.1]), "false_calls_interval"),
    (lambda op: op["expected"].update(catch_rate=1.5), "catch_rate"),
    (lambda op: op["expected"].update(defect_rate=None), "defect_rate"),
    (lambda op: op.update(expected=[]), "'expected' is an object"),
    (lambda op: op["evidence"].update(good=[1, 2]), "evidence.good"),
    (lambda op: op["evidence"]["good"].update(scores=["a"]), "evidence.good.scores"),
    (lambda op: op["evidence"].update(facts="x"), "evidence.facts"),
])
def test_a_bad_operating_point_section_is_a_bad_bundle_in_one_line(op_bundle, tmp_path, edit, says):
    bad = tmp_path / "bad"
    shutil.copytree(op_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    edit(m["threshold"]["operating_point"])
    m.pop("manifest_sha256")
    with pytest.raises(BundleError, match="threshold.operating_point"):
        finalize_manifest(bad, copy.deepcopy(m), sorted(m["files"]))
    m["threshold"]["operating_point"] = read_bundle(op_bundle).manifest["threshold"]["operating_point"]
    finalize_manifest(bad, m, sorted(m["files"]))  # sealed good, then the section edited on disk
    on_disk = json.loads((bad / "manifest.json").read_text())
    edit(on_disk["threshold"]["operating_point"])
    (bad / "manifest.json").write_text(json.dumps(on_disk))
    r = _run("threshold", bad)
    assert r.exit_code == 3, r.output
    _one_error(r, "threshold.operating_point")
    assert says in r.stderr


# ---------------------------------------------------------------------------------- the table
def test_table_rows_are_the_evidence_counted(op_bundle, evidence):
    r = _run("threshold", op_bundle, "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    assert t["policy"] == "false-calls=10%" and t["rule"] == {"kind": "image-score"}
    assert t["evidence"] == {"good": len(evidence.good_scores), "defects": len(evidence.defect_scores),
                             "good_source": evidence.good_source, "defect_source": "real defects (test)"}
    rows = t["rows"]
    assert [r_["threshold"] for r_ in rows] == sorted(r_["threshold"] for r_ in rows)
    current = [r_ for r_ in rows if r_["current"]]
    assert len(current) == 1 and current[0]["threshold"] == pytest.approx(t["threshold"])
    assert any("false-calls=10%" in p for p in current[0]["points"])
    named = {p: r_ for r_ in rows for p in r_["points"]}
    for p in ("false-calls=0.5%", "false-calls=1%", "false-calls=2%", "false-calls=5%", "recall=80%", "recall=90%",
              "recall=95%", "recall=99%"):
        assert p in named, p
    for r_ in rows:
        want = rates(evidence, Rule(), r_["threshold"])
        assert r_["false_calls"] == pytest.approx(want.false_calls)
        assert r_["catch_rate"] == pytest.approx(want.catch_rate)
        assert r_["false_calls_interval"] == pytest.approx(list(want.false_calls_interval))
    assert named["false-calls=2%"]["false_calls"] <= 0.02 and named["recall=90%"]["catch_rate"] >= 0.9
    text = _run("threshold", op_bundle).stdout
    assert "false calls (95%)" in text and "catch rate (95%)" in text
    assert [line for line in text.splitlines() if line.startswith("*")][0].split()[1] == f"{t['threshold']:.6g}"


def test_a_legacy_bundle_shows_false_calls_only_and_real_counts_with_ng(rt_bundle, scored, tmp_path, legacy_bundle):
    cal = read_bundle(legacy_bundle).manifest["threshold"]["calibration_scores"]
    r = _run("threshold", legacy_bundle, "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    assert t["policy"] is None and t["evidence"]["defects"] == 0 and "catch rate unknown" in t["notes"][0]
    assert all(r_["catch_rate"] is None for r_ in t["rows"]) and sum(r_["current"] for r_ in t["rows"]) == 1
    # --ng: real catch counts, from the runtime's own scores of those images; a corrupt one is left out
    ng = tmp_path / "ng"
    ng.mkdir()
    for k in DEFECT_KINDS:
        for x in _images(rt_bundle, k):
            shutil.copy(x, ng / f"{k}-{x.name}")
    (ng / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = _run("threshold", legacy_bundle, "--ng", ng, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "left out" in r.stderr and "broken.png" in r.stderr and "Traceback" not in r.output
    t = json.loads(r.stdout)
    scores = np.sort(scored["ng"][0])
    assert t["evidence"]["defects"] == len(scores) and t["evidence"]["good"] == len(cal)
    for r_ in t["rows"]:
        assert r_["ng_caught"] == {"k": int((scores >= r_["threshold"]).sum()), "n": len(scores)}
        assert r_["catch_rate"] == pytest.approx(r_["ng_caught"]["k"] / len(scores))


# --------------------------------------------------------------------------------- new versions
def test_set_writes_a_new_version_and_leaves_the_old_one_untouched(op_bundle, evidence, tmp_path):
    before = hashes(op_bundle)
    siblings = set(op_bundle.parent.iterdir())
    out = tmp_path / "v2"
    r = _run("threshold", op_bundle, "--set", "false-calls=5%", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    parent, new = read_bundle(op_bundle), read_bundle(out)
    assert hashes(op_bundle) == before and set(op_bundle.parent.iterdir()) == siblings
    assert new.bundle_id != parent.bundle_id and summary["id"] == new.bundle_id
    want = choose(evidence, Rule(), Policy("false-calls", 0.05))
    thr = new.manifest["threshold"]
    assert thr["value"] == pytest.approx(want) and thr["scale"] == pytest.approx(robust_scale(want, evidence.good_scores))
    op = thr["operating_point"]
    assert op["policy"] == "false-calls=5%" and op["chosen_by"] == "patchcore-rt threshold" and op["value"] == thr["value"]
    assert op["expected"]["false_calls"] <= 0.05
    entry = new.lineage[-1]
    assert entry["kind"] == "threshold" and entry["parent"] == parent.bundle_id
    assert entry["threshold"]["before"] == {"value": parent.manifest["threshold"]["value"],
                                            "scale": parent.manifest["threshold"]["scale"], "policy": "false-calls=10%"}
    assert entry["threshold"]["after"]["policy"] == "false-calls=5%"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no half-written folder left
    # the default folder: beside the parent, named after the policy, never the parent itself
    r = _run("threshold", op_bundle, "--set", "recall=90%")
    assert r.exit_code == 0, r.output
    made = Path(r.stdout.strip())
    assert made.parent == op_bundle.parent and made.name == f"{op_bundle.name}-op-recall-90pct"
    assert hashes(op_bundle) == before
    assert default_out(op_bundle, Policy("recall", 0.9)).name == f"{op_bundle.name}-op-recall-90pct-2"
    assert default_out(made, Policy("value", 3.5)).name == f"{op_bundle.name}-op-value-3.5"


def test_the_new_version_scores_with_the_new_threshold(rt_bundle, scored, tmp_path, legacy_bundle):
    """value=X between the good test images' scores: the new version calls exactly those at or
    above X NG, the parent (a bundle without an operating point) those above its own."""
    scores = np.sort(scored["good"][0])
    x = float((scores[4] + scores[5]) / 2)
    out = tmp_path / "moved"
    r = _run("threshold", legacy_bundle, "--set", f"value={x!r}", "--out", out)
    assert r.exit_code == 0, r.output
    images = _images(rt_bundle, "good")
    r = _run("predict", out, *images, "--device", "cpu")
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert sum(rec["verdict"] == "ng" for rec in recs) == len(scores) - 5
    assert all((rec["verdict"] == "ng") == (rec["score"] >= x) for rec in recs)
    assert all(rec["normalised"] >= 0.5 for rec in recs if rec["verdict"] == "ng")
    parent_value = read_bundle(legacy_bundle).manifest["threshold"]["value"]
    old = [json.loads(line) for line in _run("predict", legacy_bundle, *images, "--device", "cpu").stdout.splitlines()]
    assert sum(rec["verdict"] == "ng" for rec in old) == int((scores >= parent_value).sum())
    m = read_bundle(out).manifest["threshold"]
    assert m["operating_point"]["evidence"]["good"]["source"].startswith("the threshold's calibration scores")
    # and the table of the new version marks it as current
    t = json.loads(_run("threshold", out, "--json").stdout)
    assert [r_["threshold"] for r_ in t["rows"] if r_["current"]] == [pytest.approx(x)]


def test_ng_images_become_the_defect_evidence_of_the_new_version(rt_bundle, scored, tmp_path):
    ng = [str(d) for k in DEFECT_KINDS for d in [rt_bundle.parent / "data" / "brick" / "test" / k]]
    args = [a for d in ng for a in ("--ng", d)]
    r = _run("threshold", rt_bundle, "--set", "recall=90%", "--out", tmp_path / "v", "--device", "cpu", *args)
    assert r.exit_code == 0, r.output
    op = read_bundle(tmp_path / "v").manifest["threshold"]["operating_point"]
    assert op["evidence"]["defects"]["source"].startswith("real NG images")
    assert sorted(op["evidence"]["defects"]["scores"]) == pytest.approx(sorted(scored["ng"][0]), rel=1e-5)
    assert op["expected"]["catch_rate"] >= 0.9 and op["policy"] == "recall=90%"


@pytest.mark.parametrize("policy,says", [
    ("recall=150%", "not between 0 and 100%"),
    ("sensitivity=3", "is not one of"),
    ("value=abc", "value=X needs a finite number"),
    ("value=nan", "value=X needs a finite number"),
    ("value=-1", "a threshold at or below 0"),
    ("false-calls=0", "not between 0 and 100%"),
])
def test_bad_policies_are_exit_2_in_one_line(op_bundle, policy, says, tmp_path):
    r = _run("threshold", op_bundle, "--set", policy, "--out", tmp_path / "never")
    assert r.exit_code == 2, r.output
    _one_error(r, says)
    assert not (tmp_path / "never").exists()


def test_recall_without_defect_evidence_says_what_to_give(rt_bundle, tmp_path, legacy_bundle):
    for policy in ("recall=95%", "f1@5%"):
        r = _run("threshold", legacy_bundle, "--set", policy, "--out", tmp_path / "never")
        assert r.exit_code == 2, r.output
        _one_error(r, "--ng DIR")
    assert not (tmp_path / "never").exists()


def test_missing_bundle_is_3_and_an_unwritable_output_9(op_bundle, tmp_path):
    r = _run("threshold", tmp_path / "nope")
    assert r.exit_code == 3, r.output
    _one_error(r, "nope")
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    r = _run("threshold", op_bundle, "--set", "false-calls=5%", "--out", blocker / "v2")
    assert r.exit_code == 9, r.output
    _one_error(r, str(blocker))
    assert blocker.read_text() == "keep me"
    r = _run("threshold", op_bundle, "--set", "false-calls=5%", "--out", op_bundle / "inside")
    assert r.exit_code == 2
    _one_error(r, "parent bundle")


def test_info_says_the_operating_point_in_words(op_bundle, rt_bundle, legacy_bundle):
    r = _run("info", op_bundle, "--json")
    assert r.exit_code == 0, r.output
    op = json.loads(r.stdout)["operating_point"]
    assert op["policy"] == "false-calls=10%" and "curve" not in op and "scores" not in json.dumps(op["evidence"])
    assert any("expected false calls" in w for w in op["words"]) and any("expected catch rate" in w for w in op["words"])
    text = " ".join(_run("info", op_bundle).stdout.split())
    assert "expected false calls" in text and "95% interval" in text and "trust:" in text
    assert "none recorded (exported before operating points)" in " ".join(_run("info", legacy_bundle).stdout.split())


def test_trade_off_under_the_either_rule_counts_regions(evidence):
    """Under the either rule a region alone calls a part: at a threshold above every score the
    false calls and catches are the region test's own."""
    ev = Evidence(evidence.good_scores, evidence.defect_scores, np.r_[np.zeros(len(evidence.good_scores) - 1), 80.0],
                  evidence.defect_region_px)
    b = basis({"threshold": {"value": 1e9, "operating_point": section(ev, Rule("either", 50), Policy("value", 1e9),
                                                                      "test")}})
    (top,) = [r for r in trade_off(b) if r.current]
    assert top.rates.false_calls == pytest.approx(1 / len(ev.good_scores))
    assert top.rates.catch_rate == pytest.approx(float((evidence.defect_region_px >= 50).mean()))


def test_update_re_applies_the_policy_on_the_extended_good_evidence(rt_bundle, op_bundle, evidence, tmp_path):
    """Teaching good parts to a bundle with an operating point: the new version's good evidence
    is the parent's plus each new image's held-out score, its threshold the policy's pick on it."""
    good = rt_bundle.parent / "data" / "brick" / "test" / "good"
    r = _run("update", op_bundle, "--good", good, "--out", tmp_path / "taught", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    new = read_bundle(tmp_path / "taught")
    op = new.manifest["threshold"]["operating_point"]
    entry = new.lineage[-1]
    held_out = [im["score"] for im in entry["images"]]
    assert len(held_out) == len(_images(rt_bundle, "good"))
    assert op["policy"] == "false-calls=10%" and "re-applied" in op["chosen_by"]
    grown = Evidence(np.r_[evidence.good_scores, held_out], evidence.defect_scores, None, evidence.defect_region_px)
    assert op["evidence"]["good"]["scores"] == pytest.approx(list(grown.good_scores))
    assert new.manifest["threshold"]["value"] == pytest.approx(choose(grown, Rule(), Policy("false-calls", 0.10)))
    assert op["value"] == new.manifest["threshold"]["value"] and op["expected"]["n_good"] == len(grown.good_scores)
    assert entry["calibration"]["operating_point"]["policy"] == "false-calls=10%"
    assert "operating point false-calls=10% re-applied" in entry["calibration"]["method"]


def test_a_bundle_without_any_good_scores_says_what_to_give(rt_bundle, tmp_path, legacy_bundle):
    old = tmp_path / "old"
    shutil.copytree(legacy_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    for k in ("calibration_scores", "manifest_sha256"):
        m["threshold"].pop(k, None)
    m.pop("manifest_sha256")
    finalize_manifest(old, m, sorted(m["files"]))
    for args in ([], ["--set", "false-calls=2%"]):
        r = _run("threshold", old, *args)
        assert r.exit_code == 2, r.output
        _one_error(r, "give --good DIR")


def test_any_mangled_operating_point_is_refused_or_readable(op_bundle):
    """Random junk at random places of the section: the validator refuses it (a BundleError), or
    everything that reads the section (Judge, threshold's table, info's words) works."""
    from runtime.line.info import operating_point as info_words
    from runtime.manifest import validate_manifest
    from runtime.threshold import render_table

    base = read_bundle(op_bundle).manifest
    base["threshold"]["operating_point"]["evidence"]["facts"] = {"seed": 0}
    junk = [None, "x", -1, 0, 1.5, [], {}, [1, "a"], {"kind": "either"}, True, 1e300, [0.5, 0.2]]
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(300):
        m = copy.deepcopy(base)
        node = m["threshold"]["operating_point"]
        for _ in range(int(rng.integers(1, 4))):  # walk down a random path, then replace its end
            if not isinstance(node, dict) or not node:
                break
            key = list(node)[int(rng.integers(len(node)))]
            if isinstance(node[key], dict) and rng.random() < 0.6:
                node = node[key]
                continue
            node[key] = junk[int(rng.integers(len(junk)))]
            break
        try:
            validate_manifest(m)
        except BundleError as e:
            assert "threshold.operating_point" in str(e) and "\n" not in str(e)
            refused += 1
            continue
        Judge.for_manifest(m)
        info_words(m["threshold"])
        b = basis(m)
        render_table(b, trade_off(b))
    assert 0 < refused < 300


def test_a_new_version_keeps_the_rule_choice_and_drops_facts_of_the_old_point(rt_bundle, evidence, tmp_path):
    """export's section may carry why the rule was chosen (still true: the rule is kept) and a
    check of real NG images at its threshold (no longer true once it moves)."""
    b = with_operating_point(rt_bundle, tmp_path / "b", evidence, Rule(), Policy("false-calls", 0.1))
    m = json.loads((b / "manifest.json").read_text())
    m["threshold"]["operating_point"].update(rule_choice={"chosen_by": "test"}, check={"caught": 3, "n": 4})
    m.pop("manifest_sha256")
    finalize_manifest(b, m, sorted(m["files"]))
    assert _run("threshold", b, "--set", "false-calls=5%", "--out", tmp_path / "v2").exit_code == 0
    op = read_bundle(tmp_path / "v2").manifest["threshold"]["operating_point"]
    assert op["rule_choice"] == {"chosen_by": "test"} and "check" not in op


def test_ng_images_none_of_which_score_keep_the_bundles_defect_evidence(op_bundle, evidence, tmp_path):
    ng = tmp_path / "ng"
    ng.mkdir()
    (ng / "a.png").write_bytes(b"not an image")
    r = _run("threshold", op_bundle, "--ng", ng, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "no image could be scored" in r.stderr
    assert json.loads(r.stdout)["evidence"]["defects"] == len(evidence.defect_scores)
