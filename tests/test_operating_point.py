"""The operating point's arithmetic (runtime.operating_point): policies, intervals, choices, the
manifest section and its round trip."""

import json

import numpy as np
import pytest

from runtime.errors import UsageError
from runtime.operating_point import (DEFAULT_DEFECT_RATE, Evidence, Policy, Rule, candidates, choose, curve,
                                     describe, expected_f1, parse_policy, rates, read, section, wilson)


def _evidence() -> Evidence:
    good = np.arange(1.0, 101.0)  # 100 good parts scoring 1..100
    defects = np.arange(81.0, 181.0)  # 100 defects scoring 81..180: 20 of them inside the good range
    return Evidence(good, defects)


@pytest.mark.parametrize("text,kind,value", [
    ("false-calls=2%", "false-calls", 0.02), ("false-calls=0.02", "false-calls", 0.02),
    ("recall=95%", "recall", 0.95), ("f1", "f1", DEFAULT_DEFECT_RATE), ("f1@5%", "f1", 0.05),
    ("value=12.5", "value", 12.5), (" RECALL = 0.9 ", "recall", 0.9)])
def test_policies_parse(text, kind, value):
    p = parse_policy(text)
    assert p.kind == kind and p.value == pytest.approx(value)
    assert parse_policy(str(p)) == p  # the manifest's spelling reads back


@pytest.mark.parametrize("text", ["", "false-calls", "false-calls=0", "recall=100%", "recall=1.5", "f1@0",
                                  "value=nan", "value=abc", "sensitivity=3", "false-calls=two"])
def test_bad_policies_are_usage_errors_with_one_line(text):
    with pytest.raises(UsageError) as e:
        parse_policy(text)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_wilson_interval():
    lo, hi = wilson(0, 40)
    assert lo == 0.0 and hi == pytest.approx(0.0876, abs=5e-4)  # 0 of 40: up to 8.8%
    lo, hi = wilson(5, 100)
    assert lo == pytest.approx(0.0215, abs=5e-4) and hi == pytest.approx(0.1118, abs=5e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_candidates_never_sit_on_an_evidence_score():
    ev = _evidence()
    c = candidates(ev)
    scores = set(np.concatenate([ev.good_scores, ev.defect_scores]).tolist())
    assert not scores & set(c.tolist())
    assert c[0] < 1.0 and c[-1] > 180.0 and np.all(np.diff(c) > 0)


def test_false_calls_policy_picks_the_lowest_threshold_within_the_rate():
    ev = _evidence()
    t = choose(ev, Rule(), parse_policy("false-calls=5%"))
    assert t == pytest.approx(95.5)  # 96..100 called NG: 5 of 100
    r = rates(ev, Rule(), t)
    assert r.false_calls == pytest.approx(0.05) and r.catch_rate == pytest.approx(0.85)  # 81..95 missed


def test_false_calls_zero_clears_every_good_score_by_half_their_top_gap():
    t = choose(_evidence(), Rule(), Policy("false-calls", 1e-9))
    assert t == pytest.approx(100.5)


def test_recall_policy_picks_the_highest_threshold_that_still_catches_the_rate():
    ev = _evidence()
    t = choose(ev, Rule(), parse_policy("recall=90%"))
    assert t == pytest.approx(90.5)  # 91..180 caught: 90 of 100
    assert rates(ev, Rule(), t).catch_rate == pytest.approx(0.90)


def test_f1_policy_maximises_expected_f1_at_the_stated_defect_rate():
    ev = _evidence()
    for d in (0.01, 0.1, 0.5):
        t = choose(ev, Rule(), Policy("f1", d))
        best = max(expected_f1(r.catch_rate, r.false_calls, d) for r in (rates(ev, Rule(), c) for c in candidates(ev)))
        assert rates(ev, Rule(), t).f1(d) == pytest.approx(best)
    # a rarer defect makes false calls dearer: the threshold does not go down
    assert choose(ev, Rule(), Policy("f1", 0.01)) >= choose(ev, Rule(), Policy("f1", 0.5))


def test_policies_that_need_defects_refuse_without_them():
    ev = Evidence(np.arange(10.0), [])
    with pytest.raises(UsageError, match="needs defect evidence"):
        choose(ev, Rule(), parse_policy("recall=90%"))
    assert choose(ev, Rule(), parse_policy("false-calls=10%")) == pytest.approx(8.5)


def test_either_rule_counts_regions_and_can_make_a_false_call_rate_unreachable():
    good = np.arange(1.0, 11.0)
    region = np.zeros(10)
    region[0] = 500  # one good part with a large region
    ev = Evidence(good, [5.0, 5.0], region, [0.0, 800.0])
    rule = Rule("either", 400)
    r = rates(ev, rule, 100.0)  # no image score reaches 100: only regions decide
    assert r.false_calls == pytest.approx(0.1) and r.catch_rate == pytest.approx(0.5)
    with pytest.raises(UsageError, match="cannot be met"):
        choose(ev, rule, parse_policy("false-calls=5%"))
    with pytest.raises(ValueError):
        Rule("either", None)


def test_section_round_trips_through_json_and_describes_itself():
    ev = _evidence()
    op = section(ev, Rule(), parse_policy("f1@10%"), chosen_by="export")
    back = json.loads(json.dumps(op))
    ev2, rule2, pol2 = read({"operating_point": back})
    assert np.array_equal(ev2.good_scores, ev.good_scores) and rule2 == Rule() and pol2 == Policy("f1", 0.1)
    assert choose(ev2, rule2, pol2) == op["value"]
    c = op["curve"]
    assert len(c["threshold"]) <= 64 and np.all(np.diff(c["false_calls"]) <= 0) and np.all(np.diff(c["catch_rate"]) <= 0)
    words = "\n".join(describe(op))
    assert "f1@10%" in words and "expected false calls" in words and "expected catch rate" in words
    assert read({"value": 1.0}) is None


def test_curve_is_monotone_and_bounded():
    c = curve(_evidence(), Rule(), points=10)
    assert len(c["threshold"]) == 10
    assert all(lo <= v <= hi for lo, v, hi in zip(c["false_calls_lo"], c["false_calls"], c["false_calls_hi"]))
