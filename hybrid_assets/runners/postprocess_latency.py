"""4.6 postprocessing latency: upscaling (2x, 4x, highest quality), enhancement (standard, ai) and batch
enhancement scaling, on a warm dedicated worker.

One sample = one image per request, timed on the host from sending the request to holding the output pixels
(taken out of shared memory). Inputs are real photo crops (workers/postprocess/samples.py) at the case's
size, put in shared memory first as an inference output would be (the worker reads them in place); a
warm-up request of the measured shape loads the model before anything is timed.

Batch enhancement: a batch of N = N requests sent at once to the worker's postprocessing pool (the
protocol has no batch parameter; the pool runs them by priority, one slot); t(N) = from the first send
to the last output held; t(1) = the median of 3 single requests timed just before each batch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.postprocess_support import note_model, pp_worker, shm_input, take_output
from workers.host import WorkerClient, WorkerError
from workers.postprocess import samples
from workers.protocol.images import ShmLedger

POOL_IMAGES = 8  # distinct photos cycled through (a constant input would flatter any cache)


def _timed(client: WorkerClient, op: str, params: dict[str, Any], timeout: float) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    result = client.request(op, params, timeout=timeout)
    take_output(result)
    return time.perf_counter() - t0, result


def _inputs(ledger: ShmLedger, px: int) -> list[dict[str, Any]]:
    return [shm_input(ledger, samples.image(px, i * 7)) for i in range(POOL_IMAGES)]


def upscaling_latency(ctx: RunnerContext) -> None:
    p = ctx.params
    px, factor, quality, n = int(p["input_px"]), int(p["factor"]), str(p.get("quality", "standard")), int(p["samples"])
    note_model(ctx)
    ledger = ShmLedger()
    try:
        inputs = _inputs(ledger, px)
        with pp_worker(ctx) as client:
            base = {"factor": factor, "quality": quality, "backend": "auto"}
            _, warm = _timed(client, "postprocess.upscale", {"image": inputs[0], **base}, timeout=600)
            ctx.recorder.note("served_by", warm["backend"])
            for i in range(n):
                params = {"image": inputs[i % len(inputs)], **base}
                try:
                    seconds, r = _timed(client, "postprocess.upscale", params, timeout=600)
                except WorkerError as exc:
                    ctx.recorder.record("upscale_failed", 1, "count", code=exc.code, error=str(exc)[:200])
                    continue
                ctx.recorder.record("upscale_latency_s", seconds, "s", input_px=px, factor=factor, quality=quality,
                                    backend=r["backend"], worker_s=round(r["seconds"], 4),
                                    tiles=r["stages"][0]["tiles"], output_px=r["width"])
                ctx.recorder.record("upscale_failed", 0, "count", backend=r["backend"])
    finally:
        ledger.unlink_all()


def enhancement_latency(ctx: RunnerContext) -> None:
    p = ctx.params
    level, sizes, n = str(p["level"]), [int(s) for s in p["image_px"]], int(p["samples"])
    note_model(ctx)
    ledger = ShmLedger()
    try:
        with pp_worker(ctx) as client:
            for px in sizes:
                inputs = _inputs(ledger, px)
                _, warm = _timed(client, "postprocess.enhance", {"image": inputs[0], "level": level}, timeout=600)
                ctx.recorder.note(f"served_by_{px}", warm["backend"])
                for i in range(n):
                    seconds, r = _timed(client, "postprocess.enhance",
                                        {"image": inputs[i % len(inputs)], "level": level}, timeout=600)
                    ctx.recorder.record("enhancement_latency_s", seconds, "s", image_px=px, level=level,
                                        backend=r["backend"], steps=",".join(r["stages"][0]["steps"]),
                                        worker_s=round(r["seconds"], 4))
    finally:
        ledger.unlink_all()


def _batch(client: WorkerClient, inputs: list[dict[str, Any]], level: str, size: int) -> float:
    t0 = time.perf_counter()
    pending = [client.submit("postprocess.enhance", {"image": inputs[i % len(inputs)], "level": level},
                             deadline_ms=600_000) for i in range(size)]
    for item in pending:
        if not item.wait(600):
            raise TimeoutError(f"batch of {size}: no answer within 600 s")
        take_output(item.result())
    return time.perf_counter() - t0


def batch_enhancement(ctx: RunnerContext) -> None:
    p = ctx.params
    sizes, level, px = [int(s) for s in p["batch_sizes"]], str(p["level"]), int(p["image_px"])
    repeats = int(p.get("repeats", 1))
    note_model(ctx)
    ledger = ShmLedger()
    try:
        inputs = _inputs(ledger, px)
        with pp_worker(ctx) as client:
            _batch(client, inputs, level, 2)  # warm-up
            for rep in range(repeats):
                for size in sizes:
                    t1 = statistics.median(_batch(client, inputs[k:], level, 1) for k in range(3))
                    tn = _batch(client, inputs, level, size)
                    ctx.recorder.record("batch_enhancement_efficiency_ratio", size * t1 / tn, "ratio", batch=size,
                                        repeat=rep, t1_s=round(t1, 5), tn_s=round(tn, 5), image_px=px, level=level)
        ctx.recorder.note("batch_definition", "N requests sent at once to the worker's postprocessing pool "
                                              "(one slot); t(1) = median of 3 single requests before each batch")
    finally:
        ledger.unlink_all()


RUNNERS = {
    "postprocessing.upscaling_latency": (frozenset({"upscale_latency_s", "upscale_failed"}), upscaling_latency),
    "postprocessing.enhancement_latency": (frozenset({"enhancement_latency_s"}), enhancement_latency),
    "postprocessing.batch_enhancement": (frozenset({"batch_enhancement_efficiency_ratio"}), batch_enhancement),
}
