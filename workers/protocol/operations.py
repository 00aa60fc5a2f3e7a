"""The operations of protocol v1: names, parameter and result types, and their semantics.

This table is the contract; the worker binds a handler to each entry, and the schema
generator documents each entry's parameters and result.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from workers.protocol.messages import (
    CancelParams,
    DiscoverParams,
    DiscoverResult,
    PingParams,
    PingResult,
    ShutdownParams,
    StatusResult,
)
from workers.protocol.opspec import OperationSpec


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class CancelResult(msgspec.Struct):
    target: Union[int, str]
    state: str  # "queued-cancelled", "running-cancel-requested", "unknown"


class ShutdownResult(msgspec.Struct):
    accepted: bool


class SleepParams(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float
    steps: int = 10  # progress events sent while sleeping


class SleepResult(msgspec.Struct):
    slept_s: float


class CrashParams(msgspec.Struct, forbid_unknown_fields=True):
    exit_code: int = 70
    # "exit": os._exit(exit_code); "abort": SIGABRT (a native crash); "sigsegv": a real NULL read
    # (memory access violation); "sigkill": SIGKILL to itself (as the OOM killer does); "exception":
    # an unhandled exception escapes the worker (traceback on stderr, exit status 1)
    mode: str = "exit"


class FreezeParams(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float  # stop heartbeats and stop serving for this long (a hung worker)


class NoiseParams(msgspec.Struct, forbid_unknown_fields=True):
    text: str = "0.00%\n"  # written to file descriptor 1, as native libraries do


class NoiseResult(msgspec.Struct):
    written: int


class MemoryConfigureParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu"
    budget_bytes: int = 1 << 30


class MemoryAllocateParams(msgspec.Struct, forbid_unknown_fields=True):
    sizes: list[int]  # bytes, one allocation each, in order
    device: str = "cpu"
    free: bool = True  # free each allocation right after (latency of the pair)
    baseline: bool = False  # also time a plain torch.empty of each size, outside the manager
    tag: str = ""
    critical: bool = True  # False: work the runtime may refuse in degraded mode
    pool: Union[str, None] = None  # take each allocation from this pool's blocks (memory.pool_create)


class AllocationTiming(msgspec.Struct, omit_defaults=True):
    bytes: int
    latency_s: Union[float, None] = None
    free_latency_s: Union[float, None] = None
    baseline_s: Union[float, None] = None
    id: Union[int, None] = None  # when kept (free=false)
    error: Union[str, None] = None  # OutOfMemoryError: ... (nothing left allocated)


class MemoryAllocateResult(msgspec.Struct):
    allocations: list[AllocationTiming]
    stats: dict[str, Any]


class MemoryDeviceParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu"


class MemoryFreeParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu"
    ids: list[int] = []
    tag: Union[str, None] = None  # free every allocation with this tag
    all: bool = False


class PoolCreateParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    block_bytes: int  # > 0
    blocks: int  # > 0; the slab (block_bytes x blocks) is reserved from the budget at once
    device: str = "cpu"


class MemoryStatsResult(msgspec.Struct):
    stats: dict[str, Any]


class GcWorkloadParams(msgspec.Struct, forbid_unknown_fields=True):
    duration_s: float
    garbage_mib_per_s: float = 64.0


class GcWorkloadResult(msgspec.Struct):
    pauses: list[tuple[int, float]]  # (generation, seconds) per collection
    recovered: list[float]  # full collections: share of the unreachable garbage they freed
    made_bytes: int
    freed_bytes: int
    gc_frozen: int  # objects in the permanent generation (gc.freeze)


CORE_OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec("ping", PingParams, PingResult, idempotent=True, control=True,
                  description="Echo a payload back; the protocol round-trip probe."),
    OperationSpec("echo", PingParams, PingResult, idempotent=True,
                  description="Echo a payload back through the work queue."),
    OperationSpec("status", Empty, StatusResult, idempotent=True, control=True,
                  description="Queue depth, running request and counters."),
    OperationSpec("cancel", CancelParams, CancelResult, idempotent=True, control=True,
                  description="Cancel a queued request, or ask a running one to stop."),
    OperationSpec("shutdown", ShutdownParams, ShutdownResult, idempotent=True, control=True,
                  description="Answer, finish the running request, fail queued ones, exit 0."),
    OperationSpec("discover_devices", DiscoverParams, DiscoverResult, idempotent=True,
                  description="Enumerate devices (NVML, torch, the CPU) with capabilities."),
    OperationSpec("memory.configure", MemoryConfigureParams, MemoryStatsResult, idempotent=False,
                  description="Create a device's memory manager with a budget (refused while it holds allocations)."),
    OperationSpec("memory.allocate", MemoryAllocateParams, MemoryAllocateResult, idempotent=False,
                  description="Allocate real tensors through the manager, timing each (and a plain torch.empty)."),
    OperationSpec("memory.pool_create", PoolCreateParams, MemoryStatsResult, idempotent=False,
                  description="Reserve a pool of fixed-size blocks on a device (one slab tensor) for memory.allocate."),
    OperationSpec("memory.free", MemoryFreeParams, MemoryStatsResult, idempotent=False,
                  description="Free allocations by id, by tag, or all."),
    OperationSpec("memory.stats", MemoryDeviceParams, MemoryStatsResult, idempotent=True,
                  description="Budget, use, pressure level, waste and pool fragmentation of a device."),
    OperationSpec("memory.gc_workload", GcWorkloadParams, GcWorkloadResult, idempotent=True,
                  description="Make cyclic garbage holding tensors for a while; time every collection."),
    OperationSpec("fault.sleep", SleepParams, SleepResult, idempotent=True, fault=True,
                  description="Work that takes a while, with progress; honours deadline and cancel."),
    OperationSpec("fault.crash", CrashParams, Empty, idempotent=False, fault=True,
                  description="Die at once, mid-request."),
    OperationSpec("fault.freeze", FreezeParams, Empty, idempotent=False, fault=True,
                  description="Hang: no heartbeats, no answers, for a while."),
    OperationSpec("fault.stdout_noise", NoiseParams, NoiseResult, idempotent=True, fault=True,
                  description="Write to fd 1 as a native library would; must not reach the host."),
)


# The protocol's domains, in the order their operations are listed. Each has a declaration module
# workers/protocol/ops_<domain>.py (SPECS) and a handler module workers/runtime/ops_<domain>.py:
# this one list is what both the op table and the worker's dispatch read, so they cannot drift.
DOMAINS = ("devices", "pressure", "memory_stress", "link", "models", "sessions", "queue", "postprocess",
           "safety", "faults")


def _all_operations() -> tuple[OperationSpec, ...]:
    import importlib

    ops = CORE_OPERATIONS
    for domain in DOMAINS:
        ops += importlib.import_module(f"workers.protocol.ops_{domain}").SPECS
    names = [o.name for o in ops]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RuntimeError(f"operations defined twice: {dupes}")
    return ops


OPERATIONS: tuple[OperationSpec, ...] = _all_operations()
OPERATIONS_BY_NAME = {spec.name: spec for spec in OPERATIONS}
