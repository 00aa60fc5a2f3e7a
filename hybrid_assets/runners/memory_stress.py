"""Spec 2.2 memory stress: sustained high utilisation and thrashing.

Both workloads run on a background thread inside a worker of their own (a pool of one, so
every poll reaches the worker that holds the workload, and the pool's supervision counts
crashes and hangs); the runner polls their samples and, for thrashing, sends echo probes
through the worker's work queue while it churns.
"""

from __future__ import annotations

import collections
import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from workers.host.errors import WorkerError
from workers.host.pool import PoolConfig, PoolEvent, WorkerPool

MiB = 1 << 20
SUSTAINED_METRICS = frozenset({
    "gc_pause_s", "gc_recovery_ratio", "gc_cycles_per_min", "fragmentation_ratio", "allocation_latency_s",
    "allocation_error", "memory_utilization_ratio", "worker_crash_count"})
THRASH_METRICS = frozenset({
    "response_time_s", "worker_crash_count", "worker_hang_count", "recovery_s", "allocation_error",
    "achieved_ops_rps", "worker_rss_mb", "baseline_probe_latency_s"})


# ---- shared with memory_benchmarks ---------------------------------------------------------------
@contextlib.contextmanager
def own_worker(ctx: RunnerContext) -> Iterator[tuple[WorkerPool, collections.Counter[str]]]:
    """A pool of one worker for this case; the counter holds the pool's events by kind
    ('lost': the worker died, 'hung': it missed its heartbeats)."""
    events: collections.Counter[str] = collections.Counter()
    pool = WorkerPool(ctx.worker_argv, PoolConfig(size=1), name=f"{ctx.case_id}-worker")

    def count(ev: PoolEvent) -> None:
        events[ev.kind] += 1

    pool.subscribe(count)
    pool.start()
    try:
        yield pool, events
    finally:
        pool.close()


def pick_device(ctx: RunnerContext, pool: WorkerPool) -> tuple[str, int]:
    """The device to stress (params' ``device``, else the first GPU, else the CPU) and its memory."""
    found = pool.request("discover_devices", {"probe_dtypes": False}, timeout=120.0)["devices"]
    wanted = ctx.params.get("device")
    gpus = [d for d in found if d["kind"] == "cuda"]
    device = str(wanted) if wanted else ("cuda:0" if gpus else "cpu")
    match = [d for d in found if d["id"] == device or (device == "cpu" and d["kind"] == "cpu")]
    return device, int(match[0]["memory_total"]) if match else 0


def poll_until_done(pool: WorkerPool, ctx: RunnerContext, duration_s: float, interval_s: float,
                    on_poll: Any) -> dict[str, Any]:
    """Poll the background workload until it ends; ``on_poll(result, host_time)`` sees every
    answer. Returns the last one."""
    deadline = time.monotonic() + duration_s + 120.0
    while True:
        time.sleep(interval_s)
        result = pool.request("memory.stress_poll", {}, timeout=60.0)
        on_poll(result, time.monotonic())
        if not result["running"]:
            return result
        if time.monotonic() > deadline:
            pool.request("memory.stress_stop", {}, timeout=60.0)
            raise TimeoutError(f"the workload did not end within {duration_s + 120.0:g} s")


# ---- 2.2 sustained utilisation ---------------------------------------------------------------------
def _checkpoint(t: float, checkpoints: list[float]) -> float:
    return next((c for c in checkpoints if t <= c), checkpoints[-1])


SUSTAINED_MAP = {"gc_pause_s": "gc_pause_s", "gc_recovery_ratio": "gc_recovery_ratio",
                 "idle_ratio": "fragmentation_ratio", "allocation_latency_s": "allocation_latency_s",
                 "allocation_error": "allocation_error", "utilisation": "memory_utilization_ratio"}


