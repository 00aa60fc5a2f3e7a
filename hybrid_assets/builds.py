"""Build manifests: what is being tested.

A manifest is a JSON file in the watched folder (``HYBRID_BUILDS_DIR``, default
``builds/incoming``)::

    {"build_id": "2026.12.04-abc123", "version": "1.4.0",
     "worker_cmd": "/opt/runtime/bin/worker --stdio"}      # optional; string or argv list

``worker_cmd`` names the worker to validate; without it the run uses the configured one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from workers.host.command import WorkerCommandError, check_executable, parse_command

ENV_BUILDS_DIR = "HYBRID_BUILDS_DIR"
DEFAULT_BUILDS_DIR = "builds/incoming"
_BUILD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_MANIFEST_BYTES = 64 * 1024


class ManifestError(ValueError):
    """A build manifest is unreadable or invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class BuildInfo:
    build_id: str
    version: str
    worker_cmd: Union[list[str], None]  # None: use the configured worker
    manifest: dict[str, Any]
    content_sha256: str

    @classmethod
    def local(cls, version: str) -> BuildInfo:
        """The build of a run started by hand, with no manifest."""
        build_id = f"local-{version}"
        manifest = {"build_id": build_id, "version": version}
        return cls(build_id, version, None, manifest, _sha(manifest))


def default_run_key(build_id: str, testbed_id: str, profile: str) -> str:
    """One result set per build, testbed and profile: a re-run replaces, never duplicates."""
    return f"{build_id}/{testbed_id}/{profile}"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def builds_dir() -> Path:
    return Path(os.environ.get(ENV_BUILDS_DIR) or DEFAULT_BUILDS_DIR)


def parse_manifest(path: Path, check_command: bool = True) -> BuildInfo:
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: manifest of {size} bytes exceeds {MAX_MANIFEST_BYTES} bytes")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: a manifest must be a JSON object")
    build_id, version = raw.get("build_id"), raw.get("version")
    if not isinstance(build_id, str) or not _BUILD_ID.match(build_id):
        raise ManifestError(f"{path}: build_id must be a string of letters, digits, '.', '_' or '-', "
                            f"got {build_id!r}")
    if not isinstance(version, str) or not version.strip():
        raise ManifestError(f"{path}: version must be a non-empty string, got {version!r}")
    worker_cmd = None
    if raw.get("worker_cmd") is not None:
        if not isinstance(raw["worker_cmd"], (str, list)):
            raise ManifestError(f"{path}: worker_cmd must be a string or a list of strings")
        try:
            worker_cmd = parse_command(raw["worker_cmd"])
            if check_command:
                check_executable(worker_cmd, f"{path}: worker_cmd")
        except WorkerCommandError as exc:
            raise ManifestError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from exc
    return BuildInfo(build_id, version, worker_cmd, raw, _sha(raw))


def find_manifest(build_id: str, folder: Union[Path, None] = None) -> Path:
    """The manifest in the builds folder that names ``build_id`` (a run launched from the UI
    for a build partition carries only the build id)."""
    folder = folder or builds_dir()
    if not folder.is_dir():
        raise ManifestError(f"no manifest for build {build_id!r}: builds folder {folder} does not exist")
    matches = []
    for path in sorted(folder.glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # the sensor reports unreadable manifests; here only a match matters
        if isinstance(raw, dict) and raw.get("build_id") == build_id:
            matches.append(path)
    if not matches:
        raise ManifestError(f"no manifest in {folder} names build {build_id!r}")
    if len(matches) > 1:
        contents = {_sha(json.loads(p.read_text(encoding="utf-8"))) for p in matches}
        if len(contents) > 1:
            raise ManifestError(f"build {build_id!r} is named by manifests with different content: "
                                f"{[str(p) for p in matches]}; a build id names one build")
    return matches[0]


def resolve_build(partition_key: Union[str, None], manifest_path: Union[str, None], local_version: str,
                  check_command: bool = False) -> BuildInfo:
    """The build a run tests: its manifest (given, or found by the partition's build id), or the
    local build. A manifest whose build id is not the run's partition is refused."""
    if manifest_path:
        build = parse_manifest(Path(manifest_path), check_command=check_command)
        if partition_key and partition_key != build.build_id:
            raise ManifestError(f"{manifest_path}: names build {build.build_id!r} but the run is for "
                                f"build partition {partition_key!r}")
        return build
    local = BuildInfo.local(local_version)
    if partition_key is None or partition_key == local.build_id:
        return local
    return parse_manifest(find_manifest(partition_key), check_command=check_command)
