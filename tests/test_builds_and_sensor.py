"""Build manifests and the new-build sensor: each build runs once; bad manifests are named."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, instance_for_test

from hybrid_assets.builds import ManifestError, parse_manifest
from hybrid_assets.dagster_defs.definitions import JOB_NAME
from hybrid_assets.dagster_defs.sensors import make_new_build_sensor


def write(folder: Path, name: str, content: object) -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(("content", "problem"), [
    ("{oops", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ({"version": "1"}, "build_id"),
    ({"build_id": "a b", "version": "1"}, "build_id"),
    ({"build_id": "b1"}, "version"),
    ({"build_id": "b1", "version": "1", "worker_cmd": 3}, "worker_cmd must be"),
    ({"build_id": "b1", "version": "1", "worker_cmd": "/no/such/worker --x"}, "does not exist"),
    ({"build_id": "b1", "version": "1", "worker_cmd": "no-such-program-xyz"}, "not found on PATH"),
    ({"build_id": "b1", "version": "1", "worker_cmd": ""}, "empty"),
])
def test_bad_manifests_are_named(tmp_path: Path, content: object, problem: str) -> None:
    path = write(tmp_path, "m.json", content)
    with pytest.raises(ManifestError, match=problem) as info:
        parse_manifest(path)
    assert str(path) in str(info.value)


def test_non_executable_worker_and_unreadable_manifest(tmp_path: Path) -> None:
    script = tmp_path / "worker.sh"
    script.write_text("#!/bin/sh\n")
    path = write(tmp_path, "m.json", {"build_id": "b1", "version": "1", "worker_cmd": [str(script)]})
    with pytest.raises(ManifestError, match="not executable"):
        parse_manifest(path)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert parse_manifest(path).worker_cmd == [str(script)]
    with pytest.raises(ManifestError, match="cannot read"):
        parse_manifest(tmp_path / "missing.json")


def evaluate(sensor, instance: DagsterInstance, cursor: str | None):
    ctx = build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(ctx)
    return result, ctx


def test_sensor_fires_once_per_new_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_BUILDS_DIR", str(tmp_path))
    sensor = make_new_build_sensor(JOB_NAME)
    instance = DagsterInstance.ephemeral()
    write(tmp_path, "b1.json", {"build_id": "b1", "version": "1.0"})
    result, _ = evaluate(sensor, instance, None)
    assert isinstance(result, SensorResult) and [r.run_key for r in result.run_requests] == ["build-b1-smoke"]
    req = result.run_requests[0]
    assert req.tags["hybrid/build_id"] == "b1" and req.partition_key == "b1"
    assert req.run_config["resources"]["profile"]["config"]["name"] == "smoke"
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in result.dynamic_partitions_requests] == \
        [("builds", ["b1"])]
    assert req.run_config["resources"]["build"]["config"]["manifest_path"].endswith("b1.json")
    cursor = result.cursor

    again, _ = evaluate(sensor, instance, cursor)  # nothing new: no run
    assert not again.run_requests and "no new build" in again.skip_reason.skip_message

    write(tmp_path, "b2.json", {"build_id": "b2", "version": "2.0", "worker_cmd": [os.sys.executable, "-m", "workers"]})
    third, _ = evaluate(sensor, instance, again.cursor)
    assert [r.run_key for r in third.run_requests] == ["build-b2-smoke"]
    assert third.run_requests[0].run_config["resources"]["worker_pool"]["config"]["worker_cmd"].endswith("-m workers")


def test_sensor_reports_bad_manifest_once_and_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sensor = make_new_build_sensor(JOB_NAME)
    instance = DagsterInstance.ephemeral()
    monkeypatch.setenv("HYBRID_BUILDS_DIR", str(tmp_path / "absent"))
    result, _ = evaluate(sensor, instance, None)
    assert isinstance(result, SkipReason) and "does not exist" in result.skip_message
    monkeypatch.setenv("HYBRID_BUILDS_DIR", str(tmp_path))
    write(tmp_path, "bad.json", "{broken")
    first, _ = evaluate(sensor, instance, None)
    assert not first.run_requests and "not valid JSON" in first.skip_reason.skip_message
    second, _ = evaluate(sensor, instance, first.cursor)
    assert "no new build" in second.skip_reason.skip_message  # judged once per content


def test_sensor_refuses_a_reused_build_id_with_other_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_BUILDS_DIR", str(tmp_path))
    sensor = make_new_build_sensor(JOB_NAME)
    instance = DagsterInstance.ephemeral()
    write(tmp_path, "a.json", {"build_id": "b1", "version": "1.0"})
    first, _ = evaluate(sensor, instance, None)
    assert [r.partition_key for r in first.run_requests] == ["b1"]
    write(tmp_path, "z.json", {"build_id": "b1", "version": "1.1"})  # same id, other content
    second, _ = evaluate(sensor, instance, first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert "already seen with other content" in second.skip_reason.skip_message
    assert "z.json" in second.skip_reason.skip_message
    # The same content under another file name is the same build: no new partition, and the
    # run key is the one already used, so Dagster does not launch it twice.
    write(tmp_path, "copy.json", {"version": "1.0", "build_id": "b1"})
    third, _ = evaluate(sensor, instance, second.cursor)
    assert [r.run_key for r in third.run_requests] == ["build-b1-smoke"] and not third.dynamic_partitions_requests


def test_nightly_schedule_runs_standard_on_the_newest_build() -> None:
    from dagster import build_schedule_context

    from hybrid_assets.definitions import defs

    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("nightly_standard")
    with instance_for_test() as instance:
        empty = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert not empty.run_requests and "no build partition" in empty.skip_message
        instance.add_dynamic_partitions("builds", ["b1", "b2"])
        ctx = build_schedule_context(instance=instance, repository_def=repo,
                                     scheduled_execution_time=dt.datetime(2026, 12, 5, 2, 0))
        [req] = schedule.evaluate_tick(ctx).run_requests
    assert req.partition_key == "b2" and req.run_key == "nightly-2026-12-05-b2-standard"
    assert req.run_config["resources"]["profile"]["config"]["name"] == "standard"


def test_a_run_resolves_its_build_from_the_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_assets.builds import resolve_build

    monkeypatch.setenv("HYBRID_BUILDS_DIR", str(tmp_path))
    write(tmp_path, "x.json", {"build_id": "b7", "version": "7", "worker_cmd": [os.sys.executable, "-m", "workers"]})
    assert resolve_build(None, None, "0.1.0").build_id == "local-0.1.0"
    assert resolve_build("local-0.1.0", None, "0.1.0").worker_cmd is None
    found = resolve_build("b7", None, "0.1.0")
    assert found.version == "7" and found.worker_cmd[-1] == "workers"
    with pytest.raises(ManifestError, match="names build 'b7' but the run is for build partition 'b8'"):
        resolve_build("b8", str(tmp_path / "x.json"), "0.1.0")
    with pytest.raises(ManifestError, match=r"no manifest in .* names build 'b9'"):
        resolve_build("b9", None, "0.1.0")
    write(tmp_path, "y.json", {"build_id": "b7", "version": "8"})
    with pytest.raises(ManifestError, match="different content"):
        resolve_build("b7", None, "0.1.0")
