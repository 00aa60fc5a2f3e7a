"""Memory-pressure operations: balloons, evictable caches and probes for the 1.4 and 3.2 episodes.

A device's pressure state is its memory manager (``pressure.configure``) plus two evictable tensor caches
registered on it as cleanup hooks: ``latents`` (evictable from WARNING: proactive cleanup) and ``models``
(unloaded from DEGRADED as far as the degraded response needs, all of them in an EMERGENCY or to avoid an
out-of-memory failure). Balloons are named groups of real
tensors that stand for memory the runtime does not own (another tenant, a leak, a large load); probes
are inference-like requests that allocate a working set through the manager and compute on it. Every
reply carries the device's ``state``; level changes and pressure responses reach the host as ``status``
events (``domain: "memory"``, ``kind: "level"`` or ``"response"``).
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from workers.protocol.opspec import OperationSpec

MiB = 1 << 20
CacheName = Literal["models", "latents"]
ProbeKind = Literal["critical", "interactive", "background"]


class PressureConfigureParams(msgspec.Struct, forbid_unknown_fields=True):
    budget_bytes: int  # > 0: the budget allocations are accounted against (on a GPU, at most its memory)
    device: str = "cpu"  # "cpu" or "cuda:N"
    # Pressure policy; None keeps the runtime's defaults (WARNING 0.75, DEGRADED 0.85, EMERGENCY 0.95,
    # hysteresis 0.05).
    warning: Union[float, None] = None
    degraded: Union[float, None] = None
    emergency: Union[float, None] = None
    hysteresis: Union[float, None] = None


class PressureDeviceParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu"


class CacheFillParams(msgspec.Struct, forbid_unknown_fields=True):
    cache: CacheName
    entries: int  # > 0 entries to insert (keys continue after the cache's existing ones)
    entry_bytes: int  # > 0 bytes each
    device: str = "cpu"
    critical: bool = False  # False: refused in degraded mode, as cache growth should be


class BalloonParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu"
    tag: str = "balloon"  # one balloon per tag; several can be held at once
    size_bytes: Union[int, None] = None  # grow or shrink this balloon to this size (0 releases it)
    target_utilisation: Union[float, None] = None  # or grow/shrink it until the device's total use is this
    chunk_bytes: int = MiB  # allocation granularity (an allocation storm uses small chunks)


class ProbeParams(msgspec.Struct, forbid_unknown_fields=True):
    kind: ProbeKind
    device: str = "cpu"
    work_bytes: int = 8 * MiB  # working set at full quality
    min_work_bytes: int = MiB  # smallest working set the probe may fall back to
    passes: int = 4  # compute passes over the working set


class PressureStateResult(msgspec.Struct):
    state: dict[str, Any]


class CacheFillResult(msgspec.Struct):
    inserted: int
    refused: Union[str, None]  # why filling stopped early (degraded mode, out of memory), None when complete
    state: dict[str, Any]


class BalloonResult(msgspec.Struct):
    tag: str
    balloon_bytes: int
    chunks: int
    oom: bool  # growth stopped: torch raised OutOfMemoryError after every cleanup ran
    error: Union[str, None]
    state: dict[str, Any]


class ProbeResult(msgspec.Struct):
    status: str  # "ok" | "downgraded" | "refused" | "failed"
    reason: Union[str, None]  # degraded_mode | out_of_memory_retry | out_of_memory; None when ok
    work_bytes: int  # working set actually used (0 when refused or failed)
    attempts: int
    latency_s: float  # in the worker: allocation, compute and free
    checksum_ok: bool  # the computed result matched the expected value
    error: Union[str, None]
    state: dict[str, Any]


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec(
        "pressure.configure", PressureConfigureParams, PressureStateResult, idempotent=False,
        description="Create a device's memory manager with a budget and pressure policy, plus its evictable "
                    "'latents' (WARNING tier) and 'models' (DEGRADED tier) tensor caches as cleanup hooks; "
                    "level changes and responses are sent as status events. Refused while the device holds "
                    "allocations."),
    OperationSpec(
        "pressure.cache_fill", CacheFillParams, CacheFillResult, idempotent=False,
        description="Insert entries of real tensors into a cache (non-critical by default: refused in degraded "
                    "mode); stops at the first refusal or out-of-memory and says why."),
    OperationSpec(
        "pressure.balloon", BalloonParams, BalloonResult, idempotent=True,
        description="Grow or shrink a named balloon of real tensors (memory the runtime does not own) to "
                    "size_bytes, or until the device's total use reaches target_utilisation. Growth is "
                    "critical: pressure responses and out-of-memory cleanup evict caches to make room; it "
                    "stops with oom=true when nothing is left to evict."),
    OperationSpec(
        "pressure.probe", ProbeParams, ProbeResult, idempotent=True,
        description="An inference-like request: allocate a working set through the manager, compute on it, "
                    "free it. background: refused in degraded mode (reason degraded_mode); interactive: runs "
                    "at min_work_bytes in degraded mode (downgraded); critical: full size. On torch "
                    "OutOfMemoryError it retries with half the working set down to min_work_bytes "
                    "(out_of_memory_retry), else fails (out_of_memory); nothing stays allocated."),
    OperationSpec(
        "pressure.state", PressureDeviceParams, PressureStateResult, idempotent=True,
        description="The device's pressure state: budget, used and own bytes, level, balloons, caches, "
                    "responses."),
    OperationSpec(
        "pressure.reset", PressureDeviceParams, PressureStateResult, idempotent=True,
        description="Release every balloon and empty both caches (not counted as evictions): back to the "
                    "configured baseline."),
)
