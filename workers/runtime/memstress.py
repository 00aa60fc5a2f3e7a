"""Background memory workloads of 2.2 and 4.2: thrashing and sustained pressure.

Each runs on its own thread inside the worker, so the work queue stays free: the host's echo
probes measure how the worker answers while memory churns, and the host polls the samples
(drained on each poll, so a 4-hour run never builds one huge answer). Every allocation goes
through the device's memory manager (real tensors); what the allocator beneath it holds is
read by ``memstats.allocator_view``. When a workload ends, by its duration or a stop, it
frees everything it allocated: that is part of the workload, and the host times recovery
from that moment.
"""

from __future__ import annotations

import collections
import gc
import math
import random
import threading
import time
import weakref
from typing import Any, Union

from workers.runtime.imports import import_torch
from workers.runtime.memory import DegradedModeError, MemoryManager
from workers.runtime.memstats import allocator_view

MAX_QUEUED_SAMPLES = 200_000  # a host that stops polling cannot grow the worker without bound
PATTERNS = ("steady_allocation", "bursty_allocation", "fragmented_allocation")


class BackgroundWorkload:
    kind = "workload"

    def __init__(self, manager: MemoryManager, duration_s: float, seed: int) -> None:
        if duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        self.m = manager
        self.duration_s = duration_s
        self.rng = random.Random(seed)
        self.tag = f"{self.kind}-{id(self):x}"
        self.live: list[int] = []  # allocation ids this workload holds
        self.counters: collections.Counter[str] = collections.Counter()
        self.error: Union[str, None] = None
        self._stop = threading.Event()
        self._samples: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.RLock()  # re-entered when a collection's callback samples mid-sample
        self.started = 0.0
        self.ended: Union[float, None] = None  # monotonic time everything was released
        self._thread = threading.Thread(target=self._main, name=self.kind, daemon=True)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        import_torch()  # a worker serving work has torch loaded: its import is not the workload's
        self.started = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.kind} did not stop within {timeout:g} s")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            self.body(self.started + self.duration_s)
        except Exception as exc:  # reported by the next poll: the workload broke, not the worker
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.m.free_all(self.tag)
            self.live.clear()
            self.ended = time.monotonic()

    def body(self, deadline: float) -> None:
        raise NotImplementedError

    # ---- samples --------------------------------------------------------------------------------
    def sample(self, metric: str, value: float, **labels: Any) -> None:
        with self._lock:
            if len(self._samples) >= MAX_QUEUED_SAMPLES:
                self.counters["samples_dropped"] += 1
                return
            self._samples.append({"metric": metric, "value": float(value),
                                  "t": time.monotonic() - self.started, "labels": labels})

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            out = list(self._samples)
            self._samples.clear()
            return out

    # ---- shared steps -----------------------------------------------------------------------------
    def allocate(self, nbytes: int, touch: int) -> bool:
        """One allocation through the manager, timed; failures are samples, not exceptions."""
        torch = import_torch()
        t0 = time.perf_counter()
        try:
            alloc = self.m.allocate(nbytes, tag=self.tag)
        except (torch.OutOfMemoryError, DegradedModeError) as exc:
            self.counters["allocation_errors"] += 1
            self.sample("allocation_error", 1.0, error=type(exc).__name__)
            return False
        self.sample("allocation_latency_s", time.perf_counter() - t0)
        self.sample("allocation_error", 0.0)
        self.counters["allocations"] += 1
        if touch:
            self.m.tensor(alloc.id)[:min(nbytes, touch)].fill_(1)  # the pages are really used
        self.live.append(alloc.id)
        return True

    def free_random(self) -> int:
        i = self.rng.randrange(len(self.live))
        self.live[i], self.live[-1] = self.live[-1], self.live[i]
        alloc_id = self.live.pop()
        nbytes = self.m.tensor(alloc_id).numel()
        self.m.free(alloc_id)
        self.counters["frees"] += 1
        return nbytes

    def allocator_samples(self) -> None:
        view = allocator_view(self.m.device, [self.m.tensor(i) for i in self.live])
        for name, value in view.figures().items():
            self.sample(name, value, allocator=view.allocator)
        self.sample("utilisation", self.m.used / self.m.budget)


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    """A size whose logarithm is uniform: every decade from lo to hi equally likely."""
    return max(lo, min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi))))))


