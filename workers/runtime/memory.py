"""A memory manager per device: real tensors accounted against a budget.

On a GPU the budget is the device's memory; on the CPU it is configured (the machine's RAM
is shared with everything else). Every allocation is a real ``torch.empty`` on the device,
so latency and failures are the allocator's own. Allocation over budget first runs the
cleanup hooks (evictable caches), then raises torch's own ``OutOfMemoryError`` naming the
request, the free space and the budget; a failed allocation leaves nothing behind.

Small requests can come from pools: fixed-size blocks carved from one slab tensor, which is
what keeps allocation latency flat and fragmentation measurable.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from workers.runtime.imports import import_torch
from workers.runtime.pressure import PressureLevel, PressureThresholds, PressureTracker


def _torch() -> Any:
    # imported when a manager is made: a worker that never allocates stays light
    return import_torch()


@dataclass(frozen=True)
class Allocation:
    id: int
    requested: int  # bytes asked for
    reserved: int  # bytes accounted (a pool block is reserved whole)
    pool: Union[str, None]
    tag: str


class DegradedModeError(RuntimeError):
    """Refused because the device is in degraded mode; retry later or as critical work."""


class Pool:
    """Fixed-size blocks from one slab: first-fit over a free bitmap."""

    def __init__(self, name: str, block_bytes: int, blocks: int, device: str) -> None:
        if block_bytes <= 0 or blocks <= 0:
            raise ValueError(f"pool {name!r}: block size and count must be > 0")
        self.name, self.block_bytes, self.blocks = name, block_bytes, blocks
        self.slab = _torch().empty(block_bytes * blocks, dtype=_torch().uint8, device=device)
        self.free = [True] * blocks

    def take(self) -> Union[int, None]:
        for i, is_free in enumerate(self.free):
            if is_free:
                self.free[i] = False
                return i
        return None

    def give(self, index: int) -> None:
        if self.free[index]:
            raise ValueError(f"pool {self.name!r}: block {index} freed twice")
        self.free[index] = True

    def view(self, index: int) -> Any:
        return self.slab[index * self.block_bytes:(index + 1) * self.block_bytes]

    def fragmentation(self) -> float:
        """1 - largest free run / free blocks: 0 when the free space is one run."""
        free = sum(self.free)
        if free == 0:
            return 0.0
        longest = run = 0
        for is_free in self.free:
            run = run + 1 if is_free else 0
            longest = max(longest, run)
        return 1.0 - longest / free


class MemoryManager:
    def __init__(self, device: str, budget_bytes: int, *, thresholds: Union[PressureThresholds, None] = None,
                 on_pressure: Union[Callable[[PressureLevel, PressureLevel, float], None], None] = None) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"device {device!r}: budget must be > 0 bytes, got {budget_bytes}")
        self.device = device
        self.budget = budget_bytes
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._live: dict[int, tuple[Allocation, Any, Union[int, None]]] = {}  # id -> (alloc, tensor, block)
        self._pools: dict[str, Pool] = {}
        self._cleanup: list[Callable[[int], int]] = []  # each frees up to n bytes, returns what it freed
        self.used = 0  # bytes reserved by live allocations and pool slabs
        self.pressure = PressureTracker(thresholds or PressureThresholds(), on_pressure)
        self.oom_count = 0
        self._responded = PressureLevel.NORMAL  # the level whose response already ran
        self.responses: list[tuple[str, int]] = []  # (action, bytes freed), for the record

    # ---- configuration -----------------------------------------------------------------
    def add_pool(self, name: str, block_bytes: int, blocks: int) -> Pool:
        with self._lock:
            if name in self._pools:
                raise ValueError(f"pool {name!r} exists on {self.device}")
            self._reserve(block_bytes * blocks, f"pool {name!r}")
            try:
                pool = Pool(name, block_bytes, blocks, self.device)
            except BaseException:
                self._release(block_bytes * blocks)
                raise
            self._pools[name] = pool
            return pool

    def add_cleanup(self, hook: Callable[[int], int]) -> None:
        """``hook(n)`` frees up to ``n`` bytes of something evictable and returns what it freed."""
        self._cleanup.append(hook)

    # ---- allocation ----------------------------------------------------------------------
    def allocate(self, nbytes: int, tag: str = "", pool: Union[str, None] = None,
                 critical: bool = True) -> Allocation:
        """``critical=False`` marks work the runtime may refuse in degraded mode (previews,
        prefetches); critical work is served while the budget allows."""
        if nbytes <= 0:
            raise ValueError(f"allocation size must be > 0 bytes, got {nbytes}")
        with self._lock:
            if not critical and self.pressure.level >= PressureLevel.DEGRADED:
                raise DegradedModeError(f"{self.device} is in {self.pressure.level} mode "
                                        f"({self.used / self.budget:.0%} of budget): non-critical allocation refused")
            if pool is not None:
                alloc = self._from_pool(nbytes, tag, pool)
            else:
                self._reserve(nbytes, tag or "allocation")
                try:
                    tensor = _torch().empty(nbytes, dtype=_torch().uint8, device=self.device)
                except _torch().OutOfMemoryError:
                    self._release(nbytes)  # nothing half-allocated stays accounted
                    self.oom_count += 1
                    raise
                alloc = Allocation(next(self._ids), nbytes, nbytes, None, tag)
                self._live[alloc.id] = (alloc, tensor, None)
            self._respond()
            return alloc

    def _respond(self) -> None:
        """The spec's responses, once per level entered (1.4, 3.2): WARNING runs the cleanup
        hooks proactively down to the warning exit; EMERGENCY runs them all the way (every
        evictable byte); DEGRADED refuses non-critical allocations (see ``allocate``)."""
        level = self.pressure.level
        if level <= self._responded:
            if level < self._responded:
                self._responded = level  # left the level: the next entry gets a response again
            return
        self._responded = level
        t = self.pressure.thresholds
        if level >= PressureLevel.EMERGENCY:
            freed = self._run_cleanup(self.used)
            self.responses.append(("emergency_cleanup", freed))
        elif level >= PressureLevel.WARNING:
            target = int((t.warning - t.hysteresis) * self.budget)
            freed = self._run_cleanup(max(0, self.used - target))
            self.responses.append(("proactive_cleanup", freed))
        if level >= PressureLevel.DEGRADED:
            self.responses.append(("degraded_mode", 0))

    def _from_pool(self, nbytes: int, tag: str, name: str) -> Allocation:
        p = self._pools.get(name)
        if p is None:
            raise KeyError(f"no pool {name!r} on {self.device}; pools: {sorted(self._pools)}")
        if nbytes > p.block_bytes:
            raise ValueError(f"{nbytes} bytes do not fit pool {name!r} blocks of {p.block_bytes} bytes")
        block = p.take()
        if block is None:
            self.oom_count += 1
            raise _torch().OutOfMemoryError(f"pool {name!r} on {self.device} is exhausted ({p.blocks} blocks)")
        alloc = Allocation(next(self._ids), nbytes, p.block_bytes, name, tag)
        self._live[alloc.id] = (alloc, p.view(block), block)
        return alloc

    def free(self, alloc_id: int) -> None:
        with self._lock:
            entry = self._live.pop(alloc_id, None)
            if entry is None:
                raise KeyError(f"no live allocation {alloc_id} on {self.device}")
            alloc, _tensor, block = entry
            if alloc.pool is not None:
                self._pools[alloc.pool].give(block)  # the slab stays reserved
            else:
                self._release(alloc.reserved)

    def free_all(self, tag: Union[str, None] = None) -> int:
        with self._lock:
            ids = [i for i, (a, _, _) in self._live.items() if tag is None or a.tag == tag]
            for i in ids:
                self.free(i)
            return len(ids)

    def tensor(self, alloc_id: int) -> Any:
        return self._live[alloc_id][1]

    # ---- accounting -------------------------------------------------------------------------
    def _reserve(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.budget:
            self._run_cleanup(self.used + nbytes - self.budget)
        if self.used + nbytes > self.budget:
            self.oom_count += 1
            free = self.budget - self.used
            raise _torch().OutOfMemoryError(
                f"{what}: {nbytes} bytes requested on {self.device}, {free} of the {self.budget}-byte budget free")
        self.used += nbytes
        self.pressure.update(self.used / self.budget)

    def _release(self, nbytes: int) -> None:
        self.used -= nbytes
        self.pressure.update(self.used / self.budget)

    def _run_cleanup(self, needed: int) -> int:
        freed = 0
        for hook in self._cleanup:
            if freed >= needed:
                break
            freed += hook(needed - freed)
        return freed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            live = [a for a, _, _ in self._live.values()]
            requested = sum(a.requested for a in live)
            reserved = sum(a.reserved for a in live)
            pools = {n: {"block_bytes": p.block_bytes, "blocks": p.blocks, "free_blocks": sum(p.free),
                         "fragmentation": p.fragmentation()} for n, p in self._pools.items()}
            return {
                "device": self.device, "budget_bytes": self.budget, "used_bytes": self.used,
                "utilisation": self.used / self.budget, "live_allocations": len(live),
                "requested_bytes": requested, "reserved_bytes": reserved,
                "waste": (reserved - requested) / reserved if reserved else 0.0,  # block rounding
                "pressure": str(self.pressure.level), "oom_count": self.oom_count, "pools": pools,
                "responses": [list(r) for r in self.responses],
            }
