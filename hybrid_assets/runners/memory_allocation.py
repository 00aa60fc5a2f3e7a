"""Spec 4.2 allocation latency: allocations through the worker's memory manager, timed in the
worker per call, beside a plain ``torch.empty`` of the same size timed in the same request
(the baseline: what the manager's accounting costs on top of the allocator)."""

from __future__ import annotations

import statistics
from typing import Any

from hybrid_assets.runners import RunnerContext

METRICS = frozenset({"allocation_latency_s", "free_latency_s", "allocation_failed", "baseline_empty_latency_s"})
MiB = 1 << 20
CHUNK = 100  # allocations per request: keeps frames small and progress visible


def _device(ctx: RunnerContext) -> str:
    wanted = ctx.params.get("device")
    if wanted:
        return str(wanted)
    found = ctx.pool.request("discover_devices", {"probe_dtypes": False}, timeout=120.0)
    return "cuda:0" if any(d["kind"] == "cuda" for d in found["devices"]) else "cpu"


def allocation_latency(ctx: RunnerContext) -> None:
    sizes = [max(1, int(float(s) * MiB)) for s in ctx.params["sizes_mib"]]
    count = int(ctx.params["allocations"])
    device = _device(ctx)
    budget = int(ctx.params.get("budget_mib", 2 * max(sizes) / MiB + 64) * MiB)
    ctx.pool.request("memory.configure", {"device": device, "budget_bytes": budget}, timeout=60.0)
    sequence = [sizes[i % len(sizes)] for i in range(count)]
    rec = ctx.recorder
    ratios: list[float] = []
    for start in range(0, count, CHUNK):
        chunk = sequence[start:start + CHUNK]
        result: dict[str, Any] = ctx.pool.request(
            "memory.allocate", {"device": device, "sizes": chunk, "baseline": True, "tag": ctx.case_id},
            timeout=60.0 + 0.5 * len(chunk))
        for a in result["allocations"]:
            mib = round(a["bytes"] / MiB, 3)
            if a.get("error"):
                rec.record("allocation_failed", 1.0, "count", size_mib=mib, error=a["error"][:200])
                continue
            rec.record("allocation_failed", 0.0, "count", size_mib=mib)
            rec.record("allocation_latency_s", a["latency_s"], "s", size_mib=mib, device=device)
            rec.record("free_latency_s", a["free_latency_s"], "s", size_mib=mib, device=device)
            rec.record("baseline_empty_latency_s", a["baseline_s"], "s", size_mib=mib, device=device)
            if a["baseline_s"] > 0:
                ratios.append(a["latency_s"] / a["baseline_s"])
    rec.note("device", device)
    rec.note("budget_bytes", budget)
    if ratios:
        rec.note("median_latency_over_torch_empty", statistics.median(ratios))


RUNNERS = {"memory.allocation_latency": (METRICS, allocation_latency)}
