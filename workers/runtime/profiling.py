"""A device's capability profile, measured: what discovery says plus what the device does.

Bandwidths are timed copies of real buffers; dtypes are the ones a kernel actually ran in;
throughput per dtype is a matmul grown until one takes long enough to time (a small matmul
measures the launch, not the device), or an elementwise kernel where the device has no
matmul for that dtype. Every figure is the best of a few runs (the least disturbed by the
rest of a shared machine). A measurement that fails is named in ``errors``, never invented.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Callable
from typing import Any, Union

from workers.protocol.messages import DeviceInfo
from workers.protocol.ops_link import CapabilityProfileParams, CapabilityProfileResult, DtypeThroughput
from workers.runtime import devices
from workers.runtime.imports import import_torch

# The dtypes tried, the same set discovery probes (float8 has no plain matmul: elementwise).
PROFILE_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8", "int32", "float8_e4m3fn")
_KERNEL_ERRORS = (RuntimeError, TypeError, NotImplementedError)


def _sync(torch: Any, device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _best_time(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _bandwidths(torch: Any, device: str, p: CapabilityProfileParams,
                errors: list[str]) -> tuple[Union[float, None], Union[float, None], Union[float, None]]:
    sync = _sync(torch, device)
    n = p.bandwidth_bytes
    on_cuda = device.startswith("cuda")
    try:
        # Pinned host memory is what a real upload path uses; pageable would measure a bounce copy.
        host = torch.empty(n, dtype=torch.uint8, pin_memory=on_cuda).fill_(7)
        dev = torch.empty(n, dtype=torch.uint8, device=device)
        dev2 = torch.empty(n, dtype=torch.uint8, device=device)
        dev.copy_(host)  # first touch: page faults and lazy allocation are not bandwidth
        dev2.copy_(dev)
        host.copy_(dev)
    except _KERNEL_ERRORS as exc:
        errors.append(f"bandwidth buffers of {n} bytes on {device}: {exc}")
        return None, None, None
    results: list[Union[float, None]] = []
    for name, fn in (("host_to_device", lambda: dev.copy_(host, non_blocking=on_cuda)),
                     ("device_to_host", lambda: host.copy_(dev, non_blocking=on_cuda)),
                     ("device_copy", lambda: dev2.copy_(dev))):
        try:
            results.append(n / _best_time(fn, sync, p.repeats) / 1e9)
        except _KERNEL_ERRORS as exc:
            errors.append(f"{name} bandwidth on {device}: {exc}")
            results.append(None)
    return results[0], results[1], results[2]


def _operands(torch: Any, dtype: Any, n: int, device: str) -> tuple[Any, Any]:
    if dtype.is_floating_point and dtype.itemsize >= 2:
        a = torch.randn((n, n), device=device).to(dtype)
    else:
        # Small values keep integer products in range; float8 is made from float32.
        a = torch.randint(-3, 4, (n, n), device=device).to(dtype)
    return a, a.clone()


def _throughput(torch: Any, dtype: Any, device: str, p: CapabilityProfileParams) -> DtypeThroughput:
    """Matmul where the device has one for ``dtype``, else an elementwise kernel; raises if neither runs."""
    sync = _sync(torch, device)
    try:
        a, b = _operands(torch, dtype, 64, device)
        (a @ b).sum()  # does a matmul exist for this dtype here?
        kernel = "matmul"
    except _KERNEL_ERRORS:
        a, b = _operands(torch, dtype, 64, device)
        (a + b).float().sum()  # raises if not even this runs: the dtype is unsupported
        kernel = "elementwise"
    # Grow the operands until a kernel takes min_kernel_s: below that, a timing measures launch
    # cost and thread wake-ups, not the device. Every size is timed best-of-repeats, because one
    # stalled timing (a descheduled thread on a loaded CPU stalls the whole kernel) would stop the
    # growth early and report the stall as the device's throughput.
    size: Union[int, None] = None
    t = float("inf")
    n = p.min_matmul_n
    while n <= p.max_matmul_n:
        try:
            a, b = _operands(torch, dtype, n, device)
            fn = functools.partial(operator.matmul if kernel == "matmul" else operator.add, a, b)
            fn()  # warm-up: kernel selection, caches
            t = _best_time(fn, sync, p.repeats)
        except _KERNEL_ERRORS:
            if size is None:
                raise
            break  # e.g. out of memory at this size: the last size that ran stands
        size = n
        if t >= p.min_kernel_s:
            break
        n *= 2
    assert size is not None  # min_matmul_n <= max_matmul_n is checked by the caller
    ops = 2.0 * size**3 if kernel == "matmul" else float(size * size)
    return DtypeThroughput(kernel=kernel, size=size, ops_per_s=ops / max(t, 1e-9))


def _device_info(device: str) -> DeviceInfo:
    found = devices.discover(probe_dtypes=False).devices  # memory is re-read; dtypes we measure ourselves
    for d in found:
        if d.id == device:
            return d
    raise ValueError(f"no device {device!r}; this worker has {[d.id for d in found]}")


def profile_device(p: CapabilityProfileParams, check: Callable[[], None]) -> CapabilityProfileResult:
    """The full profile of ``p.device``; ``check`` is called between measurements (cancel, deadline)."""
    if p.bandwidth_bytes < 1:
        raise ValueError(f"bandwidth_bytes must be positive, got {p.bandwidth_bytes}")
    if not 16 <= p.min_matmul_n <= p.max_matmul_n:
        raise ValueError(f"need 16 <= min_matmul_n <= max_matmul_n, got {p.min_matmul_n} and {p.max_matmul_n}")
    if p.repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {p.repeats}")
    if p.min_kernel_s < 0:
        raise ValueError(f"min_kernel_s must not be negative, got {p.min_kernel_s}")
    t0 = time.perf_counter()
    phase_ms: dict[str, float] = {}
    info = _device_info(p.device)
    phase_ms["discovery"] = (time.perf_counter() - t0) * 1e3
    torch = import_torch()
    target = "cpu" if info.kind == "cpu" else p.device
    if info.kind == "cuda" and not (torch.cuda.is_available() and p.device.startswith("cuda:")
                                    and p.device[5:].isdigit()):
        raise ValueError(f"device {p.device!r} is visible to the driver but not reachable through torch here")
    if info.kind not in ("cpu", "cuda"):
        raise ValueError(f"device {p.device!r} is {info.kind}, not a real device this profile can measure")
    errors: list[str] = []
    t = time.perf_counter()
    h2d, d2h, copy = _bandwidths(torch, target, p, errors)
    phase_ms["bandwidth"] = (time.perf_counter() - t) * 1e3
    check()
    compute: dict[str, DtypeThroughput] = {}
    for name in PROFILE_DTYPES:
        dtype = getattr(torch, name, None)
        if dtype is None:
            continue
        t = time.perf_counter()
        try:
            compute[name] = _throughput(torch, dtype, target, p)
        except _KERNEL_ERRORS:
            continue  # the dtype does not run here: unsupported, not an error of the profile
        finally:
            phase_ms[f"compute.{name}"] = (time.perf_counter() - t) * 1e3
        check()
    return CapabilityProfileResult(
        device=info, dtypes=list(compute), compute=compute, host_to_device_gbps=h2d, device_to_host_gbps=d2h,
        device_copy_gbps=copy, errors=errors, profile_ms=(time.perf_counter() - t0) * 1e3, phase_ms=phase_ms,
    )
