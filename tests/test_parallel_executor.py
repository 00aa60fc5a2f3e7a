"""The multiprocess executor with a testbed concurrency pool: cases on one testbed never overlap
at limit 1; at a higher limit steps run in parallel and the store loses no row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybrid_assets.catalog.loader import CATALOG_DIR
from hybrid_assets.store import MetricsStore

pytestmark = [pytest.mark.dagster, pytest.mark.subprocess, pytest.mark.slow]
ROUND_TRIPS = 50


def _catalog(path: Path) -> None:
    """Three tiny copies of the cold-start case (same runner and suite, their own ids)."""
    catalog = yaml.safe_load((CATALOG_DIR / "part1.yaml").read_text())
    base = next(c for c in catalog["cases"] if c["id"] == "cold_start_device_discovery")
    catalog["cases"] = [
        {**base, "id": f"cold_start_copy_{i}", "suite": "part1.cold_start_device_discovery",
         "params": {p: {"cold_starts": 2, "round_trips": ROUND_TRIPS, "payload_bytes": 64}
                    for p in ("smoke", "standard", "spec")}}
        for i in range(3)]
    path.write_text(yaml.safe_dump(catalog))


def _run(tmp: Path, limit: int, run_key: str) -> subprocess.CompletedProcess:
    home = tmp / f"dagster-{limit}"
    home.mkdir()
    (home / "dagster.yaml").write_text(f"telemetry:\n  enabled: false\nconcurrency:\n  pools:\n"
                                       f"    default_limit: {limit}\n")
    env = {**os.environ, "HYBRID_CATALOG_PATH": str(tmp / "cases.yaml"), "DAGSTER_HOME": str(home),
           "HYBRID_TESTBED_POOL": "ci-bench"}
    cmd = [sys.executable, "-m", "hybrid_assets", "run", "--executor", "multiprocess", "--max-concurrent", "3",
           "--store", str(tmp / "m.duckdb"), "--reports", str(tmp / f"r-{limit}"), "--run-key", run_key]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


def _max_overlap(store: MetricsStore, run_key: str) -> int:
    spans = store.query(
        "SELECT epoch(c.started_at) AS t0, epoch(c.started_at) + c.duration_s AS t1 "
        "FROM case_results c JOIN runs r USING (run_id) WHERE r.run_key = ?", [run_key])
    return max(sum(1 for o in spans.itertuples() if o.t0 <= s.t0 < o.t1) for s in spans.itertuples())


def test_pool_serialises_a_testbed_and_parallel_steps_lose_no_rows(tmp_path: Path) -> None:
    _catalog(tmp_path / "cases.yaml")
    store = MetricsStore(tmp_path / "m.duckdb")

    serial = _run(tmp_path, 1, "serial")
    assert serial.returncode in (0, 1), serial.stdout[-2000:] + serial.stderr[-3000:]
    assert _max_overlap(store, "serial") == 1  # three steps allowed by the executor, one by the pool

    parallel = _run(tmp_path, 3, "parallel")
    assert parallel.returncode in (0, 1), parallel.stdout[-2000:] + parallel.stderr[-3000:]
    counts = store.query(
        "SELECT r.run_key, count(DISTINCT c.case_id) AS cases, "
        "(SELECT count(*) FROM samples s JOIN runs q USING (run_id) WHERE q.run_key = r.run_key "
        " AND s.metric = 'round_trip_s') AS round_trips "
        "FROM case_results c JOIN runs r USING (run_id) GROUP BY r.run_key ORDER BY 1")
    assert counts.values.tolist() == [["parallel", 3, 3 * ROUND_TRIPS], ["serial", 3, 3 * ROUND_TRIPS]]
    assert not list(store.staging_dir.glob("*.json"))  # nothing left staged: every write landed
    # Three processes at once on two cores: they overlap unless something serialised them.
    assert _max_overlap(store, "parallel") >= 2
