"""Regression detection against a real DuckDB store built from case payloads (no workers)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from hybrid_assets.builds import BuildInfo
from hybrid_assets.catalog import load_catalog
from hybrid_assets.harness.results import CaseOutcome, ExpectationOutcome, Recorder, Verdict
from hybrid_assets.harness.stats import summarize
from hybrid_assets.regress.detect import Finding, RegressionConfig, detect_case, detect_run, summarize_findings
from hybrid_assets.regress.queries import UnknownRunError
from hybrid_assets.run_info import RunInfo
from hybrid_assets.store import MetricsStore, UnknownBuildError, case_payload
from hybrid_assets.testbed import Testbed

CASE = load_catalog()[0]
TB = Testbed("tb-a", "host-a", "cpu", 2, 1 << 30, "none", {"cpu": "a"})
TB_FAST = Testbed("tb-fast", "host-b", "cpu", 64, 1 << 36, "none", {"cpu": "b"})
# (metric, statistic, comparison, threshold): latency judged at p90 (lower is better), a
# throughput judged by its minimum (higher is better: compared at the median).
LINES = (("latency_s", "p90", "<=", 10.0), ("throughput", "min", ">=", 1.0))


def build(build_id: str) -> BuildInfo:
    manifest = {"build_id": build_id, "version": build_id}
    return BuildInfo(build_id, build_id, None, manifest,
                     hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest())


def write(store: MetricsStore, run_id: str, build_id: str, values: Mapping[str, Sequence[float]],
          testbed: Testbed = TB, verdict: Verdict = Verdict.PASS) -> None:
    """One run of CASE; a metric absent from ``values`` has its line SKIPPED."""
    rec = Recorder()
    for metric, vs in values.items():
        for v in vs:
            rec.record(metric, v, "s" if metric.endswith("_s") else "count")
    lines = [ExpectationOutcome(f"{m}_{s}", "expect", "1.1", "text", m, s, c, t, 0.0, len(values.get(m, ())),
                                verdict if m in values else Verdict.SKIPPED, "detail",
                                "s" if m.endswith("_s") else "count") for m, s, c, t in LINES]
    outcome = CaseOutcome(CASE.id, verdict, "reason", dt.datetime(2026, 12, 4), 1.0, rec.samples,
                          summarize(rec.samples), lines, {}, {})
    run = RunInfo(run_id, build(build_id), testbed, "smoke", ["python", "-m", "workers"],
                  dt.datetime(2026, 12, 4), key=run_id)
    assert store.write_case(case_payload(run, CASE, outcome)).status == "written"


def values(seed: int, latency: float = 1.0, throughput: float = 100.0, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"latency_s": rng.lognormal(np.log(latency), 0.1, n),
            "throughput": rng.lognormal(np.log(throughput), 0.1, n)}


def by_metric(findings: list[Finding]) -> dict[str, Finding]:
    return {f.metric: f for f in findings}


@pytest.fixture
def store(tmp_path: Path) -> MetricsStore:
    return MetricsStore(tmp_path / "m.duckdb")


def test_slowed_build_is_flagged_on_the_right_metric_and_build(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2, latency=1.4))
    found = by_metric(detect_case(store, "r2", CASE.id))
    lat, thr = found["latency_s"], found["throughput"]
    assert lat.verdict == "REGRESSED" and lat.build_id == "b2" and lat.baseline_build_id == "b1"
    assert lat.baseline_source == "last_pass" and lat.direction == "lower_is_better" and lat.statistic == "p90"
    assert 1.25 < lat.change_ratio < 1.55 and lat.ci_low > 1.1 and lat.p_value < 1e-6
    assert (lat.baseline_samples, lat.current_samples) == (50, 50)
    assert "p90 latency_s" in lat.detail and "baseline build b1" in lat.detail and "at 99 %" in lat.detail
    assert thr.verdict == "UNCHANGED" and thr.direction == "higher_is_better" and thr.statistic == "p50"
    # Written to the store, with the build order alongside.
    rows = store.query("SELECT metric, verdict, build_seq FROM v_regressions ORDER BY metric")
    assert rows.values.tolist() == [["latency_s", "REGRESSED", 2], ["throughput", "UNCHANGED", 2]]
    assert summarize_findings(list(found.values()))[0] == "REGRESSED"


def test_lower_throughput_is_a_regression_and_higher_an_improvement(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2, throughput=70.0))
    write(store, "r3", "b3", values(3, throughput=150.0))
    assert by_metric(detect_case(store, "r2", CASE.id))["throughput"].verdict == "REGRESSED"
    improved = by_metric(detect_case(store, "r3", CASE.id, baseline_build="b1"))
    assert improved["throughput"].verdict == "IMPROVED" and improved["latency_s"].verdict == "UNCHANGED"
    assert summarize_findings(list(improved.values()))[0] == "IMPROVED"


def test_an_unchanged_build_is_not_flagged(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2))
    found = detect_case(store, "r2", CASE.id)
    assert {f.verdict for f in found} == {"UNCHANGED"}
    assert summarize_findings(found)[0] == "UNCHANGED"


def test_a_rerun_of_the_same_build_compares_with_its_other_run(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r1-again", "b1", values(2))
    found = detect_case(store, "r1-again", CASE.id, baseline_build="b1")
    assert {f.verdict for f in found} == {"UNCHANGED"} and {f.baseline_samples for f in found} == {50}


def test_comparisons_never_cross_testbeds(store: MetricsStore) -> None:
    write(store, "fast-1", "b1", values(1, latency=0.5), testbed=TB_FAST)  # a faster machine, earlier build
    write(store, "slow-2", "b2", values(2))
    found = detect_case(store, "slow-2", CASE.id)
    assert {f.verdict for f in found} == {"INVALID"}
    assert all(f.baseline_build_id is None and "tb-a" in f.detail for f in found)
    write(store, "slow-3", "b3", values(3))
    lat = by_metric(detect_case(store, "slow-3", CASE.id))["latency_s"]
    assert lat.baseline_build_id == "b2" and lat.verdict == "UNCHANGED" and lat.testbed_id == "tb-a"


def test_the_pinned_baseline_is_used(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2, latency=1.4))
    write(store, "r3", "b3", values(3, latency=1.4))
    assert by_metric(detect_case(store, "r3", CASE.id))["latency_s"].verdict == "UNCHANGED"  # vs b2
    store.pin_baseline("tb-a", "smoke", "b1")
    lat = by_metric(detect_case(store, "r3", CASE.id))["latency_s"]
    assert (lat.verdict, lat.baseline_build_id, lat.baseline_source) == ("REGRESSED", "b1", "pinned")


def test_the_last_passing_build_is_preferred_to_a_failing_one(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2, latency=1.4), verdict=Verdict.FAIL)
    write(store, "r3", "b3", values(3, latency=1.4))
    lat = by_metric(detect_case(store, "r3", CASE.id))["latency_s"]
    assert (lat.baseline_build_id, lat.baseline_source, lat.verdict) == ("b1", "last_pass", "REGRESSED")


def test_bad_baselines_and_runs(store: MetricsStore) -> None:
    with pytest.raises(UnknownBuildError, match="no store at"):
        detect_case(store, "r1", CASE.id, baseline_build="b1")
    with pytest.raises(UnknownRunError, match="no store at"):
        detect_run(store, "r1")
    write(store, "r1", "b1", values(1))
    detect_case(store, "r1", CASE.id)  # two INVALID findings (no earlier build), kept below
    with pytest.raises(UnknownBuildError, match="'nope' is not a known build"):
        detect_case(store, "r1", CASE.id, baseline_build="nope")
    assert store.query("SELECT count(*) AS n FROM regressions").n[0] == 2  # nothing overwritten
    with pytest.raises(UnknownBuildError):
        detect_run(store, "r1", baseline_build="nope")
    with pytest.raises(UnknownRunError, match="'r9'"):
        detect_case(store, "r9", CASE.id)
    with pytest.raises(UnknownRunError, match="no result for case 'other'"):
        detect_case(store, "r1", "other")
    # A named baseline with no results for this case on this testbed is INVALID, said plainly.
    write(store, "fast-2", "b2", values(2), testbed=TB_FAST)
    found = detect_case(store, "r1", CASE.id, baseline_build="b2")
    assert {f.verdict for f in found} == {"INVALID"} and "has no results for case" in found[0].detail
    assert summarize_findings(found)[0] == "INVALID"


def test_no_earlier_build_or_too_few_samples_is_invalid(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    found = detect_case(store, "r1", CASE.id)
    assert {f.verdict for f in found} == {"INVALID"} and "no earlier build" in found[0].detail
    write(store, "r2", "b2", values(2, n=3))
    lat = by_metric(detect_case(store, "r2", CASE.id))["latency_s"]
    assert lat.verdict == "INVALID" and "current has 3 finite samples, at least 5 needed" in lat.detail
    assert store.query("SELECT count(*) AS n FROM regressions WHERE run_id = 'r2'").n[0] == 2


def test_a_slow_drift_is_drifted_with_the_build_it_began(store: MetricsStore) -> None:
    for k in range(10):  # 4 % slower per build: never 10 % against the previous build
        write(store, f"r{k}", f"b{k}", values(k, latency=1.04 ** k))
    lat = by_metric(detect_case(store, "r9", CASE.id))["latency_s"]
    assert lat.verdict == "DRIFTED" and lat.baseline_build_id == "b8" and lat.history_builds == 10
    assert lat.step_build_id in {f"b{k}" for k in range(1, 6)} and lat.step_ratio > 1.2
    assert f"drift: worse since build {lat.step_build_id}; builds " in lat.detail
    assert summarize_findings(detect_case(store, "r9", CASE.id, write=False))[0] == "DRIFTED"
    # A steady history with the same number of builds is not a drift.
    fresh = MetricsStore(store.path.with_name("steady.duckdb"))
    for k in range(10):
        write(fresh, f"r{k}", f"b{k}", values(k))
    assert {f.verdict for f in detect_case(fresh, "r9", CASE.id)} == {"UNCHANGED"}


def test_detect_run_covers_every_case_and_rows_match_the_table(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2))
    found = detect_run(store, "r2", write=False)
    assert len(found) == 2 and store.query("SELECT count(*) AS n FROM regressions").n[0] == 0
    columns = store.query("SELECT column_name FROM duckdb_columns() WHERE table_name = 'regressions'").column_name
    assert [f.name for f in dataclasses.fields(Finding)] == [c for c in columns if c != "detected_at"]


def test_the_config_sets_the_threshold_and_is_checked(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", values(2, latency=1.4))
    lenient = by_metric(detect_case(store, "r2", CASE.id, config=RegressionConfig(rel_threshold=0.5)))
    assert lenient["latency_s"].verdict == "UNCHANGED" and "beyond" not in lenient["latency_s"].detail
    with pytest.raises(ValueError, match="alpha must be in"):
        RegressionConfig(alpha=2.0)


def test_non_finite_samples_are_dropped_and_counted(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    bad = values(2, latency=1.4)
    bad["latency_s"] = np.concatenate([bad["latency_s"], [np.inf, np.nan, -np.inf]])
    write(store, "r2", "b2", bad)
    lat = by_metric(detect_case(store, "r2", CASE.id))["latency_s"]
    assert lat.verdict == "REGRESSED" and lat.current_samples == 50 and "3 non-finite dropped" in lat.detail


def test_a_metric_not_measured_here_is_invalid_and_says_so(store: MetricsStore) -> None:
    write(store, "r1", "b1", values(1))
    write(store, "r2", "b2", {"latency_s": values(2)["latency_s"]})  # throughput SKIPPED on this testbed
    found = by_metric(detect_case(store, "r2", CASE.id))
    assert found["latency_s"].verdict == "UNCHANGED"
    thr = found["throughput"]
    assert thr.verdict == "INVALID" and thr.current_samples == 0 and "SKIPPED on this testbed" in thr.detail
    assert summarize_findings(list(found.values()))[0] == "UNCHANGED"
    assert "1 of 2 metrics could not be compared" in summarize_findings(list(found.values()))[1]


def test_a_figure_measured_once_per_run_is_judged_on_its_history(store: MetricsStore) -> None:
    per_run = [100.0, 101.0, 99.0, 100.5, 100.0, 60.0]  # one throughput figure per run; the last drops 40 %
    for k, figure in enumerate(per_run):
        write(store, f"r{k}", f"b{k}", {"latency_s": values(k)["latency_s"], "throughput": [figure]})
    thr = by_metric(detect_case(store, "r5", CASE.id))["throughput"]
    assert thr.verdict == "DRIFTED" and thr.step_build_id == "b5" and thr.history_builds == 6
    assert thr.step_ratio == pytest.approx(0.6, abs=0.01) and "at least 5 needed" in thr.detail
    steady = by_metric(detect_case(store, "r4", CASE.id))["throughput"]
    assert steady.verdict == "INVALID" and "no drift over 5 builds of history (one value per run)" in steady.detail
