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
from collections import OrderedDict
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


ResponseListener = Callable[[str, int, float, float], None]  # (action, bytes freed, utilisation before, after)


class MemoryManager:
    def __init__(self, device: str, budget_bytes: int, *, thresholds: Union[PressureThresholds, None] = None,
                 on_pressure: Union[Callable[[PressureLevel, PressureLevel, float], None], None] = None,
                 on_response: Union[ResponseListener, None] = None) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"device {device!r}: budget must be > 0 bytes, got {budget_bytes}")
        self.device = device
        self.budget = budget_bytes
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._live: dict[int, tuple[Allocation, Any, Union[int, None]]] = {}  # id -> (alloc, tensor, block)
        self._pools: dict[str, Pool] = {}
        # (tier, hook): each hook frees up to n bytes, returns what it freed; the tier is the lowest pressure
        # level whose proactive response may run it (models go only in an emergency, latents from WARNING)
        self._cleanup: list[tuple[PressureLevel, Callable[[int], int]]] = []
        self.used = 0  # bytes reserved by live allocations and pool slabs
        self.pressure = PressureTracker(thresholds or PressureThresholds(), on_pressure)
        self.oom_count = 0
        self._responded = PressureLevel.NORMAL  # the level whose response already ran
        self.responses: list[tuple[str, int]] = []  # (action, bytes freed), for the record
        self._on_response = on_response

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

    def add_cleanup(self, hook: Callable[[int], int], level: PressureLevel = PressureLevel.WARNING) -> None:
        """``hook(n)`` frees up to ``n`` bytes of something evictable and returns what it freed.

        ``level``: the lowest pressure level whose proactive response may run the hook. Before an
        allocation fails out of memory every hook runs, whatever its level."""
        self._cleanup.append((PressureLevel(level), hook))

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
        hooks of its tier proactively down to the warning exit; DEGRADED refuses non-critical
        allocations (see ``allocate``) and sheds cache of its tiers back under the degraded entry (an
        entry smaller than the hysteresis cannot take usage out of degraded mode, so no flapping); EMERGENCY
        runs every hook all the way (every evictable byte, models included)."""
        level = self.pressure.level
        if level <= self._responded:
            if level < self._responded:
                self._responded = level  # left the level: the next entry gets a response again
            return
        self._responded = level
        t = self.pressure.thresholds
        if level >= PressureLevel.EMERGENCY:
            self._record_response("emergency_cleanup", lambda: self._run_cleanup(self.used, PressureLevel.EMERGENCY))
        elif level >= PressureLevel.WARNING:
            target = int((t.warning - t.hysteresis) * self.budget)
            self._record_response("proactive_cleanup",
                                  lambda: self._run_cleanup(max(0, self.used - target), PressureLevel.WARNING))
        if level >= PressureLevel.DEGRADED and self.pressure.level >= PressureLevel.DEGRADED:
            # (an emergency cleanup may already have brought usage out of the degraded band)
            target = int(t.degraded * self.budget)
            self._record_response("degraded_mode",  # strictly under the entry: at least one byte
                                  lambda: self._run_cleanup(max(0, self.used - target + 1), PressureLevel.DEGRADED))

    def _record_response(self, action: str, run: Callable[[], int]) -> None:
        before = self.used / self.budget
        freed = run()
        self.responses.append((action, freed))
        if self._on_response is not None:
            self._on_response(action, freed, before, self.used / self.budget)

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
        # larger than the whole budget: no eviction can make room, so none is made (the caches stay warm)
        if self.used + nbytes > self.budget and nbytes <= self.budget:
            before = self.used / self.budget
            freed = self._run_cleanup(self.used + nbytes - self.budget)
            if freed:  # announced like the pressure responses: the host sees every eviction
                self.responses.append(("oom_cleanup", freed))
                if self._on_response is not None:
                    self._on_response("oom_cleanup", freed, before, self.used / self.budget)
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
        if self.pressure.level < self._responded:
            self._responded = self.pressure.level  # left by freeing: re-armed for the next entry

    def _run_cleanup(self, needed: int, level: Union[PressureLevel, None] = None) -> int:
        """Run hooks in order until ``needed`` bytes are freed; ``level`` limits them to its tiers
        (None: every hook, the last resort before out of memory)."""
        freed = 0
        for tier, hook in self._cleanup:
            if freed >= needed:
                break
            if level is None or tier <= level:
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


class TensorCache:
    """An evictable LRU cache of real tensors held through a manager: a model or latent cache.

    Entries are manager allocations (tag ``cache:<name>``), written once so their pages are real.
    The cache registers its ``evict`` as a cleanup hook of the given tier, so pressure responses
    and the out-of-memory path free its tensors and the manager's used bytes fall. Filling is
    non-critical by default: a cache does not grow in degraded mode.
    """

    def __init__(self, manager: MemoryManager, name: str, tier: PressureLevel = PressureLevel.WARNING) -> None:
        self.manager, self.name, self.tier = manager, name, PressureLevel(tier)
        self._entries: OrderedDict[str, Allocation] = OrderedDict()
        self.hits = self.misses = self.evictions = self.evicted_bytes = 0
        manager.add_cleanup(self.evict, level=self.tier)

    @property
    def nbytes(self) -> int:
        return sum(a.reserved for a in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, nbytes: int, critical: bool = False) -> Allocation:
        """Insert (or refresh) ``key``; raises OutOfMemoryError / DegradedModeError as ``allocate`` does."""
        with self.manager._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            alloc = self.manager.allocate(nbytes, tag=f"cache:{self.name}", critical=critical)
            self.manager.tensor(alloc.id).fill_(1)  # resident pages, as a loaded model's are
            self._entries[key] = alloc
            return alloc

    def get(self, key: str) -> Any:
        with self.manager._lock:
            alloc = self._entries.get(key)
            if alloc is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return self.manager.tensor(alloc.id)

    def evict(self, nbytes: int) -> int:
        """Free least-recently-used entries until ``nbytes`` are freed or the cache is empty."""
        freed = 0
        with self.manager._lock:
            while self._entries and freed < nbytes:
                _key, alloc = self._entries.popitem(last=False)
                self.manager.free(alloc.id)
                freed += alloc.reserved
                self.evictions += 1
            self.evicted_bytes += freed
        return freed

    def clear(self) -> int:
        """Drop every entry (not counted as eviction: an explicit reset, not a pressure response)."""
        with self.manager._lock:
            n = len(self._entries)
            for alloc in self._entries.values():
                self.manager.free(alloc.id)
            self._entries.clear()
            return n

    def stats(self) -> dict[str, Any]:
        with self.manager._lock:
            return {"entries": len(self._entries), "bytes": self.nbytes, "tier": str(self.tier),
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "evicted_bytes": self.evicted_bytes}