def sustained_pressure(ctx: RunnerContext) -> None:
    p = ctx.params
    target = float(p["target_utilization_pct"]) / 100
    duration = float(p["duration_s"])
    checkpoints = sorted(float(c) for c in p.get("checkpoints_s", [duration]))
    rec = ctx.recorder
    with own_worker(ctx) as (pool, events):
        device, total = pick_device(ctx, pool)
        if p["memory_pool"] == "worker_budget":
            budget, touch = int(float(p["memory_pool_mb"]) * MiB), True
        elif p["memory_pool"] == "device_total":
            # On the CPU the device is the shared machine's RAM: reserved, never written.
            budget, touch = total, device != "cpu"
        else:
            raise ValueError(f"memory_pool must be worker_budget or device_total, got {p['memory_pool']!r}")
        pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
        pool.request("memory.pressure_start", {
            "device": device, "duration_s": duration, "target_utilization": target,
            "pattern": str(p["allocation_pattern"]), "sample_interval_s": float(p.get("sample_interval_s", 1.0)),
            "garbage_mib_per_s": float(p.get("garbage_mib_per_s", 8.0)),
            "full_gc_per_s": float(p.get("full_gc_per_s", 4.0)), "touch": touch, "seed": int(p.get("seed", 0))},
            timeout=60.0)
        cycles: collections.Counter[float] = collections.Counter()

        def on_poll(result: dict[str, Any], _host_t: float) -> None:
            for s in result["samples"]:
                cp = _checkpoint(s["t"], checkpoints)
                if s["metric"] == "gc_pause_s":
                    cycles[cp] += 1
                name = SUSTAINED_MAP.get(s["metric"])
                if name is not None:
                    unit = "s" if name.endswith("_s") else ("count" if name == "allocation_error" else "ratio")
                    rec.record(name, s["value"], unit, checkpoint_s=cp, **s["labels"])

        last = poll_until_done(pool, ctx, duration, min(1.0, duration / 10), on_poll)
        rec.record("worker_crash_count", float(events["lost"]), "count")
        start = 0.0
        for cp in checkpoints:
            minutes = (min(cp, duration) - start) / 60
            if minutes > 0:
                rec.record("gc_cycles_per_min", cycles[cp] / minutes, "count", checkpoint_s=cp)
            start = cp
        peak = last["counters"].get("peak_utilisation_ppm", 0) / 1e6
        for key in ("allocations", "allocation_errors", "gc_cycles", "frees"):
            rec.note(key, last["counters"].get(key, 0))
        rec.note("device", device)
        rec.note("budget_bytes", budget)
        rec.note("peak_utilisation", peak)
        if last["error"]:
            raise RuntimeError(f"the pressure workload broke: {last['error']}")
        # The budget is split into allocations; the last is cut to land on the target.
        if peak < target - 0.005:
            raise RuntimeError(f"target utilisation {target:.0%} never reached (peak {peak:.1%})")


