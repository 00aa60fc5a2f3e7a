"""2.3 rapid model switching with leak detection: the served model changes every
``switch_interval_s`` for ``duration_s`` over a pool of checkpoints, through the host's RAM cache
into a worker that serves one model at a time (the previous one is unloaded by the switch).

Per switch: its latency (unload of the previous model + load of the next, until usable), whether
the target came from the host cache (no read from storage), the worker's RSS, and the leak
figure: allocator bytes in use beyond the bytes of the models the worker reports resident, minus
the same figure after the first switch. The allocator's own accounting (glibc mallinfo2 on the
CPU, torch's allocated bytes on CUDA: ``memory.in_use``) is read, not RSS, because glibc keeps
freed pages mapped and RSS would show growth that no object holds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_loading import (
    MARGIN_MIB,
    MiB,
    build_models,
    case_sizes_mib,
    configured_budget_mib,
    load_timeout,
    model_device,
    synthetic_set,
    unload_all,
    warm_up,
)
from hybrid_assets.runners.model_support import ModelSession, ensure_models, model_session
from workers.host.errors import WorkerError

METRICS = frozenset({"switch_latency_s", "switch_error", "cache_hit_ok", "memory_growth_mb", "worker_rss_mb"})
PATTERNS = ("random_switching", "cyclic_switching", "popularity_based_switching")


def switch_order(pattern: str, pool: int, switches: int, seed: int = 0) -> list[int]:
    """Model indices, one per switch; every switch changes the model (no index repeats the one
    before it). random: uniform; cyclic: 0, 1, ..., pool-1, 0, ...; popularity_based: probability
    proportional to 1/rank over a seeded permutation of ranks, renormalised without the current."""
    if pattern not in PATTERNS:
        raise ValueError(f"switching_pattern must be one of {PATTERNS}, got {pattern!r}")
    if pool < 2:
        raise ValueError(f"switching needs a pool of at least 2 models, got {pool}")
    if pattern == "cyclic_switching":
        return [i % pool for i in range(switches)]
    rng = np.random.default_rng(seed)
    weight = np.ones(pool) if pattern == "random_switching" else 1.0 / (rng.permutation(pool) + 1)
    order: list[int] = []
    for _ in range(switches):
        w = weight.copy()
        if order:
            w[order[-1]] = 0.0
        order.append(int(rng.choice(pool, p=w / w.sum())))
    return order


def beyond_resident(s: ModelSession, device: str) -> tuple[int, int]:
    """(allocator bytes in use minus resident model bytes, worker RSS) right now."""
    in_use = s.client.request("memory.in_use", {"device": device}, timeout=30)["in_use_bytes"]
    listed = s.client.request("model.list")
    return in_use - listed["used_bytes"], listed["rss_bytes"]


def rapid_switching(ctx: RunnerContext) -> None:
    p = ctx.params
    if p.get("models"):  # explicit model names (e.g. real pipelines): switch among those
        store = ensure_models(ctx)
        names = [str(n) for n in p["models"]]
    else:
        specs = synthetic_set(case_sizes_mib(p), int(p["model_pool_size"]))
        store = build_models(ctx, specs)
        names = [s.name for s in specs]
    types = list(p.get("model_types") or ["synthetic"])
    size = {n: sum(store.entry(m).total_bytes for m in store.load_order([n])) for n in names}
    interval = float(p["switch_interval_s"])
    order = switch_order(str(p["switching_pattern"]), len(names), round(float(p["duration_s"]) / interval),
                         int(p.get("seed", 0)))
    budget_mib, why = configured_budget_mib(p)
    rec, device = ctx.recorder, model_device(ctx)
    rec.note("cache_budget", f"{budget_mib:.0f} MiB ({why})")
    rec.note("model_types", "labels in rotation; the checkpoints are synthetic safetensors of the grid sizes")
    requested: set[str] = set()
    with model_session(ctx, store, cache_mib=max(size.values()) / MiB + MARGIN_MIB, host_cache_mib=budget_mib,
                       device=device) as s:
        assert s.cache is not None
        warm_up(ctx, s, names[-1])
        idle_before, rss_before = beyond_resident(s, device)
        first: int | None = None
        current: str | None = None
        started = time.monotonic()
        for i, idx in enumerate(order):
            time.sleep(max(0.0, started + i * interval - time.monotonic()))
            name = names[idx]
            labels: dict[str, Any] = {"switch": i, "model": name, "model_type": types[idx % len(types)],
                                      "first_request": name not in requested}
            requested.add(name)
            fits = size[name] <= s.cache.cap_bytes
            t0 = time.perf_counter()
            try:
                if current is not None:
                    s.host.unload(current)
                current = None
                out = s.host.load(name, use_cache=fits, timeout=load_timeout(size[name] / MiB))
                current = name
            except WorkerError as exc:
                rec.record("switch_error", 1.0, "count", error=str(exc)[:200], **labels)
                unload_all(s)
                continue
            rec.record("switch_latency_s", time.perf_counter() - t0, "s", **labels)
            rec.record("switch_error", 0.0, "count", **labels)
            rec.record("cache_hit_ok", 1.0 if fits and out.host_hit else 0.0, "ratio", **labels)
            beyond, rss = beyond_resident(s, device)
            first = beyond if first is None else first
            rec.record("memory_growth_mb", (beyond - first) / MiB, "MiB", **labels)
            rec.record("worker_rss_mb", rss / MiB, "MiB", **labels)
        unload_all(s)
        idle_after, rss_after = beyond_resident(s, device)
    rec.note("idle_allocator_growth_mib", round((idle_after - idle_before) / MiB, 3))
    rec.note("idle_rss_growth_mib", round((rss_after - rss_before) / MiB, 3))
    rec.note("switches", len(order))
    rec.note("device", device)


RUNNERS = {"model.rapid_switching": (METRICS, rapid_switching)}
