"""The safety policy engine: the shipped policies parse and decide as documented (most severe matching rule,
defaults), and a document with an unknown rule field, category or action, a bad score or a duplicate is
refused whole, naming the problem."""

from __future__ import annotations

import pytest

from workers.postprocess import policy as pol
from workers.postprocess.safety_corpus import CATEGORIES

CATS = list(CATEGORIES)
GOOD = """
policy: mine
description: test
defaults: {action: allow, missing_score: block}
rules:
  - {name: s-block, category: stripes, min_score: 0.6, action: block}
  - {name: s-blur, category: stripes, min_score: 0.3, max_score: 0.6, action: blur}
  - {name: any-review, category: any, min_score: 0.5, action: review}
"""


def test_shipped_policies_load_and_decide_by_threshold() -> None:
    shipped = pol.load_shipped(CATS)
    assert sorted(shipped) == ["default", "lenient", "strict"]
    d = shipped["default"]
    assert d.decide({"stripes": 0.0, "checker": 0.0}).action == "allow"
    assert d.decide({"stripes": 0.25, "checker": 0.0}).action == "review"  # min_score is inclusive
    assert d.decide({"stripes": 0.7499, "checker": 0.0}).action == "review"
    assert d.decide({"stripes": 0.75, "checker": 0.0}).action == "block"
    assert d.decide({"stripes": 1.0, "checker": 1.0}).rule == "stripes-block"  # first of equals
    assert shipped["lenient"].decide({"stripes": 0.5, "checker": 0.1}).action == "blur"
    assert shipped["strict"].decide({"stripes": 0.1, "checker": 0.0}).action == "review"


def test_most_severe_matching_rule_wins_and_missing_scores_take_the_default() -> None:
    p = pol.parse_policy(GOOD, source="test", categories=CATS)
    assert p.decide({"stripes": 0.55, "checker": 0.0}).action == "review"  # any-review beats s-blur
    assert p.decide({"stripes": 0.4, "checker": 0.0}).action == "blur"
    assert p.decide({"stripes": 0.7, "checker": 0.9}).action == "block"
    d = p.decide({"stripes": 0.0})  # checker unscored: the policy's missing_score decision
    assert (d.action, d.rule, d.category) == ("block", "defaults.missing_score", "checker")
    assert p.decide({"stripes": 0.1, "checker": 0.1}).rule == "defaults.action"


@pytest.mark.parametrize("score", [float("nan"), -0.1, 1.5, "0.5", True])
def test_a_bad_score_is_refused_not_decided(score: object) -> None:
    p = pol.load_shipped(CATS)["default"]
    with pytest.raises(ValueError, match="stripes"):
        p.decide({"stripes": score, "checker": 0.0})  # type: ignore[dict-item]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace("action: block}", "action: block, treshold: 3}"), "unknown field 'treshold'"),
    (lambda t: t.replace("category: stripes, min_score: 0.6", "category: gore, min_score: 0.6"),
     "unknown category 'gore'"),
    (lambda t: t.replace("action: blur}", "action: delete}"), "'delete' is not an action"),
    (lambda t: t.replace("min_score: 0.6, action: block", "min_score: 1.6, action: block"), "in \\[0, 1\\]"),
    (lambda t: t.replace("min_score: 0.3, max_score: 0.6", "min_score: 0.6, max_score: 0.3"),
     "must be above min_score"),
    (lambda t: t.replace("name: s-blur", "name: s-block"), "'s-block' is used twice"),
    (lambda t: t.replace("missing_score: block", "missing_score: maybe"), "missing_score 'maybe'"),
    (lambda t: t.replace("defaults:", "default:"), "unknown field 'default'"),
    (lambda t: t.replace("policy: mine", "policy: Mine!"), "policy name must match"),
    (lambda t: t.split("rules:")[0] + "rules: []", "non-empty list"),
    (lambda t: t.replace("min_score: 0.6, action: block", "action: block"), "missing required field 'min_score'"),
    (lambda t: t + "\n  - [not, a, mapping]", "must be a mapping"),
    (lambda t: "rules: [unclosed", "not valid YAML"),
])
def test_a_bad_document_is_refused_naming_the_problem(edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pol.PolicyError, match=expected) as info:
        pol.parse_policy(edit(GOOD), source="policies[0]", categories=CATS)
    assert info.value.code == "POLICY_INVALID"
    assert "policies[0]" in str(info.value)


def test_a_set_with_one_bad_document_or_a_duplicate_name_is_refused_whole() -> None:
    bad = GOOD.replace("action: block}", "action: block, extra: 1}")
    with pytest.raises(pol.PolicyError, match=r"policies\[1\].*unknown field 'extra'"):
        pol.parse_set({"policies[0]": GOOD.replace("mine", "other"), "policies[1]": bad}, CATS)
    with pytest.raises(pol.PolicyError, match=r"also defined by policies\[0\]"):
        pol.parse_set({"policies[0]": GOOD, "policies[1]": GOOD}, CATS)
