"""Run the suite when a new build manifest appears in the watched folder.

The cursor maps each manifest file to the hash of its bytes, so a file is looked at again
only when it changes; the run key is the build id, so each build runs once even if the
cursor is reset. An invalid manifest is reported (log and skip reason), never run.
"""


import hashlib
import json
import shlex
from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from hybrid_assets.builds import ManifestError, builds_dir, parse_manifest

BUILD_TAG = "hybrid/build_id"


def build_run_request(path_str: str, build_id: str, version: str, worker_cmd: Any) -> RunRequest:
    resources: dict[str, Any] = {"build": {"config": {"manifest_path": path_str}}}
    if worker_cmd:
        resources["worker_pool"] = {"config": {"worker_cmd": shlex.join(worker_cmd)}}
    return RunRequest(
        run_key=f"build-{build_id}",
        run_config={"resources": resources},
        tags={BUILD_TAG: build_id, "hybrid/build_version": version, "hybrid/manifest": path_str},
    )


def make_new_build_sensor(job_name: str, minimum_interval_seconds: int = 30) -> SensorDefinition:
    @sensor(job_name=job_name, minimum_interval_seconds=minimum_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="Starts a validation run for each new build manifest (*.json) in $HYBRID_BUILDS_DIR "
                        "(default builds/incoming).")
    def new_build_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        folder = builds_dir()
        if not folder.is_dir():
            return SkipReason(f"builds folder {folder} does not exist")
        try:
            seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        except json.JSONDecodeError:
            context.log.warning("unreadable sensor cursor, starting afresh: %r", context.cursor)
            seen = {}
        requests, problems = [], []
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
            requests.append(build_run_request(str(path.resolve()), build.build_id, build.version, build.worker_cmd))
        for problem in problems:
            context.log.error("manifest rejected: %s", problem)
        cursor = json.dumps(seen, sort_keys=True)
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor)
        why = "; ".join(problems) if problems else f"no new build manifest in {folder}"
        return SensorResult(skip_reason=SkipReason(why), cursor=cursor)

    return new_build_sensor