# ---- 2.2 thrashing ---------------------------------------------------------------------------------
class _Prober:
    """Echo probes through the work queue at a fixed rate, each on its own thread (open loop)."""

    def __init__(self, pool: WorkerPool, rate: float, timeout: float) -> None:
        self.pool, self.interval, self.timeout = pool, 1.0 / rate, timeout
        self.results: list[tuple[float, float, Union[float, None], str]] = []  # (sent, done, latency, error)
        self._stop = threading.Event()
        self._exec = ThreadPoolExecutor(max_workers=64, thread_name_prefix="probe")
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._lock = threading.Lock()

    def _probe(self) -> None:
        t0 = time.monotonic()
        try:
            self.pool.request("echo", {"payload": "probe"}, timeout=self.timeout)
            entry = (t0, time.monotonic(), time.monotonic() - t0, "")
        except WorkerError as exc:
            entry = (t0, time.monotonic(), None, exc.code)
        with self._lock:
            self.results.append(entry)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self._exec.submit(self._probe)
            due += self.interval
            self._stop.wait(max(0.0, due - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._exec.shutdown(wait=True)

    def snapshot(self) -> list[tuple[float, float, Union[float, None], str]]:
        with self._lock:
            return sorted(self.results)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


Probe = tuple[float, float, Union[float, None], str]  # (sent, done, latency or None, error code)


def recovery_time(end: float, memory: list[tuple[float, int]], probes: list[Probe], memory_mark: int,
                  latency_mark: float, run: int = 3) -> Union[float, None]:
    """Seconds from ``end`` until memory in use is at or under ``memory_mark`` and ``run``
    consecutive probes sent after the end answered within ``latency_mark``; None if not seen."""
    t_mem = next((t for t, used in memory if t >= end and used <= memory_mark), None)
    after = [pr for pr in probes if pr[0] >= end]
    t_probe = None
    for i in range(len(after) - run + 1):
        window = after[i:i + run]
        if all(lat is not None and lat <= latency_mark for _, _, lat, _ in window):
            t_probe = max(done for _, done, _, _ in window)
            break
    if t_mem is None or t_probe is None:
        return None
    return max(t_mem, t_probe) - end


def thrashing(ctx: RunnerContext) -> None:
    p = ctx.params
    duration, rate = float(p["duration_s"]), float(p["probe_rate_rps"])
    size_min, size_max = int(float(p["object_size_min_kb"]) * 1024), int(float(p["object_size_max_mb"]) * MiB)
    max_live = int(p.get("max_live", 32))
    pre_s, watch_s = float(p.get("baseline_s", 2.0)), float(p.get("watch_s", 130.0))
    rec = ctx.recorder
    with own_worker(ctx) as (pool, events):
        device, _total = pick_device(ctx, pool)
        budget = max_live * size_max + 64 * MiB  # the budget never refuses: thrashing is measured, not capped
        pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
        memory: list[tuple[float, int]] = []

        def read_memory() -> None:
            r = pool.request("memory.in_use", {"device": device}, timeout=30.0)
            memory.append((time.monotonic(), r["in_use_bytes"]))
            rec.record("worker_rss_mb", r["rss_bytes"] / MiB, "MB")

        pool.request("memory.in_use", {"device": device}, timeout=120.0)  # loads the runtime before the baseline
        prober = _Prober(pool, rate, timeout=float(p.get("probe_timeout_s", 30.0)))
        prober.start()
        t_pre = time.monotonic()
        while time.monotonic() - t_pre < pre_s:
            read_memory()
            time.sleep(0.1)
        t_start = time.monotonic()
        pool.request("memory.thrash_start", {
            "device": device, "duration_s": duration, "ops_per_s": float(p["ops_per_s"]),
            "size_min_bytes": size_min, "size_max_bytes": size_max, "max_live": max_live,
            "seed": int(p.get("seed", 0))}, timeout=60.0)
        ends: list[float] = []

        def on_poll(result: dict[str, Any], host_t: float) -> None:
            memory.append((host_t, result["in_use_bytes"]))
            rec.record("worker_rss_mb", result["rss_bytes"] / MiB, "MB")
            for s in result["samples"]:
                if s["metric"] == "allocation_error":
                    rec.record("allocation_error", s["value"], "count", **s["labels"])
            if result["ended_ago_s"] is not None:
                ends.append(host_t - result["ended_ago_s"])

        last = poll_until_done(pool, ctx, duration, 0.25, on_poll)
        pool.request("memory.stress_stop", {}, timeout=60.0)  # drops the finished workload's bookkeeping
        end = ends[0]
        pre_probes = [pr for pr in prober.snapshot() if pr[0] < t_start and pr[2] is not None]
        # The worker keeps a few tens of KiB after any workload (thread and interpreter caches);
        # memory counts as back within this tolerance, stated in the notes.
        tolerance = int(float(p.get("memory_tolerance_mb", 1.0)) * MiB)
        pre_high_water = max(used for t, used in memory if t < t_start)
        memory_mark = pre_high_water + tolerance
        latency_mark = _p90([pr[2] for pr in pre_probes])
        recovered = None
        while recovered is None and time.monotonic() - end < watch_s:
            read_memory()
            recovered = recovery_time(end, memory, prober.snapshot(), memory_mark, latency_mark)
            time.sleep(0.1)
        prober.stop()
        probes = prober.snapshot()
        for sent, _done, latency, _error in probes:
            phase = "baseline" if sent < t_start else ("thrashing" if sent < end else "after")
            if latency is not None and phase == "thrashing":
                rec.record("response_time_s", latency, "s")
            elif latency is not None and phase == "baseline":
                rec.record("baseline_probe_latency_s", latency, "s")
        rec.record("recovery_s", recovered if recovered is not None else time.monotonic() - end, "s",
                   recovered=recovered is not None)
        unanswered = sum(1 for *_, error in probes if error == "TIMEOUT")
        rec.record("worker_crash_count", float(events["lost"]), "count")
        rec.record("worker_hang_count", float(events["hung"] + unanswered), "count")
        counters = last["counters"]
        rec.record("achieved_ops_rps", counters.get("ops", 0) / max(1e-9, counters.get("elapsed_ms", 0) / 1e3), "1/s")
        failed = [pr for pr in probes if pr[2] is None]
        rec.note("probes", len(probes))
        rec.note("probes_failed", {e: sum(1 for pr in failed if pr[3] == e) for e in {pr[3] for pr in failed}})
        rec.note("baseline_probe_p90_s", latency_mark)
        rec.note("memory_in_use_pre_high_water_bytes", pre_high_water)
        rec.note("memory_tolerance_bytes", tolerance)
        rec.note("memory_in_use_last_bytes", memory[-1][1])
        rec.note("allocations", counters.get("allocations", 0))
        rec.note("allocation_errors", counters.get("allocation_errors", 0))
        rec.note("median_probe_s", statistics.median([pr[2] for pr in probes if pr[2] is not None]))
        if last["error"]:
            raise RuntimeError(f"the thrashing workload broke: {last['error']}")


RUNNERS = {
    "memory.sustained_pressure": (SUSTAINED_METRICS, sustained_pressure),
    "memory.thrashing": (THRASH_METRICS, thrashing),
}
