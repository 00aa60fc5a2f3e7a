"""4.4 workflow latency and cross-domain coordination overhead, on one worker with every domain ready
(a pipeline loaded, the safety classifier configured, the upscaler available).

simple: one standard enhancement of a photo crop (the processing domain's single step).
complex: ``workflow.run`` inside the worker: text-to-image -> 2x upscale -> safety validation, the image
handed from step to step in the worker (no trip through the host). Both timed by the host from
submission to the answer.

Coordination overhead, per workflow crossing every domain (device: the device list; memory: the
manager's statistics; model and inference: a generation; postprocessing: upscale and safety): the
host's end-to-end time minus what each step reports as its own work (a step that reports nothing is
charged its whole measured call, so nothing is hidden in the difference). What is left is the cost of
handing work between domains: the request frame, parameter checks, the image handoff, the answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import ensure_models, model_session, pipelines
from hybrid_assets.runners.postprocess_support import shm_input
from hybrid_assets.runners.safety_support import ensure_classifier
from workers.host import WorkerClient
from workers.host.errors import WorkerError
from workers.postprocess import samples
from workers.protocol.images import ShmLedger

LATENCY_METRICS = frozenset({"workflow_latency_s", "workflow_failed"})
OVERHEAD_METRICS = frozenset({"coordination_overhead_s", "workflow_latency_s"})
WARMUP_RUNS = 2  # first calls build pools, load the upscaler and warm caches: not what is measured


@dataclass
class Ready:
    client: WorkerClient
    model: str


@contextmanager
def every_domain_ready(ctx: RunnerContext) -> Iterator[Ready]:
    store = ensure_models(ctx)
    ensure_classifier(ctx)
    model = pipelines(store)[0]
    with model_session(ctx, store, cache_mib=512) as session:
        session.host.load(model)
        session.client.request("safety.configure", {"root": str(store.root)}, timeout=120)
        session.client.request("memory.configure", {"device": "cpu", "budget_bytes": 64 << 20})
        yield Ready(session.client, model)


def _complex_steps(model: str, px: int, steps: int, factor: int, seed: int, *, every_domain: bool) -> list[dict]:
    out: list[dict[str, Any]] = []
    if every_domain:
        out += [{"op": "discover_devices", "params": {"probe_dtypes": False, "use_cache": True}},
                {"op": "memory.stats", "params": {"device": "cpu"}}]
    out += [
        {"op": "inference.run", "params": {"model": model, "width": px, "height": px, "steps": steps, "seed": seed,
                                           "progress": False}},
        {"op": "postprocess.upscale", "params": {"factor": factor, "output": "shm"}},
        {"op": "safety.validate", "params": {}, "image_param": "images"},
    ]
    return out


def workflow_latency(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    runs = int(p.get("runs", 45))
    kind = str(p.get("workflow", "single_step"))
    if kind not in ("single_step", "text_to_image_upscale_safety"):
        raise ValueError(f"unknown workflow {kind!r}: single_step or text_to_image_upscale_safety")
    with every_domain_ready(ctx) as ready, _ledger() as ledger:
        if kind == "single_step":
            px = int(p.get("image_px", 512))
            level = {"standard_enhancement": "standard"}.get(str(p.get("step", "standard_enhancement")))
            if level is None:
                raise ValueError(f"step {p.get('step')!r}: only standard_enhancement is defined")
            for i in range(WARMUP_RUNS + runs):
                image = shm_input(ledger, samples.image(px, i))
                _timed(rec, i, "postprocess.enhance", {"image": image, "level": level, "output": "digest"},
                       ready.client, workflow=kind, image_px=px)
        elif kind == "text_to_image_upscale_safety":
            px = int(p.get("width_px", 512))
            steps, factor = int(p.get("steps", 20)), int(p.get("upscale_factor", 2))
            for i in range(WARMUP_RUNS + runs):
                _timed(rec, i, "workflow.run", {
                    "steps": _complex_steps(ready.model, px, steps, factor, i, every_domain=False),
                    "output": "digest"}, ready.client, workflow=kind, px=px, steps=steps)
    rec.note("measured", "host submission to answer; the first runs are warm-up and not recorded")


def _timed(rec: Any, i: int, op: str, params: dict[str, Any], client: WorkerClient, **labels: Any) -> None:
    """One workflow, timed from submission to answer; a failure is recorded, not raised."""
    t0 = time.perf_counter()
    try:
        client.request(op, params, timeout=300)
    except WorkerError as exc:
        if i >= WARMUP_RUNS:
            rec.record("workflow_failed", 1.0, "count", **labels, error=f"{exc.code}: {exc.message[:160]}")
        return
    if i >= WARMUP_RUNS:
        rec.record("workflow_latency_s", time.perf_counter() - t0, "s", **labels)
        rec.record("workflow_failed", 0.0, "count", **labels)


@contextmanager
def _ledger() -> Iterator[ShmLedger]:
    ledger = ShmLedger()
    try:
        yield ledger
    finally:
        ledger.unlink_all()


def coordination_overhead(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    workflows = int(p.get("workflows", 45))
    px, steps = int(p.get("width_px", 512)), int(p.get("steps", 20))
    in_worker: list[float] = []
    with every_domain_ready(ctx) as ready:
        for i in range(WARMUP_RUNS + workflows):
            t0 = time.perf_counter()
            result = ready.client.request("workflow.run", {
                "steps": _complex_steps(ready.model, px, steps, 2, i, every_domain=True), "output": "digest"},
                timeout=300)
            end_to_end = time.perf_counter() - t0
            if i < WARMUP_RUNS:
                continue
            own = sum(s["reported_s"] if s["reported_s"] is not None else s["seconds"] for s in result["steps"])
            rec.record("coordination_overhead_s", end_to_end - own, "s", workflow=i,
                       in_worker_s=round(result["overhead_s"], 5), end_to_end_s=round(end_to_end, 4))
            rec.record("workflow_latency_s", end_to_end, "s", workflow=i)
            in_worker.append(result["overhead_s"])
    if in_worker:
        ordered = sorted(in_worker)
        rec.note("in_worker_overhead_p50_s", round(ordered[len(ordered) // 2], 5))
    rec.note("definition", "host end-to-end minus the sum of each step's own reported time (its measured call "
                           "when it reports none); the remainder is frames, checks and image handoffs")


RUNNERS = {
    "processing.workflow_latency": (LATENCY_METRICS, workflow_latency),
    "processing.coordination_overhead": (OVERHEAD_METRICS, coordination_overhead),
}
