"""A testbed's fingerprint: the hardware and software a result was measured on.

Comparisons only mean something within one testbed; ``testbed_id`` is a hash of the
fields that change what is measured (the host name is stored, not hashed): CPU model and usable
cores, memory, GPUs (compute capability and memory), the NVIDIA driver, the CUDA version torch
was built for, the OS, Python and the versions of the libraries that do the work.

Versions are read from package metadata and files, never by importing torch (seconds), and the
fingerprint is computed once per process (see ``make bench-regress`` for its cost).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import platform
import re
import socket
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
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


def nvidia_driver() -> str:
    """The loaded NVIDIA kernel driver's version, or why there is none."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "none"
    match = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9][0-9.]+)", text)
    return match.group(1) if match else text.splitlines()[0].strip() if text else "unknown"


def torch_cuda_version() -> str:
    """The CUDA version torch was built for ("none" for a CPU build), read from torch/version.py."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "torch absent"
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, re.MULTILINE)
    if match is None:
        return "unknown"
    return match.group(1) or match.group(2) or "none"


def fingerprint() -> Testbed:
    """This machine's testbed (computed once per process: it does not change under a run)."""
    return _fingerprint()


@functools.lru_cache(maxsize=1)
def _fingerprint() -> Testbed:
    truth = observe()
    gpus = [f"{d.compute_capability}:{d.memory_total}" for d in truth.gpus]
    cores = usable_cpus()
    fp: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_cores": cores, "machine": platform.machine(),
        "memory_bytes": int(psutil.virtual_memory().total), "gpus": gpus, "nvml": truth.nvml_status,
        "nvidia_driver": nvidia_driver(), "torch_cuda": torch_cuda_version(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "libraries": {lib: _version(lib) for lib in LIBRARIES},
    }
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return Testbed(f"tb-{digest}", socket.gethostname(), fp["cpu"], cores, fp["memory_bytes"],
                   ",".join(gpus) or "none", fp)
