"""The safety runners against a real worker with tiny params: each records the metrics its cases judge,
with the values the situation implies (faults fail closed and are escalated, nothing outside their scope
is touched, the policy oracle agrees with the engine, labels come through)."""

from __future__ import annotations

from typing import Any

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import runner_spec
from hybrid_assets.runners.planned import planned_runners
from hybrid_assets.runners.safety_bench import expected_decision
from hybrid_assets.runners.safety_failure import spread
from tests.runner_harness import run_runner, values

pytestmark = pytest.mark.subprocess

SAFETY_RUNNERS = ["postprocessing.safety_validation_load", "postprocessing.safety_validation_failure",
                  "postprocessing.safety_classification_latency", "postprocessing.policy_check_latency",
                  "postprocessing.batch_safety_validation", "postprocessing.safety_accuracy",
                  "postprocessing.policy_compliance"]


def run(runner: str, params: dict[str, Any], worker_argv: list[str]) -> Recorder:
    rec = run_runner(runner, params, worker_argv)
    assert "stand-in concept" in str(rec.notes)
    return rec


def test_every_safety_runner_is_written_with_at_least_its_planned_metrics() -> None:
    planned = planned_runners()
    for name in SAFETY_RUNNERS:
        spec = runner_spec(name)
        assert spec.fn is not None and spec.metrics >= planned[name], name
    assert spread(4, 2) == [0, 2] and spread(10, 5) == [0, 2, 4, 6, 8] and spread(2, 5) == [0, 1]


def test_the_compliance_oracle_reads_the_documented_semantics() -> None:
    doc = {"policy": "t", "defaults": {"action": "allow", "missing_score": "block"}, "rules": [
        {"name": "a", "category": "stripes", "min_score": 0.5, "action": "review"},
        {"name": "b", "category": "any", "min_score": 0.2, "max_score": 0.6, "action": "blur"}]}
    cats = ["stripes", "checker"]
    assert expected_decision(doc, cats, {"stripes": 0.55, "checker": 0.0}) == ("review", "a")
    assert expected_decision(doc, cats, {"stripes": 0.3, "checker": 0.0}) == ("blur", "b")
    assert expected_decision(doc, cats, {"stripes": 0.6, "checker": 0.6})[0] == "review"
    assert expected_decision(doc, cats, {"stripes": 0.0}) == ("block", "missing_score")
    assert expected_decision(doc, cats, {"stripes": 0.1, "checker": 0.1}) == ("allow", "defaults.action")


def test_policy_runners_compliance_and_check_latency(worker_argv: list[str]) -> None:
    rec = run("postprocessing.policy_compliance", {"items_per_rule": 6}, worker_argv)
    compliant = values(rec, "policy_decision_compliant")
    assert len(compliant) == 6 * (4 + 2 + 4) and min(compliant) == 1.0  # 10 rules in the shipped policies
    sides = {(s.labels["policy"], s.labels["side"]) for s in rec.samples}
    assert ("default", "below") in sides and ("strict", "at_or_above") in sides
    rec = run("postprocessing.policy_check_latency", {"checks": 6}, worker_argv)
    lat = values(rec, "policy_check_s")
    assert len(lat) == 6 and all(0 < v < 5 for v in lat)
    assert {s.labels["policy"] for s in rec.samples} == {"default", "lenient", "strict"}


def test_classification_latency_batch_overhead_and_accuracy(worker_argv: list[str]) -> None:
    rec = run("postprocessing.safety_classification_latency", {"image_px": [64, 96], "samples": 3,
                                                               "model": "tiny-random"}, worker_argv)
    assert sorted(s.labels["image_px"] for s in rec.samples) == [64, 64, 64, 96, 96, 96]
    assert "tiny-random" in rec.notes["model_param"]
    rec = run("postprocessing.batch_safety_validation", {"batch_sizes": [2, 4], "image_px": 64, "repeats": 1},
              worker_argv)
    ratios = [s for s in rec.samples if s.metric == "batch_validation_time_ratio"]
    assert [s.labels["batch_size"] for s in ratios] == [2, 4]
    assert all(s.value > 0 and s.labels["fail_closed"] == 0 for s in ratios)
    rec = run("postprocessing.safety_accuracy", {"images": 12, "image_px": 64,
                                                 "content": ["safe_content", "borderline_content", "mixed_content"]},
              worker_argv)
    correct = [s for s in rec.samples if s.metric == "safety_classification_correct"]
    fp = [s for s in rec.samples if s.metric == "safety_false_positive"]
    assert len(correct) == 12 and {s.labels["content"] for s in correct} == {"safe_content", "borderline_content",
                                                                             "mixed_content"}
    assert fp and all(s.labels["label"] == "safe" for s in fp) and len(fp) == sum(
        s.labels["label"] == "safe" for s in correct)
    assert sum(s.value for s in correct) >= 11  # the trained stand-in on its own concept


def test_validation_under_load_is_open_loop_and_labelled(worker_argv: list[str]) -> None:
    rec = run("postprocessing.safety_validation_load", {"validations_per_min": 600, "duration_s": 2,
                                                        "content_complexity": ["safe_content", "mixed_content"],
                                                        "image_size": 64}, worker_argv)
    assert len(values(rec, "safety_verdict_correct_ok")) == 20 and len(values(rec, "validation_latency_s")) == 20
    assert sum(values(rec, "validation_error")) == 0
    assert {s.labels["content"] for s in rec.samples} == {"safe_content", "mixed_content"}
    assert rec.notes["achieved"]["answered"] == 20


@pytest.mark.parametrize(("failure", "impact", "affected"), [
    ("classifier_model_failure", "single_item_failure", 2),
    ("validation_timeout", "batch_validation_failure", 6),
    ("policy_engine_crash", "system_wide_validation_failure", 9),
])
def test_failure_runner_fails_closed_escalates_and_contains(worker_argv: list[str], failure: str, impact: str,
                                                            affected: int) -> None:
    rec = run("postprocessing.safety_validation_failure", {"validation_failure": failure, "failure_impact": impact,
                                                           "batch_size": 3, "items": 9, "injections": 2},
              worker_argv)
    conservative = values(rec, "conservative_fallback_ok")
    assert len(conservative) == affected and min(conservative) == 1.0
    assert values(rec, "escalated_to_manual_review_ok") == [1.0] * affected
    outside = values(rec, "outside_failure_scope_error")
    assert outside and max(outside) == 0.0
    if impact == "system_wide_validation_failure":
        assert {s.labels["op"] for s in rec.samples if s.metric == "outside_failure_scope_error"} == {
            "postprocess.enhance", "postprocess.convert"}
        assert all(x < 15 for x in rec.notes["recovery_after_clear_s"])
    else:
        assert len(outside) == 9 - affected
    detect = values(rec, "failure_detection_s")
    assert detect and (min(detect) >= 0.35 if failure == "validation_timeout" else max(detect) < 5)
