"""Handlers of memory stress operations (see workers/protocol/ops_memory_stress.py).

Every allocation is a real tensor through the device's memory manager (``memory.configure``
first); concurrency is real threads inside the worker, contending for the manager's lock and
the allocator as the runtime's own threads would. Bad parameters raise ValueError naming them.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import psutil

from workers.protocol.ops_memory_stress import (
    ConcurrentAllocateParams,
    ConcurrentAllocateResult,
    GcScalePointParams,
    GcScalePointResult,
    GcThroughputParams,
    GcThroughputResult,
    InUseParams,
    InUseResult,
    PressureStartParams,
    StressParams,
    StressPollResult,
    ThrashStartParams,
    ThroughputParams,
    ThroughputResult,
)
from workers.runtime.context import RequestContext
from workers.runtime.gcwork import run_gc_workload
from workers.runtime.imports import import_torch
from workers.runtime.memory import DegradedModeError, MemoryManager
from workers.runtime.memstats import allocator_view
from workers.runtime.memstress import BackgroundWorkload, PressureWorkload, ThrashWorkload

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

MAX_THREADS = 1000


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


class _HeapNode:
    """A tracked object holding part of the live heap (the collector traverses it)."""

    __slots__ = ("next", "payload")

    def __init__(self, payload: Any, nxt: Any) -> None:
        self.payload, self.next = payload, nxt


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    state: dict[str, Union[BackgroundWorkload, None]] = {"workload": None}

    def manager(device: str) -> MemoryManager:
        m = server.memory.get(device)
        if m is None:
            raise KeyError(f"no memory manager on {device!r}: send memory.configure first")
        return m

    def start(workload: BackgroundWorkload) -> StressPollResult:
        current = state["workload"]
        if current is not None and current.running:
            raise ValueError(f"a {current.kind} workload is already running: memory.stress_stop it first")
        state["workload"] = workload
        workload.start()
        return poll_result(workload)

    def poll_result(w: BackgroundWorkload) -> StressPollResult:
        now = time.monotonic()
        return StressPollResult(
            kind=w.kind, running=w.running, elapsed_s=now - w.started,
            ended_ago_s=None if w.ended is None else now - w.ended, error=w.error, samples=w.drain(),
            counters=dict(w.counters), stats=w.m.stats(), in_use_bytes=allocator_view(w.m.device, []).handed_out,
            rss_bytes=psutil.Process().memory_info().rss)

    def current() -> BackgroundWorkload:
        w = state["workload"]
        if w is None:
            raise KeyError("no memory stress workload was started in this worker")
        return w

    def thrash_start(ctx: RequestContext, p: ThrashStartParams) -> StressPollResult:
        return start(ThrashWorkload(
            manager(p.device), duration_s=p.duration_s, ops_per_s=p.ops_per_s, size_min=p.size_min_bytes,
            size_max=p.size_max_bytes, max_live=p.max_live, touch_bytes=p.touch_bytes,
            sample_every_ops=p.sample_every_ops, warm_ops=p.warm_ops, seed=p.seed))

    def pressure_start(ctx: RequestContext, p: PressureStartParams) -> StressPollResult:
        return start(PressureWorkload(
            manager(p.device), duration_s=p.duration_s, target=p.target_utilization, pattern=p.pattern,
            chunk_bytes=p.chunk_bytes, sample_interval_s=p.sample_interval_s, garbage_mib_per_s=p.garbage_mib_per_s,
            full_gc_per_s=p.full_gc_per_s, touch=p.touch, seed=p.seed))

    def stress_poll(ctx: RequestContext, p: StressParams) -> StressPollResult:
        return poll_result(current())

    def stress_stop(ctx: RequestContext, p: StressParams) -> StressPollResult:
        w = current()
        w.stop()
        state["workload"] = None  # its bookkeeping goes too: memory in use returns to what it was
        return poll_result(w)

    def in_use(ctx: RequestContext, p: InUseParams) -> InUseResult:
        import_torch()  # the figures describe a worker with its runtime loaded, as during any workload
        m = server.memory.get(p.device)
        return InUseResult(allocator_view(p.device, []).handed_out, psutil.Process().memory_info().rss,
                           0 if m is None else m.used)

    def concurrent_allocate(ctx: RequestContext, p: ConcurrentAllocateParams) -> ConcurrentAllocateResult:
        torch = import_torch()
        _positive(size_bytes=p.size_bytes, clients=p.clients, hold_timeout_s=p.hold_timeout_s)
        if p.clients > MAX_THREADS or p.uncontended < 1:
            raise ValueError(f"clients must be <= {MAX_THREADS} and uncontended >= 1")
        m = manager(p.device)
        tag = f"concurrent-{ctx.id}"
        used_before = m.used
        uncontended = _uncontended(m, p.size_bytes, p.uncontended // 2 or 1, tag)
        ready = threading.Barrier(p.clients + 1, timeout=p.hold_timeout_s)
        holding = threading.Barrier(p.clients + 1, timeout=p.hold_timeout_s)
        release = threading.Event()
        latencies: list[Union[float, None]] = [None] * p.clients
        errors: list[str] = []

        def client(i: int) -> None:
            ready.wait()
            t0 = time.perf_counter()
            alloc = None
            try:
                alloc = m.allocate(p.size_bytes, tag=tag)
                latencies[i] = time.perf_counter() - t0
            except (torch.OutOfMemoryError, DegradedModeError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            try:
                holding.wait()  # every client holds its allocation until all have theirs
                release.wait(p.hold_timeout_s)
            finally:
                if alloc is not None:
                    m.free(alloc.id)

        threads = [threading.Thread(target=client, args=(i,), name=f"alloc-client-{i}") for i in range(p.clients)]
        for t in threads:
            t.start()
        held = 0
        try:
            ready.wait()
            holding.wait()
            held = sum(1 for a in _live_allocations(m) if a.tag == tag)
        except threading.BrokenBarrierError as exc:
            raise RuntimeError(f"not every client allocated within hold_timeout_s={p.hold_timeout_s:g}") from exc
        finally:
            release.set()
            for t in threads:
                t.join(p.hold_timeout_s)
        uncontended += _uncontended(m, p.size_bytes, p.uncontended - p.uncontended // 2, tag)
        return ConcurrentAllocateResult(latencies, errors, held, uncontended, used_before, m.used)

    def allocation_throughput(ctx: RequestContext, p: ThroughputParams) -> ThroughputResult:
        _positive(threads=p.threads, seconds=p.seconds, size_bytes=p.size_bytes)
        if p.threads > MAX_THREADS:
            raise ValueError(f"threads must be <= {MAX_THREADS}, got {p.threads}")
        m = manager(p.device)
        torch = import_torch()
        counts = [0] * p.threads
        errors = [0] * p.threads
        go = threading.Barrier(p.threads + 1)
        stop = threading.Event()
        tag = f"throughput-{ctx.id}"

        def worker(i: int) -> None:
            go.wait()
            while not stop.is_set():
                try:
                    alloc = m.allocate(p.size_bytes, tag=tag)
                except (torch.OutOfMemoryError, DegradedModeError):
                    errors[i] += 1
                    continue
                m.free(alloc.id)
                counts[i] += 1

        threads = [threading.Thread(target=worker, args=(i,), name=f"alloc-{i}") for i in range(p.threads)]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        try:
            ctx.wait(p.seconds)
        finally:
            stop.set()
            for t in threads:
                t.join()
        elapsed = time.perf_counter() - t0
        return ThroughputResult(sum(counts), counts, elapsed, sum(errors))

    def gc_throughput(ctx: RequestContext, p: GcThroughputParams) -> GcThroughputResult:
        _positive(seconds=p.seconds, tensor_bytes=p.tensor_bytes, cycle_every=p.cycle_every)
        return _gc_throughput(ctx, p)

    def gc_scale_point(ctx: RequestContext, p: GcScalePointParams) -> GcScalePointResult:
        _positive(seconds=p.seconds, garbage_mib_per_s=p.garbage_mib_per_s)
        if p.heap_bytes < 0 or p.live_objects < 0 or not 0 <= p.utilization <= 1:
            raise ValueError("heap_bytes and live_objects must be >= 0, utilization in [0, 1]")
        torch = import_torch()
        t0 = time.perf_counter()
        heap: Any = None
        for _ in range(p.heap_bytes // (64 << 10)):
            heap = _HeapNode(torch.empty(64 << 10, dtype=torch.uint8), heap)
        objects: list[Any] = [_HeapNode(None, None) for _ in range(p.live_objects)]
        m, tag = None, f"gc-scale-{ctx.id}"
        if p.utilization > 0:
            m = manager(p.device)
            chunk, target = max(4096, m.budget // 256), int(p.utilization * m.budget)
            while m.used < target:
                alloc = m.allocate(min(chunk, target - m.used), tag=tag)
                m.tensor(alloc.id).fill_(1)  # the pages are really used
        setup = time.perf_counter() - t0
        utilisation = 0.0 if m is None else m.used / m.budget
        tracked = len(gc.get_objects())
        try:
            obs = run_gc_workload(p.seconds, p.garbage_mib_per_s)
        finally:
            if m is not None:
                m.free_all(tag)
            del heap, objects
            gc.collect()
        return GcScalePointResult(obs.pauses, obs.recovered, tracked, utilisation, setup)

    return {
        "memory.thrash_start": thrash_start,
        "memory.pressure_start": pressure_start,
        "memory.stress_poll": stress_poll,
        "memory.stress_stop": stress_stop,
        "memory.in_use": in_use,
        "memory.concurrent_allocate": concurrent_allocate,
        "memory.allocation_throughput": allocation_throughput,
        "memory.gc_throughput": gc_throughput,
        "memory.gc_scale_point": gc_scale_point,
    }


def _live_allocations(m: MemoryManager) -> list[Any]:
    # The manager has no public listing of its allocations (memory.py is not ours to change);
    # read its table under its own lock.
    with m._lock:
        return [entry[0] for entry in m._live.values()]


def _uncontended(m: MemoryManager, size: int, count: int, tag: str) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        alloc = m.allocate(size, tag=tag)
        out.append(time.perf_counter() - t0)
        m.free(alloc.id)
    return out


def _gc_throughput(ctx: RequestContext, p: GcThroughputParams) -> GcThroughputResult:
    """Operations of an allocation-heavy workload in ``p.seconds``: each makes a tensor and a few
    small tracked objects; every ``cycle_every``-th op leaves a reference cycle behind (only the
    collector frees it). With the collector off the cycles pile up and are collected afterwards,
    outside the timed window."""
    torch = import_torch()
    was_enabled = gc.isenabled()
    pauses = [0.0, 0]
    marks: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            marks["t"] = time.perf_counter()
        elif "t" in marks:
            pauses[0] += time.perf_counter() - marks.pop("t")
            pauses[1] += 1

    gc.collect()
    gc.callbacks.append(on_gc)
    (gc.enable if p.gc_enabled else gc.disable)()
    ops = 0
    t0 = time.perf_counter()
    try:
        deadline = t0 + p.seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                record = {"tensor": torch.empty(p.tensor_bytes, dtype=torch.uint8), "meta": [ops, str(ops)]}
                if ops % p.cycle_every == 0:
                    junk: list[Any] = [record["meta"]]
                    junk.append(junk)  # a small cycle (no tensor: off, the pile-up stays small)
                ops += 1
            ctx.check()
        elapsed = time.perf_counter() - t0
    finally:
        (gc.enable if was_enabled else gc.disable)()
        gc.callbacks.remove(on_gc)
        gc.collect()
    return GcThroughputResult(ops, elapsed, int(pauses[1]), pauses[0])
