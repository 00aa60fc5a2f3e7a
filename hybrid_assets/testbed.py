"""A testbed's fingerprint: the hardware and software a result was measured on.

Comparisons only mean something within one testbed; ``testbed_id`` is a hash of the
fields that change what is measured (the host name is stored, not hashed).
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import psutil

from hybrid_assets.runners.ground_truth import observe
from workers.runtime.devices import cpu_model, usable_cpus

LIBRARIES = ("torch", "diffusers", "transformers", "msgspec", "duckdb", "great-expectations", "dagster")


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # not a pytest class, despite the name

    testbed_id: str
    hostname: str
    cpu: str
    cpu_cores: int
    memory_bytes: int
    gpus: str
    fingerprint: dict[str, Any]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint() -> Testbed:
    truth = observe()
    gpus = [f"{d.compute_capability}:{d.memory_total}" for d in truth.gpus]
    cores = usable_cpus()
    fp: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_cores": cores, "machine": platform.machine(),
        "memory_bytes": int(psutil.virtual_memory().total), "gpus": gpus, "nvml": truth.nvml_status,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "libraries": {lib: _version(lib) for lib in LIBRARIES},
    }
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return Testbed(f"tb-{digest}", socket.gethostname(), fp["cpu"], cores, fp["memory_bytes"],
                   ",".join(gpus) or "none", fp)
