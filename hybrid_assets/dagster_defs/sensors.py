"""Run the smoke suite when a new build manifest appears in the watched folder.

Each new build becomes a partition of every case asset and gets one smoke run. The cursor maps
each manifest file to the hash of its bytes (a file is looked at again only when it changes) and
each build id to its content hash (a second manifest reusing a build id with other content is
refused, never run); the run key is the build id and profile, so a build runs once even if the
cursor is reset. An invalid manifest is reported (log and skip reason), never run.
"""

import hashlib
import json
import shlex
from typing import Any

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from hybrid_assets.builds import BuildInfo, ManifestError, builds_dir, parse_manifest
from hybrid_assets.dagster_defs.partitions import BUILDS_PARTITION

BUILD_TAG = "hybrid/build_id"
SENSOR_PROFILE = "smoke"


def build_run_request(path_str: str, build: BuildInfo, profile: str = SENSOR_PROFILE) -> RunRequest:
    resources: dict[str, Any] = {"build": {"config": {"manifest_path": path_str}},
                                 "profile": {"config": {"name": profile}}}
    if build.worker_cmd:
        resources["worker_pool"] = {"config": {"worker_cmd": shlex.join(build.worker_cmd)}}
    return RunRequest(
        run_key=f"build-{build.build_id}-{profile}",
        partition_key=build.build_id,
        run_config={"resources": resources},
        tags={BUILD_TAG: build.build_id, "hybrid/build_version": build.version, "hybrid/manifest": path_str,
              "hybrid/profile": profile},
    )


def _read_cursor(context: SensorEvaluationContext) -> tuple[dict[str, str], dict[str, str]]:
    if not context.cursor:
        return {}, {}
    try:
        raw = json.loads(context.cursor)
    except json.JSONDecodeError:
        context.log.warning("unreadable sensor cursor, starting afresh: %r", context.cursor)
        return {}, {}
    if isinstance(raw, dict) and "files" in raw:
        return dict(raw.get("files") or {}), dict(raw.get("builds") or {})
    return dict(raw), {}  # the first cursor format: files only


def make_new_build_sensor(job_name: str, minimum_interval_seconds: int = 30) -> SensorDefinition:
    @sensor(job_name=job_name, minimum_interval_seconds=minimum_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="For each new build manifest (*.json) in $HYBRID_BUILDS_DIR (default builds/incoming): "
                        "adds the build as a partition and runs the smoke profile on it, once.")
    def new_build_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        folder = builds_dir()
        if not folder.is_dir():
            return SkipReason(f"builds folder {folder} does not exist")
        seen, builds = _read_cursor(context)
        requests, new_partitions, problems = [], [], []
        for path in sorted(folder.glob("*.json")):
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                problems.append(f"{path}: cannot read manifest: {exc}")
                continue
            if seen.get(path.name) == digest:
                continue
            seen[path.name] = digest  # judged once per content: a bad file is not re-reported every tick
            try:
                build = parse_manifest(path)
            except ManifestError as exc:
                problems.append(str(exc))
                continue
            known = builds.get(build.build_id)
            if known is not None and known != build.content_sha256:
                problems.append(f"{path}: build id {build.build_id!r} was already seen with other content "
                                f"(sha256 {known[:12]}..., this one {build.content_sha256[:12]}...); "
                                "a build id names one build: give the new build a new id")
                continue
            if known is None:
                builds[build.build_id] = build.content_sha256
                new_partitions.append(build.build_id)
            requests.append(build_run_request(str(path.resolve()), build))
        for problem in problems:
            context.log.error("manifest rejected: %s", problem)
        cursor = json.dumps({"files": seen, "builds": builds}, sort_keys=True)
        partitions = [AddDynamicPartitionsRequest(BUILDS_PARTITION, new_partitions)] if new_partitions else []
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor, dynamic_partitions_requests=partitions)
        why = "; ".join(problems) if problems else f"no new build manifest in {folder}"
        return SensorResult(skip_reason=SkipReason(why), cursor=cursor)

    return new_build_sensor
