"""Batch workflow performance (spec 1.3 targets) and batch scaling (spec 4.4), through ``batch.run``.

- processing.batch_workflow: runs of 5 and 10 batches sent at once over the batch-size grid, cycling until at
  least ``min_items`` items ran; text-to-image at 64 px, ``inference_steps`` steps (1 unless the params say)
  on the tiny pipeline, on the worker's device (a GPU when NVML sees one, else the CPU). Per run: images
  completed by all its batches over the time from its first dispatch to its last result (the worker's
  dispatch trace) per minute; how many batches were admitted together (no QUEUE_FULL) and completed without
  an item error; mean NVML utilisation over the run (SKIPPED without a CUDA device). Per item: failed or not.
- processing.batch_workflow_scaling: the named step (standard_enhancement = postprocess.enhance level
  standard) on a real photograph crop of ``image_px`` (scikit-image sample, in shared memory, read in
  place by every item); batches of each size and single items (a batch of one, ``single_runs`` times,
  median), each timed by the host from send to answer. Per size N and repeat: N x t(1) / t(N).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import numpy as np

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.batch_support import BatchCall, run_together
from hybrid_assets.runners.ground_truth import observe
from hybrid_assets.runners.inference_latency import real_devices
from hybrid_assets.runners.inference_throughput import NO_GPU, _NvmlSampler
from hybrid_assets.runners.queue_support import inference_params, queue_session, read_trace
from workers.protocol import codec
from workers.protocol.images import ShmLedger

WORKFLOW_METRICS = frozenset({"batch_throughput_per_min", "concurrent_batches_admitted_count",
                              "gpu_utilization_ratio", "batch_item_error"})
SCALING_METRICS = frozenset({"batch_scaling_efficiency_ratio", "batch_time_s"})
STEPS = {"standard_enhancement": ("postprocess.enhance", {"level": "standard"}),
         "basic_enhancement": ("postprocess.enhance", {"level": "basic"}),
         "ai_enhancement": ("postprocess.enhance", {"level": "ai"}),
         "upscale_2x": ("postprocess.upscale", {"factor": 2})}


def batch_workflow(ctx: RunnerContext) -> None:
    p, rec = ctx.params, ctx.recorder
    sizes = [int(x) for x in p["batch_sizes"]]
    levels = [int(x) for x in p["concurrent_batches"]]
    kinds = [str(k) for k in p["inference_types"]]
    if kinds != ["text_to_image"]:
        rec.note("inference_types", f"only text_to_image is run here; asked {kinds}")
    min_items = int(p["min_items"])
    steps = int(p.get("inference_steps", 1))
    timeout = float(p.get("batch_timeout_s", 1800))
    device = real_devices()[0]
    gpu = device.kind == "cuda"
    if not gpu:
        rec.skip("gpu_utilization_ratio", NO_GPU)
    sampler = _NvmlSampler(observe().gpus[0].index, 0.1) if gpu else None
    items_done = run = 0
    try:
        with queue_session(ctx, capacity=1000, concurrency=1, device=device.backing,
                           max_batches=max(16, max(levels))) as s:
            client, after = s.client, -1
            for level, size in itertools.cycle([(lv, sz) for lv in levels for sz in sizes]):
                if items_done >= min_items and run >= len(levels) * len(sizes):
                    break
                calls = [BatchCall(5, size) for _ in range(level)]

                def go(call: BatchCall, b: int, size: int = size) -> None:
                    items = [{"op": "inference.run", "params": {**inference_params(0, steps), "seed": b * 1000 + k}}
                             for k in range(size)]
                    call.run(client, items, seed_base=0, timeout=timeout)

                t_host0 = time.perf_counter()
                run_together([(c, lambda c=c, b=run * 100 + i: go(c, b)) for i, c in enumerate(calls)])
                t_host1 = time.perf_counter()
                entries, after = read_trace(client, after)
                items_done += _score_run(ctx, calls, entries, run, level, size)
                if sampler is not None:
                    util = sampler.mean_between(t_host0, t_host1)
                    if util is not None:
                        rec.record("gpu_utilization_ratio", util, "ratio", run=run, concurrent_batches=level,
                                   batch_size=size)
                run += 1
            rec.note("queue_final", client.request("queue.stats"))
    finally:
        if sampler is not None:
            sampler.close()
    rec.note("runs", run)
    rec.note("items", items_done)
    rec.note("device", device.name)


def _score_run(ctx: RunnerContext, calls: list[BatchCall], entries: list[dict[str, Any]], run: int, level: int,
               size: int) -> int:
    rec = ctx.recorder
    labels = {"run": run, "concurrent_batches": level, "batch_size": size}
    ok_items = 0
    admitted_ok = 0
    for c in calls:
        items = c.result["items"] if c.result else []
        for k in range(size):
            status = items[k]["status"] if k < len(items) else "unanswered"
            rec.record("batch_item_error", 0.0 if status == "ok" else 1.0, "ratio", **labels,
                       **({"status": status, "code": items[k].get("code", "") if k < len(items) else ""}
                          if status != "ok" else {}))
            ok_items += status == "ok"
        if c.result is not None and c.rejections == 0 and c.result["ok"] == size:
            admitted_ok += 1
    rec.record("concurrent_batches_admitted_count", float(admitted_ok), "count", **labels,
               rejections=sum(c.rejections for c in calls))
    ran = [e for e in entries if e["started_s"] is not None]
    if ran:
        wall = max(e["ended_s"] for e in ran) - min(e["started_s"] for e in ran)
        rec.record("batch_throughput_per_min", ok_items / wall * 60.0 if wall > 0 else 0.0, "per_min", **labels,
                   images=ok_items, wall_s=round(wall, 3))
    return ok_items


def batch_workflow_scaling(ctx: RunnerContext) -> None:
    from workers.postprocess.samples import crops

    p, rec = ctx.params, ctx.recorder
    sizes = [int(x) for x in p["batch_sizes"]]
    step = str(p["step"])
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; known: {sorted(STEPS)}")
    op, step_params = STEPS[step]
    px = int(p["image_px"])
    singles = int(p.get("single_runs", 5))
    timeout = float(p.get("batch_timeout_s", 1200))
    sample = crops(px)[0]
    ledger = ShmLedger()
    try:
        with queue_session(ctx, capacity=1000, concurrency=1, models=()) as s:
            ref = ledger.publish(np.ascontiguousarray(sample.pixels[None]))
            item = {"op": op, "params": {**step_params, "image": {"ref": codec.to_builtins(ref)}, "output": "digest"}}

            def timed(n: int) -> float:
                call = BatchCall(5, n)
                call.run(s.client, [item] * n, seed_base=0, timeout=timeout)
                if call.result is None or call.result["ok"] != n:
                    raise RuntimeError(f"batch of {n} {step} items failed: {call.error or call.result}")
                assert call.answered is not None
                return call.answered - call.submitted

            timed(1)  # warm-up: the step's first call loads its code paths
            for repeat in range(int(p.get("repeats", 1))):
                t1 = statistics.median([timed(1) for _ in range(singles)])
                rec.record("batch_time_s", t1, "s", batch_size=1, repeat=repeat, statistic=f"median of {singles}")
                for n in sizes:
                    tn = timed(n)
                    rec.record("batch_time_s", tn, "s", batch_size=n, repeat=repeat)
                    rec.record("batch_scaling_efficiency_ratio", n * t1 / tn, "ratio", batch_size=n, repeat=repeat,
                               t1_s=round(t1, 5), tn_s=round(tn, 4))
    finally:
        ledger.unlink_all()
    rec.note("step", f"{step}: {op} {step_params} on {sample.name} at {px} px")


RUNNERS = {
    "processing.batch_workflow": (WORKFLOW_METRICS, batch_workflow),
    "processing.batch_workflow_scaling": (SCALING_METRICS, batch_workflow_scaling),
}
