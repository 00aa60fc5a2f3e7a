"""Spec 4.2 memory benchmarks: allocation efficiency under thrashing, concurrent allocation,
allocation scaling over threads, GC throughput impact and GC scaling.

Each case runs in a worker of its own (see memory_stress.own_worker): the memory manager is
per worker, and a crash at one GC scaling point must not hide behind a shared pool's restart.
Every ratio's baseline is measured in the same run, interleaved with what it is compared to.
"""

from __future__ import annotations

import statistics
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.memory_stress import MiB, own_worker, pick_device, poll_until_done
from workers.host.errors import WorkerError
from workers.runtime.memstats import contention_added, interleaved_baselines, scaling_efficiency

EFFICIENCY_METRICS = frozenset({"memory_utilization_efficiency_ratio", "fragmentation_ratio",
                                "allocation_waste_ratio", "allocation_failed"})
CONCURRENT_METRICS = frozenset({"concurrent_allocations_held_count", "contention_added_latency_s",
                                "allocation_latency_s", "allocation_failed", "uncontended_latency_s"})
SCALING_METRICS = frozenset({"allocation_scaling_efficiency_ratio", "allocation_throughput_per_s"})
GC_IMPACT_METRICS = frozenset({"gc_throughput_reduction_ratio", "workload_throughput_per_s"})
GC_SCALING_METRICS = frozenset({"gc_pause_mean_s", "gc_pause_s", "worker_crash"})


def _pool_bytes(value: Any, device: str, total: int) -> int:
    """``pool_mib``: a number, or 'configured': the device's memory (a GPU's, never the CPU's
    shared RAM: give a number there)."""
    if value == "configured":
        if device == "cpu":
            raise ValueError("pool_mib: 'configured' means the GPU's memory; on the CPU give a size in MiB")
        return total
    return int(float(value) * MiB)


# ---- allocation efficiency under the 2.2 thrashing workload ----------------------------------------
EFFICIENCY_MAP = {"utilisation_efficiency": ("memory_utilization_efficiency_ratio", "ratio"),
                  "external_fragmentation": ("fragmentation_ratio", "ratio"),
                  "waste": ("allocation_waste_ratio", "ratio"), "allocation_error": ("allocation_failed", "count")}


def allocation_efficiency(ctx: RunnerContext) -> None:
    p = ctx.params
    lo_kib, hi_kib = (float(x) for x in p["size_range_kib"])
    duration = float(p["duration_s"])
    rec = ctx.recorder
    with own_worker(ctx) as (pool, _events):
        device, total = pick_device(ctx, pool)
        budget = _pool_bytes(p["pool_mib"], device, total)
        pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
        pool.request("memory.thrash_start", {
            "device": device, "duration_s": duration, "ops_per_s": float(p["ops_per_s"]),
            "size_min_bytes": int(lo_kib * 1024), "size_max_bytes": int(hi_kib * 1024),
            "max_live": int(p.get("max_live", 32)), "sample_every_ops": int(p["sample_every_ops"]),
            "warm_ops": int(p.get("warm_ops", 1000)), "seed": int(p.get("seed", 0))}, timeout=120.0)

        def on_poll(result: dict[str, Any], _host_t: float) -> None:
            for s in result["samples"]:
                if s["metric"] in EFFICIENCY_MAP:
                    name, unit = EFFICIENCY_MAP[s["metric"]]
                    rec.record(name, s["value"], unit, **s["labels"])

        last = poll_until_done(pool, ctx, duration, 0.5, on_poll)
        pool.request("memory.stress_stop", {}, timeout=60.0)
        rec.note("device", device)
        rec.note("budget_bytes", budget)
        rec.note("counters", last["counters"])
        if last["error"]:
            raise RuntimeError(f"the thrashing workload broke: {last['error']}")


# ---- concurrent allocation ------------------------------------------------------------------------
def concurrent_allocation(ctx: RunnerContext) -> None:
    p = ctx.params
    clients, trials = int(p["concurrent"]), int(p["trials"])
    sizes = [int(float(s) * MiB) for s in p["sizes_mib"]]
    rec = ctx.recorder
    with own_worker(ctx) as (pool, _events):
        device, _total = pick_device(ctx, pool)
        budget = int(clients * max(sizes) * 1.25) + 64 * MiB  # every client's allocation fits at once
        pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
        for trial in range(trials):
            for size in sizes:  # sizes in turn within a trial, so drift touches all of them alike
                mib = round(size / MiB, 3)
                r = pool.request("memory.concurrent_allocate", {
                    "device": device, "size_bytes": size, "clients": clients,
                    "uncontended": int(p.get("uncontended", 20))}, timeout=120.0)
                rec.record("concurrent_allocations_held_count", float(r["held_together"]), "count",
                           size_mib=mib, trial=trial)
                done = [lat for lat in r["latencies_s"] if lat is not None]
                for lat in r["latencies_s"]:
                    rec.record("allocation_failed", 0.0 if lat is not None else 1.0, "count", size_mib=mib)
                for lat in done:
                    rec.record("allocation_latency_s", lat, "s", size_mib=mib)
                for lat in r["uncontended_s"]:
                    rec.record("uncontended_latency_s", lat, "s", size_mib=mib)
                for added in contention_added(done, r["uncontended_s"]):
                    rec.record("contention_added_latency_s", added, "s", size_mib=mib)
                if r["used_after"] != r["used_before"]:
                    raise RuntimeError(f"trial {trial}: manager use {r['used_before']} -> {r['used_after']} bytes")
        rec.note("device", device)


