"""Evidence rules and how lines become verdicts."""

from __future__ import annotations

import pytest

from hybrid_assets.gx_suites import ExpectationSpec, GxResult
from hybrid_assets.harness.judge import case_verdict, judge_expectation
from hybrid_assets.harness.results import Recorder, Verdict
from hybrid_assets.harness.stats import summarize
from hybrid_assets.harness.validity import quantile_evidence, samples_needed


@pytest.mark.parametrize(("q", "n"), [(0.5, 7), (0.9, 44), (0.95, 90), (0.99, 459)])
def test_samples_needed_matches_mlperf_early_stopping(q: float, n: int) -> None:
    assert samples_needed(q) == n


def test_samples_needed_grows_with_exceedances() -> None:
    assert samples_needed(0.9, 1) > samples_needed(0.9, 0)
    assert samples_needed(0.9, 3) > samples_needed(0.9, 1)


def test_quantile_evidence_pass_fail_and_insufficient() -> None:
    assert quantile_evidence([1.0] * 44, 0.9, 2.0).decision == "pass"
    short = quantile_evidence([1.0] * 20, 0.9, 2.0)
    assert short.decision == "insufficient" and short.needed_n == 44
    assert quantile_evidence([3.0] * 5, 0.9, 2.0).decision == "fail"
    # 2 of 20 over at p90: consistent with either; not enough to say.
    assert quantile_evidence([3.0] * 2 + [1.0] * 18, 0.9, 2.0).decision == "insufficient"
    # Lower bounds: the bad samples are those under the bound.
    assert quantile_evidence([10.0] * 50, 0.1, 5.0, upper=False).decision == "pass"


def spec(kind: str, **kw: object) -> ExpectationSpec:
    meta = {"check": "c", "metric": "m", "spec_section": "1.1", "spec_text": "under_x", "min_samples": 3}
    if kind == "quantile":
        ranges = {"quantiles": [0.9], "value_ranges": [[None, 2.0]]}
        return ExpectationSpec("expect_column_quantile_values_to_be_between",
                               {"column": "value", "quantile_ranges": ranges}, meta)
    return ExpectationSpec("expect_column_max_to_be_between", {"column": "value", "max_value": 0.0}, meta)


def test_judge_quantile_line() -> None:
    ok = judge_expectation(spec("quantile"), GxResult("c", True, 1.0, None), [1.0] * 50, {})
    assert ok.verdict is Verdict.PASS and ok.threshold == 2.0 and ok.statistic == "p90"
    few = judge_expectation(spec("quantile"), GxResult("c", True, 1.0, None), [1.0] * 10, {})
    assert few.verdict is Verdict.INVALID and "44 samples would settle it" in few.detail
    bad = judge_expectation(spec("quantile"), GxResult("c", False, 3.0, None), [3.0] * 10, {})
    assert bad.verdict is Verdict.FAIL and bad.observed == 3.0


def test_judge_max_line_min_samples_skip_and_gx_error() -> None:
    assert judge_expectation(spec("max"), GxResult("c", True, 0.0, None), [0.0] * 3, {}).verdict is Verdict.PASS
    assert judge_expectation(spec("max"), GxResult("c", True, 0.0, None), [0.0] * 2, {}).verdict is Verdict.INVALID
    assert judge_expectation(spec("max"), GxResult("c", False, 1.0, None), [0.0, 1.0], {}).verdict is Verdict.FAIL
    skipped = judge_expectation(spec("max"), None, [], {"m": "no GPU here"})
    assert skipped.verdict is Verdict.SKIPPED and skipped.detail == "no GPU here"
    assert judge_expectation(spec("max"), None, [], {}).verdict is Verdict.INVALID
    assert judge_expectation(spec("max"), GxResult("c", False, None, "boom"), [1.0], {}).verdict is Verdict.ERROR


def test_case_verdict_worst_line_wins_and_skips_are_reported() -> None:
    lines = [judge_expectation(spec("max"), GxResult("c", True, 0.0, None), [0.0] * 3, {}),
             judge_expectation(spec("max"), None, [], {"m": "no GPU"})]
    verdict, reason = case_verdict(lines)
    assert verdict is Verdict.PASS and "skipped here" in reason
    lines.append(judge_expectation(spec("quantile"), GxResult("c", True, 1.0, None), [1.0] * 5, {}))
    assert case_verdict(lines)[0] is Verdict.INVALID
    assert case_verdict([lines[1]])[0] is Verdict.SKIPPED
    assert case_verdict([])[0] is Verdict.ERROR


def test_summaries_match_hand_computed_values() -> None:
    rec = Recorder()
    for v in (1.0, 2.0, 3.0, 4.0, 10.0):
        rec.record("lat", v, "s")
    stats = {m.statistic: m.value for m in summarize(rec.samples)}
    assert stats["count"] == 5 and stats["mean"] == 4.0 and stats["p50"] == 3.0
    assert stats["min"] == 1.0 and stats["max"] == 10.0
    assert stats["p90"] == pytest.approx(7.6)  # linear interpolation between 4 and 10
