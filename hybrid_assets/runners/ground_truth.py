"""What the host sees of this machine's devices, found independently of the worker.

The worker under test may be any program; the host checks its claims against the kernel
(CPU, memory) and against NVML queried from the host process itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import psutil


@dataclass(frozen=True)
class ExpectedDevice:
    kind: str
    index: int
    memory_total: int
    compute_capability: Union[str, None] = None
    uuid: Union[str, None] = None


@dataclass(frozen=True)
class GroundTruth:
    devices: list[ExpectedDevice]
    nvml_status: str

    @property
    def gpus(self) -> list[ExpectedDevice]:
        return [d for d in self.devices if d.kind == "cuda"]


def observe() -> GroundTruth:
    devices = [ExpectedDevice("cpu", 0, int(psutil.virtual_memory().total))]
    status = "ok"
    try:
        import pynvml

        pynvml.nvmlInit()
    except ImportError:
        return GroundTruth(devices, "nvidia-ml-py not installed on the host")
    except Exception as exc:  # pynvml raises NVMLError subclasses generated at run time
        return GroundTruth(devices, f"NVML unavailable on the host: {exc}")
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        for i in range(pynvml.nvmlDeviceGetCount()):
            if visible is not None and str(i) not in visible.split(","):
                continue
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            devices.append(ExpectedDevice("cuda", i, int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                                          f"{major}.{minor}", pynvml.nvmlDeviceGetUUID(h)))
    finally:
        pynvml.nvmlShutdown()
    return GroundTruth(devices, status)