# ---- allocation throughput over threads ---------------------------------------------------------------
def allocation_scaling(ctx: RunnerContext) -> None:
    p = ctx.params
    counts = [int(n) for n in p["threads"]]
    seconds = float(p["seconds_per_point"])
    rec = ctx.recorder
    with own_worker(ctx) as (pool, _events):
        device, _total = pick_device(ctx, pool)
        for size in (int(float(s) * MiB) for s in p["sizes_mib"]):
            budget = max(counts) * size * 2 + 64 * MiB
            pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
            # 1, n1, 1, n2, 1, ...: each n compared with the one-thread runs on either side of it
            order = [1]
            for n in (n for n in counts if n != 1):
                order += [n, 1]
            points = []
            for n in order:
                r = pool.request("memory.allocation_throughput", {
                    "device": device, "threads": n, "seconds": seconds, "size_bytes": size},
                    timeout=seconds + 60.0)
                rate = r["ops"] / r["elapsed_s"]
                points.append((n, rate))
                rec.record("allocation_throughput_per_s", rate, "1/s", threads=n, size_mib=size / MiB)
            for n, rate, base in interleaved_baselines(points):
                rec.record("allocation_scaling_efficiency_ratio", scaling_efficiency(rate, n, base), "ratio",
                           threads=n, size_mib=size / MiB)
        rec.note("device", device)


# ---- GC throughput impact --------------------------------------------------------------------------------
def gc_throughput_impact(ctx: RunnerContext) -> None:
    p = ctx.params
    pairs, run_s = int(p["pairs"]), float(p["run_s"])
    rec = ctx.recorder
    with own_worker(ctx) as (pool, _events):
        pool.request("memory.gc_throughput", {"seconds": min(run_s, 0.5), "gc_enabled": True},
                     timeout=60.0)  # warm-up: torch loaded, caches filled
        reductions, gc_shares = [], []
        for i in range(pairs):
            order = (True, False) if i % 2 == 0 else (False, True)  # alternate which goes first
            rates = {}
            for enabled in order:
                r = pool.request("memory.gc_throughput", {"seconds": run_s, "gc_enabled": enabled},
                                 timeout=run_s + 60.0)
                rates[enabled] = r["ops"] / r["elapsed_s"]
                if enabled:  # the collections' own time: what the pairs' difference should be near
                    gc_shares.append(r["gc_time_s"] / r["elapsed_s"])
                rec.record("workload_throughput_per_s", rates[enabled], "1/s", gc_enabled=enabled, pair=i)
            reduction = 1.0 - rates[True] / rates[False]
            reductions.append(reduction)
            rec.record("gc_throughput_reduction_ratio", reduction, "ratio", pair=i)
        rec.note("median_reduction", statistics.median(reductions))
        rec.note("median_gc_time_share_when_on", statistics.median(gc_shares))
        rec.note("reduction_stdev", statistics.stdev(reductions) if len(reductions) > 1 else 0.0)


# ---- GC scaling ------------------------------------------------------------------------------------------
def gc_scaling(ctx: RunnerContext) -> None:
    p = ctx.params
    dimension = str(p["dimension"])
    seconds = float(p["seconds_per_point"])
    rec = ctx.recorder
    with own_worker(ctx) as (pool, events):
        device, total = pick_device(ctx, pool)
        if dimension == "heap_size":
            points = [(f"{g:g}", {"heap_bytes": int(float(g) * 1024 * MiB)}) for g in p["heap_gib"]]
        elif dimension == "object_count":
            points = [(str(n), {"live_objects": int(n)}) for n in p["object_counts"]]
        elif dimension == "memory_pressure":
            budget = _pool_bytes(p["pool_mib"], device, total)
            pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
            points = [(f"{u:g}", {"utilization": float(u) / 100, "device": device}) for u in p["utilization_pct"]]
        else:
            raise ValueError(f"dimension must be heap_size, object_count or memory_pressure, got {dimension!r}")
        for value, params in points:
            lost_before = events["lost"] + events["hung"]
            try:
                r = pool.request("memory.gc_scale_point", {"seconds": seconds, **params},
                                 timeout=seconds + 600.0)
            except WorkerError as exc:
                if exc.code not in ("WORKER_LOST", "TIMEOUT"):
                    raise
                rec.record("worker_crash", 1.0, "count", **{dimension: value}, error=exc.code)
                continue
            crashed = events["lost"] + events["hung"] > lost_before
            rec.record("worker_crash", 1.0 if crashed else 0.0, "count", **{dimension: value})
            pauses = [pause for _gen, pause in r["pauses"]]
            for gen, pause in r["pauses"]:
                rec.record("gc_pause_s", pause, "s", generation=gen, **{dimension: value})
            if pauses:
                rec.record("gc_pause_mean_s", statistics.fmean(pauses), "s", **{dimension: value})
            rec.note(f"{dimension}={value}", {"collections": len(pauses), "live_tracked": r["live_tracked"],
                                               "utilisation": r["utilisation"], "setup_s": r["setup_s"]})


RUNNERS = {
    "memory.allocation_efficiency": (EFFICIENCY_METRICS, allocation_efficiency),
    "memory.concurrent_allocation": (CONCURRENT_METRICS, concurrent_allocation),
    "memory.allocation_scaling": (SCALING_METRICS, allocation_scaling),
    "memory.gc_throughput_impact": (GC_IMPACT_METRICS, gc_throughput_impact),
    "memory.gc_scaling": (GC_SCALING_METRICS, gc_scaling),
}
