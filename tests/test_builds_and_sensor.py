"""Build manifests and the new-build sensor: each build runs once; bad manifests are named."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

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
    assert isinstance(result, SensorResult) and [r.run_key for r in result.run_requests] == ["build-b1"]
    req = result.run_requests[0]
    assert req.tags["hybrid/build_id"] == "b1"
    assert req.run_config["resources"]["build"]["config"]["manifest_path"].endswith("b1.json")
    cursor = result.cursor

    again, _ = evaluate(sensor, instance, cursor)  # nothing new: no run
    assert not again.run_requests and "no new build" in again.skip_reason.skip_message

    write(tmp_path, "b2.json", {"build_id": "b2", "version": "2.0", "worker_cmd": [os.sys.executable, "-m", "workers"]})
    third, _ = evaluate(sensor, instance, again.cursor)
    assert [r.run_key for r in third.run_requests] == ["build-b2"]
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
