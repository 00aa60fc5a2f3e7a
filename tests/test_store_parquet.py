"""The Parquet layout: per-case files from many writers, read as one, folded into DuckDB."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from hybrid_assets.store import BuildConflictError, MetricsStore
from hybrid_assets.store.parquet import ParquetCaseStore, ingest_parquet, open_parquet_store
from tests.test_store import payload


def _write_many(root: str, run_id: str, n: int) -> None:
    store = ParquetCaseStore(root)
    for i in range(n):
        p = payload(run_id, 500 + i)
        p["case"] = {**p["case"], "case_id": f"case_{i}"}
        store.write_case(p)


def test_parallel_writers_lose_nothing_and_duckdb_reads_the_folder_as_one(tmp_path: Path) -> None:
    root = tmp_path / "pq"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(root), f"run-{w}", 3)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    con = open_parquet_store(root)
    try:
        runs = con.execute("SELECT run_id, cases, passed FROM v_runs ORDER BY run_id").fetchall()
        assert runs == [(f"run-{w}", 3, 3) for w in range(3)]  # builds/runs repeated per case: counted once
        n = con.execute("SELECT count(*) FROM v_samples").fetchone()[0]
        assert n == 3 * (500 + 501 + 502)
        assert con.execute("SELECT count(*) FROM v_builds").fetchone()[0] == 1
    finally:
        con.close()
    store = MetricsStore(tmp_path / "m.duckdb")
    counts = ingest_parquet(root, store)
    assert counts["case_results"] == 9
    ingest_parquet(root, store)  # idempotent: the same cases replace themselves
    assert store.query("SELECT count(*) AS n FROM samples").n[0] == n
    assert store.query("SELECT count(*) AS n FROM v_verdicts").n[0] == 9


def test_ingest_refuses_a_conflicting_build_and_writes_nothing(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-a"))
    other = payload("run-b")
    other["build"] = {**other["build"], "version": "9", "content_sha256": "e" * 64}
    ParquetCaseStore(tmp_path / "pq").write_case(other)
    with pytest.raises(BuildConflictError, match=r"local-0\.1\.0"):
        ingest_parquet(tmp_path / "pq", store)
    assert store.query("SELECT run_id FROM v_runs").run_id.tolist() == ["run-a"]


def test_an_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Parquet store"):
        open_parquet_store(tmp_path)


@pytest.mark.dagster
@pytest.mark.subprocess
def test_a_dagster_run_writes_parquet_per_case_that_ingests_and_compares(tmp_path: Path) -> None:
    from dagster import DagsterInstance, materialize

    from hybrid_assets.dagster_defs.resources import (
        BuildResource,
        MetricsStoreResource,
        ProfileResource,
        WorkerPoolResource,
    )
    from hybrid_assets.regress.detect import detect_run
    from tests.test_dagster_assets import case_with

    _, asset = case_with({"cold_starts": 1, "round_trips": 30, "payload_bytes": 64})
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("builds", ["local-0.1.0"])
    resources = {"worker_pool": WorkerPoolResource(), "profile": ProfileResource(name="smoke"),
                 "build": BuildResource(), "metrics_store": MetricsStoreResource(parquet_dir=str(tmp_path / "pq"))}
    result = materialize([asset], resources=resources, instance=instance, partition_key="local-0.1.0")
    assert result.success
    # Regression detection needs the DuckDB file: in this layout its check is not executed.
    assert "no_regression_vs_baseline" not in {e.check_name for e in result.get_asset_check_evaluations()}
    con = open_parquet_store(tmp_path / "pq")
    try:
        rows = con.execute("SELECT case_id, count(*) FROM v_samples WHERE metric = 'round_trip_s' "
                           "GROUP BY 1").fetchall()
    finally:
        con.close()
    assert rows == [("cold_start_device_discovery", 30)]
    store = MetricsStore(tmp_path / "m.duckdb")
    ingest_parquet(tmp_path / "pq", store)
    [run_id] = store.query("SELECT run_id FROM v_runs").run_id.tolist()
    findings = detect_run(store, run_id)  # the comparison runs after the ingest: no earlier build here
    assert findings and {f.verdict for f in findings} == {"INVALID"}
