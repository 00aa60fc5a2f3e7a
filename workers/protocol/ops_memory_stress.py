"""Memory stress and benchmark operations (2.2 and 4.2): thrashing, sustained pressure, concurrent
allocation, allocation throughput at N threads, GC throughput and GC scaling.

Thrashing and sustained pressure run on a background thread of the worker (one at a time), so
echo probes and polls still go through the work queue while memory churns; ``memory.stress_poll``
drains their samples. The other operations are ordinary work: they run, measure and answer.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from workers.protocol.opspec import OperationSpec


class ThrashStartParams(msgspec.Struct, forbid_unknown_fields=True):
    duration_s: float
    device: str = "cpu"
    ops_per_s: float = 1000.0  # allocations and frees together
    size_min_bytes: int = 1024
    size_max_bytes: int = 1 << 20  # sizes log-uniform between the two
    max_live: int = 32  # live allocations at most; the live set wanders between 0 and this
    touch_bytes: int = 4096  # bytes written at the start of each allocation
    sample_every_ops: int = 100  # allocator figures every this many operations
    warm_ops: int = 0  # no allocator figures before this many operations
    seed: int = 0


class PressureStartParams(msgspec.Struct, forbid_unknown_fields=True):
    duration_s: float
    target_utilization: float  # share of the manager's budget held, (0, 1]
    pattern: str = "steady_allocation"  # steady_allocation, bursty_allocation, fragmented_allocation
    device: str = "cpu"
    chunk_bytes: int = 0  # typical allocation; 0: budget / 256
    sample_interval_s: float = 1.0  # allocator figures and utilisation
    garbage_mib_per_s: float = 8.0  # cyclic garbage holding tensors, for the collector
    full_gc_per_s: float = 4.0  # full collections (automatic ones happen as well)
    touch: bool = True  # write every byte of every allocation (False: reserve only)
    seed: int = 0


class StressParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class StressPollResult(msgspec.Struct):
    kind: str  # "thrash" or "pressure"
    running: bool
    elapsed_s: float  # since the workload started
    ended_ago_s: Union[float, None]  # since it ended and released everything; None while running
    error: Union[str, None]  # the workload broke (the worker keeps serving)
    samples: list[dict[str, Any]]  # {metric, value, t (s since start), labels}, drained by this poll
    counters: dict[str, int]
    stats: dict[str, Any]  # the manager's
    in_use_bytes: int  # what the allocator beneath the manager has handed out (glibc / torch cuda)
    rss_bytes: int


class InUseParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu"


class InUseResult(msgspec.Struct):
    in_use_bytes: int  # what the allocator beneath the manager has handed out (glibc / torch cuda)
    rss_bytes: int
    used_bytes: int  # the manager's accounting; 0 when the device has no manager


class ConcurrentAllocateParams(msgspec.Struct, forbid_unknown_fields=True):
    size_bytes: int
    device: str = "cpu"
    clients: int = 100  # threads released together, each allocating once and holding
    uncontended: int = 20  # one-at-a-time allocations of the same size, half before, half after
    hold_timeout_s: float = 30.0


class ConcurrentAllocateResult(msgspec.Struct):
    latencies_s: list[Union[float, None]]  # per client; None when it failed
    errors: list[str]
    held_together: int  # live allocations of this trial counted by the manager while all held
    uncontended_s: list[float]
    used_before: int
    used_after: int


class ThroughputParams(msgspec.Struct, forbid_unknown_fields=True):
    threads: int
    seconds: float
    size_bytes: int = 1 << 20
    device: str = "cpu"


class ThroughputResult(msgspec.Struct):
    ops: int  # allocate-and-free pairs completed by all threads
    per_thread: list[int]
    elapsed_s: float
    errors: int


class GcThroughputParams(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float
    gc_enabled: bool
    tensor_bytes: int = 64 << 10
    cycle_every: int = 10  # one reference cycle per this many operations


class GcThroughputResult(msgspec.Struct):
    ops: int
    elapsed_s: float
    collections: int
    gc_time_s: float


class GcScalePointParams(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float
    heap_bytes: int = 0  # live tensors held by tracked objects (one per 64 KiB)
    live_objects: int = 0  # small tracked objects kept alive
    utilization: float = 0.0  # share of the device manager's budget held through it
    device: str = "cpu"
    garbage_mib_per_s: float = 64.0


class GcScalePointResult(msgspec.Struct):
    pauses: list[tuple[int, float]]  # (generation, seconds) per collection
    recovered: list[float]
    live_tracked: int  # objects the collector tracks while the workload ran
    utilisation: float
    setup_s: float


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("memory.thrash_start", ThrashStartParams, StressPollResult, idempotent=False,
                  description="Start random-size allocations and frees at a fixed rate on a background thread."),
    OperationSpec("memory.pressure_start", PressureStartParams, StressPollResult, idempotent=False,
                  description="Hold the manager at a target utilisation with an allocation pattern, in the "
                              "background, timing every GC cycle."),
    OperationSpec("memory.stress_poll", StressParams, StressPollResult, idempotent=False,
                  description="The background workload's new samples, counters, and the memory in use."),
    OperationSpec("memory.stress_stop", StressParams, StressPollResult, idempotent=False,
                  description="Stop the background workload (it frees what it holds) and drain its samples."),
    OperationSpec("memory.in_use", InUseParams, InUseResult, idempotent=True,
                  description="Bytes the device's allocator has handed out, the worker's RSS, the manager's use."),
    OperationSpec("memory.concurrent_allocate", ConcurrentAllocateParams, ConcurrentAllocateResult,
                  idempotent=False, description="N threads allocate at once and hold until all have theirs; "
                                                "uncontended allocations of the same size around them."),
    OperationSpec("memory.allocation_throughput", ThroughputParams, ThroughputResult, idempotent=True,
                  description="Allocate-and-free pairs through the manager on N threads for a while."),
    OperationSpec("memory.gc_throughput", GcThroughputParams, GcThroughputResult, idempotent=True,
                  description="An allocation-heavy reference workload with the collector on or off."),
    OperationSpec("memory.gc_scale_point", GcScalePointParams, GcScalePointResult, idempotent=True,
                  description="Build a live heap (bytes, objects or utilisation), then time every collection "
                              "of the GC workload."),
)
