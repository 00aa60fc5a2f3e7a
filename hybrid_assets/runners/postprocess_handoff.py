"""1.2 inference -> postprocessing handoff: inference outputs handed to 2x upscaling, then safety validation,
without the host touching the pixels.

One worker holds both domains (model_session + safety.configure). Per item: ``inference.run`` (the smallest
tiny pipeline, the model class's resolution and steps, seed = item) leaves its image in a shared-memory
segment and answers an ImageRef; the host passes that ref unchanged to ``postprocess.upscale`` (factor
upscale_factor, backend auto: Real-ESRGAN), whose output ref goes unchanged to ``safety.validate``.

Per item: handoff_copy_detected = 1 unless the upscaler reports it read the inference segment itself in
place (same shm name, in_place); handoff_checksum_mismatch_detected = 1 when the sha256 of the pixels the
upscaler read differs from inference's; postprocessing_error = 1 when the upscale failed or safety gave no
verdict (an error, or a fail-closed answer: the classifier or policy engine failed); handoff_latency_s =
host round trip of the postprocess step (its worker-side seconds and queue time as labels).
upscaling_psnr_gain_db: after the handoff, the host reads the inference output (a copy made for measuring
only), downscales it by upscale_factor (bicubic), has the worker upscale it back and compares with bicubic:
PSNR(upscaled, output) - PSNR(bicubic, output). The tiny pipeline has random weights: its images are
texture-like noise, a hard case for any upscaler.
"""

from __future__ import annotations

import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.inference_latency import CLASS_POINTS
from hybrid_assets.runners.model_support import ensure_models, model_session, pipelines
from hybrid_assets.runners.postprocess_support import note_model, release, shm_input, take_output
from hybrid_assets.runners.safety_support import ensure_classifier
from workers.host import RequestTimeout, WorkerError, WorkerLost
from workers.postprocess import quality
from workers.protocol import images
from workers.protocol.images import ImageRef, ShmLedger

METRICS = frozenset({"handoff_copy_detected", "handoff_checksum_mismatch_detected", "postprocessing_error",
                     "upscaling_psnr_gain_db", "handoff_latency_s"})
_ERRORS = (WorkerError, RequestTimeout, WorkerLost)


def _ref_input(ref: dict[str, Any]) -> dict[str, Any]:
    return {"ref": {"shm": ref["shm"], "shape": ref["shape"], "sha256": ref.get("sha256", [])}}


def inference_handoff(ctx: RunnerContext) -> None:
    p = ctx.params
    items, factor = int(p["items"]), int(p.get("upscale_factor", 2))
    model_class = str(p.get("model", "tiny"))
    size, steps = CLASS_POINTS.get(model_class, CLASS_POINTS["tiny"])
    note_model(ctx)
    store = ensure_models(ctx)
    ensure_classifier(ctx)
    pipeline = pipelines(store)[0]
    ctx.recorder.note("inference", f"{pipeline} (random weights) at {size} px, {steps} steps, model class "
                                   f"{model_class!r}")
    ledger = ShmLedger()
    with model_session(ctx, store, cache_mib=1024) as s:
        c = s.client
        s.host.load(pipeline)
        safety = c.request("safety.configure", {"root": str(store.root)}, timeout=120)
        ctx.recorder.note("safety_classifier", f"{safety['model']} (stand-in: {safety['stand_in']})")
        base = {"model": pipeline, "prompt": "a lighthouse on a cliff at dusk", "width": size, "height": size,
                "steps": steps, "output": "shm", "progress": False}
        c.request("inference.run", {**base, "seed": 10_000, "output": "digest"}, timeout=600)  # warm-up
        for i in range(items):
            try:
                inf = c.request("inference.run", {**base, "seed": i}, timeout=600)
            except _ERRORS as exc:
                ctx.recorder.note(f"inference_failed_{i}", str(exc)[:300])
                ctx.recorder.record("postprocessing_error", 1, "count", item=i, stage="inference")
                continue
            ref = inf["image"]
            try:
                _handoff(ctx, c, i, ref, inf["sha256"][0], factor, ledger)
            finally:
                _unlink(ref["shm"])  # the host owns the inference output: released once measured
                ledger.unlink_all()


def _unlink(name: str) -> None:
    from multiprocessing import shared_memory

    try:
        seg = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    seg.close()
    seg.unlink()


def _handoff(ctx: RunnerContext, c: Any, i: int, ref: dict[str, Any], digest: str, factor: int,
             ledger: ShmLedger) -> None:
    t0 = time.perf_counter()
    try:
        up = c.request("postprocess.upscale", {"image": _ref_input(ref), "factor": factor}, timeout=600)
    except _ERRORS as exc:
        ctx.recorder.note(f"upscale_failed_{i}", str(exc)[:300])
        ctx.recorder.record("postprocessing_error", 1, "count", item=i, stage="upscale", error=str(exc)[:200])
        return
    handoff_s = time.perf_counter() - t0
    src = up["input"]
    ctx.recorder.record("handoff_latency_s", handoff_s, "s", item=i, worker_s=round(up["seconds"], 5),
                        queue_s=round(up["queue_s"], 5), backend=up["backend"])
    in_place = src["in_place"] and src["shm"] == ref["shm"]
    ctx.recorder.record("handoff_copy_detected", float(not in_place), "count", item=i, read_from=src["shm"],
                        source=src["source"])
    ctx.recorder.record("handoff_checksum_mismatch_detected", float(src["sha256"] != digest), "count", item=i)
    verdict, error = "", ""
    try:
        val = c.request("safety.validate", {"images": [_ref_input(up["image"])]}, timeout=120)
        item = val["items"][0]
        verdict = item["decision"]
        if item["fail_closed"]:
            error = f"failed closed: {item['reason']}"
    except _ERRORS as exc:
        error = str(exc)[:200]
    finally:
        release(up)
    ctx.recorder.record("postprocessing_error", float(bool(error) or not verdict), "count", item=i,
                        stage="safety" if error else "", verdict=verdict, error=error)
    # quality after the handoff: the host reads the output (a measuring copy), downscales, upscales back
    original = images.read(ImageRef(shm=ref["shm"], shape=ref["shape"], sha256=ref.get("sha256", [])))[0]
    low = quality.downscale(original, factor)
    try:
        back = c.request("postprocess.upscale", {"image": shm_input(ledger, low), "factor": factor}, timeout=600)
    except _ERRORS as exc:
        ctx.recorder.note(f"quality_upscale_failed_{i}", str(exc)[:300])
        return
    restored = take_output(back).pixels
    h, w = original.shape[:2]
    bicubic = quality.resize(low, w, h, "bicubic")
    p_up, p_bic = quality.psnr(restored, original), quality.psnr(bicubic, original)
    ctx.recorder.record("upscaling_psnr_gain_db", p_up - p_bic, "dB", item=i, psnr_db=round(p_up, 3),
                        bicubic_psnr_db=round(p_bic, 3), backend=back["backend"])


RUNNERS = {"postprocessing.inference_handoff": (METRICS, inference_handoff)}
