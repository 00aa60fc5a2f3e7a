"""Spec 4.2 gc_performance: the worker makes cyclic garbage holding tensors for a while and
times every collection; full collections also report the share of the garbage they freed."""

from __future__ import annotations

from hybrid_assets.runners import RunnerContext

METRICS = frozenset({"gc_pause_s", "gc_recovered_ratio"})


def gc_performance(ctx: RunnerContext) -> None:
    duration = float(ctx.params["duration_s"])
    result = ctx.pool.request("memory.gc_workload", {"duration_s": duration,
                                                     "garbage_mib_per_s": float(ctx.params["garbage_mib_per_s"])},
                              timeout=duration + 60.0)
    for generation, pause in result["pauses"]:
        ctx.recorder.record("gc_pause_s", pause, "s", generation=generation)
    for ratio in result["recovered"]:
        ctx.recorder.record("gc_recovered_ratio", ratio, "ratio")
    ctx.recorder.note("garbage_made_mib", result["made_bytes"] / 2**20)
    ctx.recorder.note("garbage_freed_mib", result["freed_bytes"] / 2**20)
    ctx.recorder.note("gc_frozen_objects", result["gc_frozen"])


RUNNERS = {"memory.gc_performance": (METRICS, gc_performance)}
