"""The case asset materialized in-process against real workers, a real DuckDB and real GX."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, Definitions, materialize

from hybrid_assets.catalog import load_catalog
from hybrid_assets.dagster_defs.definitions import JOB_NAME, build_definitions
from hybrid_assets.dagster_defs.factory import build_case_asset
from hybrid_assets.dagster_defs.resources import (
    BuildResource,
    MetricsStoreResource,
    ProfileResource,
    WorkerPoolResource,
)
from hybrid_assets.gx_suites import load_suite
from hybrid_assets.store import VIEW_NAMES, MetricsStore
from workers.host.command import bundled_worker_command

pytestmark = [pytest.mark.dagster, pytest.mark.subprocess, pytest.mark.slow]


def case_with(params: dict) -> tuple:
    case = next(c for c in load_catalog() if c.id == "cold_start_device_discovery")
    case = dataclasses.replace(case, params={"smoke": params, "standard": params, "spec": params})
    return case, build_case_asset(case, load_suite(case.suite))


def run(asset, store: Path, worker_cmd: str | None = None):
    resources = {
        "worker_pool": WorkerPoolResource(worker_cmd=worker_cmd),
        "metrics_store": MetricsStoreResource(path=str(store)),
        "profile": ProfileResource(name="smoke"),
        "build": BuildResource(),
    }
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("builds", ["local-0.1.0"])  # the local build (no manifest)
    return materialize([asset], resources=resources, raise_on_error=False, instance=instance,
                       partition_key="local-0.1.0")


def test_definitions_load_with_asset_checks_job_and_sensor() -> None:
    defs = build_definitions()
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert "part1_workflows/cold_start_device_discovery" in keys
    checks = {k.name for k in repo.asset_graph.asset_check_keys}
    assert {"discovery_time_p90_under_5s", "round_trip_p99_under_10ms", "zero_communication_errors"} <= checks
    job = defs.resolve_job_def(JOB_NAME)
    assert job.partitions_def is not None and job.partitions_def.name == "builds"
    assert [s.name for s in repo.sensor_defs] == ["new_build_sensor"]
    assert [s.name for s in repo.schedule_defs] == ["nightly_standard"]
    spec_job = defs.resolve_job_def("hybrid_validation_spec")
    assert spec_job.partitioned_config.get_run_config_for_partition_key("b1")["resources"]["profile"] == \
        {"config": {"name": "spec"}}
    # Every case sits in the testbed's pool: one case at a time per testbed, across runs.
    pools = {repo.assets_defs_by_key[k].node_def.pool for k in repo.asset_graph.get_all_asset_keys()}
    assert pools == {"testbed-local"}


def test_healthy_worker_passes_and_the_views_hold_the_run(tmp_path: Path) -> None:
    _, asset = case_with({"cold_starts": 45, "round_trips": 600, "payload_bytes": 64})
    store_path = tmp_path / "m.duckdb"
    result = run(asset, store_path)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    # The first build on this testbed: nothing to compare with, a warning that says so, not a pass.
    regression = evaluations.pop("no_regression_vs_baseline")
    assert not regression.passed and regression.severity == AssetCheckSeverity.WARN
    assert regression.metadata["verdict"].value == "INVALID"
    assert "no earlier build" in regression.metadata["detail"].value
    failing = {name: e.metadata["detail"].value for name, e in evaluations.items() if not e.passed}
    # Latency bounds depend on how busy this shared 2-core machine is; everything else must pass, and
    # a latency check that fails must carry the evidence that breaches its bound.
    timing = {n for n in failing if re.search(r"_p\d+_under_\d+m?s$|_under_\d+m?s$", n)}
    assert not set(failing) - timing, failing
    for name in timing:
        md = evaluations[name].metadata
        breached = md["observed"].value > md["threshold"].value
        assert breached or failing[name].startswith("too little evidence"), (name, failing[name])
    assert "gpu_compute_capability_valid" not in evaluations  # SKIPPED here: no result, never a PASS
    rt = evaluations["round_trip_p99_under_10ms"].metadata
    assert rt["threshold"].value == 0.01 and 0 < rt["observed"].value < 0.01
    assert rt["spec"].value.startswith("4.1:")
    mat = result.asset_materializations_for_node("part1_workflows__cold_start_device_discovery")[0]
    assert mat.metadata["verdict"].value in (("FAIL", "INVALID") if failing else ("PASS",))

    store = MetricsStore(store_path)
    run_id = result.run_id
    for view in set(VIEW_NAMES) - {"v_builds", "v_regressions"}:  # no run_id; no regression without a baseline
        rows = store.query(f"SELECT * FROM {view} WHERE run_id = ?", [run_id])
        assert len(rows) > 0, view
    assert store.query("SELECT build_id, build_seq FROM v_builds").values.tolist() == [["local-0.1.0", 1]]
    lines = store.query("SELECT expectation, verdict FROM v_expectations WHERE run_id = ?", [run_id])
    assert dict(zip(lines.expectation, lines.verdict, strict=True))["gpu_compute_capability_valid"] == "SKIPPED"
    samples = store.query("SELECT count(*) AS n FROM samples WHERE run_id = ? AND metric = 'round_trip_s'", [run_id])
    assert samples.n[0] == 600


def test_slow_worker_breaches_thresholds_and_checks_fail(tmp_path: Path) -> None:
    _, asset = case_with({"cold_starts": 3, "round_trips": 60, "payload_bytes": 64})
    slow = " ".join([*bundled_worker_command(), "--allow-fault-injection", "--fault-startup-delay", "0.6",
                     "--fault-latency", "0.02"])
    result = run(asset, tmp_path / "m.duckdb", worker_cmd=slow)
    assert result.success  # the pipeline worked; the runtime under test did not
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    for name in ("connection_time_p90_under_200ms", "communication_establishment_p90_under_500ms",
                 "round_trip_p99_under_10ms"):
        assert not evaluations[name].passed and evaluations[name].metadata["verdict"].value == "FAIL", name
        assert evaluations[name].severity == AssetCheckSeverity.ERROR
    # Three cold starts cannot support a p90 pass: INVALID, a warning, not a PASS.
    discovery = evaluations["discovery_time_p90_under_5s"]
    assert not discovery.passed and discovery.metadata["verdict"].value == "INVALID"
    assert discovery.severity == AssetCheckSeverity.WARN
    verdict = MetricsStore(tmp_path / "m.duckdb").query("SELECT verdict FROM v_verdicts").verdict[0]
    assert verdict == "FAIL"


def test_missing_worker_command_fails_the_run_with_a_named_error(tmp_path: Path) -> None:
    _, asset = case_with({"cold_starts": 1, "round_trips": 1})
    result = run(asset, tmp_path / "m.duckdb", worker_cmd="/no/such/worker --stdio")
    assert not result.success
    errors = [e.event_specific_data.error for e in result.all_events
              if "FAILURE" in e.event_type_value and getattr(e.event_specific_data, "error", None)]
    text = " ".join(err.to_string() for err in errors)  # with the chain of causes
    assert "'/no/such/worker' does not exist" in text


def test_factory_builds_one_asset_per_case_with_the_checks_of_its_suite() -> None:
    defs = build_definitions()
    graph = defs.get_repository_def().asset_graph
    cases = load_catalog()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {f"{c.group}/{c.id}" for c in cases} and len(keys) == len(cases)
    checks_by_asset: dict[str, set[str]] = {}
    for ck in graph.asset_check_keys:
        checks_by_asset.setdefault(ck.asset_key.to_user_string(), set()).add(ck.name)
    for case in cases:
        suite = load_suite(case.suite)
        expected = {e.check for e in suite.expectations} | {"no_regression_vs_baseline"}
        assert checks_by_asset[f"{case.group}/{case.id}"] == expected, case.id
