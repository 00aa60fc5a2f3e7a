"""1.1 device-to-inference pipeline: the whole workflow on a worker that holds nothing yet (device
discovery, a memory pool, placement and model load, the first inference), then a request stream
through what was assembled.

Each pipeline run gets a fresh worker (started before its run begins: process start-up is
cold_start_device_discovery's figure, not this one's), so "reset to nothing" is literal. The host
keeps its own record of what it built (devices, pool, models) and compares it field by field
with the worker's answers after every run.

Utilisation per domain, over the request stream (used / held): device: generation seconds / stream
wall time; worker: time with a request in the worker / wall time; model: models used / models
loaded; memory: pool blocks in use / pool blocks held, sampled after every request. The model
runtime does not draw its tensors from the memory manager's pools, so the pool the workflow
allocates stays idle during inference; the figure says so rather than hiding it.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import MiB, ensure_models, pipelines
from workers.host import WorkerClient
from workers.host.errors import WorkerError
from workers.host.models import ModelHost
from workers.models.store import ModelStore

PIPELINE_METRICS = frozenset({
    "pipeline_latency_s", "domain_resource_utilization_ratio", "pipeline_request_error",
    "cross_domain_state_mismatch_detected", "stage_latency_s",
})
POOL = {"name": "pipeline", "block_bytes": 4 * MiB, "blocks": 16}
REQUEST = {"width": 64, "height": 64, "steps": 4, "output": "digest", "progress": False}


class _Spare:
    """The next run's worker, started in the background while this run works."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.client = WorkerClient(argv, name=name, startup_timeout=180)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.client.start()
        except WorkerError as exc:
            self.error = exc

    def ready(self) -> WorkerClient:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.client


def device_to_inference_pipeline(ctx: RunnerContext) -> None:
    p = ctx.params
    runs = int(p.get("pipeline_runs", 45))
    requests = int(p.get("requests", 1000))
    per_run = max(1, math.ceil(requests / runs))
    store = ensure_models(ctx)
    model = pipelines(store)[0]
    spare = _Spare(ctx.worker_argv, f"{ctx.case_id}-w0")
    for k in range(runs):
        client = spare.ready()
        spare = _Spare(ctx.worker_argv, f"{ctx.case_id}-w{k + 1}") if k + 1 < runs else None
        try:
            _one_run(ctx, client, store, model, k, per_run)
        finally:
            client.shutdown()
    if spare is not None:
        spare.ready().shutdown()
    ctx.recorder.note("stream", {"requests_per_run": per_run, "model": model, "pool": POOL, "request": REQUEST})


def _one_run(ctx: RunnerContext, client: WorkerClient, store: ModelStore, model: str, k: int, per_run: int) -> None:
    rec = ctx.recorder
    stages: dict[str, float] = {}
    expected: dict[str, Any] = {}
    t_start = time.perf_counter()
    try:
        t = time.perf_counter()
        found = client.request("discover_devices", {}, timeout=120)
        stages["discovery"] = time.perf_counter() - t
        # Placement: the device with the most free memory the discovery reported.
        device = max(found["devices"], key=lambda d: d.get("memory_free") or 0)
        target = "cpu" if device["kind"] == "cpu" else device["id"]
        expected["devices"] = sorted(d["id"] for d in found["devices"])

        t = time.perf_counter()
        client.request("memory.configure", {"device": target, "budget_bytes": 2 * POOL["block_bytes"] * POOL["blocks"]})
        stats = client.request("memory.pool_create", {**POOL, "device": target})["stats"]
        stages["pool_allocation"] = time.perf_counter() - t
        expected["pool"] = {"block_bytes": POOL["block_bytes"], "blocks": POOL["blocks"]}

        t = time.perf_counter()
        host = ModelHost(client, store)
        host.configure(cache_mib=512, device=target)
        host.load(model)
        stages["placement_and_load"] = time.perf_counter() - t

        t = time.perf_counter()
        client.request("inference.run", {**REQUEST, "model": model, "seed": k}, timeout=120)
        stages["first_inference"] = time.perf_counter() - t
        rec.record("pipeline_latency_s", time.perf_counter() - t_start, "s", run=k)
        rec.record("pipeline_request_error", 0.0, "ratio", run=k, kind="workflow")
    except WorkerError as exc:
        ctx.log.error("pipeline run %d failed at %s: %s", k, list(stages), exc)
        rec.record("pipeline_request_error", 1.0, "ratio", run=k, kind="workflow", error=exc.code)
        return
    for stage, seconds in stages.items():
        rec.record("stage_latency_s", seconds, "s", run=k, stage=stage)

    # The request stream through the assembled pipeline.
    busy = gen = 0.0
    pool_use: list[float] = []
    used_models: set[str] = set()
    t_stream = time.perf_counter()
    for i in range(per_run):
        t = time.perf_counter()
        try:
            result = client.request("inference.run", {**REQUEST, "model": model, "seed": 1000 + i}, timeout=120)
            rec.record("pipeline_request_error", 0.0, "ratio", run=k, kind="request")
            gen += float(result["seconds"])
            used_models.add(result["model"])
        except WorkerError as exc:
            rec.record("pipeline_request_error", 1.0, "ratio", run=k, kind="request", error=exc.code)
        busy += time.perf_counter() - t
        pool = client.request("memory.stats", {"device": target})["stats"]["pools"].get(POOL["name"])
        if pool:
            pool_use.append((pool["blocks"] - pool["free_blocks"]) / pool["blocks"])
    wall = time.perf_counter() - t_stream
    resident = [m["name"] for m in client.request("model.list")["resident"]]
    pipelines_resident = [m for m in resident if store.entry(m).kind == "sd_pipeline"]
    for domain, value in (("device", gen / wall), ("worker", busy / wall),
                          ("model", len(used_models) / max(1, len(pipelines_resident))),
                          ("memory", sum(pool_use) / len(pool_use) if pool_use else 0.0)):
        rec.record("domain_resource_utilization_ratio", value, "ratio", run=k, domain=domain)

    # The host's record against the worker's, field by field.
    mismatches = []
    now = client.request("discover_devices", {"use_cache": True}, timeout=120)
    if sorted(d["id"] for d in now["devices"]) != expected["devices"]:
        mismatches.append("devices")
    pool_now = client.request("memory.stats", {"device": target})["stats"]["pools"].get(POOL["name"])
    if not pool_now or {k2: pool_now[k2] for k2 in ("block_bytes", "blocks")} != expected["pool"]:
        mismatches.append("pool")
    sync = host.sync_state()
    if not sync.consistent:
        mismatches.append(f"models: {sync}")
    rec.record("cross_domain_state_mismatch_detected", 1.0 if mismatches else 0.0, "count", run=k,
               **({"fields": "; ".join(mismatches)} if mismatches else {}))
    if k == 0:
        rec.note("first_run", {"stages_s": {s: round(v, 4) for s, v in stages.items()}, "pool_stats": stats["pools"]})


RUNNERS = {
    "cross_domain.device_to_inference_pipeline": (PIPELINE_METRICS, device_to_inference_pipeline),
}
