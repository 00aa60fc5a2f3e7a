"""Handlers of the work operations (the ones that run on the executor thread)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from workers.protocol.messages import DiscoverParams, Event, PingParams, PingResult
from workers.protocol.operations import (
    AllocationTiming,
    CrashParams,
    Empty,
    FreezeParams,
    GcWorkloadParams,
    GcWorkloadResult,
    MemoryAllocateParams,
    MemoryAllocateResult,
    MemoryConfigureParams,
    MemoryDeviceParams,
    MemoryFreeParams,
    MemoryStatsResult,
    NoiseParams,
    NoiseResult,
    PoolCreateParams,
    SleepParams,
    SleepResult,
)
from workers.runtime import devices, ops_devices
from workers.runtime.context import RequestContext
from workers.runtime.gcwork import run_gc_workload
from workers.runtime.imports import import_torch
from workers.runtime.memory import DegradedModeError, MemoryManager
from workers.runtime.pressure import PressureLevel

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    def echo(ctx: RequestContext, p: PingParams) -> PingResult:
        return PingResult(payload=p.payload)

    dtype_cache: dict[tuple[str, str], bool] = {}  # (backing device, dtype) -> works

    def discover_devices(ctx: RequestContext, p: DiscoverParams) -> Any:
        t0 = time.perf_counter()
        rt = ops_devices.runtime(server)
        cached = getattr(rt, "discovery_cache", None)
        if p.use_cache and cached is not None:
            result = devices.refresh(cached)
        else:
            result = devices.discover(probe_dtypes=p.probe_dtypes)
            rt.discovery_cache = result  # type: ignore[attr-defined]
            dtype_cache.clear()

        def probe(backing: str, claimed: list[str]) -> list[str]:
            if not p.probe_dtypes:
                return claimed
            torch = import_torch()
            for name in claimed:
                if not (p.use_cache and (backing, name) in dtype_cache):
                    dtype_cache[(backing, name)] = devices.dtype_works(torch, backing, name)
            return [name for name in claimed if dtype_cache[(backing, name)]]

        def known(backing: str, claimed: list[str]) -> bool:
            return p.use_cache and all((backing, name) in dtype_cache for name in claimed)

        simulated = ops_devices.simulated_discovery(server, probe, known)
        return msgspec.structs.replace(result, devices=list(result.devices) + simulated,
                                       discovery_ms=(time.perf_counter() - t0) * 1e3)

    def sleep(ctx: RequestContext, p: SleepParams) -> SleepResult:
        t0 = time.monotonic()
        steps = max(1, p.steps)
        for step in range(1, steps + 1):
            ctx.wait(p.seconds / steps)
            ctx.progress(step, steps)
        return SleepResult(slept_s=time.monotonic() - t0)

    def crash(ctx: RequestContext, p: CrashParams) -> Empty:
        die(p.mode, p.exit_code)

    def freeze(ctx: RequestContext, p: FreezeParams) -> Empty:
        # Holding the freeze lock stops heartbeats and the reader; the executor sleeps.
        with server.freeze_lock:
            threading.Event().wait(p.seconds)
        return Empty()

    def stdout_noise(ctx: RequestContext, p: NoiseParams) -> NoiseResult:
        data = p.text.encode()
        print(p.text, end="", flush=True)  # Python-level stdout
        return NoiseResult(written=os.write(1, data))  # fd-level, as native code does

    def memory_configure(ctx: RequestContext, p: MemoryConfigureParams) -> MemoryStatsResult:
        current = server.memory.get(p.device)
        if current is not None and current.stats()["live_allocations"]:
            raise ValueError(f"device {p.device!r} still holds {current.stats()['live_allocations']} allocations")
        backing = _resolve_device(server, p.device, p.budget_bytes)

        def announce(old: PressureLevel, new: PressureLevel, utilisation: float) -> None:
            server.send(Event(event="status", data={"domain": "memory", "device": p.device, "previous": str(old),
                                                    "level": str(new), "utilisation": round(utilisation, 4)}))

        server.memory[p.device] = MemoryManager(backing, p.budget_bytes, on_pressure=announce)
        return MemoryStatsResult(server.memory[p.device].stats())

    def _manager(device: str) -> MemoryManager:
        m = server.memory.get(device)
        if m is None:
            raise KeyError(f"no memory manager on {device!r}: send memory.configure first")
        return m

    def memory_allocate(ctx: RequestContext, p: MemoryAllocateParams) -> MemoryAllocateResult:
        import torch

        m = _manager(p.device)
        out = []
        for i, size in enumerate(p.sizes):
            ctx.check()
            timing = AllocationTiming(bytes=size)
            t0 = time.perf_counter()
            try:
                alloc = m.allocate(size, tag=p.tag, critical=p.critical, pool=p.pool)
            except (torch.OutOfMemoryError, DegradedModeError, ValueError) as exc:
                timing.error = f"{type(exc).__name__}: {exc}"
                out.append(timing)
                continue
            timing.latency_s = time.perf_counter() - t0
            if p.free:
                t1 = time.perf_counter()
                m.free(alloc.id)
                timing.free_latency_s = time.perf_counter() - t1
            else:
                timing.id = alloc.id
            if p.baseline:
                t2 = time.perf_counter()
                raw = torch.empty(size, dtype=torch.uint8, device=m.device)
                timing.baseline_s = time.perf_counter() - t2
                del raw
            out.append(timing)
            if i % 50 == 49:
                ctx.progress(i + 1, len(p.sizes))
        return MemoryAllocateResult(out, m.stats())

    def memory_pool_create(ctx: RequestContext, p: PoolCreateParams) -> MemoryStatsResult:
        m = _manager(p.device)
        m.add_pool(p.name, p.block_bytes, p.blocks)  # ValueError names a bad size; OOM names the budget
        return MemoryStatsResult(m.stats())

    def memory_free(ctx: RequestContext, p: MemoryFreeParams) -> MemoryStatsResult:
        m = _manager(p.device)
        if p.all:
            m.free_all()
        elif p.tag is not None:
            m.free_all(p.tag)
        for alloc_id in p.ids:
            m.free(alloc_id)
        return MemoryStatsResult(m.stats())

    def memory_stats(ctx: RequestContext, p: MemoryDeviceParams) -> MemoryStatsResult:
        return MemoryStatsResult(_manager(p.device).stats())

    def gc_workload(ctx: RequestContext, p: GcWorkloadParams) -> GcWorkloadResult:
        if p.duration_s <= 0 or p.garbage_mib_per_s <= 0:
            raise ValueError("duration_s and garbage_mib_per_s must be > 0")
        obs = run_gc_workload(p.duration_s, p.garbage_mib_per_s)
        return GcWorkloadResult(obs.pauses, obs.recovered, obs.made_bytes, obs.freed_bytes, gc.get_freeze_count())

    return {
        "memory.gc_workload": gc_workload,
        "memory.configure": memory_configure,
        "memory.allocate": memory_allocate,
        "memory.free": memory_free,
        "memory.pool_create": memory_pool_create,
        "memory.stats": memory_stats,
        "echo": echo,
        "discover_devices": discover_devices,
        "fault.sleep": sleep,
        "fault.crash": crash,
        "fault.freeze": freeze,
        "fault.stdout_noise": stdout_noise,
    }


CRASH_MODES = ("exit", "abort", "sigsegv", "sigkill", "exception")


def die(mode: str, exit_code: int = 70) -> NoReturn:
    """End this worker process at once, the way ``mode`` says (fault injection)."""
    if mode not in CRASH_MODES:
        raise ValueError(f"unknown crash mode {mode!r}; known: {', '.join(CRASH_MODES)}")
    if mode == "abort":
        os.kill(os.getpid(), signal.SIGABRT)
    elif mode == "sigsegv":
        import ctypes

        ctypes.string_at(0)  # reads address 0: the kernel answers with SIGSEGV
        os.kill(os.getpid(), signal.SIGSEGV)  # only if the read somehow survived
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "exception":
        # What an exception escaping the main loop does: traceback on stderr, exit status 1. (Raised
        # on the executor thread it would only end that thread; the process must go.)
        try:
            raise RuntimeError("injected unhandled exception")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
        os._exit(1)
    os._exit(exit_code)


def _resolve_device(server: WorkerServer, device: str, budget: int) -> str:
    """The torch device that backs ``device``: itself for 'cpu' / an existing 'cuda:N', the backing
    device for a simulated one (whose budget cannot exceed its size)."""
    sim = ops_devices.runtime(server).registry.find(device)
    if sim is not None:
        if budget > sim.spec.memory_bytes:
            raise ValueError(f"budget of {budget} bytes is larger than device {device!r} "
                             f"({sim.spec.memory_bytes} bytes)")
        return sim.spec.backing
    if device == "cpu":
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        if ops_devices.real_device_exists(device):
            return device
        raise ValueError(f"device {device!r} does not exist on this machine")
    raise ValueError(f"unknown device {device!r}: 'cpu', 'cuda:N' or a simulated device")