class ThrashWorkload(BackgroundWorkload):
    """2.2 thrashing: random-size allocations and frees at a fixed operation rate."""

    kind = "thrash"

    def __init__(self, manager: MemoryManager, *, duration_s: float, ops_per_s: float, size_min: int, size_max: int,
                 max_live: int, touch_bytes: int, sample_every_ops: int, warm_ops: int, seed: int) -> None:
        for name, value in (("ops_per_s", ops_per_s), ("size_min_bytes", size_min), ("max_live", max_live),
                            ("sample_every_ops", sample_every_ops)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if size_max < size_min:
            raise ValueError(f"size_max_bytes ({size_max}) must be >= size_min_bytes ({size_min})")
        if touch_bytes < 0 or warm_ops < 0:
            raise ValueError("touch_bytes and warm_ops must be >= 0")
        super().__init__(manager, duration_s, seed)
        self.ops_per_s, self.size_min, self.size_max = ops_per_s, size_min, size_max
        self.max_live, self.touch, self.every, self.warm_ops = max_live, touch_bytes, sample_every_ops, warm_ops

    def body(self, deadline: float) -> None:
        interval = 1.0 / self.ops_per_s
        due = time.monotonic()
        ops = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            # A free when the live set is full, otherwise a coin flip: the live set wanders
            # between empty and max_live, so holes open and close all the time.
            if self.live and (len(self.live) >= self.max_live or self.rng.random() < 0.5):
                self.free_random()
            else:
                self.allocate(log_uniform(self.rng, self.size_min, self.size_max), self.touch)
            ops += 1
            self.counters["ops"] = ops
            if ops % self.every == 0 and ops >= self.warm_ops:
                self.allocator_samples()
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.counters["elapsed_ms"] = int((time.monotonic() - self.started) * 1e3)


class _Garbage:
    __slots__ = ("__weakref__", "nbytes", "other", "payload")

    def __init__(self, payload: Any, nbytes: int) -> None:
        self.payload, self.nbytes, self.other = payload, nbytes, None


class PressureWorkload(BackgroundWorkload):
    """2.2 sustained utilisation: the manager held at a target share of its budget by a given
    allocation pattern, while cyclic garbage keeps the collector busy; every collection's
    pause and (full collections) the share of the garbage it freed are samples."""

    kind = "pressure"

    def __init__(self, manager: MemoryManager, *, duration_s: float, target: float, pattern: str, chunk_bytes: int,
                 sample_interval_s: float, garbage_mib_per_s: float, full_gc_per_s: float, touch: bool,
                 seed: int) -> None:
        if not 0 < target <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {target}")
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}; known: {list(PATTERNS)}")
        if sample_interval_s <= 0 or garbage_mib_per_s < 0 or full_gc_per_s < 0 or chunk_bytes < 0:
            raise ValueError("sample_interval_s must be > 0; garbage_mib_per_s, full_gc_per_s, chunk_bytes >= 0")
        super().__init__(manager, duration_s, seed)
        self.target_bytes = int(target * manager.budget)
        self.pattern = pattern
        self.chunk = chunk_bytes or max(4096, manager.budget // 256)
        self.sample_interval = sample_interval_s
        self.garbage_rate = garbage_mib_per_s * (1 << 20)
        self.full_gc_interval = 1.0 / full_gc_per_s if full_gc_per_s else math.inf
        self.touch = (1 << 62) if touch else 0  # allocate() touches min(nbytes, touch): every byte
        self.peak_utilisation = 0.0
        self._unfreed = 0  # garbage bytes made unreachable and not yet freed
        self._freed = 0
        self._marks: dict[str, float] = {}

    def size(self) -> int:
        if self.pattern == "fragmented_allocation":  # small and large mixed: holes of every size
            return log_uniform(self.rng, max(64, self.chunk // 64), self.chunk * 4)
        return int(self.chunk * self.rng.uniform(0.5, 1.5))

    def fill(self, deadline: float) -> None:
        """Allocate up to the target; the last allocation is cut to land on it."""
        while not self._stop.is_set() and time.monotonic() < deadline:
            room = self.target_bytes - self.m.used
            if room <= 0 or not self.allocate(min(self.size(), room), self.touch):
                break
        self.peak_utilisation = max(self.peak_utilisation, self.m.used / self.m.budget)

    # ---- the collector ------------------------------------------------------------------------
    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._marks.update(t=time.perf_counter(), freed=self._freed, unfreed=self._unfreed)
        elif "t" in self._marks:
            self.sample("gc_pause_s", time.perf_counter() - self._marks["t"], generation=info["generation"])
            self.counters["gc_cycles"] += 1
            if info["generation"] == 2 and self._marks["unfreed"] > 0:
                self.sample("gc_recovery_ratio", (self._freed - self._marks["freed"]) / self._marks["unfreed"])

    def _freed_garbage(self, nbytes: int) -> None:
        self._freed += nbytes
        self._unfreed -= nbytes

    def _make_garbage(self, nbytes: int, keep: list[Any]) -> None:
        torch = import_torch()
        half = max(1, nbytes // 2)
        a = _Garbage(torch.empty(half, dtype=torch.uint8), half)
        b = _Garbage(torch.empty(half, dtype=torch.uint8), half)
        a.other, b.other = b, a  # a cycle: only the collector frees it
        keep.append(weakref.ref(a, lambda _r: self._freed_garbage(half)))
        keep.append(weakref.ref(b, lambda _r: self._freed_garbage(half)))
        self._unfreed += 2 * half

    # ---- the loop -----------------------------------------------------------------------------
    def body(self, deadline: float) -> None:
        gc.callbacks.append(self._on_gc)
        refs: list[Any] = []
        try:
            self.fill(deadline)
            tick = 0.02
            now = time.monotonic()
            next_sample, next_full, next_burst = now, now + self.full_gc_interval, now + 1.0
            garbage_due = 0.0
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.churn(time.monotonic() >= next_burst, deadline)
                if time.monotonic() >= next_burst:
                    next_burst += 1.0
                garbage_due += self.garbage_rate * tick
                while garbage_due >= 256 << 10:
                    self._make_garbage(256 << 10, refs)
                    garbage_due -= 256 << 10
                if len(refs) > 4096:
                    refs = [r for r in refs if r() is not None]
                now = time.monotonic()
                if now >= next_full:
                    gc.collect(2)
                    next_full += self.full_gc_interval
                if now >= next_sample:
                    self.peak_utilisation = max(self.peak_utilisation, self.m.used / self.m.budget)
                    self.allocator_samples()
                    next_sample += self.sample_interval
                time.sleep(max(0.0, tick - (time.monotonic() - now)))
            gc.collect(2)
        finally:
            gc.callbacks.remove(self._on_gc)
        self.counters["peak_utilisation_ppm"] = int(self.peak_utilisation * 1e6)

    def churn(self, burst_now: bool, deadline: float) -> None:
        if self.pattern == "bursty_allocation":
            if burst_now:  # a quarter of the live set released at once and taken back at once
                for _ in range(max(1, len(self.live) // 4)):
                    if self.live:
                        self.free_random()
                self.fill(deadline)
            return
        # steady: one free and one allocation per tick; fragmented: a few of mixed sizes
        for _ in range(1 if self.pattern == "steady_allocation" else 4):
            if self.live:
                self.free_random()
        self.fill(deadline)
