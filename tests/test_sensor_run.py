"""The new-build sensor's run request, executed as Dagster would: the build's partition is added,
the run uses the manifest's worker and the smoke profile, and results land under that build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import build_sensor_context, instance_for_test

from hybrid_assets.catalog.loader import CATALOG_DIR
from hybrid_assets.dagster_defs.definitions import JOB_NAME, build_definitions
from hybrid_assets.store import MetricsStore
from workers.host.command import bundled_worker_command

pytestmark = [pytest.mark.dagster, pytest.mark.subprocess, pytest.mark.slow]


def test_a_new_build_becomes_a_partition_and_one_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = yaml.safe_load((CATALOG_DIR / "part1.yaml").read_text())
    case = next(c for c in catalog["cases"] if c["id"] == "cold_start_device_discovery")
    case["params"] = {p: {"cold_starts": 1, "round_trips": 20} for p in ("smoke", "standard", "spec")}
    catalog["cases"] = [case]
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(catalog))
    builds = tmp_path / "incoming"
    builds.mkdir()
    worker = [*bundled_worker_command(), "--heartbeat-interval", "0.5"]
    (builds / "b9.json").write_text(json.dumps({"build_id": "b9", "version": "9.0", "worker_cmd": worker}))
    monkeypatch.setenv("HYBRID_CATALOG_PATH", str(tmp_path / "cases.yaml"))
    monkeypatch.setenv("HYBRID_BUILDS_DIR", str(builds))
    monkeypatch.setenv("HYBRID_REPORTS_DIR", str(tmp_path / "reports"))
    defs = build_definitions()
    sensor = defs.get_repository_def().get_sensor_def("new_build_sensor")
    with instance_for_test() as instance:
        result = sensor(build_sensor_context(instance=instance))
        [request] = result.run_requests
        for added in result.dynamic_partitions_requests:  # what the daemon does with the request
            instance.add_dynamic_partitions(added.partitions_def_name, list(added.partition_keys))
        assert instance.get_dynamic_partitions("builds") == ["b9"]
        config = json.loads(json.dumps(request.run_config))
        config["resources"]["metrics_store"] = {"config": {"path": str(tmp_path / "m.duckdb")}}
        run = defs.resolve_job_def(JOB_NAME).execute_in_process(
            run_config=config, instance=instance, partition_key=request.partition_key, tags=request.tags,
            raise_on_error=False)
        assert run.success
        again = sensor(build_sensor_context(instance=instance, cursor=result.cursor))
        assert not again.run_requests and not again.dynamic_partitions_requests
    stored = MetricsStore(tmp_path / "m.duckdb").query("SELECT build_id, profile, worker_cmd FROM v_runs")
    assert stored.build_id.tolist() == ["b9"] and stored.profile.tolist() == ["smoke"]
    assert stored.worker_cmd[0].endswith("--heartbeat-interval 0.5")  # the manifest's worker ran
