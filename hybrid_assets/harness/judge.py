"""From GX's verdict per expectation to PASS / FAIL / INVALID / SKIPPED, with evidence.

GX computes the observed statistic and says whether it is within the threshold. The judge
adds what GX does not know: whether the samples suffice for the claim (percentile claims
use MLPerf's early-stopping rule; other claims a minimum sample count), and whether the
metric could be measured on this testbed at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

from hybrid_assets.gx_suites import ExpectationSpec, GxResult, Suite
from hybrid_assets.harness.results import ExpectationOutcome, Verdict
from hybrid_assets.harness.validity import quantile_evidence


def _bounds(spec: ExpectationSpec) -> tuple[str, str, Union[float, None], Union[float, None]]:
    """(statistic, comparison, threshold, quantile) as the expectation states them."""
    kw = spec.kwargs
    if spec.type == "expect_column_quantile_values_to_be_between":
        q = float(kw["quantile_ranges"]["quantiles"][0])
        lo, hi = kw["quantile_ranges"]["value_ranges"][0]
        stat = spec.meta.get("statistic") or f"p{round(q * 100):d}"
        return (stat, "<=", float(hi), q) if hi is not None else (stat, ">=", float(lo), q)
    stat = {"expect_column_max_to_be_between": "max", "expect_column_min_to_be_between": "min",
            "expect_column_mean_to_be_between": "mean"}[spec.type]
    if kw.get("max_value") is not None:
        return spec.meta.get("statistic", stat), "<=", float(kw["max_value"]), None
    return spec.meta.get("statistic", stat), ">=", float(kw["min_value"]), None


def judge_expectation(spec: ExpectationSpec, gx: Union[GxResult, None], values: list[float],
                      skips: Mapping[str, str], unit: str = "") -> ExpectationOutcome:
    statistic, comparison, threshold, quantile = _bounds(spec)

    def outcome(verdict: Verdict, detail: str, observed: Union[float, None] = None) -> ExpectationOutcome:
        return ExpectationOutcome(
            check_name=spec.check, expectation_type=spec.type, spec_section=str(spec.meta["spec_section"]),
            spec_text=str(spec.meta["spec_text"]), metric=spec.metric, statistic=statistic,
            comparison=comparison, threshold=threshold, observed=observed, sample_count=len(values),
            verdict=verdict, detail=detail, unit=unit or str(spec.meta.get("unit", "")),
        )

    if not values:
        if spec.metric in skips:
            return outcome(Verdict.SKIPPED, skips[spec.metric])
        return outcome(Verdict.INVALID, f"no samples of {spec.metric}")
    if gx is None:
        return outcome(Verdict.ERROR, "Great Expectations returned no result for this expectation")
    if gx.exception:
        return outcome(Verdict.ERROR, f"Great Expectations failed: {gx.exception}")
    observed = gx.observed
    claim = f"{statistic} {comparison} {threshold:g}"
    if quantile is not None:
        ev = quantile_evidence(values, quantile, threshold, upper=comparison == "<=")
        side = "over" if comparison == "<=" else "under"
        counts = f"{ev.exceedances} of {ev.n} samples {side} {threshold:g}"
        if gx.success and ev.decision == "pass":
            return outcome(Verdict.PASS, f"{claim}: {counts}", observed)
        if not gx.success and ev.decision == "fail":
            return outcome(Verdict.FAIL, f"{claim} breached: {counts}", observed)
        need = f"; {ev.needed_n} samples would settle it" if ev.needed_n else ""
        return outcome(Verdict.INVALID, f"too little evidence for {claim} at 99% confidence: {counts}{need}",
                       observed)
    min_samples = int(spec.meta.get("min_samples", 1))
    if not gx.success:
        return outcome(Verdict.FAIL, f"{claim} breached over {len(values)} samples", observed)
    if len(values) < min_samples:
        return outcome(Verdict.INVALID, f"{len(values)} samples, the claim needs at least {min_samples}", observed)
    return outcome(Verdict.PASS, f"{claim} over {len(values)} samples", observed)


def not_measured(spec: ExpectationSpec, why: str) -> ExpectationOutcome:
    """An ERROR line: nothing was measured for it (its runner does not exist yet)."""
    statistic, comparison, threshold, _ = _bounds(spec)
    return ExpectationOutcome(
        check_name=spec.check, expectation_type=spec.type, spec_section=str(spec.meta["spec_section"]),
        spec_text=str(spec.meta["spec_text"]), metric=spec.metric, statistic=statistic, comparison=comparison,
        threshold=threshold, observed=None, sample_count=0, verdict=Verdict.ERROR, detail=why,
        unit=str(spec.meta.get("unit", "")),
    )


def judge_suite(suite: Suite, gx_results: Mapping[str, GxResult], values_by_metric: Mapping[str, list[float]],
                skips: Mapping[str, str], units: Mapping[str, str]) -> list[ExpectationOutcome]:
    return [judge_expectation(spec, gx_results.get(spec.check), list(values_by_metric.get(spec.metric, [])),
                              skips, units.get(spec.metric, "")) for spec in suite.expectations]


_SEVERITY = {Verdict.ERROR: 4, Verdict.FAIL: 3, Verdict.INVALID: 2, Verdict.PASS: 1, Verdict.SKIPPED: 0}


def case_verdict(outcomes: Iterable[ExpectationOutcome]) -> tuple[Verdict, str]:
    """The worst line decides; SKIPPED only when nothing could be measured."""
    items = list(outcomes)
    if not items:
        return Verdict.ERROR, "the case has no expectations"
    worst = max(items, key=lambda o: _SEVERITY[o.verdict]).verdict
    skipped = [o.check_name for o in items if o.verdict is Verdict.SKIPPED]
    if worst is Verdict.SKIPPED:
        return Verdict.SKIPPED, "; ".join(f"{o.check_name}: {o.detail}" for o in items)
    bad = [f"{o.check_name}: {o.detail}" for o in items if o.verdict is worst and worst is not Verdict.PASS]
    parts = bad if bad else [f"{sum(o.verdict is Verdict.PASS for o in items)} lines passed"]
    if skipped:
        parts.append(f"skipped here: {', '.join(skipped)}")
    return worst, "; ".join(parts)


def values_by_metric(samples: Iterable[Any]) -> tuple[dict[str, list[float]], dict[str, str]]:
    values: dict[str, list[float]] = {}
    units: dict[str, str] = {}
    for s in samples:
        values.setdefault(s.metric, []).append(s.value)
        units[s.metric] = s.unit
    return values, units
