"""The DuckDB store: one transaction per case, views that answer, nothing lost."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import duckdb

from hybrid_assets.builds import BuildInfo
from hybrid_assets.catalog import load_catalog
from hybrid_assets.harness.results import CaseOutcome, ExpectationOutcome, Recorder, Verdict
from hybrid_assets.harness.stats import summarize
from hybrid_assets.run_info import RunInfo
from hybrid_assets.store import VIEW_NAMES, MetricsStore, case_payload
from hybrid_assets.testbed import Testbed

TESTBED = Testbed("tb-test", "host", "cpu", 2, 1 << 30, "none", {"cpu": "cpu"})


def payload(run_id: str, n_samples: int = 100, verdict: Verdict = Verdict.PASS, key: str | None = "",
            build_id: str | None = None, case_id: str | None = None) -> dict:
    """One case of one run: round trips of 1..n ms and the one line that judges them. Each run id
    is its own run key unless ``key`` says otherwise (None: the default key, build/testbed/profile);
    the build is the local one unless ``build_id`` names another; ``case_id`` renames the case."""
    case = load_catalog()[0]
    rec = Recorder()
    for i in range(n_samples):
        rec.record("round_trip_s", 0.001 * (i + 1), "s", seq=i)
    line = ExpectationOutcome("round_trip_p99_under_10ms", "expect_column_quantile_values_to_be_between", "4.1",
                              "under_10_milliseconds_round_trip", "round_trip_s", "p99", "<=", 0.01, 0.099,
                              n_samples, verdict, "detail", "s")
    outcome = CaseOutcome(case.id, verdict, "reason", dt.datetime(2026, 12, 4), 1.5, rec.samples,
                          summarize(rec.samples), [line], {}, {"k": "v"})
    build = BuildInfo.local("0.1.0") if build_id is None else BuildInfo(
        build_id, "0.1.0", None, {"build_id": build_id, "version": "0.1.0"}, f"sha-{build_id}")
    run = RunInfo(run_id, build, TESTBED, "smoke", ["python", "-m", "workers"],
                  dt.datetime(2026, 12, 4), key=run_id if key == "" else key)
    p = case_payload(run, case, outcome)
    if case_id is not None:
        p["case"]["case_id"] = case_id
    return p


def test_views_answer_after_a_write(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "m.duckdb")
    receipt = store.write_case(payload("run-1"))
    assert receipt.status == "written"
    runs = store.query("SELECT * FROM v_runs")
    assert list(runs.run_id) == ["run-1"] and int(runs.passed[0]) == 1 and runs.build_id[0] == "local-0.1.0"
    v = store.query("SELECT * FROM v_verdicts")
    assert v.iloc[0].case_id == "cold_start_device_discovery" and v.iloc[0].spec_section == "1.1"
    m = store.query("SELECT value FROM v_metrics WHERE metric='round_trip_s' AND statistic='count'")
    assert m.value[0] == 100
    e = store.query("SELECT * FROM v_expectations")
    assert e.iloc[0].threshold == 0.01 and e.iloc[0].observed == 0.099 and bool(e.iloc[0].passed)
    assert set(VIEW_NAMES) <= set(store.query("SELECT view_name FROM duckdb_views()").view_name)


def test_rewriting_a_case_replaces_it(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-1", 100))
    store.write_case(payload("run-1", 30, Verdict.FAIL))
    assert store.query("SELECT count(*) AS n FROM samples").n[0] == 30
    assert store.query("SELECT verdict FROM v_verdicts").verdict.tolist() == ["FAIL"]


def _writer(path: str, run_id: str) -> None:
    MetricsStore(path, lock_timeout_s=60).write_case(payload(run_id, 5000))


def test_two_processes_finishing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "m.duckdb")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"run-{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = MetricsStore(path)
    # A writer that could not get the lock within its timeout (a loaded machine) stages its case
    # beside the store instead of losing it; merging brings it in. Nothing may be missing after that.
    store.merge_staged()
    assert store.query("SELECT count(*) AS n FROM samples").n[0] == 4 * 5000
    assert store.query("SELECT count(*) AS n FROM v_runs").n[0] == 4


def test_a_locked_store_stages_the_case_and_the_next_write_merges_it(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    MetricsStore(path).initialize()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    holder.start()
    assert ready.wait(60)
    try:
        receipt = MetricsStore(path, lock_timeout_s=0.5).write_case(payload("run-locked"))
        assert receipt.status == "staged" and Path(receipt.staged_path).exists()
    finally:
        release.set()
        holder.join(30)
    receipt2 = MetricsStore(path).write_case(payload("run-after"))
    assert receipt2.status == "written" and receipt2.merged_staged == 1
    runs = set(MetricsStore(path).query("SELECT run_id FROM v_runs").run_id)
    assert runs == {"run-locked", "run-after"}


def _hold_lock(path: str, ready: object, release: object) -> None:
    con = duckdb.connect(path)
    ready.set()
    release.wait(60)
    con.close()


def test_a_rerun_under_the_same_key_replaces_and_records_what_it_replaced(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-1", 100, Verdict.PASS, key=None))  # default key: build/testbed/profile
    store.write_case(payload("run-2", 40, Verdict.FAIL, key=None))   # the same build re-run
    assert store.query("SELECT count(*) AS n FROM samples").n[0] == 40
    runs = store.query("SELECT run_id, run_key FROM v_runs")
    assert runs.run_id.tolist() == ["run-2"] and runs.run_key[0] == "local-0.1.0/tb-test/smoke"
    sup = store.query("SELECT old_run_id, new_run_id, old_verdict FROM superseded")
    assert sup.values.tolist() == [["run-1", "run-2", "PASS"]]
    store.write_case(payload("run-3", 10, key="study-1"))  # another key keeps both
    assert sorted(store.query("SELECT run_id FROM v_runs").run_id) == ["run-2", "run-3"]


def test_a_build_id_reused_with_other_content_is_refused_and_nothing_is_overwritten(tmp_path: Path) -> None:
    import pytest

    from hybrid_assets.store import BuildConflictError

    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-1"))
    other = payload("run-2")
    other["build"] = {**other["build"], "manifest": {"build_id": "local-0.1.0", "version": "9"},
                      "content_sha256": "f" * 64, "version": "9"}
    with pytest.raises(BuildConflictError, match=r"already registered .* with other content"):
        store.write_case(other)
    with pytest.raises(BuildConflictError):
        store.check_build("local-0.1.0", "f" * 64)
    store.check_build("local-0.1.0", BuildInfo.local("0.1.0").content_sha256)  # the same content is fine
    assert store.query("SELECT run_id FROM v_runs").run_id.tolist() == ["run-1"]
    assert store.query("SELECT version FROM builds").version.tolist() == ["0.1.0"]


def test_pinning_an_unknown_baseline_is_refused(tmp_path: Path) -> None:
    import pytest

    from hybrid_assets.store import UnknownBuildError

    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-1"))
    store.pin_baseline("tb-test", "smoke", "local-0.1.0", "known good")
    with pytest.raises(UnknownBuildError, match=r"no such build .*latest builds: \['local-0.1.0'\].*nothing"):
        store.pin_baseline("tb-test", "smoke", "nope")
    assert store.pinned_baseline("tb-test", "smoke") == "local-0.1.0"
    assert store.unpin_baseline("tb-test", "smoke") and store.pinned_baseline("tb-test", "smoke") is None


def test_a_version_1_file_is_migrated_on_write(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER NOT NULL); INSERT INTO schema_info VALUES (1);"
                "CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, build_id VARCHAR, testbed_id VARCHAR, "
                "profile VARCHAR, dagster_run_id VARCHAR, worker_cmd VARCHAR, started_at TIMESTAMP, "
                "last_write_at TIMESTAMP); INSERT INTO runs VALUES ('old', 'b0', 'tb', 'smoke', NULL, 'w', NULL, NULL)")
    con.close()
    store = MetricsStore(path)
    store.check_build("b0", "0" * 64)  # what a run does first: it migrates rather than refuses
    assert store.query("SELECT version FROM schema_info").version.tolist() == [2]
    store.write_case(payload("run-1"))
    assert sorted(store.query("SELECT run_id FROM runs").run_id) == ["old", "run-1"]
