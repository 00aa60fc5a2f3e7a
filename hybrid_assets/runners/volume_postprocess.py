"""2.6 high-volume postprocessing: items arrive open-loop at the case's rate (evenly spaced, so the
rate is what the case says, not what the worker allows), the four postprocessing types in rotation
and simple / complex photo crops alternating.

Per item: arrival (its scheduled time) to answer; whether it failed; whether its output differs from
the same input and type processed alone before the run (pixel digest of the delivered image; the
file digest for a conversion; the decision and category for a safety validation). Load must not
change the output.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.postprocess_support import shm_input
from hybrid_assets.runners.safety_support import ensure_classifier
from workers.host import WorkerClient
from workers.host.errors import WorkerError
from workers.postprocess import samples
from workers.protocol.images import ShmLedger

VOLUME_METRICS = frozenset({
    "item_latency_s", "output_mismatch_error", "gpu_utilization_ratio", "item_error", "throughput_per_min",
})
TYPES = ("upscaling", "enhancement", "safety_validation", "format_conversion")
COMPLEXITIES = ("simple_images", "complex_images")
INPUTS_PER_COMPLEXITY = 6
FORMATS = ("png", "jpeg", "webp")
ITEM_TIMEOUT_S = 300.0


def _request(kind: str, image: dict[str, Any], i: int) -> tuple[str, dict[str, Any]]:
    if kind == "upscaling":
        return "postprocess.upscale", {"image": image, "factor": 2, "output": "digest"}
    if kind == "enhancement":
        return "postprocess.enhance", {"image": image, "level": "standard", "output": "digest"}
    if kind == "safety_validation":
        return "safety.validate", {"images": [image]}
    if kind == "format_conversion":
        return "postprocess.convert", {"image": image, "format": FORMATS[i % len(FORMATS)], "output": "digest"}
    raise ValueError(f"unknown postprocessing type {kind!r}; known: {list(TYPES)}")


def _signature(kind: str, result: dict[str, Any]) -> str:
    """What must not change under load."""
    if kind == "safety_validation":
        item = result["items"][0]
        return f"{item['decision']}:{item['category']}:{item['fail_closed']}"
    file = result.get("file") or {}
    return f"{result['sha256']}:{file.get('sha256', '')}"


def high_volume(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    rate = float(p["input_rate_per_min"])
    duration = float(p["duration_s"])
    px = int(p.get("image_size", 512))
    kinds = [str(k) for k in p.get("postprocessing_types", TYPES)]
    complexities = [str(c) for c in p.get("input_complexity", COMPLEXITIES)]
    count = max(1, round(rate * duration / 60.0))
    store = ensure_classifier(ctx)
    rec.skip("gpu_utilization_ratio", "no GPU is used here: the upscaler runs ncnn on the CPU (gpuid -1) and the "
                                      "classifier on torch's CPU; NVML utilisation would not describe this work")
    ledger = ShmLedger()
    try:
        pools = {c: [shm_input(ledger, s.pixels) for s in samples.by_type(c, INPUTS_PER_COMPLEXITY, px)]
                 for c in complexities}
        plan = []  # (item, kind, complexity, input index)
        for i in range(count):
            c = complexities[i % len(complexities)]
            plan.append((i, kinds[i % len(kinds)], c, (i // len(complexities)) % INPUTS_PER_COMPLEXITY))
        with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-postprocess", startup_timeout=120).start() as client:
            client.request("safety.configure", {"root": str(store.root)}, timeout=120)
            refs: dict[tuple[str, str, int, int], str] = {}
            for i, kind, c, j in plan:  # alone, before the run (also warms every path up)
                key = (kind, c, j, i % len(FORMATS) if kind == "format_conversion" else 0)
                if key not in refs:
                    op, params = _request(kind, pools[c][j], i)
                    refs[key] = _signature(kind, client.request(op, params, timeout=ITEM_TIMEOUT_S))
            _open_loop(ctx, client, plan, pools, refs, rate)
    finally:
        ledger.unlink_all()
    rec.note("load", {"items": count, "rate_per_min": rate, "duration_s": duration, "image_px": px,
                      "types": kinds, "inputs_per_complexity": INPUTS_PER_COMPLEXITY})


def _open_loop(ctx: RunnerContext, client: WorkerClient, plan: list[tuple[int, str, str, int]],
               pools: dict[str, list[dict[str, Any]]], refs: dict[tuple[str, str, int, int], str], rate: float) -> None:
    rec = ctx.recorder
    period = 60.0 / rate
    done: list[tuple[int, str, str, float, Any]] = []
    lock = threading.Lock()
    waiters: list[threading.Thread] = []
    t0 = time.perf_counter()

    def wait(i: int, kind: str, c: str, arrival: float, pending: Any) -> None:
        pending.wait(ITEM_TIMEOUT_S)
        ended = time.perf_counter()
        try:
            out: Any = pending.result()
        except WorkerError as exc:
            out = exc
        with lock:
            done.append((i, kind, c, ended - arrival, out))

    for i, kind, c, j in plan:
        arrival = t0 + i * period
        delay = arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        op, params = _request(kind, pools[c][j], i)
        pending = client.submit(op, params, deadline_ms=ITEM_TIMEOUT_S * 1e3)
        th = threading.Thread(target=wait, args=(i, kind, c, arrival, pending), daemon=True)
        th.start()
        waiters.append(th)
    for th in waiters:
        th.join(ITEM_TIMEOUT_S + 10)
    span = max(1e-9, time.perf_counter() - t0)
    ok = 0
    for i, kind, c, latency, out in sorted(done, key=lambda d: d[0]):
        labels = {"type": kind, "complexity": c, "item": i}
        if isinstance(out, WorkerError) or not isinstance(out, dict):
            rec.record("item_error", 1.0, "count", **labels, error=str(out)[:200])
            continue
        ok += 1
        rec.record("item_error", 0.0, "count", **labels)
        rec.record("item_latency_s", latency, "s", **labels)
        key = (kind, c, plan[i][3], i % len(FORMATS) if kind == "format_conversion" else 0)
        rec.record("output_mismatch_error", float(_signature(kind, out) != refs[key]), "count", **labels)
    missing = len(plan) - len(done)
    for _ in range(missing):
        rec.record("item_error", 1.0, "count", error="no answer within the item timeout")
    rec.record("throughput_per_min", 60.0 * ok / span, "per_min", offered_per_min=rate)


RUNNERS = {
    "postprocessing.high_volume": (VOLUME_METRICS, high_volume),
}
