"""Device discovery: the CPU always, NVIDIA GPUs through NVML and torch where present.

Each device is profiled for real: supported dtypes are found by running a tiny kernel per
dtype on the device (tables lie about emulated types), memory is read from the driver or
the kernel. torch is imported lazily here, so a cold discovery pays for that import: that
is what a cold start costs, and the measurement says so.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Any, Union

import msgspec
import psutil

from workers.protocol.messages import DeviceInfo, DiscoverResult
from workers.runtime.imports import import_torch

log = logging.getLogger(__name__)

PROBE_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8", "int32", "float8_e4m3fn")
INTERESTING_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                   "avx512_vnni", "amx_bf16", "amx_int8", "asimd", "sve", "neon")


def _import_torch() -> Any:
    try:
        return import_torch()
    except ImportError:
        return None


def dtype_works(torch: Any, device: str, name: str) -> bool:
    """Run a tiny kernel in ``name`` on ``device``: what the device really supports."""
    dtype = getattr(torch, name, None)
    if dtype is None or not isinstance(dtype, torch.dtype):
        return False
    try:
        a = torch.ones((8, 8), dtype=dtype, device=device)
        if dtype.is_floating_point and dtype.itemsize >= 2:
            (a @ a).sum().item()
        else:
            (a + a).to(torch.float32).sum().item()
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _probe_dtypes(torch: Any, device: str) -> list[str]:
    return [name for name in PROBE_DTYPES if dtype_works(torch, device, name)]


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), which containers often cap."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in INTERESTING_ISA if f in flags]
    except OSError:
        pass
    return []


def _cpu_device(torch: Any, probe: bool) -> DeviceInfo:
    t0 = time.perf_counter()
    vm = psutil.virtual_memory()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if torch is not None and probe:
        dtypes = _probe_dtypes(torch, "cpu")
    else:
        dtypes = ["float32", "float64", "int8", "int32"]
    return DeviceInfo(
        id="cpu:0", kind="cpu", name=cpu_model(), memory_total=int(vm.total),
        memory_free=int(vm.available), dtypes=dtypes, cores=cores, isa=_cpu_flags(),
        source="torch" if torch is not None and probe else "os",
        assessment_ms=(time.perf_counter() - t0) * 1e3,
    )


def _nvml_devices() -> tuple[str, list[dict[str, Any]]]:
    """What NVML sees, or why it could not be asked."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py not installed", []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML unavailable: {exc}", []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            found.append({
                "index": i, "name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
                "total": int(mem.total), "free": int(mem.free), "cc": f"{major}.{minor}",
                "driver": str(driver),
            })
        return "ok", found
    except pynvml.NVMLError as exc:
        return f"NVML query failed: {exc}", []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _cuda_devices(torch: Any, nvml: list[dict[str, Any]], probe: bool) -> list[DeviceInfo]:
    by_uuid = {d["uuid"].removeprefix("GPU-"): d for d in nvml}
    devices: list[DeviceInfo] = []
    seen: set[str] = set()
    if torch is not None and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            t0 = time.perf_counter()
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            uuid = str(getattr(props, "uuid", "") or "")
            match = by_uuid.get(uuid) or (nvml[i] if i < len(nvml) else None)
            if match:
                seen.add(match["uuid"])
            devices.append(DeviceInfo(
                id=f"cuda:{i}", kind="cuda", name=props.name, memory_total=int(total),
                memory_free=int(free), compute_capability=f"{props.major}.{props.minor}",
                dtypes=_probe_dtypes(torch, f"cuda:{i}") if probe else ["float32"],
                driver_version=match["driver"] if match else None, uuid=uuid or None,
                source="nvml+torch" if match else "torch",
                assessment_ms=(time.perf_counter() - t0) * 1e3,
            ))
    for d in nvml:  # visible to the driver but not to torch (CUDA_VISIBLE_DEVICES, no CUDA torch)
        if d["uuid"] in seen:
            continue
        devices.append(DeviceInfo(
            id=f"cuda:nvml{d['index']}", kind="cuda", name=d["name"], memory_total=d["total"],
            memory_free=d["free"], compute_capability=d["cc"], dtypes=_dtypes_from_cc(d["cc"]),
            driver_version=d["driver"], uuid=d["uuid"], source="nvml", assessment_ms=0.0,
        ))
    return devices


def _dtypes_from_cc(cc: str) -> list[str]:
    """Only for a GPU torch cannot reach: what its architecture supports on paper."""
    major, minor = (int(x) for x in cc.split("."))
    dtypes = ["float32", "float64", "int8", "int32"]
    if (major, minor) >= (5, 3):
        dtypes.append("float16")
    if major >= 8:
        dtypes.append("bfloat16")
    if (major, minor) >= (8, 9):
        dtypes.append("float8_e4m3fn")
    return dtypes


def discover(probe_dtypes: bool = True) -> DiscoverResult:
    """Every device this process can use, with capabilities; timed on the monotonic clock."""
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    t0 = time.perf_counter()
    torch = _import_torch()
    nvml_status, nvml = _nvml_devices()
    devices = [_cpu_device(torch, probe_dtypes)]
    devices += _cuda_devices(torch, nvml, probe_dtypes)
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    torch_version: Union[str, None] = str(torch.__version__) if torch is not None else None
    return DiscoverResult(
        devices=devices, discovery_ms=elapsed_ms, torch_version=torch_version, nvml=nvml_status,
        rss_before_bytes=rss_before, rss_after_bytes=proc.memory_info().rss,
    )


def refresh(cached: DiscoverResult) -> DiscoverResult:
    """A warm re-discovery: static capabilities from ``cached``, memory re-read now."""
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    t0 = time.perf_counter()
    torch = _import_torch()
    fresh = []
    for d in cached.devices:
        free = d.memory_free
        if d.kind == "cpu":
            free = int(psutil.virtual_memory().available)
        elif d.kind == "cuda" and torch is not None and d.id.startswith("cuda:") and d.id[5:].isdigit():
            free = int(torch.cuda.mem_get_info(int(d.id[5:]))[0])
        fresh.append(msgspec.structs.replace(d, memory_free=free, cached=True, assessment_ms=0.0))
    return DiscoverResult(devices=fresh, discovery_ms=(time.perf_counter() - t0) * 1e3,
                          torch_version=cached.torch_version, nvml=cached.nvml, rss_before_bytes=rss_before,
                          rss_after_bytes=proc.memory_info().rss)
